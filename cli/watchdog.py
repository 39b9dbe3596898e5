"""Nothing a `t2v` command started outlives it, even when the command itself is SIGKILLed.

A command that starts processes (the temporary Prefect server, the rendering pool, loader workers,
multiprocessing's resource tracker) calls `start()` first. That tags the command's environment with
a session id, which every process it spawns inherits, and starts a small watchdog in its own session
(so Ctrl-C in the terminal does not reach it). The watchdog polls the command; once the command is
gone, for whatever reason, it ends every process that carries the session id or that it saw among
the command's descendants (forked children, whose inherited environment `/proc` does not show):
SIGTERM, then SIGKILL after a grace period.

Usage (internal): python -m cli.watchdog PID SESSION
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

SESSION_ENV = "T2V_SESSION"
POLL_S = 0.5  # how often the watchdog looks at the command
GRACE_S = 5.0  # SIGTERM -> SIGKILL


def start() -> subprocess.Popen:
    """Tag this process's future children and start the watchdog for them; returns its process."""
    session = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != SESSION_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "cli.watchdog", str(os.getpid()), session],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**env, "PYTHONPATH": os.pathsep.join(filter(None, [_repo(), env.get("PYTHONPATH")]))},
                            start_new_session=True)
    os.environ[SESSION_ENV] = session
    return proc


def _repo() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tagged(session: str) -> list:
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get(SESSION_ENV) == session:
                found.append(p)
        except psutil.Error:
            continue
    return found


def watch(pid: int, session: str) -> None:
    """Wait for `pid` to end, then end what it left behind."""
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        parent = None
    seen: dict[int, psutil.Process] = {}
    while parent is not None:
        try:
            if not parent.is_running() or parent.status() == psutil.STATUS_ZOMBIE:
                break
            for child in parent.children(recursive=True):
                seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_S)
    left = {p.pid: p for p in [*seen.values(), *_tagged(session)] if p.pid != os.getpid()}
    procs = []
    for p in left.values():
        try:
            if p.is_running():  # is_running also checks the start time: a reused pid is not ours
                p.terminate()
                procs.append(p)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=GRACE_S)
    for p in alive + _tagged(session):
        try:
            p.kill()
        except psutil.Error:
            continue


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
