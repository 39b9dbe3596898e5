"""The `full-pipeline` flow: data stage -> train -> evaluate (and promote), passing paths and ids.

Every stage is cached: with nothing changed a rerun renders no shard (per-shard cache), trains
nothing (keyed by the manifest checksum, the training config and the model code) and evaluates
only when asked or when the model is new. `force_*` parameters re-run one stage; a failed run can
be retried (`prefect flow-run retry <id>`) and continues where it stopped: finished shards stay
cached, training resumes from its last checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow

from t2v import dataset

from flows.data import data_stage
from flows.evaluate import eval_stage
from flows.train import train_stage
from t2v.shards import DataParams
from tasks.console import say
from tasks.train import champion_export

_D = DataParams()


@flow(name="full-pipeline", log_prints=True)
def full_pipeline(
    out: str = "data",
    motions: list[str] | None = None,
    clips_per_combo: int = _D.clips_per_combo,
    val_per_combo: int = _D.val_per_combo,
    frames: int = _D.frames,
    size: int = _D.size,
    seed: int = _D.seed,
    workers: int = 2,
    dask_address: str | None = None,
    model: str = "video",
    profile: str = "auto",
    max_steps: int | None = None,
    train_overrides: dict[str, Any] | None = None,
    warm_start: bool = False,
    eval_samples: int = 4,
    force_data: bool = False,
    force_train: bool = False,
    force_eval: bool = False,
    progress: bool = False,
    nproc_per_node: int = 1,
) -> dict[str, Any]:
    """Build or grow the dataset at `out` (on the Dask cluster at `dask_address`, if given), train
    `model` with `profile` on it (`auto`: gpu where CUDA is available, else cpu-demo; from the champion's weights with `warm_start`; a grown vocabulary
    keeps its old rows), evaluate the new version against the champion and promote it if it is
    better; `nproc_per_node` > 1 trains with that many torchrun ranks on this machine. Returns each
    stage's summary."""
    dataset.confine(os.environ.get(dataset.ROOT_ENV), out=out)
    data = data_stage(out=out, motions=motions, clips_per_combo=clips_per_combo, val_per_combo=val_per_combo,
                      frames=frames, size=size, seed=seed, workers=workers, force=force_data, progress=progress,
                      dask_address=dask_address)
    overrides = dict(train_overrides or {})
    if warm_start and "init_from" not in overrides:
        init = champion_export(data["root"])
        if init:
            overrides["init_from"] = init
    trained = train_stage(data=data["root"], model=model, profile=profile, max_steps=max_steps,
                          overrides=overrides, force=force_train, progress=progress,
                          nproc_per_node=nproc_per_node)  # out: t2v.config.run_dir
    evaluated = eval_stage(model=trained["model_uri"], data=data["root"], samples=eval_samples, force=force_eval,
                           progress=progress)
    say(f"full-pipeline: {data['clips']} clips ({len(data['rendered'])} shards rendered), "
        f"{trained['model_uri']} (step {trained['step']}{', cached' if trained['cached'] else ''}), "
        f"champion: version {evaluated.get('champion_version')}")
    return {"data": data, "train": trained, "evaluate": evaluated}


if __name__ == "__main__":
    full_pipeline()
