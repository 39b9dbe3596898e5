"""The holes a hostile user found (issue 14), each reproduced as it was reported."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Callable

import pytest

from t2v import dataset

DATA_ARGS = ["--clips-per-combo", "1", "--val-per-combo", "1", "--motions", "moving up", "--colors", "red",
             "--shapes", "circle", "--workers", "1", "--no-progress"]


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- 1. data loss

def test_data_into_a_foreign_directory_is_refused_and_deletes_nothing(t2v_cli: Callable, tmp_path: Path) -> None:
    d = tmp_path / "d"
    for rel in ("shards/train/my-archive.tar.gz", "shards/backup/old.tar.gz", "shards/backup/.keep.tmp"):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text("p\n")
    before = files(d)
    proc = t2v_cli("data", "--out", str(d), *DATA_ARGS)
    assert proc.returncode == 2, proc.stderr
    assert f"{str(d)!r} exists and is not a t2v dataset (it holds 3 files); choose an empty or new --out" in proc.stderr
    assert files(d) == before


@pytest.mark.parametrize("name", [dataset.DATASET_JSON, dataset.SHARDS_TABLE, dataset.MANIFEST])
def test_a_dataset_with_an_unreadable_table_is_refused_not_repaired(tmp_path: Path, name: str) -> None:
    (tmp_path / dataset.MARKER).write_text("{}")
    (tmp_path / dataset.DATASET_JSON).write_text('{"format": 1, "params": {}}')
    (tmp_path / name).write_bytes(b"\x00 not what it claims to be")
    (tmp_path / "shards" / "train").mkdir(parents=True)
    (tmp_path / "shards" / "train" / "moving-up-0000.tar.gz").write_bytes(b"keep me")
    before = files(tmp_path)
    from t2v.shards import DataParams

    with pytest.raises(dataset.NotADatasetError, match=rf"is not a t2v dataset \({name} is unreadable"):
        dataset.validate_request(DataParams(motions=("moving up",), clips_per_combo=1), tmp_path)
    assert files(tmp_path) == before


def test_empty_and_marked_directories_are_accepted(tmp_path: Path) -> None:
    from t2v.shards import DataParams

    params = DataParams(motions=("moving up",), clips_per_combo=1)
    assert dataset.validate_request(params, tmp_path / "new").root == tmp_path / "new"
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert dataset.validate_request(params, tmp_path / "empty").root == tmp_path / "empty"
    (tmp_path / "empty" / "notes.txt").write_text("mine")
    with pytest.raises(dataset.NotADatasetError, match="holds 1 file\\)"):
        dataset.validate_request(params, tmp_path / "empty")
    dataset.claim(tmp_path / "empty")
    assert dataset.validate_request(params, tmp_path / "empty").root == tmp_path / "empty"
    assert (tmp_path / "empty" / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- 3. what training reads

@pytest.fixture(scope="module")
def tiny(tiny_dataset: Callable[..., Path]) -> Path:
    return tiny_dataset(motions=["moving up", "moving right"], colors=["red", "blue"], clips_per_combo=3,
                        val_per_combo=1, frames=8, size=32, shard_size=4)


@pytest.fixture
def tiny_copy(tiny: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(tiny, tmp_path / "data")
    return tmp_path / "data"


def _extra_shard(root: Path, split: str, members: dict[str, bytes]) -> Path:
    from t2v.shards import tar_bytes

    path = root / "shards" / split / "moving-up-9999.tar.gz"
    path.write_bytes(tar_bytes([{"__key__": "intruder-0000", **members}]))
    return path


def _rewrite_listed(root: Path, rel: str, data: bytes) -> None:
    """Replace a listed shard and republish its sha256, as someone who can write the manifest would."""
    import hashlib
    from dataclasses import replace

    import pyarrow.parquet as pq

    (root / rel).write_bytes(data)
    infos = [replace(i, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data)) if i.path == rel else i
             for i in dataset.load_shards(root)]
    pq.write_table(dataset.shards_table(infos), root / dataset.SHARDS_TABLE)


def _train_keys(root: Path, batches: int = 6) -> set[str]:
    from t2v.loader import make_loader

    it = iter(make_loader(root, 8, num_workers=0, shuffle_buffer=8, seed=0))
    return {k for _ in range(batches) for k in next(it)["key"]}


def test_a_shard_dropped_into_train_is_never_read(tiny_copy: Path) -> None:
    from t2v import featnet
    from t2v.loader import train_shards
    from t2v.shards import iter_shard

    sample = next(iter_shard(tiny_copy / dataset.load_shards(tiny_copy)[0].path))
    members = {k: v for k, v in sample.items() if k != "__key__"}
    extra = _extra_shard(tiny_copy, "train", members)
    assert extra not in train_shards(tiny_copy)
    assert "intruder-0000" not in _train_keys(tiny_copy, batches=20)
    _extra_shard(tiny_copy, "val", members)
    keys = {m["key"] for _, metas in featnet.iter_split(tiny_copy, "val") for m in metas}
    assert keys
    assert "intruder-0000" not in keys


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_a_changed_shard_stops_training_before_the_first_batch(tiny_copy: Path, damage: str) -> None:
    from t2v.loader import make_loader

    rel = next(i.path for i in dataset.load_shards(tiny_copy) if i.split == "train")
    data = bytearray((tiny_copy / rel).read_bytes())
    if damage == "truncated":
        del data[len(data) // 2:]
    else:
        data[len(data) // 2] ^= 0x01
    (tiny_copy / rel).write_bytes(bytes(data))
    with pytest.raises(dataset.ShardIntegrityError, match=rf"{rel} has sha256 .* the manifest.*rerun `t2v data"):
        make_loader(tiny_copy, 8, num_workers=0)


def _tar_gz(members: list[tuple[str, bytes, bytes]], grow_last_by: int = 0) -> bytes:
    """A gzipped tar of (name, type, data) members, written by hand so that names may be hostile; the
    last header may declare `grow_last_by` more bytes than it holds."""
    import gzip
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    raw = bytearray(buf.getvalue())
    if grow_last_by:
        at = 512 * (len(members) - 1) + sum(-(-len(d) // 512) * 512 for _, _, d in members[:-1])
        raw[at + 124:at + 136] = f"{len(members[-1][2]) + grow_last_by:011o}\0".encode()
        raw[at + 148:at + 156] = b" " * 8
        raw[at + 148:at + 156] = f"{sum(raw[at:at + 512]):06o}\0 ".encode()
    return gzip.compress(bytes(raw), mtime=0)


@pytest.mark.parametrize("members,grow,problem", [
    ([("../x.clip.png", b"0", b"png")], 0, "'../x.clip.png' is an absolute path or climbs out"),
    ([("/tmp/abs.clip.png", b"0", b"png")], 0, "'/tmp/abs.clip.png' is an absolute path or climbs out"),
    ([("k.prompt.txt", b"2", b"")], 0, "'k.prompt.txt' is not a regular file"),
    ([("k.prompt.txt", b"0", b"red"), ("k.clip.png", b"0", b"x" * 600)], 10**9,
     "'k.clip.png' declares 1,000,000,600 bytes; the archive holds"),
], ids=["dot-dot", "absolute", "symlink", "size-past-end"])
def test_hostile_tar_members_are_refused_before_any_read(tiny_copy: Path, members: list, grow: int,
                                                         problem: str) -> None:
    from t2v.loader import make_loader

    rel = next(i.path for i in dataset.load_shards(tiny_copy) if i.split == "train")
    _rewrite_listed(tiny_copy, rel, _tar_gz(members, grow))
    with pytest.raises(dataset.ShardIntegrityError, match=re.escape(f"{rel}: member {problem}")):
        make_loader(tiny_copy, 8, num_workers=0)
    assert not (tiny_copy.parent / "x.clip.png").exists()


def test_a_gzip_bomb_is_refused_unread(tiny_copy: Path) -> None:
    import gzip

    rel = next(i.path for i in dataset.load_shards(tiny_copy) if i.split == "train")
    _rewrite_listed(tiny_copy, rel, gzip.compress(b"\0" * 200 * 2**20))
    with pytest.raises(dataset.ShardIntegrityError, match=rf"{rel}: decompresses past .* refused unread"):
        dataset.shard_urls(tiny_copy, "train")


def test_members_outside_the_contract_are_never_decoded(tiny_copy: Path, tmp_path: Path) -> None:
    import pickle

    from t2v import featnet
    from t2v.shards import iter_shard, tar_bytes

    witness = tmp_path / "pickle-ran"

    class Payload:
        def __reduce__(self):  # unpickling this creates the witness file
            return (open, (str(witness), "w"))

    for split in ("train", "val"):
        rel = next(i.path for i in dataset.load_shards(tiny_copy) if i.split == split)
        samples = [{**s, "extra.pyd": pickle.dumps(Payload())} for s in iter_shard(tiny_copy / rel)]
        _rewrite_listed(tiny_copy, rel, tar_bytes(samples))
    assert _train_keys(tiny_copy, batches=6)
    assert sum(len(m) for _, m in featnet.iter_split(tiny_copy, "val")) > 0
    assert not witness.exists()


# ----------------------------------------------------------------------------- 4. what a killed or failed command leaves

TINY_SETS = ["--set", "batch_size=4", "--set", "num_workers=1", "--set", "shuffle_buffer=8", "--set", "z_dim=8",
             "--set", "text_dim=16", "--set", "width=8", "--set", "log_every=1", "--set", "sample_every=1000",
             "--set", "ckpt_every=2", "--set", "select_every=0"]

BLOCKING_PLUGIN = '''
"""Test motion: once laid out, blocks (up to 5 minutes) while HOLD exists, so the command can be killed mid-work."""
import os
import time
import numpy as np
from t2v.vocab import Trajectory, register_motion

HOLD = {hold!r}
STARTED = {started!r}


@register_motion("hovering")
def hovering(rng, p):
    open(STARTED, "a").close()
    deadline = time.monotonic() + 300
    while os.path.exists(HOLD) and time.monotonic() < deadline:
        time.sleep(0.2)
    return Trajectory(np.full(p.frames, p.size / 2), np.full(p.frames, p.size / 2), np.full(p.frames, p.radius),
                      np.zeros(p.frames))
'''


def command_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's shell: no Prefect server configured (so the command starts its own), its own stores."""
    import os

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_", "T2V_"))}
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", **extra}


