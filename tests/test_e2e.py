"""End to end, with real processes: a Prefect server, an MLflow server and the deployments being
served, driven by `prefect deployment run ... --watch` exactly as an operator would."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from deployments.stack import SERVICES, StackConfig, _running, down, free_port, up

PLUGIN = '''
from t2v.vocab import register_motion
from t2v.motions import _straight

@register_motion("drifting left")
def drifting_left(rng, p):
    return _straight(rng, p, -1, 0)
'''
DATA_PARAMS = {"clips_per_combo": 2, "val_per_combo": 1, "frames": 8, "size": 32, "workers": 2}
PIPELINE_PARAMS = {**DATA_PARAMS, "motions": ["moving up", "moving right"], "max_steps": 2,
                   "train_overrides": {"batch_size": 4, "num_workers": 0}, "eval_samples": 1}
NIGHTLY_PARAMS = {**PIPELINE_PARAMS, "motions": ["moving up", "moving right", "drifting left"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    tmp = tmp_path_factory.mktemp("e2e")
    (tmp / "plugins").mkdir()
    (tmp / "plugins" / "e2e_motion.py").write_text(PLUGIN)
    mp = pytest.MonkeyPatch()
    mp.setenv("T2V_MOTION_PLUGINS", "e2e_motion")  # a motion the test registers: the served runs see it
    mp.setenv("PYTHONPATH", os.pathsep.join([str(tmp / "plugins"), str(Path(__file__).resolve().parents[1])]))
    mp.setenv("T2V_STACK_NO_UI", "1")
    mp.setenv("T2V_NIGHTLY_PARAMS", json.dumps(NIGHTLY_PARAMS))  # what the triggered retrain runs with
    cfg = StackConfig(state=tmp / "state", data=tmp / "data", prefect_port=free_port(), mlflow_port=free_port(),
                      retrain_on_data=True)
    try:
        up(cfg)
        yield cfg
    finally:
        down(cfg)
        mp.undo()
        from t2v import vocab

        vocab._REGISTRY.pop("drifting left", None)


def deployment_run(cfg: StackConfig, name: str, params: dict[str, Any], timeout: float = 600) -> str:
    """`prefect deployment run NAME --watch`; returns the flow run id."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "deployment", "run", name, "--watch",
         "--params", json.dumps(params), "--watch-timeout", str(int(timeout))],
        env=cfg.env(), capture_output=True, text=True, timeout=timeout + 30)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{name} failed:\n{out[-4000:]}\n--- serve log ---\n" + \
        (cfg.state / "serve.log").read_text()[-6000:]
    assert "Completed" in out, out[-2000:]
    return next(line.split()[-1] for line in out.splitlines() if "UUID:" in line)


def task_states(cfg: StackConfig, flow_run_id: str) -> list[tuple[str, str]]:
    """(task run name, state name) of a flow run and all its subflows, from the Prefect API."""

    async def read() -> list[tuple[str, str]]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterFlowRunId

        async with get_client() as client:
            ids = {flow_run_id}
            frontier = [flow_run_id]
            while frontier:  # subflow runs hang off task runs of their parent
                tasks = await client.read_task_runs(task_run_filter=TaskRunFilter(
                    flow_run_id=TaskRunFilterFlowRunId(any_=frontier)))
                subs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    parent_task_run_id={"any_": [t.id for t in tasks]})) if tasks else []
                frontier = [str(s.id) for s in subs if str(s.id) not in ids]
                ids |= set(frontier)
            runs = await client.read_task_runs(task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=list(ids))))
            return [(t.name, t.state.name) for t in runs]

    return against(cfg, read)


def wait_for_flow_run(cfg: StackConfig, deployment: str, timeout: float = 420) -> Any:
    """The first flow run of the served deployment named `deployment`, once it is in a final state."""

    async def read() -> Any:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

        async with get_client() as client:
            runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=[deployment])))
            return runs[0] if runs else None

    deadline = time.monotonic() + timeout
    while True:
        run = against(cfg, read)
        if run is not None and run.state is not None and run.state.is_final():
            return run
        assert time.monotonic() < deadline, f"no finished {deployment} run after {timeout:.0f}s: {run and run.state}"
        time.sleep(2)


