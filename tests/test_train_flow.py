"""The train-stage flow on a real Prefect server and a real MLflow store: a few CPU steps of each
model write a checkpoint, an MLflow run and a registered version; an identical rerun is a cache hit;
a longer rerun resumes the checkpoint and the MLflow run; bad input fails before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from t2v import dataset, models
from t2v.shards import DataParams
from registry import tracking
from t2v.config import check_train_request, config_for, model_code_version, run_dir

FAMILIES = models.names()  # every registered family: video, baseline, conv3d, rnn, transformer

# 2 motions x 2 colours x 2 shapes, 8 frames of 32x32: a dataset in about a second.
TINY_DATA = DataParams(motions=("moving up", "bouncing vertically"), colors=("red", "blue"),
                       shapes=("circle", "square"), clips_per_combo=2, val_per_combo=1, frames=8, size=32,
                       shard_size=8)
# A few seconds of CPU per step at most: small batch and discriminator, everything logged every step.
TINY_TRAIN: dict[str, Any] = dict(batch_size=4, width=8, log_every=1, sample_every=2, ckpt_every=2, num_workers=0,
                                  shuffle_buffer=8)
REGISTERED = "t2v-generator"


@pytest.fixture(scope="module")
def data_dir(tiny_dataset: Callable[..., Path]) -> Path:
    return tiny_dataset(**vars(TINY_DATA))


def run_flow(data: Path, **kw: Any) -> tuple[Any, dict[str, Any]]:
    from flows.train import train_stage

    kw.setdefault("overrides", TINY_TRAIN)
    state = train_stage(data=str(data), return_state=True, **kw)
    return state, state.result()


def task_states(flow_state: Any) -> list[str]:
    """Names of the final states of the flow run's task runs, read back from the Prefect API."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])))
    return [r.state.name for r in runs]


def artifacts_of(flow_state: Any) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_state.state_details.flow_run_id])))


