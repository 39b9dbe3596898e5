"""MLflow plumbing shared by the stages: where the store is, which experiment, which run.

The store is `MLFLOW_TRACKING_URI` when set, else a SQLite file under the checkout's `data/`, so a
laptop run needs no server and never drops an `mlflow.db` into whatever directory it was started
from. Artifacts of a SQLite store live beside it (`mlartifacts/`); a tracking server decides its own.
A training writes `mlflow_run.json` into its output dir so that a retry or a resume of the same
training continues the same MLflow run instead of starting a second one.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import platform
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote, urlparse

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from t2v.config import DEFAULT_EXPERIMENT, RUN_RECORD, read_run_record
from t2v.io import atomic_write_bytes


CHECKPOINT_TAG = "checkpoint.step"  # set on a run each time its training writes a checkpoint
OWNER_TAG = "t2v.owner"  # host:pid:start-time of the process training the run
KILLED_TAG = "t2v.killed"  # why a later training marked this run KILLED
# A dead tracking server fails a call after ~30 s (4 retries, backoff 2, 4, 8, 16 s; 10 s per attempt)
# instead of MLflow's ~4 min per call; set any of them in the environment to override.
HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def repo_root() -> Path:
    """The directory holding the `tasks` package: the checkout when run from source."""
    return Path(__file__).resolve().parent.parent


def default_tracking_uri() -> str:
    """SQLite store under `<repo>/data/`, absolute so the working directory never matters."""
    return f"sqlite:///{repo_root() / 'data' / 'mlflow.db'}"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else the checkout's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def registry_uri(tracking: str) -> str:
    """`MLFLOW_REGISTRY_URI` when set, else the tracking store (one place to browse)."""
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///...` URI, None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def artifact_location(uri: str) -> str | None:
    """Artifact root for a new experiment: beside a SQLite store, else the server's choice.

    MLflow's own default for SQLite is `./mlruns` relative to the working directory, which scatters
    models across wherever a command happened to run.
    """
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / "mlartifacts").resolve().as_uri()


@dataclass(frozen=True)
class Tracking:
    """A resolved store and experiment; everything else is derived from it."""

    tracking_uri: str
    registry_uri: str
    experiment_id: str
    experiment_name: str

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)


def configure(experiment: str = DEFAULT_EXPERIMENT, uri: str | None = None) -> Tracking:
    """Point MLflow's fluent API at the store (`uri`, default `tracking_uri()`) and make sure the
    experiment exists.

    The fluent API (start_run, log_model) is process-global, which is why this lives in tasks/ and is
    called at the start of every task that logs, never at import.
    """
    uri = uri or tracking_uri()
    for key, value in HTTP_BOUNDS.items():
        os.environ.setdefault(key, value)
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    reg = registry_uri(uri)
    mlflow.set_tracking_uri(uri)  # also exported as MLFLOW_TRACKING_URI to child processes
    # The registry is left unpinned: MLflow then follows the tracking URI (or MLFLOW_REGISTRY_URI), and a
    # later configure() with another store cannot be shadowed by a registry pinned here before.
    client = MlflowClient(tracking_uri=uri, registry_uri=reg)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        exp_id = client.create_experiment(experiment, artifact_location=artifact_location(uri))
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return Tracking(uri, reg, exp_id, experiment)


def run_link(t: Tracking, run_id: str) -> str:
    """A URL to the run in the MLflow UI: the server's own page, or the `mlflow ui` default port."""
    parsed = urlparse(t.tracking_uri)
    base = t.tracking_uri.rstrip("/") if parsed.scheme in ("http", "https") else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{t.experiment_id}/runs/{run_id}"


def ui_command(t: Tracking) -> str:
    """How to open the UI on this store (nothing to start when it is already a server)."""
    if urlparse(t.tracking_uri).scheme in ("http", "https"):
        return f"open {t.tracking_uri}"
    return f"mlflow ui --backend-store-uri {quote(t.tracking_uri, safe=':/')}"


def system_metrics_available() -> bool:
    """MLflow's system-metrics monitor needs psutil; without it start_run(log_system_metrics=True) raises."""
    return importlib.util.find_spec("psutil") is not None


PINNED = ("t2v-pipeline", "torch", "numpy", "webdataset", "pillow", "mlflow", "prefect")  # what decides a run's numbers