def start_command(args: list[str], env: dict[str, str], log: Path):
    import subprocess
    import sys

    from tests.conftest import REPO

    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_for(predicate: Callable[[], bool], proc, log: Path, timeout: float = 240.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"command ended early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting; log:\n{log.read_text()[-3000:]}"
        time.sleep(0.3)


def kill_and_check_nothing_survives(proc) -> None:
    import signal

    import psutil

    family = psutil.Process(proc.pid).children(recursive=True)
    assert family, "the command had started no process: nothing was tested"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(family, timeout=45)
    survivors = [(p.pid, p.cmdline()) for p in alive if p.is_running()]
    for p in alive:
        p.kill()
    assert survivors == []


def test_sigkill_of_data_takes_its_server_and_workers_with_it(tmp_path: Path) -> None:
    import os

    pkg = tmp_path / "plugins"
    pkg.mkdir()
    hold, started = tmp_path / "hold", tmp_path / "started"
    hold.touch()
    (pkg / "t2v_hover_plugin.py").write_text(BLOCKING_PLUGIN.format(hold=str(hold), started=str(started)))
    env = command_env(tmp_path, T2V_MOTION_PLUGINS="t2v_hover_plugin")
    env["PYTHONPATH"] = os.pathsep.join([str(pkg), env["PYTHONPATH"]])
    log = tmp_path / "data.log"
    proc = start_command(["data", "--out", str(tmp_path / "d"), "--clips-per-combo", "1", "--val-per-combo", "1",
                          "--motions", "hovering", "--colors", "red", "--workers", "2", "--no-progress"], env, log)
    wait_for(started.exists, proc, log)
    kill_and_check_nothing_survives(proc)


def test_concurrent_data_runs_one_lock_and_a_killed_run_loses_only_its_unfinished_shards(
        tmp_path: Path, prefect_api: str) -> None:
    """Fault cases 1 and 4: a second `t2v data` on a dataset being written fails fast naming the
    writer's pid; SIGKILL of the writer mid-render leaves no partial shard under a finished name and
    a stale lock; the rerun takes the lock over, renders only the unfinished shards and verifies."""
    import os
    import subprocess
    import sys
    import tarfile

    from tests.conftest import REPO

    pkg = tmp_path / "plugins"
    pkg.mkdir()
    hold, started = tmp_path / "hold", tmp_path / "started"
    hold.touch()
    (pkg / "t2v_hover_plugin.py").write_text(BLOCKING_PLUGIN.format(hold=str(hold), started=str(started)))
    env = command_env(tmp_path, T2V_MOTION_PLUGINS="t2v_hover_plugin", PREFECT_API_URL=prefect_api)
    env["PYTHONPATH"] = os.pathsep.join([str(pkg), env["PYTHONPATH"]])
    d = tmp_path / "d"
    args = ["data", "--out", str(d), "--clips-per-combo", "1", "--val-per-combo", "1", "--motions", "moving up",
            "hovering", "--colors", "red", "--shapes", "circle", "--workers", "3", "--no-progress"]
    # 3 workers: the two hovering shards block two of them, whichever order the pool takes the shards in
    log = tmp_path / "a.log"
    writer = start_command(args, env, log)
    records = d / ".cache" / "prefect-results"
    wait_for(lambda: started.exists() and records.is_dir()
             and len([p for p in records.iterdir() if p.is_file()]) >= 2, writer, log)  # moving-up done, hovering stuck

    second = subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 1, second.stderr
    assert f"is being written by another run (pid {writer.pid} on " in second.stderr
    assert str(d / dataset.LOCK) in second.stderr

    kill_and_check_nothing_survives(writer)
    visible = sorted(p for p in (d / "shards").rglob("*.tar.gz") if not p.name.startswith("."))
    assert [p.relative_to(d).as_posix() for p in visible] == ["shards/train/moving-up-0000.tar.gz",
                                                              "shards/val/moving-up-0000.tar.gz"]
    for p in visible:  # finished names hold whole shards only
        with tarfile.open(p) as tf:
            assert len(tf.getmembers()) == 3
    assert str(writer.pid) in (d / dataset.LOCK).read_text()  # the kill left its lock behind

    hold.unlink()
    rerun = subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"took over the lock of a run that did not finish (pid {writer.pid} on " in rerun.stdout + rerun.stderr
    assert "4 shards: 2 rendered, 2 cached" in rerun.stdout
    for split in {i.split for i in dataset.load_shards(d)}:
        assert dataset.shard_urls(d, split, verify=True)  # every listed shard matches its sha256
    assert (d / dataset.LOCK).read_text() == ""  # released


FULL_DISK_PLUGIN = '''
"""Test hook: while FULL exists, fsync of a file under shards/ fails with ENOSPC, as on a full disk."""
import errno
import os

FULL = {full!r}
_fsync = os.fsync


def fsync(fd):
    if os.path.exists(FULL) and "/shards/" in os.readlink(f"/proc/self/fd/{{fd}}"):
        raise OSError(errno.ENOSPC, "No space left on device")
    return _fsync(fd)


os.fsync = fsync
'''


def test_a_full_disk_fails_naming_the_shard_and_free_space_and_leaves_no_partial_shard(
        tmp_path: Path, prefect_api: str) -> None:
    """Fault case 6, injected in every rendering process (a plugin module makes fsync fail as a full
    filesystem would, after the bytes were written to the temporary file)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    pkg = tmp_path / "plugins"
    pkg.mkdir()
    full = tmp_path / "full"
    full.touch()
    (pkg / "t2v_full_disk.py").write_text(FULL_DISK_PLUGIN.format(full=str(full)))
    env = command_env(tmp_path, T2V_MOTION_PLUGINS="t2v_full_disk", PREFECT_API_URL=prefect_api)
    env["PYTHONPATH"] = os.pathsep.join([str(pkg), env["PYTHONPATH"]])
    d = tmp_path / "d"

    def data() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli", "data", "--out", str(d), *DATA_ARGS], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    failed = data()
    assert failed.returncode == 1, failed.stderr[-3000:]
    err = " ".join(failed.stderr.split())
    assert "shards failed to render" in err
    assert f"no space left to write {d}/shards/" in err
    assert "bytes free on its filesystem" in err
    assert [p for p in (d / "shards").rglob("*") if p.is_file()] == []  # no shard, no temporary file
    assert not (d / dataset.MANIFEST).exists()

    full.unlink()  # space freed
    again = data()
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 shards: 2 rendered, 0 cached" in again.stdout
    for split in ("train", "val"):
        assert dataset.shard_urls(d, split, verify=True)


def test_sigkill_of_train_leaves_no_process_and_the_next_training_marks_its_run_killed(
        tiny: Path, tmp_path: Path) -> None:
    import mlflow

    env = command_env(tmp_path)
    out = tmp_path / "run"
    log = tmp_path / "train.log"
    proc = start_command(["train", "--data", str(tiny), "--out", str(out), "--max-steps", "100000",
                          "--no-progress", *TINY_SETS], env, log)
    ckpt = out / "checkpoints" / "last.pt"
    wait_for(ckpt.exists, proc, log)
    kill_and_check_nothing_survives(proc)

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("t2v").experiment_id])
    assert run.info.status == "RUNNING"  # what the kill left

    import torch

    step = int(torch.load(ckpt, map_location="cpu", weights_only=True)["step"])
    proc = start_command(["train", "--data", str(tiny), "--out", str(out), "--max-steps", str(step + 2),
                          "--no-progress", *TINY_SETS], env, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    after = client.get_run(run.info.run_id)
    assert "is gone" in after.data.tags["t2v.killed"]
    assert after.data.tags["resumed_from_step"] == str(step)
    assert after.info.status == "FINISHED"  # the resume continued the same run to its end
    assert len(client.search_model_versions(f"run_id='{run.info.run_id}'")) == 1


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.parametrize("args,fragment", [
    pytest.param(["--set", "device=cuda"], "CUDA is not available", id="cuda-without-cuda",
                 marks=pytest.mark.skipif(_cuda_available(), reason="this machine has CUDA: device=cuda is valid")),
    pytest.param(["--set", "seed=-1"], "seed must be >= 0", id="negative-seed"),
    pytest.param(["--set", "init_from=/nonexistent/export"], "is not a generator export", id="init-from-missing"),
    pytest.param(["--experiment", ""], "experiment must be a non-empty", id="empty-experiment"),
])
def test_late_rejections_are_usage_errors_that_leave_no_run_and_no_dir(
        t2v_cli: Callable, tiny: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    out = tmp_path / "run"
    db = tmp_path / "mlflow.db"
    proc = t2v_cli("train", "--data", str(tiny), "--out", str(out), "--max-steps", "2", *TINY_SETS, *args,
                   env={"MLFLOW_TRACKING_URI": f"sqlite:///{db}"})
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr
    assert not out.exists()
    assert not db.exists()  # no store was even opened, so no FAILED run in it


def test_a_dead_tracking_server_fails_training_in_bounded_time_and_the_rerun_registers_one_version(
        tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture, prefect_api: str) -> None:
    """Fault case 5: the MLflow server is SIGKILLed mid-training; training gives up after MLflow's
    bounded retries with backoff (tightened here through MLFLOW_HTTP_REQUEST_*), naming the server
    and the checkpoint; once the server is back, the
    same command resumes the same run and registers exactly one version."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    import mlflow

    from deployments.stack import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def start_server() -> subprocess.Popen:
        return subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1",
                                 "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                                 "--artifacts-destination", str(tmp_path / "artifacts")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def up() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200
        except OSError:
            return False

    def kill(server: subprocess.Popen) -> None:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait(timeout=30)

    # MLflow's retry bounds, tightened the documented way: the defaults (4 retries, backoff 2) gave up
    # after 63 s in CI, which this test need not wait for to check that the bound holds
    env = command_env(tmp_path, MLFLOW_TRACKING_URI=url, PREFECT_API_URL=prefect_api,
                      MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
                      MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    out, log = tmp_path / "run", tmp_path / "train.log"
    args = ["train", "--data", str(tiny), "--out", str(out), "--max-steps", "40", "--no-progress", *TINY_SETS]
    server = start_server()
    try:
        wait_for(up, server, log, timeout=120)
        proc = start_command(args, env, log)
        wait_for((out / "checkpoints" / "last.pt").exists, proc, log)
        kill(server)
        t0 = time.monotonic()
        rc = proc.wait(timeout=300)
        took = time.monotonic() - t0
        text = log.read_text()
        assert rc == 1, text[-3000:]
        assert f"MLflow at {url} is unreachable" in text
        assert "checkpoint at step" in text
        assert "rerun the same command to resume" in text
        with capsys.disabled():
            print(f"\n  gave up on the dead tracking server after {took:.0f} s")
        assert took < 60, f"training took {took:.0f} s to give up on a dead tracking server"
        assert (out / "checkpoints" / "last.pt").is_file()

        server = start_server()  # the same store, back on the same address
        wait_for(up, server, log, timeout=120)
        again = start_command(args, env, tmp_path / "rerun.log")
        assert again.wait(timeout=300) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
        client = mlflow.MlflowClient(url)
        (run,) = client.search_runs([client.get_experiment_by_name("t2v").experiment_id])
        assert run.info.status == "FINISHED"
        assert int(run.data.tags["resumed_from_step"]) >= 2
        assert len(client.search_model_versions(f"run_id='{run.info.run_id}'")) == 1
    finally:
        kill(server)


# ----------------------------------------------------------------------------- 5. what `make up` trusts

def _stack_cli(*args: str, env: dict[str, str] | None = None):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    return subprocess.run([sys.executable, "-m", "deployments.stack", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=300)


def test_a_stranger_answering_health_on_the_port_is_not_taken_for_prefect(tmp_path: Path) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from deployments.stack import SERVICES, StackConfig, _running, free_port, port_in_use, up, StackError

    class Healthy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args: object) -> None:
            pass

    stranger = HTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=stranger.serve_forever, daemon=True).start()
    try:
        cfg = StackConfig(state=tmp_path / "state", data=tmp_path / "data", prefect_port=stranger.server_port,
                          mlflow_port=free_port())
        with pytest.raises(StackError, match=rf"port {stranger.server_port} on 127.0.0.1 \(prefect\) is in use by a "
                                             "process that is not this stack's"):
            up(cfg)
        assert [name for name in SERVICES if _running(cfg, name)] == []
        assert not port_in_use("127.0.0.1", cfg.mlflow_port)  # MLflow was never started
    finally:
        stranger.shutdown()


@pytest.mark.parametrize("args,env,fragment", [
    (["--prefect-port", "4311", "--mlflow-port", "4311"], {}, "both 4311; give them different ports"),
    ([], {"PREFECT_PORT": "abc"}, "port must be an integer in 1-65535, got 'abc'"),
    ([], {"MLFLOW_PORT": "70000"}, "port must be in 1-65535, got 70000"),
], ids=["same-port", "port-not-a-number", "port-out-of-range"])
def test_bad_ports_are_usage_errors_before_anything_starts(tmp_path: Path, args: list[str], env: dict[str, str],
                                                           fragment: str) -> None:
    proc = _stack_cli("up", "--state", str(tmp_path / "state"), "--data", str(tmp_path / "data"), *args, env=env)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "state").exists()