def against(cfg: StackConfig, read: Any) -> Any:
    """Run an API read against this stack's server, whatever server other fixtures have configured."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: cfg.prefect_api_url,
                                     PREFECT_API_AUTH_STRING: cfg.env().get("PREFECT_API_AUTH_STRING")}):
        return asyncio.run(read())


def artifact_keys(cfg: StackConfig) -> set[str]:
    async def read() -> set[str]:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return {a.key for a in await client.read_artifacts() if a.key}

    return against(cfg, read)


def test_up_returns_with_every_deployment_ready_and_no_idle_job_consumers(stack: StackConfig) -> None:
    import psutil

    from deployments import stack as stack_mod

    async def read() -> dict[str, str]:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return {n: str((await client.read_deployment_by_name(n)).status.value) for n in stack_mod.SERVED}

    assert against(stack, read) == {n: "READY" for n in stack_mod.SERVED}  # what the UI shows as Ready
    server = psutil.Process(stack_mod._running(stack, "mlflow"))
    family = [" ".join(p.cmdline()) for p in server.children(recursive=True)]
    assert not [c for c in family if "huey" in c or "mlflow.server.jobs" in c], family


def test_full_pipeline_demo_deployment_end_to_end(stack: StackConfig) -> None:
    import mlflow

    first = deployment_run(stack, "full-pipeline/demo", PIPELINE_PARAMS)
    root = stack.data
    assert (root / "manifest.parquet").is_file()
    assert (root / "shards.parquet").is_file()
    assert sorted(p.name for p in (root / "shards" / "train").glob("*.tar.gz")) == \
        ["moving-right-0000.tar.gz", "moving-up-0000.tar.gz"]
    client = mlflow.MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)
    champion = client.get_model_version_by_alias("t2v-generator", "champion")
    assert champion.version == "1"
    states = task_states(stack, first)
    assert any(n.startswith("render") and s == "Completed" for n, s in states), states
    keys = artifact_keys(stack)
    assert {"data-stage-clips", "train-video"} <= keys, keys
    assert any(k.startswith("eval") for k in keys), keys

    # nothing changed: data and training are cache hits
    second = deployment_run(stack, "full-pipeline/demo", PIPELINE_PARAMS)
    states = task_states(stack, second)
    renders = [s for n, s in states if n.startswith("render")]
    trains = [s for n, s in states if n.startswith("train ")]  # the task, not the train-stage subflow
    assert renders, states
    assert set(renders) == {"Cached"}, states
    assert trains, states
    assert set(trains) == {"Cached"}, states
    assert client.get_model_version_by_alias("t2v-generator", "champion").version == "1"

    # a data-only rerun with the motion this test registered renders only its shards
    third = deployment_run(stack, "data-stage/add-motions", {**DATA_PARAMS, "motions": ["drifting left"]})
    states = task_states(stack, third)
    rendered = sorted(n for n, s in states if n.startswith("render") and s == "Completed")
    cached = sorted(n for n, s in states if n.startswith("render") and s == "Cached")
    assert rendered, states
    assert all("drifting-left" in n for n in rendered), states
    assert cached, states
    assert not any("drifting-left" in n for n in cached), states
    import pyarrow.parquet as pq

    motions = set(pq.read_table(root / "manifest.parquet").column("motion").to_pylist())
    assert motions == {"moving up", "moving right", "drifting left"}

    # the retrain trigger: add-motions completing started the nightly on the grown dataset
    from t2v import dataset

    nightly = wait_for_flow_run(stack, "nightly")
    assert nightly.state.name == "Completed", nightly.state
    checksum = dataset.manifest_checksum(root)
    grown = [v for v in client.search_model_versions("name='t2v-generator'")
             if client.get_run(v.run_id).data.tags["dataset.manifest_checksum"] == checksum]
    assert [v.version for v in grown] == ["2"]
    assert client.get_run(grown[0].run_id).data.tags["prefect.flow_run_id"] != ""


def test_the_asset_graph_reads_dataset_model_evaluation(stack: StackConfig) -> None:
    """What the runs above materialized, read back from the Prefect API's events: the dataset (each
    publish), each new version of the model from the dataset (the second demo run's training was a
    cache hit) and the evaluations from the model."""
    from tasks import assets

    dataset_key = assets.dataset_asset(stack.data).key
    model_key = assets.model_asset(stack.mlflow_url, "t2v-generator").key
    eval_key = assets.evaluation_asset(stack.mlflow_url, "t2v-generator").key
    auth = basic(stack.env()["PREFECT_API_AUTH_STRING"])
    body = json.dumps({"filter": {"event": {"prefix": ["prefect.asset.materialization.succeeded"]}},
                       "limit": 50}).encode()
    deadline = time.monotonic() + 60
    while True:  # events are persisted a few seconds after they are emitted
        status, _, raw = request(f"{stack.prefect_api_url}/events/filter", "POST",
                                 {"Content-Type": "application/json", **auth}, body)
        assert status == 200, raw[:500]
        events = json.loads(raw)["events"]
        made = [e["resource"]["prefect.resource.id"] for e in events]
        if (made.count(model_key) >= 2 and made.count(dataset_key) >= 4 and eval_key in made) \
                or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert {dataset_key, model_key, eval_key} <= set(made), made
    by_key: dict[str, list[dict]] = {}
    for e in events:
        by_key.setdefault(e["resource"]["prefect.resource.id"], []).append(e)

    def upstream(e: dict) -> set[str]:
        return {r["prefect.resource.id"] for r in e["related"] if r.get("prefect.resource.role") == "asset"}

    assert all(upstream(e) == set() for e in by_key[dataset_key]), [upstream(e) for e in by_key[dataset_key]]
    assert all(upstream(e) == {dataset_key} for e in by_key[model_key]), [upstream(e) for e in by_key[model_key]]
    # an evaluation that follows another in the same flow run (the champion's, then the challenger's)
    # also lists the evaluations asset upstream: Prefect carries a flow run's earlier materializations on
    assert all(model_key in upstream(e) and upstream(e) <= {model_key, eval_key} for e in by_key[eval_key]), \
        [upstream(e) for e in by_key[eval_key]]
    assert any(upstream(e) == {model_key} for e in by_key[eval_key])
    assert sorted(e["payload"]["version"] for e in by_key[model_key]) == ["1", "2"]  # the demo's, the retrain's
    assert all(len(e["payload"]["manifest_checksum"]) == 64 for e in by_key[model_key])
    assert all(0.0 <= e["payload"]["judge_heldout_all3"] <= 1.0 for e in by_key[eval_key])
    assert len(by_key[dataset_key]) == 4  # every publish: two demo runs, add-motions, the retrain


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request (Host and Origin headers as a hostile page would send them)."""
    import http.client
    from urllib.parse import urlparse

    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, (u.path or "/") + (f"?{u.query}" if u.query else ""), body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def basic(auth: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


def test_prefect_api_refuses_other_origins_hosts_and_anonymous_callers(stack: StackConfig) -> None:
    api = stack.prefect_api_url
    auth = stack.env()["PREFECT_API_AUTH_STRING"]
    secret = stack.state / "prefect-auth"
    assert secret.stat().st_mode & 0o077 == 0  # readable by the user only
    status, headers, _ = request(f"{api}/deployments/filter", "OPTIONS", {
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert "access-control-allow-origin" not in headers, (status, headers)
    own = f"http://{stack.host}:{stack.prefect_port}"
    _, headers, _ = request(f"{api}/deployments/filter", "OPTIONS", {
        "Origin": own, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert headers.get("access-control-allow-origin") == own  # the server's own UI still works
    status, _, _ = request(f"{api}/health", headers={"Host": "evil.example"})
    assert status == 400
    status, _, _ = request(f"{api}/deployments/filter", "POST", {"Content-Type": "application/json"}, b"{}")
    assert status == 401
    status, _, _ = request(f"{api}/deployments/filter", "POST", {"Content-Type": "application/json", **basic(auth)},
                           b"{}")
    assert status == 200


def test_mlflow_refuses_other_origins_and_hosts(stack: StackConfig) -> None:
    search = f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert request(search)[0] == 200
    status, _, _ = request(search, headers={"Host": "evil.example"})
    assert status == 403
    _, headers, _ = request(f"{stack.mlflow_url}/api/2.0/mlflow/experiments/create", "OPTIONS", {
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert headers.get("access-control-allow-origin") in (None, "")
    status, _, _ = request(f"{stack.mlflow_url}/api/2.0/mlflow/experiments/create", "POST", {
        "Origin": "http://evil.example", "Content-Type": "application/json"}, b'{"name": "planted"}')
    assert status == 403


def test_served_deployments_refuse_paths_outside_the_data_root(stack: StackConfig, tmp_path: Path) -> None:
    victim = tmp_path / "elsewhere"
    (victim / "shards" / "train").mkdir(parents=True)
    keep = victim / "shards" / "train" / "mine.tar.gz"
    keep.write_text("not the pipeline's")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "deployment", "run", "data-stage/add-motions", "--watch",
         "--params", json.dumps({**DATA_PARAMS, "out": str(victim), "motions": ["moving up"]}),
         "--watch-timeout", "300"], env=stack.env(), capture_output=True, text=True, timeout=330)
    assert proc.returncode != 0
    flow_run = next(line.split()[-1] for line in (proc.stdout + proc.stderr).splitlines() if "UUID:" in line)

    async def read() -> Any:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return await client.read_flow_run(flow_run)

    run = against(stack, read)
    assert run.state.name == "Failed"
    assert f"parameter out={str(victim)!r}" in run.state.message
    assert str(stack.data) in run.state.message
    assert sorted(p.relative_to(victim).as_posix() for p in victim.rglob("*")) == \
        ["shards", "shards/train", "shards/train/mine.tar.gz"]


def test_stack_stops_cleanly(stack: StackConfig) -> None:
    pids = {name: _running(stack, name) for name in SERVICES}
    assert all(pids.values()), pids
    assert sorted(down(stack)) == sorted(SERVICES)
    time.sleep(0.5)
    for name, pid in pids.items():
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # the whole process group is gone: no server or flow run left behind
