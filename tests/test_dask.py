"""The data stage on a real Dask cluster: a `dask scheduler` and a `dask worker --nworkers 2` process
over TCP loopback render shards byte-identical to the local process pool's, on the cluster's workers,
and the per-shard cache holds across the two (a rerun on the cluster renders nothing)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
PARAMS: dict[str, Any] = dict(motions=["moving up", "spinning clockwise"], colors=["red", "blue"],
                              clips_per_combo=2, val_per_combo=1, frames=8, size=32, shard_size=8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real scheduler and one `dask worker` process running 2 worker processes, as on another machine."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    work = tmp_path_factory.mktemp("dask")
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--dashboard-address", ":0"], env=env, cwd=work,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or procs[0].poll() is not None:
                    raise RuntimeError("dask scheduler did not start")
                time.sleep(0.3)
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "2",
                                       "--nthreads", "1", "--dashboard-address", ":0", "--local-directory", str(work)],
                                      env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def shard_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "shards").rglob("*.tar.gz"))}


def worker_pids(address: str) -> set[int]:
    from distributed import Client

    with Client(address, timeout=30) as client:
        return set(client.run(os.getpid).values())


def rendered_on_cluster(address: str) -> int:
    """How many render-shard tasks the scheduler has seen finish (its per-prefix transition counts)."""
    from distributed import Client

    def count(dask_scheduler: Any) -> int:
        prefix = dask_scheduler.task_prefixes.get("render_shard")
        return int(prefix.state_counts["memory"]) if prefix is not None else 0

    with Client(address, timeout=30) as client:
        return client.run_on_scheduler(count)


def test_cluster_renders_byte_identical_shards_and_keeps_the_cache(prefect_api: str, dask_cluster: str,
                                                                   tmp_path: Path) -> None:
    from flows.data import data_stage

    local = data_stage(out=str(tmp_path / "local"), workers=2, **PARAMS)
    assert local["rendered"] and not local["cached"]

    pids = worker_pids(dask_cluster)
    assert len(pids) == 2 and os.getpid() not in pids
    on_dask = data_stage(out=str(tmp_path / "dask"), dask_address=dask_cluster, **PARAMS)
    assert on_dask["rendered"] == local["rendered"]  # every shard rendered, on the cluster
    assert shard_hashes(tmp_path / "dask") == shard_hashes(tmp_path / "local")  # sha256, shard for shard
    assert on_dask["checksum"] == local["checksum"]

    assert rendered_on_cluster(dask_cluster) == len(local["rendered"])  # the scheduler ran one task per shard
    again = data_stage(out=str(tmp_path / "dask"), dask_address=dask_cluster, **PARAMS)
    assert again["rendered"] == []  # the per-shard cache holds on the cluster
    assert again["cached"] == local["rendered"]


def test_unreachable_or_malformed_address_fails_before_any_work(prefect_api: str, tmp_path: Path) -> None:
    from flows.data import data_stage

    with pytest.raises(ValueError, match=r"no Dask scheduler reachable at tcp://127.0.0.1:\d+"):
        data_stage(out=str(tmp_path / "a"), dask_address=f"tcp://127.0.0.1:{free_port()}", **PARAMS)
    with pytest.raises(ValueError, match=r"dask_address must look like tcp://HOST:PORT"):
        data_stage(out=str(tmp_path / "b"), dask_address="127.0.0.1:8786", **PARAMS)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