def checkpoint_step(path: str | Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


@pytest.fixture(scope="module")
def trained(prefect_api: str, mlflow_store: str, data_dir: Path) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Two steps of each model through the flow, once for the module."""
    return {model: run_flow(data_dir, model=model, max_steps=2) for model in FAMILIES}


@pytest.mark.parametrize("model", FAMILIES)
def test_training_writes_checkpoint_mlflow_run_and_registered_version(
        trained: dict[str, tuple[Any, dict[str, Any]]], data_dir: Path, mlflow_store: str, model: str) -> None:
    state, r = trained[model]
    assert task_states(state) == ["Completed"]
    assert r["step"] == 2
    assert r["resumed_from"] is None
    assert r["cached"] is False
    cfg = config_for("cpu-demo", model=model, max_steps=2, **TINY_TRAIN)
    assert Path(r["checkpoint"]) == run_dir(data_dir, cfg, r["manifest_checksum"]) / "checkpoints" / "last.pt"
    assert checkpoint_step(r["checkpoint"]) == 2

    client = MlflowClient(mlflow_store)
    run = client.get_run(r["run_id"])
    assert run.info.status == "FINISHED"
    cfg = config_for("cpu-demo", model=model, max_steps=2, **TINY_TRAIN).to_dict()
    assert {k: run.data.params[k] for k in cfg} == tracking.flatten_params(cfg)
    assert run.data.params["data.frames"] == "8"
    assert run.data.params["data.size"] == "32"
    for key in ("loss_d", "loss_g", "clips_per_s"):
        assert [m.step for m in client.get_metric_history(r["run_id"], key)] == [1, 2], key
    assert client.get_metric_history(r["run_id"], "clips_per_s")[-1].value > 0
    tags = run.data.tags
    assert tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    assert tags["model"] == model
    assert tags["profile"] == "cpu-demo"
    assert tags["dataset.manifest_checksum"] == dataset.manifest_checksum(data_dir) == r["manifest_checksum"]
    assert tags["code_version"] == model_code_version(model)
    images = [a.path for a in client.list_artifacts(r["run_id"], "images")]
    assert any("samples+step+2+" in p and p.endswith(".png") for p in images), images

    version = client.get_model_version(REGISTERED, r["model_version"])
    assert version.run_id == r["run_id"]
    assert version.tags["step"] == "2"
    assert version.tags["model"] == model
    assert str(client.get_model_version_by_alias(REGISTERED, f"{model}-latest").version) == r["model_version"]
    assert r["model_uri"] == f"models:/{REGISTERED}/{r['model_version']}"
    assert mlflow.models.get_model_info(r["model_uri"]).signature.params.to_dict()[0]["default"] == 0

    arts = {a.type: a for a in artifacts_of(state)}
    assert arts["progress"].data == 100.0
    assert r["run_id"] in arts["markdown"].data
    assert r["model_uri"] in arts["markdown"].data


@pytest.mark.parametrize("model", FAMILIES)
def test_identical_rerun_is_a_cache_hit(trained: dict[str, tuple[Any, dict[str, Any]]], data_dir: Path,
                                        mlflow_store: str, model: str) -> None:
    first = trained[model][1]
    n_versions = len(MlflowClient(mlflow_store).search_model_versions(f"name='{REGISTERED}'"))
    state, r = run_flow(data_dir, model=model, max_steps=2)
    assert task_states(state) == ["Cached"]
    assert r["cached"] is True
    assert {k: r[k] for k in ("run_id", "model_version", "checkpoint", "step")} == \
        {k: first[k] for k in ("run_id", "model_version", "checkpoint", "step")}
    assert len(MlflowClient(mlflow_store).search_model_versions(f"name='{REGISTERED}'")) == n_versions


def test_force_runs_again_without_registering_a_duplicate(trained: dict[str, tuple[Any, dict[str, Any]]],
                                                          data_dir: Path, mlflow_store: str) -> None:
    first = trained["video"][1]
    state, r = run_flow(data_dir, model="video", max_steps=2, force=True)
    assert task_states(state) == ["Completed"]
    # the checkpoint is already at max_steps: nothing to train, same run, same registered version
    assert (r["run_id"], r["model_version"], r["step"], r["resumed_from"]) == \
        (first["run_id"], first["model_version"], 2, 2)


def test_longer_run_resumes_checkpoint_and_mlflow_run(prefect_api: str, mlflow_store: str, data_dir: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "resume"
    _, first = run_flow(data_dir, model="video", max_steps=2, out=str(out))
    state, second = run_flow(data_dir, model="video", max_steps=4, out=str(out))
    assert task_states(state) == ["Completed"]  # max_steps is in the cache key...
    assert second["resumed_from"] == 2
    assert second["step"] == 4  # ...but not in what a checkpoint must match
    assert checkpoint_step(out / "checkpoints" / "last.pt") == 4
    assert second["run_id"] == first["run_id"]

    client = MlflowClient(mlflow_store)
    assert [m.step for m in client.get_metric_history(first["run_id"], "loss_d")] == [1, 2, 3, 4]
    run = client.get_run(first["run_id"])
    assert run.data.params["max_steps"] == "2"
    assert run.data.tags["resumed.max_steps"] == "4"
    assert run.data.tags["resumed_from_step"] == "2"
    steps = sorted(v.tags["step"] for v in client.search_model_versions(f"name='{REGISTERED}' and "
                                                                         f"run_id='{first['run_id']}'"))
    assert steps == ["2", "4"]  # one registered version per finished training length
    assert second["model_version"] != first["model_version"]


def test_bad_input_fails_before_any_work(prefect_api: str, mlflow_store: str, data_dir: Path,
                                         tmp_path: Path) -> None:
    from flows.train import train_stage

    with pytest.raises(FileNotFoundError, match=r"manifest\.parquet.*t2v data"):
        check_train_request(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="valid models: video, baseline"):
        check_train_request(data_dir, model="gan")
    with pytest.raises(ValueError, match="valid profiles: cpu-demo, gpu"):
        check_train_request(data_dir, profile="laptop")
    with pytest.raises(ValueError, match=r"unknown config field\(s\) learning_rate; valid fields: .*lr_g"):
        check_train_request(data_dir, overrides={"learning_rate": 1})
    with pytest.raises(ValueError, match="set model with --model, not as an override"):
        check_train_request(data_dir, overrides={"model": "baseline"})

    n_runs = len(MlflowClient(mlflow_store).search_runs(
        [e.experiment_id for e in MlflowClient(mlflow_store).search_experiments()]))
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="valid models"):
        train_stage(data=str(data_dir), model="gan", out=str(out))
    assert not out.exists()
    n_after = len(MlflowClient(mlflow_store).search_runs(
        [e.experiment_id for e in MlflowClient(mlflow_store).search_experiments()]))
    assert n_after == n_runs


def test_checkpoint_of_another_config_is_refused_before_work(trained: dict[str, tuple[Any, dict[str, Any]]],
                                                             data_dir: Path) -> None:
    out = Path(trained["video"][1]["checkpoint"]).parents[1]
    with pytest.raises(ValueError, match="different config.*lr_g"):
        check_train_request(data_dir, max_steps=2, out=out, overrides={**TINY_TRAIN, "lr_g": 0.5})
    assert checkpoint_step(out / "checkpoints" / "last.pt") == 2


def test_cli_prints_run_version_and_uri(trained: dict[str, tuple[Any, dict[str, Any]]], data_dir: Path,
                                        prefect_api: str, mlflow_store: str, t2v_cli: Any) -> None:
    r = trained["baseline"][1]
    sets = [a for k, v in TINY_TRAIN.items() for a in ("--set", f"{k}={v}")]
    proc = t2v_cli("train", "--data", str(data_dir), "--model", "baseline", "--max-steps", "2", *sets,
                   "--no-progress", env={"PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": mlflow_store})
    assert proc.returncode == 0, proc.stderr
    assert "(cached)" in proc.stdout  # same dataset, config, code, out dir and store as the fixture's run
    assert f"MLflow run: {r['run_id']}" in proc.stdout
    assert f"registered: {REGISTERED} version {r['model_version']}" in proc.stdout
    assert f"model URI: {r['model_uri']}" in proc.stdout

    bad = t2v_cli("train", "--data", str(data_dir), "--set", "nope=1")
    assert bad.returncode == 2
    assert "unknown config field(s) nope" in bad.stderr


def test_a_version_leads_back_to_its_run_flow_run_dataset_and_code(
        trained: dict[str, tuple[Any, dict[str, Any]]], data_dir: Path, prefect_api: str, mlflow_store: str,
        t2v_cli: Any) -> None:
    import json

    state, r = trained["video"]
    flow_run_id = str(state.state_details.flow_run_id)
    client = MlflowClient(mlflow_store)
    run = client.get_run(r["run_id"])
    (di,) = run.inputs.dataset_inputs
    assert {t.key: t.value for t in di.tags} == {"mlflow.data.context": "training",
                                                 "manifest_checksum": r["manifest_checksum"]}
    assert di.dataset.digest == r["manifest_checksum"][:36]
    assert json.loads(di.dataset.source)["uri"] == str(data_dir / dataset.MANIFEST)
    manifest = dataset.load_manifest(data_dir)
    profile = json.loads(di.dataset.profile)
    assert profile["clips"]["train"] == int((manifest["split"] == "train").sum()) > 0
    assert profile["motions"] == sorted(TINY_DATA.motions)

    mv = client.get_model_version(REGISTERED, r["model_version"])
    assert mv.description.startswith("**video** generator, profile `cpu-demo`: 2 steps, seed 0")
    assert r["manifest_checksum"][:16] in mv.description and r["run_id"] in mv.description
    assert f"Prefect flow run: [{flow_run_id}](" in mv.description and mv.tags["prefect.flow_run_id"] == flow_run_id
    assert "models:/t2v-generator@champion" in client.get_registered_model(REGISTERED).description

    proc = t2v_cli("lineage", r["model_uri"], env={"PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": mlflow_store})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"{r['model_uri']} -> {REGISTERED} version {r['model_version']}" in out
    assert f"MLflow run:       {r['run_id']} (video-cpu-demo, FINISHED)" in out
    assert f"Prefect flow run: {flow_run_id} (train-stage/" in out
    assert f"manifest checksum {r['manifest_checksum']}" in out
    assert f"training: t2v-{r['manifest_checksum'][:12]} from {data_dir / dataset.MANIFEST}" in out
    assert f"code version:     {r['code_version']} (model video, profile cpu-demo, step 2, seed 0)" in out


def test_failed_attempt_is_retried_from_its_checkpoint_in_the_same_run(
        prefect_api: str, mlflow_store: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash in step 3 (after the step-2 checkpoint): Prefect's retry resumes at step 2, same MLflow run."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from t2v.models import video as video_family

    real_step = video_family.VideoStep.__call__
    calls = {"n": 0}

    def crash_once_at_step_3(self: Any, batch: dict[str, Any]) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash in step 3")
        return real_step(self, batch)

    monkeypatch.setattr(video_family.VideoStep, "__call__", crash_once_at_step_3)
    state, r = run_flow(data_dir, model="video", max_steps=4, out=str(tmp_path / "crash"))
    with get_client(sync_client=True) as client:
        (task_run,) = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert task_run.state.name == "Completed"
    assert task_run.run_count == 2
    assert r["resumed_from"] == 2
    assert r["step"] == 4
    client = MlflowClient(mlflow_store)
    assert client.get_run(r["run_id"]).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(r["run_id"], "loss_d")] == [1, 2, 3, 4]
    runs = client.search_runs([client.get_run(r["run_id"]).info.experiment_id],
                              filter_string=f"tags.out_dir = '{tmp_path / 'crash'}'")
    assert [x.info.run_id for x in runs] == [r["run_id"]]  # the failed attempt did not leave a second run


def test_cache_hit_whose_registered_version_is_gone_trains_again(prefect_api: str, mlflow_store: str,
                                                                 data_dir: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "stale")
    _, first = run_flow(data_dir, model="baseline", max_steps=2, out=out)
    MlflowClient(mlflow_store).delete_model_version(REGISTERED, first["model_version"])
    state, again = run_flow(data_dir, model="baseline", max_steps=2, out=out)
    assert sorted(task_states(state)) == ["Cached", "Completed"]  # the stale hit, then the refreshed run
    assert again["cached"] is False
    assert again["run_id"] == first["run_id"]
    assert int(again["model_version"]) > int(first["model_version"])
    assert MlflowClient(mlflow_store).get_model_version(REGISTERED, again["model_version"]).run_id == first["run_id"]


def test_same_request_into_two_run_dirs_exports_identical_weights(prefect_api: str, mlflow_store: str,
                                                                  data_dir: Path, tmp_path: Path) -> None:
    """The issue's reproduction: the same dataset, config and seed through the whole stage (Prefect,
    MLflow, system metrics threads and all) twice, into two run dirs."""
    overrides = {**TINY_TRAIN, "seed": 7, "select_every": 0}
    results = [run_flow(data_dir, model="video", max_steps=12, out=str(tmp_path / d), overrides=overrides)[1]
               for d in ("A", "B")]
    for name in ("generator.pt", "text_encoder.pt"):
        a, b = (Path(r["export_dir"]) / name for r in results)
        assert a.read_bytes() == b.read_bytes(), name


def test_run_records_what_reproduces_it_and_flags_a_time_cap(trained: dict[str, tuple[Any, dict[str, Any]]],
                                                              data_dir: Path, mlflow_store: str, tmp_path: Path) -> None:
    r = trained["video"][1]
    log = (Path(r["checkpoint"]).parent.parent / "train.log").read_text().splitlines()
    assert [line.split(":")[0] for line in log if "loss_d" in line] == ["step 1", "step 2"]  # metrics to a file
    tags = MlflowClient(mlflow_store).get_run(r["run_id"]).data.tags
    assert tags["reproducible"] == "true"
    assert tags["env.torch"] == torch.__version__.split("+")[0]
    assert tags["env.python"].count(".") == 2
    assert tags["env.cpu"].endswith(torch.backends.cpu.get_cpu_capability())
    assert tags["env.cpu_model"] == tracking.cpu_model() and tags["env.cpu_model"] != "unknown"
    assert tags["dataset.manifest_checksum"] == dataset.manifest_checksum(data_dir)
    _, capped = run_flow(data_dir, model="video", max_steps=2, out=str(tmp_path / "capped"),
                         overrides={**TINY_TRAIN, "max_seconds": 3600})
    tags = MlflowClient(mlflow_store).get_run(capped["run_id"]).data.tags
    assert tags["reproducible"] == "false"
    assert "max_seconds=3600" in tags["reproducible.why_not"]


def test_cpu_model_names_the_first_processor_and_falls_back_without_cpuinfo() -> None:
    info = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
            "flags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n")
    assert tracking.cpu_model(info) == "AuthenticAMD family 26 model 2: AMD EPYC"
    assert tracking.cpu_model("") not in ("", "AuthenticAMD family 26 model 2: AMD EPYC")
