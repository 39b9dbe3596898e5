"""Shared fixtures: one real Prefect test server per session, and a runner for the `t2v` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

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
