"""Local operations stack: a Prefect server, an MLflow tracking server and a process serving the deployments.

`make up` / `make down` call this; the end-to-end test uses the same functions on free ports. Every
process is started in its own session with a pid file under the state dir, so `down` stops it and
its children cleanly. Everything binds to 127.0.0.1 unless told otherwise.

Usage: python -m deployments.stack {up,down,status} [--state DIR] [--host H] [--prefect-port P]
       [--mlflow-port M] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("prefect", "mlflow", "serve")
SERVED = ("full-pipeline/nightly", "full-pipeline/demo", "data-stage/add-motions")  # registered by deployments.serve


@dataclass(frozen=True)
class StackConfig:
    state: Path = REPO / "data" / ".stack"  # pid files, logs, the Prefect home
    data: Path = REPO / "data"  # MLflow store and artifacts, default dataset dir
    host: str = "127.0.0.1"  # loopback only: nothing is exposed by default
    prefect_port: int = 4200  # Prefect's usual port
    mlflow_port: int = 5000  # MLflow's usual port

    @property
    def prefect_api_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    def env(self) -> dict[str, str]:
        """Environment that points clients (CLI, flows, the serve process) at this stack."""
        return {
            **os.environ,
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_HOME": str(self.state / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_TELEMETRY_ENABLED": "false",
            "MLFLOW_TRACKING_URI": self.mlflow_url,
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _commands(cfg: StackConfig) -> dict[str, list[str]]:
    db = (cfg.data / "mlflow.db").resolve()
    return {
        "prefect": [_bin("prefect"), "server", "start", "--host", cfg.host, "--port", str(cfg.prefect_port),
                    "--no-ui" if os.environ.get("T2V_STACK_NO_UI") else "--ui"],
        "mlflow": [_bin("mlflow"), "server", "--host", cfg.host, "--port", str(cfg.mlflow_port),
                   "--backend-store-uri", f"sqlite:///{db}",
                   "--artifacts-destination", str((cfg.data / "mlartifacts").resolve()),
                   "--workers", "1"],
        "serve": [sys.executable, "-m", "deployments.serve", "--data", str(cfg.data)],
    }


def _pidfile(cfg: StackConfig, name: str) -> Path:
    return cfg.state / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running(cfg: StackConfig, name: str) -> int | None:
    try:
        pid = int(_pidfile(cfg, name).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} did not come up: process exited {proc.returncode}; see {log}:\n"
                               + log.read_text()[-2000:])
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s; see {log}")


def start(cfg: StackConfig, name: str, timeout: float = 120.0) -> int:
    """Start one service in its own session (so `stop` can end its whole process group)."""
    if (pid := _running(cfg, name)) is not None:
        return pid
    cfg.state.mkdir(parents=True, exist_ok=True)
    cfg.data.mkdir(parents=True, exist_ok=True)
    log = cfg.state / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(_commands(cfg)[name], cwd=REPO, env=cfg.env(), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    tmp = _pidfile(cfg, name).with_suffix(".tmp")
    tmp.write_text(str(proc.pid))
    os.replace(tmp, _pidfile(cfg, name))
    try:
        if name == "prefect":
            _wait_http(f"{cfg.prefect_api_url}/health", proc, log, timeout)
        elif name == "mlflow":
            _wait_http(f"{cfg.mlflow_url}/health", proc, log, timeout)
        else:  # serving: ready once its deployments are registered with the server
            _wait_http(f"{cfg.prefect_api_url}/deployments/name/{SERVED[-1]}", proc, log, timeout)
    except Exception:
        stop(cfg, name)
        raise
    return proc.pid


def stop(cfg: StackConfig, name: str, timeout: float = 20.0) -> bool:
    """SIGTERM the service's process group, SIGKILL what is left after `timeout`; True if it was running."""
    pid = _running(cfg, name)
    _pidfile(cfg, name).unlink(missing_ok=True)
    if pid is None:
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        try:  # reap it when it is our own child (tests), so it does not linger as a zombie
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True



def up(cfg: StackConfig) -> dict[str, int]:
    pids = {}
    for name in SERVICES:
        pids[name] = start(cfg, name)
    (cfg.state / "stack.json").write_text(json.dumps({k: str(v) for k, v in asdict(cfg).items()}))
    return pids


def down(cfg: StackConfig) -> list[str]:
    return [name for name in reversed(SERVICES) if stop(cfg, name)]


def port(text: str) -> int:
    """argparse type: a TCP port, checked before any process starts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer in 1-65535, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1-65535, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    d = StackConfig()
    ap = argparse.ArgumentParser(prog="python -m deployments.stack", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["up", "down", "status"])
    ap.add_argument("--state", type=Path, default=d.state, help=f"pid files and logs (default {d.state})")
    ap.add_argument("--data", type=Path, default=d.data, help=f"MLflow store, artifacts, datasets (default {d.data})")
    ap.add_argument("--host", default=os.environ.get("T2V_HOST", d.host), help="bind address (default 127.0.0.1)")
    ap.add_argument("--prefect-port", type=port, default=int(os.environ.get("PREFECT_PORT", d.prefect_port)))
    ap.add_argument("--mlflow-port", type=port, default=int(os.environ.get("MLFLOW_PORT", d.mlflow_port)))
    a = ap.parse_args(argv)
    cfg = StackConfig(a.state.resolve(), a.data.resolve(), a.host, a.prefect_port, a.mlflow_port)
    if a.action == "up":
        pids = up(cfg)
        print(f"up: {', '.join(f'{k} (pid {v})' for k, v in pids.items())}; logs in {cfg.state}")
        print(f"Prefect UI:  http://{cfg.host}:{cfg.prefect_port}")
        print(f"MLflow UI:   {cfg.mlflow_url}")
        print("Point your shell at them:")
        print(f"  export PREFECT_API_URL={cfg.prefect_api_url} MLFLOW_TRACKING_URI={cfg.mlflow_url}")
        print("  prefect deployment run full-pipeline/demo --watch")
    elif a.action == "down":
        stopped = down(cfg)
        print(f"down: stopped {', '.join(stopped) if stopped else 'nothing (nothing was running)'}")
    else:
        for name in SERVICES:
            pid = _running(cfg, name)
            print(f"{name:8s} {'running (pid %d)' % pid if pid else 'stopped'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