def installed_version(dist: str) -> str | None:
    """The installed version of a distribution (local build tags such as +cpu dropped); None when absent."""
    try:
        return importlib.metadata.version(dist).split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model(cpuinfo: str | None = None) -> str:
    """The processor as vendor, family, model and name ("AuthenticAMD family 26 model 2: AMD EPYC"), read off
    /proc/cpuinfo (or `cpuinfo`, its text); where there is none, what the platform says, or "unknown"."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block: every core of a machine is the same model here
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "vendor_id" in fields:
        return (f"{fields['vendor_id']} family {fields.get('cpu family', '?')} model {fields.get('model', '?')}: "
                f"{fields.get('model name', '?')}")
    return platform.processor() or platform.machine() or "unknown"


def reproducibility_tags(max_seconds: float) -> dict[str, str]:
    """What a run needs beside its config and dataset checksum to be reproduced: the interpreter and
    package versions, the CPU kind, and whether a wall-clock cap made its length depend on the machine."""
    import torch  # here, not at module level: `t2v lineage` reads runs and needs no torch

    tags = {"env.python": platform.python_version(),
            **{f"env.{d}": installed_version(d) or "absent" for d in PINNED},
            # the kernels torch picks for this CPU: float sums, and so the trained weights, differ between its AVX2
            # and AVX-512 kernels (README, Reproducibility)
            "env.cpu": f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}",
            # and which processor: two CPUs with the same kernels can still train different models (an AVX-512 Xeon
            # and an AVX-512 AMD EPYC did: README, Reproducibility)
            "env.cpu_model": cpu_model()}
    tags["reproducible"] = "true" if max_seconds <= 0 else "false"
    if max_seconds > 0:
        tags["reproducible.why_not"] = (f"max_seconds={max_seconds:g}: the step count reached depends on the "
                                        f"machine's speed; set max_seconds=0 and a max_steps budget instead")
    return tags


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Config as MLflow params: nested dicts dotted, sequences as JSON, everything a string."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_params(v, f"{key}."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(list(v))
        else:
            out[key] = str(v)
    return out


def log_params_once(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> dict[str, str]:
    """Log params not yet on the run; a changed value (a resume with more steps) becomes a tag.

    MLflow params are immutable, so a resumed run keeps the value it started with and records the
    new one as `resumed.<param>`. Returns the params that changed.
    """
    logged = client.get_run(run_id).data.params
    new = {k: v for k, v in params.items() if k not in logged}
    changed = {k: v for k, v in params.items() if k in logged and logged[k] != v}
    if new:
        items = list(new.items())
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
            mlflow.log_params(dict(items[i:i + 100]), run_id=run_id)
    for k, v in changed.items():
        client.set_tag(run_id, f"resumed.{k}", v)
    return changed


def write_run_record(out_dir: Path, record: Mapping[str, str]) -> None:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(out_dir) / RUN_RECORD, json.dumps(dict(record), indent=2, sort_keys=True).encode())


def resumable_run_id(t: Tracking, out_dir: Path, training_key: str, has_checkpoint: bool) -> str | None:
    """The run to continue: recorded in `out_dir` for the same training, store and experiment, still
    alive, and in step with the checkpoint (a run that logged a checkpoint which is gone now would
    restart from step 0: that is a new training and gets a new run)."""
    rec = read_run_record(out_dir)
    if not rec or rec.get("training_key") != training_key or rec.get("tracking_uri") != t.tracking_uri:
        return None
    try:
        run = t.client().get_run(rec["run_id"])
    except MlflowException:
        return None  # the store was wiped or replaced: start a new run
    if run.info.lifecycle_stage != "active" or run.info.experiment_id != t.experiment_id:
        return None
    if not has_checkpoint and CHECKPOINT_TAG in run.data.tags:
        return None
    return run.info.run_id


class TrainingInProgressError(RuntimeError):
    """Another live process is training into the same run."""


def owner_id(pid: int | None = None) -> str:
    """This process (or `pid`) as `host:pid:start-time`: unique even when pids are reused."""
    import psutil

    proc = psutil.Process(pid)
    return f"{socket.gethostname()}:{proc.pid}:{proc.create_time():.2f}"


def owner_alive(owner: str) -> bool | None:
    """Whether the process named by `owner_id` still runs; None when it ran on another host."""
    import psutil

    try:
        host, pid, _started = owner.rsplit(":", 2)
        if host != socket.gethostname():
            return None
        return owner_id(int(pid)) == owner
    except (psutil.Error, ValueError):
        return False


def mark_orphans_killed(t: Tracking) -> list[str]:
    """Runs of the experiment left RUNNING by a training process of this host that is gone (SIGKILL,
    power loss) are set KILLED, so the UI stops showing them as live; returns their ids."""
    client = t.client()
    killed = []
    for run in client.search_runs([t.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                  max_results=1000):
        owner = run.data.tags.get(OWNER_TAG)
        if owner and owner_alive(owner) is False:
            client.set_tag(run.info.run_id, KILLED_TAG,
                           f"process {owner} is gone; last checkpoint at step {run.data.tags.get(CHECKPOINT_TAG, 'none')}")
            client.set_terminated(run.info.run_id, status="KILLED")
            killed.append(run.info.run_id)
    return killed


def claim_run(t: Tracking, run_id: str | None) -> None:
    """Refuse to continue a run that a live process other than this one is still training."""
    if run_id is None:
        return
    run = t.client().get_run(run_id)
    owner = run.data.tags.get(OWNER_TAG)
    if run.info.status == "RUNNING" and owner and owner != owner_id() and owner_alive(owner) is not False:
        raise TrainingInProgressError(f"MLflow run {run_id} is being trained by process {owner}; wait for it to "
                                      f"finish or stop it, then rerun")


class TrackingUnreachableError(RuntimeError):
    """The tracking server stopped answering; what was trained is in the checkpoint."""


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is MLflow giving up on a server that does not answer."""
    while exc is not None:
        if isinstance(exc, MlflowException) and "API request to" in str(exc) and "failed with" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class RunHooks:
    """What a training reports to its MLflow run: metrics (also appended to `<run dir>/train.log`),
    sample grids and checkpoint steps. The task's logger adds Prefect's progress on top; a torchrun
    rank 0, which has no Prefect context, uses this alone."""

    def __init__(self, client: MlflowClient, run_id: str, log_file: Path,
                 reached: dict[str, int | None] | None = None) -> None:
        self.client, self.run_id, self.log_file = client, run_id, log_file
        self.reached = reached if reached is not None else {"step": None, "checkpoint": None}

    def on_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.reached["step"] = step
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, run_id=self.run_id)
        with open(self.log_file, "a") as f:
            f.write(f"step {step}: {', '.join(f'{k} {v:.4g}' for k, v in metrics.items())}\n")

    def on_sample(self, step: int, grid: Any) -> None:
        import numpy as np

        self.client.log_image(self.run_id, np.ascontiguousarray(grid, dtype=np.uint8), key="samples", step=step,
                              synchronous=True)

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.reached["checkpoint"] = step
        self.client.set_tag(self.run_id, CHECKPOINT_TAG, str(step))


