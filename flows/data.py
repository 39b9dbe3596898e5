"""The `data-stage` flow: validate, render shards in parallel processes (cached), verify, publish."""

from __future__ import annotations

import os
from typing import Any

from prefect import flow

from t2v import dataset
from t2v.io import exclusive_lock
from t2v.shards import DataParams, plan
from tasks.console import say
from tasks.data import publish_task, render_inputs, render_task, task_runner, verify_shards, wait_with_progress

_D = DataParams()  # defaults live in one place: DataParams


@flow(name="data-stage", log_prints=True)
def data_stage(
    out: str = "data",
    motions: list[str] | None = None,
    shapes: list[str] | None = None,
    colors: list[str] | None = None,
    clips_per_combo: int = _D.clips_per_combo,
    val_per_combo: int = _D.val_per_combo,
    frames: int = _D.frames,
    size: int = _D.size,
    seed: int = _D.seed,
    shard_size: int = _D.shard_size,
    workers: int = 2,
    force: bool = False,
    progress: bool = False,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Build (or grow) the dataset at `out`: one cached render task per (motion, shard) across
    `workers` processes (or the workers of the Dask cluster at `dask_address`, e.g. tcp://HOST:8786,
    which must see `out` at the same path), verification of every shard (stale cache hits
    re-rendered), then the manifest. One run writes a dataset at a time (`<out>/.t2v-data.lock`: a
    second fails naming the holder; a dead holder's lock is taken over).

    Returns {root, manifest, counts, checksum, rendered, cached, kept_motions}; `rendered`/`cached`
    list shard paths by what their task runs did.
    """
    dataset.confine(os.environ.get(dataset.ROOT_ENV), out=out)
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    request = DataParams(
        colors=tuple(colors) if colors is not None else _D.colors,
        shapes=tuple(shapes) if shapes is not None else _D.shapes,
        motions=tuple(motions or ()), clips_per_combo=clips_per_combo, val_per_combo=val_per_combo,
        frames=frames, size=size, seed=seed, shard_size=shard_size,
    )
    req = dataset.validate_request(request, out, force=force)
    if dask_address:
        dataset.check_dask_address(dask_address)
    root = dataset.claim(req.root)
    with exclusive_lock(root / dataset.LOCK, f"dataset {root}") as stale:  # one writer per dataset
        if stale:
            say(f"took over the lock of a run that did not finish (pid {stale.get('pid')} on {stale.get('host')}, "
                f"since {stale.get('since')})")
        req = dataset.validate_request(request, out, force=force)  # again: another run may have published meanwhile
        specs = plan(req.params)
        if req.kept:
            say(f"keeping motions already in {root}: {', '.join(req.kept)}")

        with task_runner(workers, dask_address) as runner:
            render = render_task(root)
            futures = {s.path: runner.submit(render, render_inputs(root, s)) for s in specs}
            states = wait_with_progress(futures, f"render {len(specs)} shards", progress)
            failed = {p: s for p, s in states.items() if not s.is_completed()}
            if failed:
                raise RuntimeError(f"{len(failed)} of {len(specs)} shards failed to render: "
                                   + "; ".join(f"{p}: {s.message or s.name}" for p, s in sorted(failed.items())))
            infos = {p: states[p].result() for p in futures}
            cached = {p for p, s in states.items() if s.name == "Cached"}

            bad = verify_shards(str(root), infos)
            if bad:  # a cache hit whose file went missing or changed: render it again
                say(f"re-rendering {len(bad)} shard(s) that failed verification: {', '.join(sorted(bad))}")
                refresh = render_task(root, refresh=True)
                by_path = {s.path: s for s in specs}
                redo = {p: runner.submit(refresh, render_inputs(root, by_path[p])) for p in bad}
                redone = wait_with_progress(redo, f"re-render {len(redo)} shards", progress)
                failed = {p: s for p, s in redone.items() if not s.is_completed()}
                if failed:
                    raise RuntimeError(f"{len(failed)} shards failed to re-render: {', '.join(sorted(failed))}")
                infos.update({p: s.result() for p, s in redone.items()})
                cached -= set(bad)
                still = verify_shards(str(root), {p: infos[p] for p in bad})
                if still:
                    raise RuntimeError(f"shards still fail verification after re-rendering: {still}")

        published = publish_task(root)(str(root), _params_dict(req.params), [infos[s.path] for s in specs])
        summary = {
            "root": str(root),
            "manifest": published["manifest"],
            "counts": published["counts"],
            "clips": sum(sum(c.values()) for c in published["counts"].values()),
            "checksum": published["checksum"],
            "rendered": sorted(set(infos) - cached),
            "cached": sorted(cached),
            "kept_motions": list(req.kept),
        }
    where = f" on the Dask cluster at {dask_address}" if dask_address else ""
    say(f"data-stage: {summary['clips']} clips in {len(specs)} shards at {root}{where} "
        f"({len(summary['rendered'])} rendered, {len(summary['cached'])} cached)")
    return summary


def _params_dict(p: DataParams) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(p).items()}


if __name__ == "__main__":
    data_stage()