def test_a_failed_service_rolls_back_what_up_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import psutil

    from deployments import stack

    real = stack._commands
    monkeypatch.setattr(stack, "_commands", lambda cfg: {**real(cfg), "mlflow": [
        sys.executable, "-c", "import sys; print('mlflow cannot start: injected'); sys.exit(3)"]})
    monkeypatch.setenv("T2V_STACK_NO_UI", "1")
    cfg = stack.StackConfig(state=tmp_path / "state", data=tmp_path / "data", prefect_port=stack.free_port(),
                            mlflow_port=stack.free_port())
    seen: list[int] = []
    real_start = stack.start

    def start(c: stack.StackConfig, name: str, timeout: float = 120.0) -> int:
        try:
            pid = real_start(c, name, timeout)
        finally:
            if (pid_now := stack._running(c, "prefect")) is not None:
                seen.append(pid_now)
        return pid

    monkeypatch.setattr(stack, "start", start)
    with pytest.raises(stack.StackError, match="process exited 3"):
        stack.up(cfg)
    assert seen, "Prefect never started: the rollback was not exercised"
    assert not psutil.pid_exists(seen[0]) or psutil.Process(seen[0]).status() == psutil.STATUS_ZOMBIE
    assert [n for n in stack.SERVICES if stack._running(cfg, n)] == []
    assert not stack.port_in_use(cfg.host, cfg.prefect_port)