DATASET_CONTEXT_TAG = "mlflow.data.context"  # what MLflow's UI shows as a dataset input's role


def _manifest_dataset(manifest: str, checksum: str, profile: Mapping[str, Any], part: str | None) -> Any:
    """A t2v dataset as an MLflow dataset: source = its manifest, digest = the manifest checksum
    (MLflow keeps 36 characters of it), profile = clips per split and the motions."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    class ManifestDataset(MetaDataset):
        @property
        def profile(self) -> Mapping[str, Any]:
            return profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(dict(profile))}

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": MLflow registers the local source twice
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(manifest)
    return ManifestDataset(source, name=f"t2v-{checksum[:12]}" + (f"-{part}" if part else ""), digest=checksum[:36])


def log_dataset(client: MlflowClient, run_id: str, manifest: str, checksum: str, profile: Mapping[str, Any],
                context: str, part: str | None = None) -> None:
    """Log the dataset at `manifest` (or the `part` of it used, e.g. "heldout") as an input of the run,
    in `context` ("training", "evaluation"), so the run page shows what it used; the full checksum is
    an input tag. Logging it again is a no-op."""
    from mlflow.entities import DatasetInput, InputTag

    ds = _manifest_dataset(manifest, checksum, profile, part)
    client.log_inputs(run_id, datasets=[DatasetInput(dataset=ds._to_mlflow_entity(), tags=[
        InputTag(DATASET_CONTEXT_TAG, context), InputTag("manifest_checksum", checksum)])])
