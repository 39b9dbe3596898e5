"""Serve the pipeline's deployments from this process (what `make up` runs).

- `full-pipeline/nightly`: cron 02:00 UTC by default, `gpu` profile, warm-started from the champion.
- `full-pipeline/demo`: the `cpu-demo` profile, no schedule.
- `data-stage/add-motions`: parameter `motions`; renders only shards that are new.

Runs flows in subprocesses of this one against the Prefect server in PREFECT_API_URL (the server
runs the scheduler; the ephemeral one does not). Motions added through T2V_MOTION_PLUGINS are
visible to every run. A run's `out`/`data` parameters must resolve inside --data (T2V_DATA_ROOT):
anyone who can create a flow run chooses its parameters, not which directories it may touch.

Usage: python -m deployments.serve [--data DIR] [--cron "0 2 * * *"] [--timezone UTC] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.schedules import Cron

from deployments.stack import REPO

NIGHTLY_CRON = "0 2 * * *"


def build(data: Path, cron: str = NIGHTLY_CRON, timezone: str = "UTC", nproc_per_node: int = 1) -> list[Any]:
    """The three deployments, with their default parameters."""
    from flows.data import data_stage
    from flows.pipeline import full_pipeline

    out = str(data)
    return [
        full_pipeline.to_deployment(
            "nightly", schedules=[Cron(cron, timezone=timezone)],
            parameters={"out": out, "profile": "gpu", "warm_start": True, "nproc_per_node": nproc_per_node},
            description="Nightly retrain on the current dataset (gpu profile), evaluate, promote if better.",
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
    ap.add_argument("--dry-run", action="store_true", help="print the deployments and exit")
    a = ap.parse_args(argv)
    if a.nproc_per_node < 1:
        ap.error(f"--nproc-per-node must be at least 1, got {a.nproc_per_node}")
    deployments = build(a.data.resolve(), a.cron, a.timezone, a.nproc_per_node)
    if a.dry_run:
        for d in deployments:
            print(json.dumps({"name": f"{d.flow_name}/{d.name}", "parameters": d.parameters,
                              "schedules": [str(s.schedule) for s in (d.schedules or [])]}, default=str))
        return 0
    from t2v import dataset

    os.environ[dataset.ROOT_ENV] = str(a.data.resolve())  # every run of these deployments: out/data inside it
    serve(*deployments)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
