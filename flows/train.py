"""The `train-stage` flow: validate, then one cached training task on an existing dataset dir."""

from __future__ import annotations

import os
from typing import Any

from prefect import flow

from t2v import dataset

from t2v.config import AUTO_PROFILE, DEFAULT_EXPERIMENT, check_launch, check_train_request
from tasks.console import say
from tasks.train import cached_result_usable, train_inputs, train_task


@flow(name="train-stage", log_prints=True)
def train_stage(
    data: str = "data",
    model: str = "video",
    profile: str = "cpu-demo",
    max_steps: int | None = None,
    out: str | None = None,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    experiment: str = DEFAULT_EXPERIMENT,
    progress: bool = False,
    nproc_per_node: int = 1,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
) -> dict[str, Any]:
    """Train `model` with `profile` (plus `max_steps` and `overrides`, any TrainConfig field) on the
    dataset at `data`, into `out` (default `t2v.config.run_dir`: `<data>/runs/<model>-<profile>-<manifest>-<key>`).

    `nproc_per_node` > 1 trains data-parallel with that many torchrun ranks here (gloo on CPU, NCCL
    on CUDA); with `nnodes` > 1 this is node 0 of a static rendezvous at `rdzv_endpoint` (HOST:PORT of
    this machine), and every other node runs `t2v train ... --nnodes M --node-rank K --rdzv-endpoint`.

    Cached on (manifest checksum, config, model code, out dir, MLflow store): a rerun with nothing
    changed is a cache hit; `force` trains again (resuming whatever checkpoint `out` holds). Returns
    the task's summary (run id, registered version, model URI, checkpoint, step, metrics) plus
    `cached`.
    """
    dataset.confine(os.environ.get(dataset.ROOT_ENV), data=data, out=out)
    world_size = check_launch(nproc_per_node, nnodes, 0, rdzv_endpoint)
    req = check_train_request(data, model, profile, max_steps, out, overrides, experiment, world_size)
    if profile == AUTO_PROFILE:
        say(f"profile auto: {req.config.profile} ({'CUDA is available' if req.config.profile == 'gpu' else 'no CUDA here'})")
    launch = {"nproc_per_node": nproc_per_node, "nnodes": nnodes, "rdzv_endpoint": rdzv_endpoint}
    inputs = train_inputs(req, progress=progress, launch=launch)
    state = train_task(req.out_dir, inputs, refresh=force)(**inputs, return_state=True)
    result = state.result()
    cached = state.name == "Cached"
    if cached and not cached_result_usable(result):  # its checkpoint or registered version was removed
        say("cached training result is stale (checkpoint or registered version gone): training again")
        result = train_task(req.out_dir, inputs, refresh=True)(**inputs)
        cached = False
    say(f"train-stage: {result['model']} ({result['profile']}) step {result['step']}, MLflow run "
        f"{result['run_id']}, {result['model_uri']}{' (cached)' if cached else ''}")
    return {**result, "cached": cached}


if __name__ == "__main__":
    train_stage()
