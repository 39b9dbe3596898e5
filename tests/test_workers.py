"""The multi-machine path: `prefect.yaml`'s deployments registered with `prefect deploy --all` on a
process work pool of a real Prefect server, and a real `prefect worker start --pool t2v` process, in
another working directory, running `data-stage/add-motions` to completion."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PREFECT = str(Path(sys.executable).parent / "prefect")
SMALL = {"motions": ["moving up"], "colors": ["red"], "shapes": ["circle"], "clips_per_combo": 1,
         "val_per_combo": 1, "workers": 1}


def _prefect(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PREFECT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def worker_env(prefect_api: str, tmp_path: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "T2V_", "MLFLOW_"))}
    return {**keep, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def test_prefect_deploy_all_and_a_worker_run_add_motions(worker_env: dict[str, str], tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    project = tmp_path / "project"  # where `prefect deploy` runs: the runs' working directory
    project.mkdir()
    shutil.copy(REPO / "prefect.yaml", project)
    r = _prefect(["work-pool", "create", "t2v", "--type", "process"], worker_env, project)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _prefect(["--no-prompt", "deploy", "--all"], worker_env, project)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("full-pipeline/nightly", "full-pipeline/demo", "data-stage/add-motions"):
        assert f"Deployment '{name}' successfully created" in " ".join(r.stdout.split())

    away = tmp_path / "worker-cwd"  # the worker itself starts somewhere else
    away.mkdir()
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "t2v"], cwd=away, env=worker_env,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run = _prefect(["deployment", "run", "data-stage/add-motions", "--params", json.dumps(SMALL), "--watch",
                        "--watch-timeout", "200"], worker_env, away)
        outside = _prefect(["deployment", "run", "data-stage/add-motions", "--watch", "--watch-timeout", "200",
                            "--params", json.dumps({**SMALL, "out": str(tmp_path / "elsewhere")})], worker_env, away)
    finally:
        os.killpg(worker.pid, 9)
        worker.wait(timeout=30)
    log = (tmp_path / "worker.log").read_text()
    assert run.returncode == 0, run.stdout[-2000:] + log[-3000:]
    assert "Completed" in run.stdout
    from t2v import dataset

    assert [i.path for i in dataset.load_shards(project / "data")] == [
        "shards/train/moving-up-0000.tar.gz", "shards/val/moving-up-0000.tar.gz"]
    assert "outside the data root" in log  # T2V_DATA_ROOT from the work pool's job variables
    assert outside.returncode != 0
    assert not (tmp_path / "elsewhere").exists()

    import asyncio

    async def nightly() -> object:
        async with get_client() as client:
            (d,) = await client.read_deployments(deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=["nightly"])))
            return d

    d = asyncio.run(nightly())
    assert d.work_pool_name == "t2v"
    assert d.parameters == {"out": "data", "profile": "auto", "warm_start": True, "nproc_per_node": 1}
    assert [s.schedule.cron for s in d.schedules] == ["0 2 * * *"]
