"""Serving the way MLflow users do: `mlflow models serve -m models:/t2v-generator/<v> --env-manager
local`, then a JSON call to `/invocations` with prompts and a seed, answered with the clips the
sampler makes (a real scoring server process on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np

from registry import pyfunc, tracking
from t2v.models import GeneratorSpec, build_generator
from t2v.sampler import export_generator, load_generator
from tests.conftest import REPO

PROMPTS = ["red circle moving up", "blue triangle spinning clockwise"]


def test_mlflow_models_serve_answers_invocations_with_the_samplers_clips(tmp_path: Path, mlflow_store: str) -> None:
    from deployments.stack import free_port

    spec = GeneratorSpec("video", 8, 32)
    export = export_generator(*build_generator(spec), spec, tmp_path / "export")
    expected = load_generator(export).generate(PROMPTS, seed=5)
    t = tracking.configure("serving-test", mlflow_store)
    with mlflow.start_run(experiment_id=t.experiment_id):
        info = pyfunc.log_generator(export, 8, 32, registered_model="serving-test")
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store,  # the venv's bin on PATH, as once activated (uvicorn)
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(tmp_path / "serve.log", "wb") as log:
        server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                                   f"models:/serving-test/{info.registered_model_version}", "--env-manager", "local",
                                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                  cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        body = json.dumps({"inputs": PROMPTS, "params": {"seed": 5}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            answer = json.loads(r.read())
        bad = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"inputs": ["red blob moving up"]}).encode())
        try:
            urllib.request.urlopen(bad, timeout=60)
            error = None
        except urllib.error.HTTPError as e:
            error = (e.code, e.read().decode())
    finally:
        os.killpg(server.pid, 9)
        server.wait(timeout=30)
    clips = np.asarray(answer["predictions"], dtype=np.uint8)
    assert clips.shape == (2, 8, 32, 32, 3)
    assert np.array_equal(clips, expected)
    assert error is not None and error[0] == 400 and "blob" in error[1]