# ----------------------------------------------------------------------------- 2. who may drive the servers
# (Prefect's CORS, Host check, basic auth and the confined deployment paths run against the real
# stack in test_e2e.py; MLflow's opt-in basic-auth app here, on its own.)

def test_mlflow_auth_app_refuses_anonymous_callers_and_accepts_the_generated_admin(tmp_path: Path) -> None:
    import base64
    import urllib.error
    import urllib.request

    from deployments import stack

    cfg = stack.StackConfig(state=tmp_path / "state", data=tmp_path / "data", prefect_port=stack.free_port(),
                            mlflow_port=stack.free_port(), prefect_auth=False, mlflow_auth=True)
    stack.ensure_secrets(cfg)
    password = cfg.secret("mlflow")
    assert password
    assert (cfg.state / stack.SECRETS["mlflow"]).stat().st_mode & 0o077 == 0
    url = f"{cfg.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        stack.start(cfg, "mlflow")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=30)
        assert err.value.code == 401
        token = base64.b64encode(f"{stack.MLFLOW_ADMIN}:{password}".encode()).decode()
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Basic {token}"}),
                                    timeout=30) as r:
            assert r.status == 200
        env = cfg.env()
        assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == (stack.MLFLOW_ADMIN, password)
    finally:
        stack.stop(cfg, "mlflow")


