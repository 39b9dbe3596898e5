"""Generic file plumbing every stage shares: atomic writes, sha256, and the source hash that keys caches.

Every file the pipeline publishes goes through `atomic_write_bytes` or `atomic_dir`: written under a
hidden temporary name, fsynced and renamed, so a reader (or a crash) sees the old file or the whole
new one. `source_hash` is the one way code becomes part of a cache key: a shard's, a training's, an
evaluation's or the featnet classifier's.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Iterator


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a hidden temporary name beside `path`, fsync, rename: readers see all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, f"no space left to write {path} ({len(data):,} bytes): "
                                   f"{shutil.disk_usage(path.parent).free:,} bytes free on its filesystem; "
                                   f"free some space and rerun") from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a directory under a hidden temporary name; on success it replaces `path` in one rename,
    so readers see the old directory or the whole new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    old = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.old"
    try:
        tmp.mkdir()
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def module_source(name: str) -> Path:
    """The source file of a module given by its dotted name, found without importing it (only its
    parent packages are imported)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        raise ModuleNotFoundError(f"no source for module {name!r}")
    return Path(spec.origin)


def source_hash(*parts: ModuleType | str | bytes) -> str:
    """16 hex digits over modules' source files (a module, or its dotted name: found without importing
    it) and any bytes given: what keys a cache on "this code, these settings"."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            h.update(part + b"\0")
            continue
        name = part if isinstance(part, str) else part.__name__
        h.update(f"{name}\0".encode() + module_source(name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def safe_name(text: str) -> str:
    """Lower-case letters, digits and dashes: a file name (or a Prefect artifact key) from any text."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


class BusyError(RuntimeError):
    """Another live process holds the lock: the message names it (pid, host, since when)."""


def _holder(fd: int) -> dict | None:
    import json

    raw = os.pread(fd, 4096, 0)
    try:
        return json.loads(raw) if raw.strip() else None
    except ValueError:
        return {"unreadable": raw[:80].decode(errors="replace")}


def _lock_or_busy(fd: int, path: Path, what: str) -> None:
    """Take the lock on `fd` without waiting, or raise BusyError naming its holder."""
    import fcntl

    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        h = _holder(fd)
        who = f"pid {h.get('pid')} on {h.get('host')}, since {h.get('since')}" if h else "a process that wrote no details"
        raise BusyError(f"{what} is being written by another run ({who}); the lock is {path}. "
                        f"Wait for that run to finish or stop it, then rerun") from None


@contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[dict | None]:
    """Hold a POSIX record lock on `path` (a small JSON file naming the holder) while writing `what`.

    Fails fast with BusyError when a live process holds it. The kernel drops the lock of a process
    that dies, so a lock left by a killed run is taken over: the file still names that holder, which is
    yielded (None when the previous holder released it, which empties the file).
    `lockf` locks hold across NFS clients too, unlike `flock` on some kernels."""
    import json
    import socket
    import time

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock_or_busy(fd, path, what)
        stale = _holder(fd)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        try:
            yield stale
        finally:
            os.ftruncate(fd, 0)  # released (a failure too): the next holder finds nothing stale
    finally:
        os.close(fd)  # drops the lock


def check_unlocked(path: Path, what: str) -> None:
    """BusyError if a live process holds `exclusive_lock(path)` now: a fast check before starting
    anything (the lock itself decides). Creates nothing."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return
    try:
        _lock_or_busy(fd, path, what)
    finally:
        os.close(fd)
