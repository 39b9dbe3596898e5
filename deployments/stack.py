"""Local operations stack: a Prefect server, an MLflow tracking server and a process serving the deployments.

`make up` / `make down` call this; the end-to-end test uses the same functions on free ports. Every
process is started in its own session with a pid file under the state dir (pid, start time and
command, so a reused pid or a stranger on the port is never taken for ours), and `down` stops it and
its children cleanly. `up` checks that its ports are free before it starts anything and stops what
it started when a later service fails.

Locked down by default: everything binds to 127.0.0.1; both servers accept only their own Host
names and their own UI origin (no cross-origin requests from other pages); the Prefect API asks
for basic auth with a secret generated into the state dir (mode 0600) unless --no-prefect-auth;
MLflow's basic-auth app is on with --mlflow-auth; the served deployments refuse `out`/`data`
outside the data root.

Usage: python -m deployments.stack {up,down,status} [--state DIR] [--host H] [--prefect-port P]
       [--mlflow-port M] [--data DIR] [--no-prefect-auth] [--mlflow-auth]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("prefect", "mlflow", "serve")
SERVED = ("full-pipeline/nightly", "full-pipeline/demo", "data-stage/add-motions")  # registered by deployments.serve


@dataclass(frozen=True)
class StackConfig:
    state: Path = REPO / "data" / ".stack"  # pid files, logs, secrets, the Prefect home
    data: Path = REPO / "data"  # MLflow store and artifacts, default dataset dir; deployments are confined to it
    host: str = "127.0.0.1"  # loopback only: nothing is exposed by default
    prefect_port: int = 4200  # Prefect's usual port
    mlflow_port: int = 5000  # MLflow's usual port
    prefect_auth: bool = True  # Prefect API behind basic auth (PREFECT_API_AUTH_STRING)
    mlflow_auth: bool = False  # MLflow's basic-auth app: needs a login in the UI too, so opt-in
    retrain_on_data: bool = False  # the nightly also runs when data-stage/add-motions completes (a deployment trigger)

    @property
    def prefect_api_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    def port_of(self, name: str) -> int | None:
        return {"prefect": self.prefect_port, "mlflow": self.mlflow_port}.get(name)

    def secret(self, name: str) -> str | None:
        """A secret `up` generated into the state dir (readable by this user only); None before `up`."""
        path = self.state / SECRETS[name]
        return path.read_text().strip() if path.is_file() else None

    def env(self) -> dict[str, str]:
        """Environment that points clients (CLI, flows, the serve process) at this stack."""
        env = {
            **os.environ,
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_HOME": str(self.state / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_TELEMETRY_ENABLED": "false",
            "MLFLOW_TRACKING_URI": self.mlflow_url,
        }
        if self.prefect_auth and (auth := self.secret("prefect")):
            env["PREFECT_API_AUTH_STRING"] = auth
        if self.mlflow_auth and (password := self.secret("mlflow")):
            env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"] = MLFLOW_ADMIN, password
        return env

    def hosts(self) -> list[str]:
        """Host names a request to these servers may carry: the bind address, and localhost for loopback."""
        names = [self.host]
        if self.host in ("127.0.0.1", "localhost", "::1"):
            names += [n for n in ("127.0.0.1", "localhost") if n != self.host]
        return names


SECRETS = {"prefect": "prefect-auth", "mlflow": "mlflow-admin-password", "mlflow-csrf": "mlflow-csrf-key"}
MLFLOW_ADMIN = "admin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _commands(cfg: StackConfig) -> dict[str, list[str]]:
    db = (cfg.data / "mlflow.db").resolve()
    hosts = [f"{h}:{cfg.mlflow_port}" for h in cfg.hosts()] + cfg.hosts()
    return {
        "prefect": [sys.executable, "-m", "deployments.prefect_server", "--host", cfg.host,
                    "--port", str(cfg.prefect_port), *[a for h in cfg.hosts() for a in ("--allowed-host", h)]],
        "mlflow": [_bin("mlflow"), "server", "--host", cfg.host, "--port", str(cfg.mlflow_port),
                   "--backend-store-uri", f"sqlite:///{db}",
                   "--artifacts-destination", str((cfg.data / "mlartifacts").resolve()),
                   "--allowed-hosts", ",".join(hosts),
                   "--cors-allowed-origins", ",".join(f"http://{h}:{cfg.mlflow_port}" for h in cfg.hosts()),
                   "--workers", "1", *(["--app-name", "basic-auth"] if cfg.mlflow_auth else [])],
        "serve": [sys.executable, "-m", "deployments.serve", "--data", str(cfg.data),
                  *(["--retrain-on-data"] if cfg.retrain_on_data else [])],
    }


def _service_env(cfg: StackConfig, name: str) -> dict[str, str]:
    """What each server needs beyond the client environment: its own origin and its secrets."""
    env = cfg.env()
    if name == "prefect":
        env["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"] = ",".join(f"http://{h}:{cfg.prefect_port}" for h in cfg.hosts())
        env["PREFECT_UI_API_URL"] = cfg.prefect_api_url
        env["PREFECT_SERVER_UI_ENABLED"] = "false" if os.environ.get("T2V_STACK_NO_UI") else "true"
        if cfg.prefect_auth:
            env["PREFECT_SERVER_API_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"]
    if name == "mlflow":  # MLflow's job consumers (GenAI jobs: 8 idle processes of ~230 MB) serve nothing here
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if name == "mlflow" and cfg.mlflow_auth:
        ini = cfg.state / "mlflow-auth.ini"
        _write_private(ini, "[mlflow]\ndefault_permission = READ\n"
                            f"database_uri = sqlite:///{(cfg.state / 'mlflow-auth.db').resolve()}\n"
                            f"admin_username = {MLFLOW_ADMIN}\n"
                            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = env["MLFLOW_TRACKING_PASSWORD"]
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = cfg.secret("mlflow-csrf") or ""
    return env


def _write_private(path: Path, text: str) -> None:
    """Write a file only this user can read, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def ensure_secrets(cfg: StackConfig) -> None:
    """Generate the stack's secrets once (kept across restarts, so exported shells keep working)."""
    if cfg.prefect_auth and cfg.secret("prefect") is None:
        _write_private(cfg.state / SECRETS["prefect"], f"t2v:{secrets.token_urlsafe(24)}\n")
    for name in ("mlflow", "mlflow-csrf"):
        if cfg.mlflow_auth and cfg.secret(name) is None:
            _write_private(cfg.state / SECRETS[name], f"{secrets.token_urlsafe(24)}\n")


