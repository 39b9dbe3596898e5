"""Champion promotion against a real SQLite MLflow store and a real Prefect server: the first model
evaluated becomes champion, a better one takes over, a worse one does not; evaluations are logged to
the training runs; `t2v generate` writes decodable GIF/MP4 files from the champion.

The generators are tiny pyfunc models with a known quality (`tests/rendered_model.py`, a loader
module: nothing pickled): ground-truth clips (the best possible) and the same clips with their first
frame held (right colour and shape, no motion at all)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Callable

import imageio.v3 as iio
import mlflow
import pytest
from PIL import Image

from t2v.shards import DataParams
from registry import pyfunc, tracking

NAME = pyfunc.REGISTERED_MODEL
PARAMS = DataParams(motions=("moving up", "moving up-right"), clips_per_combo=6, val_per_combo=1, frames=8, size=32)
EVAL = {"samples": 2, "seen_prompts": 3}


@pytest.fixture(scope="module")
def store(tiny_dataset: Callable[..., Path], mlflow_store: str) -> dict[str, Any]:
    exp = tracking.configure("promotion-test", mlflow_store).experiment_id  # artifacts beside the store, not in ./mlruns
    return {"root": tiny_dataset(**vars(PARAMS)), "uri": mlflow_store, "experiment": exp}


def register(store: dict[str, Any], frozen: bool) -> str:
    import tempfile

    mlflow.set_tracking_uri(store["uri"])
    with mlflow.start_run(experiment_id=store["experiment"]), tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rendered"
        data.mkdir()
        (data / "model.json").write_text(json.dumps({"frozen": frozen, "frames": PARAMS.frames, "size": PARAMS.size}))
        info = mlflow.pyfunc.log_model(name="generator", loader_module="tests.rendered_model", data_path=str(data),
                                       signature=pyfunc.signature(PARAMS.frames, PARAMS.size),
                                       pip_requirements=["mlflow"], registered_model_name=NAME)
    return str(info.registered_model_version)


def evaluate(store: dict[str, Any], model: str | None) -> dict[str, Any]:
    from flows.evaluate import eval_stage

    return eval_stage(model=model, data=str(store["root"]), **EVAL)


@pytest.fixture(scope="module")
def history(prefect_api: str, store: dict[str, Any]) -> dict[str, Any]:
    """worse (v1) -> better (v2, evaluated as 'latest') -> worse again (v3)."""
    out = {}
    out["v1"] = register(store, frozen=True)
    out["first"] = evaluate(store, f"models:/{NAME}/{out['v1']}")
    out["v2"] = register(store, frozen=False)
    out["better"] = evaluate(store, None)  # default: the latest version
    out["v3"] = register(store, frozen=True)
    out["worse"] = evaluate(store, f"models:/{NAME}/{out['v3']}")
    return out


def client(store: dict[str, Any]) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])


def test_first_model_becomes_champion(history: dict[str, Any], store: dict[str, Any]) -> None:
    first = history["first"]
    assert first["promoted"]
    assert first["champion_version"] == history["v1"]
    assert first["previous_champion"] is None
    assert first["metrics"]["judge_heldout_motion"] == 0.0  # frozen clips show no motion
    tags = client(store).get_model_version(NAME, history["v1"]).tags
    assert tags["eval.decision"] == "promoted"
    assert "first" in tags["eval.reason"]


def test_the_evaluation_writes_the_version_description_and_its_dataset_input(
        history: dict[str, Any], store: dict[str, Any]) -> None:
    import json

    c = client(store)
    worse = c.get_model_version(NAME, history["v3"])
    m = history["worse"]["metrics"]
    assert worse.description.startswith("## Evaluation")  # no training section: these versions were not trained
    assert f"{m['judge_heldout_all3']:.3f} (pixel judge)" in worse.description
    assert f"**not promoted** ({history['worse']['reason']}); champion is now version {history['v2']}" in worse.description
    (di,) = [d for d in c.get_run(worse.run_id).inputs.dataset_inputs
             if {t.key: t.value for t in d.tags}["mlflow.data.context"] == "evaluation"]
    assert di.dataset.name.endswith("-heldout")
    profile = json.loads(di.dataset.profile)
    assert profile["prompts"]["heldout"] == int(m["n_prompts_heldout"]) and profile["samples"] == EVAL["samples"]


def test_the_reference_featnet_is_trained_once_then_reused(history: dict[str, Any]) -> None:
    """The tiny vocabulary of this dataset ships no reference network: the first evaluation trains it,
    every later one (another model, the champion again) loads it."""
    assert history["first"]["featnet"]["source"] == "trained"
    for later in ("better", "worse"):
        assert history[later]["featnet"]["source"] == "cached"
        assert history[later]["featnet"]["key"] == history["first"]["featnet"]["key"]


def test_better_model_is_promoted_with_both_scores_recorded(history: dict[str, Any], store: dict[str, Any]) -> None:
    better = history["better"]
    assert better["uri"] == f"models:/{NAME}/{history['v2']}"
    assert better["promoted"]
    assert better["champion_version"] == history["v2"]
    assert better["metrics"]["judge_heldout_all3"] >= 0.95
    c = client(store)
    tags = c.get_model_version(NAME, history["v2"]).tags
    assert tags["eval.decision"] == "promoted"
    assert tags["eval.champion_version"] == history["v1"]
    assert float(tags["eval.score.judge_heldout_all3"]) >= 0.95
    assert float(tags["eval.champion.judge_heldout_all3"]) == history["first"]["metrics"]["judge_heldout_all3"]
    assert float(tags["eval.champion.fd_heldout"]) == pytest.approx(history["first"]["metrics"]["fd_heldout"], rel=1e-5)


def test_worse_model_is_not_promoted(history: dict[str, Any], store: dict[str, Any]) -> None:
    worse = history["worse"]
    assert not worse["promoted"]
    assert worse["champion_version"] == history["v2"]
    c = client(store)
    assert str(c.get_model_version_by_alias(NAME, "champion").version) == history["v2"]
    tags = c.get_model_version(NAME, history["v3"]).tags
    assert tags["eval.decision"] == "not promoted"
    assert tags["eval.champion_version"] == history["v2"]
    # the champion was compared from its cached evaluation on the same prompts and seed: logged once
    run_id = c.get_model_version(NAME, history["v2"]).run_id
    assert len(c.get_metric_history(run_id, "eval/judge_heldout_all3")) == 1


def test_evaluation_is_logged_to_the_training_run(history: dict[str, Any], store: dict[str, Any]) -> None:
    better = history["better"]
    c = client(store)
    run = c.get_run(c.get_model_version(NAME, history["v2"]).run_id)
    assert run.data.metrics["eval/judge_heldout_all3"] == better["metrics"]["judge_heldout_all3"]
    assert {"eval/fd_heldout", "eval/fd_floor_heldout", "eval/spread_seen", "eval/nn_ratio"} <= set(run.data.metrics)
    logged = {f.path for f in c.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/contact_sheet.png", "eval/metrics.json", "eval/clips"} <= logged
    clips = {Path(f.path).name for f in c.list_artifacts(run.info.run_id, "eval/clips")}
    n_prompts = int(better["metrics"]["n_prompts_heldout"] + better["metrics"]["n_prompts_seen"])
    assert len([f for f in clips if f.endswith(".gif")]) == n_prompts == len([f for f in clips if f.endswith(".mp4")])
    assert "heldout-red-circle-moving-up-right.gif" in clips
    sheet = Image.open(better["files"]["png"][0])
    assert sheet.size[1] == n_prompts * (2 * PARAMS.size + 1)  # one row per prompt
    assert json.loads(Path(better["out_dir"], "metrics.json").read_text())["judge_heldout_all3"] >= 0.95
    assert better["run_link"].endswith(run.info.run_id)


def test_prefect_artifacts_hold_the_table_and_the_run_link(history: dict[str, Any]) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = [f"eval-{NAME}-v{history['v2']}", f"eval-decision-{NAME}"]
    with get_client(sync_client=True) as pc:
        found = pc.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    arts = {a.key: a for a in sorted(found, key=lambda a: a.created)}  # a key keeps every version: take the latest
    assert set(arts) == set(keys)
    report = arts[keys[0]].data
    assert "| pixel judge all-three (heldout) |" in report
    assert history["better"]["run_link"] in report
    assert "not promoted" in arts[keys[1]].data  # the latest decision: v3 lost to v2


def test_evaluate_command_reuses_the_cached_evaluation(history: dict[str, Any], store: dict[str, Any], prefect_api: str,
                                                       t2v_cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    env = {"MLFLOW_TRACKING_URI": store["uri"], "PREFECT_API_URL": prefect_api}
    proc = t2v_cli("evaluate", "--model", f"models:/{NAME}/{history['v2']}", "--data", str(store["root"]),
                   "--samples", str(EVAL["samples"]), "--seen-prompts", str(EVAL["seen_prompts"]), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"evaluated models:/{NAME}/{history['v2']} (cached)" in proc.stdout
    assert f"champion: version {history['v2']}" in proc.stdout
    assert "already the champion" in proc.stdout
    bad = t2v_cli("evaluate", "--data", str(store["root"]), "--samples", "0", env=env)
    assert bad.returncode == 2, bad.stderr
    assert "samples must be a positive integer" in bad.stderr, bad.stderr
    missing = t2v_cli("evaluate", "--data", str(store["root"] / "nope"), env=env)
    assert missing.returncode == 2, missing.stderr
    assert "no dataset at" in missing.stderr, missing.stderr


@pytest.mark.parametrize("ext", [".gif", ".mp4"])
def test_generate_writes_decodable_clips_from_the_champion(history: dict[str, Any], store: dict[str, Any],
                                                           t2v_cli: Callable[..., subprocess.CompletedProcess[str]],
                                                           tmp_path: Path, ext: str) -> None:
    out = tmp_path / f"clip{ext}"
    proc = t2v_cli("generate", "red circle moving up-right", "-o", str(out), "--samples", "2", "--seed", "3",
                   env={"MLFLOW_TRACKING_URI": store["uri"]}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"version {history['v2']}" in proc.stdout
    frames = iio.imread(out, index=None)  # (T, H, W, 3): every frame decodes
    assert frames.shape[0] == PARAMS.frames
    assert frames.shape[2] >= 2 * PARAMS.size  # two samples side by side
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # nothing else written, no temp files left


def test_unknown_model_is_a_usage_error(store: dict[str, Any], t2v_cli: Callable[..., subprocess.CompletedProcess[str]],
                                        tmp_path: Path) -> None:
    proc = t2v_cli("generate", "red circle moving up", "-o", str(tmp_path / "x.gif"), "--model",
                   f"models:/{NAME}@nobody", env={"MLFLOW_TRACKING_URI": store["uri"]})
    assert proc.returncode == 2, proc.stderr
    assert "no registered model behind" in proc.stderr, proc.stderr
    assert not (tmp_path / "x.gif").exists()