# ----------------------------------------------------------------------------- 6. cached task results

class _Witness:
    """Unpickling this creates a file: what a forged pickle result record would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_forged_and_mangled_result_records_are_cache_misses_never_unpickled(
        t2v_cli: Callable, tmp_path: Path, prefect_api: str) -> None:
    from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
    from prefect.serializers import PickleSerializer

    d = tmp_path / "d"
    first = t2v_cli("data", "--out", str(d), *DATA_ARGS, env={"PREFECT_API_URL": prefect_api})
    assert first.returncode == 0, first.stderr
    records = sorted(p for p in (d / ".cache" / "prefect-results").iterdir() if p.is_file())
    assert len(records) >= 2
    for r in records:  # what the pipeline writes: plain JSON naming the json serializer
        import json
        assert json.loads(r.read_bytes())["metadata"]["serializer"]["type"] == "json"

    witness = tmp_path / "pickle-ran"
    forged = ResultRecord(metadata=ResultRecordMetadata(serializer=PickleSerializer(picklelib="pickle"),
                                                        storage_key=str(records[0])),
                          result=_Witness(str(witness)))
    records[0].write_bytes(forged.serialize())
    records[1].write_bytes(records[1].read_bytes()[:40])  # truncated
    again = t2v_cli("data", "--out", str(d), *DATA_ARGS, env={"PREFECT_API_URL": prefect_api})
    assert again.returncode == 0, again.stderr
    assert not witness.exists()
    n = len(records)
    assert f"{n} shards: 2 rendered, {n - 2} cached" in again.stdout
    assert sorted(p.name for p in records[0].parent.glob("*.refused")) == sorted(
        p.name + ".refused" for p in records[:2])
    third = t2v_cli("data", "--out", str(d), *DATA_ARGS, env={"PREFECT_API_URL": prefect_api})  # the rewritten records are good cache hits
    assert f"{n} shards: 0 rendered, {n} cached" in third.stdout


# ----------------------------------------------------------------------------- 7. registered versions

def test_registered_versions_hold_no_pickle_and_a_forged_one_runs_no_code(tmp_path: Path, mlflow_store: str) -> None:
    """A version is the export's tensors plus the name of `registry.pyfunc`; a version someone else
    registered with a pickled wrapper (the witness runs when it is unpickled) is read through its
    weights alone by the pipeline, which samples exactly what the sampler does."""
    import mlflow
    import numpy as np
    import yaml

    from registry import pyfunc, tracking, versions
    from t2v.models import GeneratorSpec, build_generator
    from t2v.sampler import export_generator, load_generator

    spec = GeneratorSpec("video", 8, 32)
    export = export_generator(*build_generator(spec), spec, tmp_path / "export")
    expected = load_generator(export).generate(["red circle moving up"], seed=3)
    t = tracking.configure("pickle-free", mlflow_store)
    witness = tmp_path / "pickle-ran"

    class Forged(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

        def __reduce__(self):  # unpickling this creates the witness file
            return (open, (str(witness), "w"))

    with mlflow.start_run(experiment_id=t.experiment_id):
        ours = pyfunc.log_generator(export, 8, 32, registered_model="pickle-free")
        forged = mlflow.pyfunc.log_model(name="forged", python_model=Forged(),
                                         artifacts={pyfunc.ARTIFACT_KEY: str(export)},
                                         pip_requirements=["mlflow"], registered_model_name="pickle-free")
    witness.unlink(missing_ok=True)  # whatever MLflow itself did while logging
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/pickle-free/{ours.registered_model_version}",
                                                     dst_path=str(tmp_path / "dl")))
    conf = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert conf["loader_module"] == "registry.pyfunc"
    assert not [p.name for p in local.rglob("*") if p.suffix in (".pkl", ".pickle", ".cloudpickle")]
    assert "cloudpickle" not in (local / "MLmodel").read_text()

    for version in (ours.registered_model_version, forged.registered_model_version):
        generate = versions.load_registered(f"models:/pickle-free/{version}", mlflow_store)
        assert np.array_equal(generate(["red circle moving up"], 3), expected)
    assert not witness.exists()
