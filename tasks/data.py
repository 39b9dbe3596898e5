"""Prefect tasks of the data stage: render one shard (cached), verify shards, publish the manifest.

The work lives in `t2v.shards` / `t2v.dataset`; these wrappers add the cache key, persisted
results, retries, artifacts and progress reporting. A shard task's cache key is its inputs (the
shard's full spec and the renderer, shard-writer and motion code hashes) plus the task's source,
so a rerun renders only shards whose content would change. The dataset root is left out of the
key: results are stored under the root itself, so a moved or copied dataset keeps its cache.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Mapping
from uuid import UUID

from prefect import get_run_logger, task
from prefect.assets import materialize
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.futures import PrefectFuture, as_completed
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
from prefect.states import State
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner
from prefect.tasks import Task

from tasks import assets, results
from t2v import dataset, vocab
from t2v.render import ClipSpec, renderer_version
from t2v.shards import DataParams, ShardInfo, ShardSpec, plan, verify_shard, write_shard

RESULTS_DIR = ".cache/prefect-results"  # under the dataset root: the cache lives and dies with the data


def shard_to_dict(spec: ShardSpec) -> dict[str, Any]:
    """Plain, JSON-able form of a shard spec: hashed into the cache key and pickled to workers."""
    return {"path": spec.path, "motion": spec.motion, "split": spec.split, "clips": [asdict(c) for c in spec.clips]}


def shard_from_dict(d: Mapping[str, Any]) -> ShardSpec:
    return ShardSpec(d["path"], d["motion"], d["split"], tuple(ClipSpec(**c) for c in d["clips"]))


@task(name="render-shard", task_run_name="render {shard[path]}",
      cache_policy=results.json_records_only((INPUTS - "root") + TASK_SOURCE), persist_result=True,
      result_serializer=results.SERIALIZER, retries=1)
def render_shard(root: str, shard: dict[str, Any], renderer: str, writer: str, motion_spec: str) -> dict[str, Any]:
    """Render and atomically publish one shard; returns its ShardInfo as a dict.

    `renderer`, `writer` and `motion_spec` are unused in the body: they are inputs so that a change
    to the rasteriser, the shard format or this motion's code changes the cache key.
    """
    info = write_shard(Path(root), shard_from_dict(shard))
    get_run_logger().info("rendered %s: %d clips, %d bytes", info.path, info.count, info.bytes)
    return asdict(info)


def render_inputs(root: Path, spec: ShardSpec) -> dict[str, Any]:
    """Parameters of `render_shard` for one shard: everything its bytes depend on."""
    return {"root": str(root), "shard": shard_to_dict(spec), "renderer": renderer_version(),
            "writer": dataset.format_version(), "motion_spec": vocab.motions()[spec.motion].spec_hash}


def render_task(root: Path, refresh: bool = False) -> Task:
    """`render_shard` with its results kept under the dataset root; `refresh` re-renders even on a cache hit."""
    return render_shard.with_options(result_storage=Path(root) / RESULTS_DIR, refresh_cache=refresh)


@task(name="verify-shards", cache_policy=NO_CACHE, persist_result=False)
def verify_shards(root: str, infos: dict[str, Any]) -> dict[str, list[str]]:
    """Re-read every shard (exists, sha256, sample count, every clip decodes); {path: problems} of bad ones.

    `infos` maps each planned shard path to what its task returned (a cache record, maybe): one that
    is not that shard's info is a problem too, so the shard is rendered again."""
    bad = {}
    for path, info in infos.items():
        try:
            shard = ShardInfo(**info)
        except TypeError:
            shard = None
        if shard is None or shard.path != path:
            bad[path] = [f"{path}: its cached result is not this shard's info; rendering it again"]
            continue
        problems = verify_shard(Path(root), shard)
        if problems:
            bad[path] = problems
    logger = get_run_logger()
    logger.info("verified %d shards: %d sound, %d bad", len(infos), len(infos) - len(bad), len(bad))
    for problems in bad.values():
        logger.warning("; ".join(problems))
    return bad


@materialize("file://t2v-dataset", name="publish-manifest", cache_policy=NO_CACHE, persist_result=False)
def publish_manifest(root: str, params: dict[str, Any], infos: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the manifest of verified shards and a table artifact of clips per motion and split
    (materializes the dataset's asset when built by `publish_task`)."""
    p = DataParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
    specs = plan(p)
    path = dataset.publish(Path(root), p, specs, [ShardInfo(**i) for i in infos])
    counts = dataset.count_summary(dataset.load_manifest(root))
    create_table_artifact(
        key="data-stage-clips",
        table=[{"motion": m, **c, "total": sum(c.values())} for m, c in counts.items()],
        description=f"Clips per motion and split in `{path}`",
    )
    get_run_logger().info("published %s: %d clips in %d shards", path, sum(sum(c.values()) for c in counts.values()),
                          len(infos))
    checksum = dataset.manifest_checksum(root)
    assets.record({"manifest_checksum": checksum, "shards": len(infos), "motions": sorted(counts),
                   "clips": dataset.split_totals(counts)})
    return {"manifest": str(path), "counts": counts, "checksum": checksum}


def publish_task(root: str | Path) -> Task:
    """`publish_manifest` materializing the Prefect asset of the dataset at `root`."""
    return publish_manifest.with_options(assets=[assets.dataset_asset(root)])


@contextmanager
def _shared_api() -> Iterator[None]:
    """Point task runs in other processes at this process's Prefect API.

    With no PREFECT_API_URL, Prefect runs a temporary server for this process; its URL is not
    passed to spawned workers, so each would start (and wait for) a server of its own. Pointing
    them at the one already running keeps every task run in one place and saves seconds per worker.
    """
    if get_current_settings().api.url is not None:
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the singleton this process's client already started
    server.start()
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


@contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolTaskRunner]:
    """A started process-pool task runner whose workers report to this process's Prefect API."""
    with _shared_api(), ProcessPoolTaskRunner(max_workers=workers) as runner:
        yield runner


@contextmanager
def task_runner(workers: int, dask_address: str | None = None) -> Iterator[TaskRunner]:
    """The data stage's task runner: `workers` local processes, or the Dask cluster at `dask_address`
    (through prefect-dask), whose workers must see the output dir at the same path."""
    if not dask_address:
        with process_pool(workers) as runner:
            yield runner
        return
    from prefect_dask import DaskTaskRunner

    with _shared_api(), DaskTaskRunner(address=dask_address) as runner:
        yield runner


def wait_with_progress(futures: Mapping[str, PrefectFuture], label: str, progress: bool = False) -> dict[str, State]:
    """Final state of each future as it completes, reported to a Prefect progress artifact and,
    when `progress`, a terminal bar."""
    from tqdm import tqdm

    total = max(len(futures), 1)
    artifact: UUID = create_progress_artifact(0.0, description=label)
    by_future = {id(f): path for path, f in futures.items()}
    states: dict[str, State] = {}
    with tqdm(total=total, desc=label, unit="shard", disable=not progress, file=sys.stderr, leave=True) as bar:
        for fut in as_completed(list(futures.values())):
            fut.wait()
            states[by_future[id(fut)]] = fut.state
            bar.update(1)
            update_progress_artifact(artifact, 100.0 * len(states) / total)
    return states
