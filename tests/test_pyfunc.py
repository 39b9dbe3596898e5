"""The registered generator as an MLflow pyfunc model, loaded from a fresh Python process against a
real MLflow store: prompts as a list or a DataFrame in, uint8 (N, T, H, W, 3) out, deterministic per
seed, identical to the sampler it wraps, and independent of the export dir it was logged from."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest

from t2v import models
from t2v.models import GeneratorSpec, build_generator
from t2v.sampler import export_generator, load_generator
from registry import pyfunc, tracking

FAMILIES = models.names()  # every registered family: video, baseline, conv3d, rnn, transformer

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["red circle moving up", "purple square moving left", "blue triangle spinning clockwise"]

# Runs in a fresh interpreter, in an empty working directory, with only the project importable.
CLIENT = textwrap.dedent("""
    import json, sys
    import mlflow, numpy as np, pandas as pd

    prompts = json.loads(sys.argv[2])
    out = {}
    for kind, uri in json.loads(sys.argv[1]).items():
        m = mlflow.pyfunc.load_model(uri)
        out[f"{kind}_list"] = m.predict(prompts, params={"seed": 0})
        out[f"{kind}_frame"] = m.predict(pd.DataFrame({"prompt": prompts}), params={"seed": 0})
        out[f"{kind}_again"] = m.predict(list(prompts), params={"seed": 0})
        out[f"{kind}_seed1"] = m.predict(prompts, params={"seed": 1})
        out[f"{kind}_default"] = m.predict(prompts)
        try:
            m.predict(["red blob moving up"])
            out[f"{kind}_error"] = np.array("no error")
        except Exception as e:
            out[f"{kind}_error"] = np.array(f"{type(e).__name__}: {e}")
        out[f"{kind}_params"] = np.array(json.dumps(m.metadata.get_params_schema().to_dict()))
    np.savez(sys.argv[3], **out)
""")


def random_export(tmp: Path, kind: str, frames: int = 16, size: int = 64) -> tuple[Path, np.ndarray]:
    """An export of a randomly initialised generator and what the sampler makes of PROMPTS (seed 0)."""
    import torch

    spec = GeneratorSpec(kind, frames, size)
    # A fixed init: about half of the untrained conv3d inits map seed 0 and seed 1 to the same uint8
    # clips (the noise moves its output by less than a grey level), which made the seed test flaky.
    torch.manual_seed(1)
    g, te = build_generator(spec)
    path = export_generator(g, te, spec, tmp / f"export-{kind}")
    return path, load_generator(path, "cpu").generate(PROMPTS, seed=0)


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, mlflow_store: str) -> dict[str, Any]:
    """One video and one baseline generator logged and registered in a fresh SQLite store; their
    export dirs are deleted afterwards, so loading can only use what MLflow stored."""
    tmp = tmp_path_factory.mktemp("pyfunc")
    t = tracking.configure("pyfunc-test", mlflow_store)
    uris, expected = {}, {}
    for kind in FAMILIES:
        export, expected[kind] = random_export(tmp, kind)
        with mlflow.start_run(experiment_id=t.experiment_id):
            info = pyfunc.log_generator(export, 16, 64)
        uris[kind] = f"models:/{pyfunc.REGISTERED_MODEL}/{info.registered_model_version}"
        shutil.rmtree(export)
    return {"tmp": tmp, "uri": mlflow_store, "models": uris, "expected": expected}


@pytest.fixture(scope="module")
def predicted(registered: dict[str, Any]) -> dict[str, np.ndarray]:
    """Everything CLIENT computed in its fresh process."""
    tmp = registered["tmp"]
    work = tmp / "elsewhere"
    work.mkdir()
    out = tmp / "predicted.npz"
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered["uri"], "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", CLIENT, json.dumps(registered["models"]), json.dumps(PROMPTS),
                           str(out)], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("kind", FAMILIES)
def test_predict_returns_contracted_clips(predicted: dict[str, np.ndarray], registered: dict[str, Any],
                                          kind: str) -> None:
    clips = predicted[f"{kind}_list"]
    assert clips.dtype == np.uint8
    assert clips.shape == (len(PROMPTS), 16, 64, 64, 3)
    assert np.array_equal(clips, registered["expected"][kind])  # exactly the sampler it wraps
    assert clips.std() > 0


@pytest.mark.parametrize("kind", FAMILIES)
def test_dataframe_input_and_seeds(predicted: dict[str, np.ndarray], kind: str) -> None:
    clips = predicted[f"{kind}_list"]
    assert np.array_equal(predicted[f"{kind}_frame"], clips)
    assert np.array_equal(predicted[f"{kind}_again"], clips)
    assert np.array_equal(predicted[f"{kind}_default"], clips)  # seed defaults to 0
    assert not np.array_equal(predicted[f"{kind}_seed1"], clips)


def test_signature_and_errors(predicted: dict[str, np.ndarray]) -> None:
    assert json.loads(str(predicted["video_params"])) == [
        {"name": "seed", "type": "long", "default": 0, "shape": None}]
    err = str(predicted["video_error"])
    assert "VocabularyError" in err
    assert "blob" in err
    assert "circle" in err  # names the word and the known words


def test_prompts_of_accepts_the_documented_inputs() -> None:
    assert pyfunc.prompts_of(["a", "b"]) == ["a", "b"]
    assert pyfunc.prompts_of(pd.DataFrame({"prompt": ["a"], "other": [1]})) == ["a"]
    assert pyfunc.prompts_of(pd.DataFrame({0: ["a", "b"]})) == ["a", "b"]
    assert pyfunc.prompts_of("a") == ["a"]
    with pytest.raises(ValueError, match="'prompt' column"):
        pyfunc.prompts_of(pd.DataFrame({"x": ["a"], "y": ["b"]}))