def _pidfile(cfg: StackConfig, name: str) -> Path:
    return cfg.state / f"{name}.pid"


def _identity(pid: int) -> dict[str, object] | None:
    import psutil

    try:
        p = psutil.Process(pid)
        return {"pid": pid, "started": round(p.create_time(), 2), "cmd": p.cmdline()}
    except psutil.Error:
        return None


def _running(cfg: StackConfig, name: str) -> int | None:
    """The pid of our own running service: the pid file's process, started when the file says. Anything
    else on that pid (a reuse after a reboot) is not ours."""
    try:
        rec = json.loads(_pidfile(cfg, name).read_text())
        pid = int(rec["pid"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    now = _identity(pid)  # the start time identifies the process; its title may change after exec
    if now is None or now["started"] != rec.get("started"):
        return None
    return pid


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class StackError(RuntimeError):
    """The stack cannot start as asked: a port, a bad setting, a service that did not come up."""


def check_ports(cfg: StackConfig) -> None:
    """Before anything starts: distinct ports, and each free unless our own service already holds it."""
    if cfg.prefect_port == cfg.mlflow_port:
        raise StackError(f"the Prefect and MLflow ports are both {cfg.prefect_port}; give them different ports "
                         f"(make up PREFECT_PORT=... MLFLOW_PORT=...)")
    for name in ("prefect", "mlflow"):
        port = cfg.port_of(name)
        if _running(cfg, name) is None and port_in_use(cfg.host, port):
            raise StackError(f"port {port} on {cfg.host} ({name}) is in use by a process that is not this stack's "
                             f"{name} server; stop it or choose another port (make up {name.upper()}_PORT=...)")


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float, auth: str | None = None,
               ready: Callable[[bytes], bool] = lambda body: True) -> None:
    """Until `url` answers 200 with a body `ready` accepts; StackError when the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{url} did not come up: process exited {proc.returncode}; see {log}:\n"
                             + log.read_text()[-2000:])
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as r:
                if r.status == 200 and ready(r.read()):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise StackError(f"{url} did not answer within {timeout:.0f}s; see {log}")


def _deployment_ready(body: bytes) -> bool:
    """A served deployment whose runner has polled the server: what the UI shows as Ready."""
    try:
        return json.loads(body).get("status") == "READY"
    except ValueError:
        return False


def start(cfg: StackConfig, name: str, timeout: float = 120.0) -> int:
    """Start one service in its own session (so `stop` can end its whole process group)."""
    if (pid := _running(cfg, name)) is not None:
        return pid
    cfg.state.mkdir(parents=True, exist_ok=True)
    cfg.data.mkdir(parents=True, exist_ok=True)
    log = cfg.state / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(_commands(cfg)[name], cwd=REPO, env=_service_env(cfg, name), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    ident = _identity(proc.pid) or {"pid": proc.pid}
    tmp = _pidfile(cfg, name).with_suffix(".tmp")
    tmp.write_text(json.dumps(ident))
    os.replace(tmp, _pidfile(cfg, name))
    auth = cfg.env().get("PREFECT_API_AUTH_STRING")
    try:
        if name == "prefect":
            _wait_http(f"{cfg.prefect_api_url}/health", proc, log, timeout)
        elif name == "mlflow":
            _wait_http(f"{cfg.mlflow_url}/health", proc, log, timeout)
        else:  # serving: ready once every deployment is Ready (registered, and its runner polling)
            for deployment in SERVED:
                _wait_http(f"{cfg.prefect_api_url}/deployments/name/{deployment}", proc, log, timeout, auth,
                           _deployment_ready)
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
    """Start what is not running yet; on a failure, stop what this call started and raise."""
    check_ports(cfg)
    cfg.state.mkdir(parents=True, exist_ok=True)
    ensure_secrets(cfg)
    claim_data_root(cfg.data)
    pids, started = {}, []
    try:
        for name in SERVICES:
            was = _running(cfg, name)
            pids[name] = start(cfg, name)
            if was is None:
                started.append(name)
    except BaseException:
        for name in reversed(started):
            stop(cfg, name)
        raise
    (cfg.state / "stack.json").write_text(json.dumps({k: str(v) for k, v in asdict(cfg).items()}))
    return pids


def claim_data_root(data: Path) -> None:
    """A new or empty data root becomes a t2v dataset root before MLflow puts its store there, so the
    data stage may write into it; a non-empty foreign directory stays foreign (the data stage refuses it)."""
    from t2v import dataset

    if not data.exists() or not any(data.iterdir()):
        dataset.claim(data)


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
    # string defaults go through `port` too, so PREFECT_PORT=abc is a usage error, not a traceback
    ap.add_argument("--prefect-port", type=port, default=os.environ.get("PREFECT_PORT", str(d.prefect_port)),
                    help=f"Prefect server port (default $PREFECT_PORT or {d.prefect_port})")
    ap.add_argument("--mlflow-port", type=port, default=os.environ.get("MLFLOW_PORT", str(d.mlflow_port)),
                    help=f"MLflow server port (default $MLFLOW_PORT or {d.mlflow_port})")
    ap.add_argument("--no-prefect-auth", action="store_true",
                    help="serve the Prefect API without basic auth (anyone who reaches the port can run deployments)")
    ap.add_argument("--mlflow-auth", action="store_true",
                    help="run MLflow's basic-auth app (user admin, password generated into the state dir)")
    ap.add_argument("--retrain-on-data", action="store_true",
                    help="also run full-pipeline/nightly as soon as data-stage/add-motions completes")
    a = ap.parse_args(argv)
    if a.prefect_port == a.mlflow_port:
        ap.error(f"--prefect-port and --mlflow-port are both {a.prefect_port}; give them different ports")
    cfg = StackConfig(a.state.resolve(), a.data.resolve(), a.host, a.prefect_port, a.mlflow_port,
                      prefect_auth=not a.no_prefect_auth, mlflow_auth=a.mlflow_auth, retrain_on_data=a.retrain_on_data)
    if a.action == "up":
        try:
            pids = up(cfg)
        except StackError as e:
            print(f"up: failed: {e}", file=sys.stderr)
            return 1
        env = cfg.env()
        print(f"up: {', '.join(f'{k} (pid {v})' for k, v in pids.items())}; logs in {cfg.state}")
        print(f"Prefect UI:  http://{cfg.host}:{cfg.prefect_port}"
              + ("  (log in with the PREFECT_API_AUTH_STRING below)" if cfg.prefect_auth else ""))
        print(f"MLflow UI:   {cfg.mlflow_url}" + (f"  (user {MLFLOW_ADMIN}, password below)" if cfg.mlflow_auth else ""))
        print("Point your shell at them:")
        exports = {k: env[k] for k in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_API_AUTH_STRING",
                                       "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD") if k in env}
        print("  export " + " ".join(f"{k}={v}" for k, v in exports.items()))
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
