"""Serve the pipeline's deployments from this process (what `make up` runs).

- `full-pipeline/nightly`: cron 02:00 UTC by default, profile `auto` (`gpu` where CUDA is available, else
  `cpu-demo`), warm-started from the champion.
- `full-pipeline/demo`: the `cpu-demo` profile, no schedule.
- `data-stage/add-motions`: parameter `motions`; renders only shards that are new.

Runs flows in subprocesses of this one against the Prefect server in PREFECT_API_URL (the server
runs the scheduler; the ephemeral one does not). Motions added through T2V_MOTION_PLUGINS are
visible to every run. A run's `out`/`data` parameters must resolve inside --data (T2V_DATA_ROOT):
anyone who can create a flow run chooses its parameters, not which directories it may touch.

With --retrain-on-data (or T2V_RETRAIN_ON_DATA=1), a completed run of data-stage/add-motions also
starts the nightly right away (a Prefect deployment trigger; the server's automations run it).

Usage: python -m deployments.serve [--data DIR] [--cron "0 2 * * *"] [--timezone UTC] [--nproc-per-node N]
                                   [--retrain-on-data] [--nightly-params JSON] [--dry-run]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.schedules import Cron

from deployments.stack import REPO

NIGHTLY_CRON = "0 2 * * *"
RETRAIN_ENV = "T2V_RETRAIN_ON_DATA"  # set (to anything) to retrain when add-motions completes
NIGHTLY_PARAMS_ENV = "T2V_NIGHTLY_PARAMS"  # JSON object of full-pipeline parameters for the nightly


def retrain_trigger() -> Any:
    """Run the nightly's retrain as soon as a run of `data-stage/add-motions` completes."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name="retrain on new data", description="data-stage/add-motions completed: retrain on the grown dataset",
        expect={"prefect.flow-run.Completed"},
        match_related={"prefect.resource.role": "deployment", "prefect.resource.name": "add-motions"})


def build(data: Path, cron: str = NIGHTLY_CRON, timezone: str = "UTC", nproc_per_node: int = 1,
          retrain_on_data: bool = False, nightly_params: dict[str, Any] | None = None) -> list[Any]:
    """The three deployments, with their default parameters; `nightly_params` override the nightly's,
    `retrain_on_data` adds the trigger that runs it when add-motions completes."""
    from flows.data import data_stage
    from flows.pipeline import full_pipeline

    out = str(data)
    return [
        full_pipeline.to_deployment(
            "nightly", schedules=[Cron(cron, timezone=timezone)],
            triggers=[retrain_trigger()] if retrain_on_data else [],
            parameters={"out": out, "profile": "auto", "warm_start": True, "nproc_per_node": nproc_per_node,
                        **(nightly_params or {})},
            description="Nightly retrain on the current dataset (profile auto: gpu with CUDA, else cpu-demo), evaluate, "
                        "promote if better.",
            tags=["nightly"]),
        full_pipeline.to_deployment(
            "demo", parameters={"out": out, "profile": "cpu-demo"},
            description="The whole pipeline on the cpu-demo profile; no schedule.", tags=["demo"]),
        data_stage.to_deployment(
            "add-motions", parameters={"out": out, "motions": []},
            description="Grow the dataset at `out` with `motions`: renders only their shards.", tags=["data"]),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO / "data", help="dataset/output root the deployments use")
    ap.add_argument("--cron", default=NIGHTLY_CRON, help="nightly schedule (default 02:00)")
    ap.add_argument("--timezone", default="UTC", help="timezone of --cron (default UTC)")
    ap.add_argument("--nproc-per-node", type=int, default=1,
                    help="the nightly's training ranks on the serving machine (one per GPU; default 1)")
    ap.add_argument("--retrain-on-data", action="store_true", default=bool(os.environ.get(RETRAIN_ENV)),
                    help=f"also run the nightly as soon as data-stage/add-motions completes (or set ${RETRAIN_ENV}=1)")
    ap.add_argument("--nightly-params", metavar="JSON", default=os.environ.get(NIGHTLY_PARAMS_ENV, "{}"),
                    help=f"a JSON object of full-pipeline parameters overriding the nightly's (or ${NIGHTLY_PARAMS_ENV})")
    ap.add_argument("--dry-run", action="store_true", help="print the deployments and exit")
    a = ap.parse_args(argv)
    if a.nproc_per_node < 1:
        ap.error(f"--nproc-per-node must be at least 1, got {a.nproc_per_node}")
    try:
        nightly_params = json.loads(a.nightly_params)
    except ValueError as e:
        ap.error(f"--nightly-params must be a JSON object: {e}")
    if not isinstance(nightly_params, dict):
        ap.error(f"--nightly-params must be a JSON object, got {a.nightly_params!r}")
    from flows.pipeline import full_pipeline

    unknown = sorted(set(nightly_params) - set(inspect.signature(full_pipeline.fn).parameters))
    if unknown:
        ap.error(f"--nightly-params: unknown full-pipeline parameter(s) {', '.join(unknown)}; valid: "
                 f"{', '.join(inspect.signature(full_pipeline.fn).parameters)}")
    deployments = build(a.data.resolve(), a.cron, a.timezone, a.nproc_per_node, a.retrain_on_data, nightly_params)
    if a.dry_run:
        for d in deployments:
            print(json.dumps({"name": f"{d.flow_name}/{d.name}", "parameters": d.parameters,
                              "schedules": [str(s.schedule) for s in (d.schedules or [])],
                              "triggers": [t.name for t in (d.triggers or [])]}, default=str))
        return 0
    from t2v import dataset

    os.environ[dataset.ROOT_ENV] = str(a.data.resolve())  # every run of these deployments: out/data inside it
    serve(*deployments)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
