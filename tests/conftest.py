"""Shared fixtures: one real Prefect test server per session, tiny real datasets, a real MLflow store per
module, and a runner for the `t2v` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network on CI or laptops
    os.environ.setdefault("PREFECT_SERVER_TELEMETRY_ENABLED", "false")


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect server on a temporary database (started once, ~7 s); yields its API URL."""
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield str(get_current_settings().api.url)


@pytest.fixture
def t2v_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `t2v ARGS` in a fresh interpreter (as a user would), from the repo, without installing it."""

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                    **(env or {})}
        return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                              env=full_env, cwd=cwd or REPO, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`tiny_dataset(**DataParams fields)`: a fresh, published dataset (real shards, manifest, marker)
    built in this process by `t2v.dataset.write_dataset`; lists may stand for tuples."""
    from t2v import dataset
    from t2v.shards import DataParams

    def make(**params: Any) -> Path:
        root = tmp_path_factory.mktemp("dataset") / "data"
        dataset.write_dataset(root, DataParams(**{k: tuple(v) if isinstance(v, list) else v
                                                  for k, v in params.items()}))
        return root

    return make


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real SQLite MLflow store in a temp dir, selected the way users do (MLFLOW_TRACKING_URI)."""
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    mlflow.set_tracking_uri(old)  # configure() pinned the process-wide URI; None unpins it and unsets the env var
