"""Generic file plumbing every stage shares: atomic writes, sha256, and the source hash that keys caches.

Every file the pipeline publishes goes through `atomic_write_bytes` or `atomic_dir`: written under a
hidden temporary name, fsynced and renamed, so a reader (or a crash) sees the old file or the whole
new one. `source_hash` is the one way code becomes part of a cache key: a shard's, a training's, an
evaluation's or the featnet classifier's.
"""

from __future__ import annotations

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


def source_hash(*parts: ModuleType | str | bytes) -> str:
    """16 hex digits over modules' source files (a module, or its dotted name: found without importing
    it) and any bytes given: what keys a cache on "this code, these settings"."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, bytes):
            h.update(part + b"\0")
            continue
        name = part if isinstance(part, str) else part.__name__
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            raise ModuleNotFoundError(f"no source for module {name!r}")
        h.update(f"{name}\0".encode() + Path(spec.origin).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def safe_name(text: str) -> str:
    """Lower-case letters, digits and dashes: a file name (or a Prefect artifact key) from any text."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
