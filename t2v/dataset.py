"""The dataset as a whole: request validation, merging with an existing dataset, and the manifest.

A dataset root holds `shards/`, `manifest.parquet` (one row per sample), `shards.parquet` (one row
per shard with its sha256) and `dataset.json` (the parameters and motion spec hashes it was built
with). The manifest files are published only after every shard verifies, each written to a
temporary name and renamed into place. A run on an existing root with the same non-motion
parameters keeps the motions already there, so adding a motion grows the dataset.

The pipeline writes only into roots that are its own (a `.t2v-dataset` marker, written before the
first shard, or a published `dataset.json`), and deletes only shard files that a previous manifest
of the same root listed: a user's files next to a dataset are never touched.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
from glob import escape as glob_escape
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from t2v import shards as sh
from t2v.io import atomic_write_bytes, source_hash
from t2v import vocab
from t2v.render import renderer_version
from t2v.shards import DataParams, ShardInfo, ShardSpec

MANIFEST = "manifest.parquet"
SHARDS_TABLE = "shards.parquet"
DATASET_JSON = "dataset.json"
MARKER = ".t2v-dataset"  # claims a root for the pipeline before its first shard is written
LOCK = ".t2v-data.lock"  # held by the one run writing the root (`t2v.io.exclusive_lock`)
FORMAT = 1  # bump when the layout of the files above changes
SAMPLE_KEYS = ("clip.png", "prompt.txt", "meta.json")  # what `shards.encode_sample` writes: the contract
FILE_COUNT_CAP = 10_000
ROOT_ENV = "T2V_DATA_ROOT"  # set by a deployment server: flow path parameters must resolve inside it  # counting the files of a foreign directory stops here

MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("shard", pa.string()),
    ("split", pa.string()),
    ("prompt", pa.string()),
    ("color", pa.string()),
    ("shape", pa.string()),
    ("motion", pa.string()),
    ("seed", pa.int64()),
    ("frames", pa.int32()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("index", pa.int32()),  # position of the sample within its shard
])
SHARDS_SCHEMA = pa.schema([
    ("path", pa.string()),
    ("motion", pa.string()),
    ("split", pa.string()),
    ("sha256", pa.string()),
    ("count", pa.int64()),
    ("bytes", pa.int64()),
])
NON_MOTION_PARAMS = ("colors", "shapes", "clips_per_combo", "val_per_combo", "frames", "size", "seed", "shard_size")


class DatasetMismatchError(ValueError):
    """The output dir holds a dataset built with different parameters."""


class NotADatasetError(ValueError):
    """The output dir holds files the pipeline did not write, or a dataset it cannot read."""


@dataclass(frozen=True)
class Request:
    """A validated data-stage run: where it goes and the full (merged) parameters it builds."""

    root: Path  # absolute
    params: DataParams  # motions resolved: the union with the existing dataset's motions unless forced
    requested: tuple[str, ...]  # the motions this run was asked for
    kept: tuple[str, ...]  # motions carried over from the existing dataset


def format_version() -> str:
    """Hash of the shard module's code and the palette: with the renderer and motion hashes it keys shard
    caches. The whole module, not a function walk, so helpers called from comprehensions count too."""
    return source_hash(sh, repr((vocab.COLORS, vocab.BACKGROUND)).encode())


def check_output_dir(out: str | os.PathLike[str], hint: str = "choose another --out") -> Path:
    """Fail, naming the path, unless `out` is a directory or can be created as one by this user."""
    path = Path(out).expanduser().absolute()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"output dir {str(path)!r} exists and is not a directory; {hint}")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"output dir {str(path)!r} is not writable; {hint}")
        return path
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"output dir {str(path)!r} cannot be created: {str(parent)!r} is a file, not a directory; "
                         f"{hint}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"output dir {str(path)!r} cannot be created: {str(parent)!r} is not writable; "
                         f"{hint}")
    return path


def _count_files(root: Path, cap: int = FILE_COUNT_CAP) -> int:
    n = 0
    for _dir, _subdirs, files in os.walk(root):
        n += len(files)
        if n >= cap:
            return cap
    return n


def confine(allowed_root: str | os.PathLike[str] | None, **paths: str | os.PathLike[str] | None) -> None:
    """ValueError naming the parameter and the root unless every given path resolves inside
    `allowed_root` (symlinks and `..` followed); nothing to check without a root."""
    if not allowed_root:
        return
    root = Path(allowed_root).expanduser().resolve()
    for name, value in paths.items():
        if value is None:
            continue
        resolved = Path(value).expanduser().resolve()
        if not resolved.is_relative_to(root):
            raise ValueError(f"parameter {name}={str(value)!r} resolves to {str(resolved)!r}, outside the data root "
                             f"{str(root)!r} this server allows (${ROOT_ENV}); use a path inside it")


def check_dataset_dir(out: str | os.PathLike[str]) -> Path:
    """`check_output_dir`, and the directory is new, empty, or a t2v dataset whose tables read back.

    A non-empty directory without the marker or a `dataset.json` is someone else's: refused before
    any work, since publishing prunes superseded shards. An unreadable dataset is refused the same
    way rather than "repaired" by deleting.
    """
    root = check_output_dir(out)
    if not root.is_dir():
        return root
    choose = "choose an empty or new --out"
    if not (root / MARKER).is_file() and not (root / DATASET_JSON).is_file():
        n = _count_files(root)
        if n:
            many = f"{n}+" if n >= FILE_COUNT_CAP else str(n)
            raise NotADatasetError(f"{str(root)!r} exists and is not a t2v dataset (it holds {many} "
                                   f"file{'s' if n != 1 else ''}); {choose}")
        return root
    for name, read in ((DATASET_JSON, read_dataset_json), (SHARDS_TABLE, load_shards), (MANIFEST, load_manifest)):
        if (root / name).is_file():
            try:
                read(root)
            except Exception as e:  # any parse failure: json, parquet, schema
                raise NotADatasetError(f"{str(root)!r} exists and is not a t2v dataset ({name} is unreadable: "
                                       f"{type(e).__name__}: {e}); {choose}") from e
    return root


def claim(root: str | os.PathLike[str]) -> Path:
    """Mark `root` as the pipeline's (creating it) before the first shard lands, so a run killed before
    its manifest is published can be rerun into the same root. Call after `validate_request`."""
    root = Path(root)
    if not (root / MARKER).is_file():
        body = {"t2v": "dataset root", "format": FORMAT,
                "note": "files under shards/ that this root's manifest lists are the pipeline's"}
        atomic_write_bytes(root / MARKER, (json.dumps(body, indent=2) + "\n").encode())
    return root


def canonical_params(p: DataParams) -> DataParams:
    """Validated params with colours, shapes and motions in vocabulary order and without repeats,
    so the same choices in any order name the same dataset."""
    sh.validate_params(p)
    colors = tuple(c for c in vocab.COLORS if c in p.colors)
    shapes = tuple(s for s in vocab.SHAPES if s in p.shapes)
    motions = tuple(m for m in vocab.motion_names() if m in p.motions)
    reg = vocab.motions()
    for m in motions:  # with every motion (none named), ones invisible on the chosen shapes are skipped
        if not set(reg[m].shapes) & set(shapes):
            raise ValueError(f"motion {m!r} is only visible on {', '.join(reg[m].shapes)}, "
                             f"none of the chosen shapes ({', '.join(shapes)})")
    return replace(p, colors=colors, shapes=shapes, motions=motions)


def non_motion_params(p: DataParams) -> dict[str, object]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(p).items() if k in NON_MOTION_PARAMS}


def read_dataset_json(root: str | os.PathLike[str]) -> dict | None:
    path = Path(root) / DATASET_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def previous_motions(root: Path) -> list[str]:
    """Motions listed by the published manifest at `root` (empty when there is none)."""
    path = root / SHARDS_TABLE
    if not path.is_file():
        return []
    return list(dict.fromkeys(pq.read_table(path, columns=["motion"]).column("motion").to_pylist()))


def validate_request(params: DataParams, out: str | os.PathLike[str], force: bool = False) -> Request:
    """Every check of a data-stage run, before any directory is created or any clip rendered.

    Same non-motion parameters as the dataset already at `out`: its motions are kept (union).
    Different ones: an error naming them, unless `force`, which rebuilds with the new parameters
    (and drops kept motions that are no longer registered).
    """
    p = canonical_params(params)
    root = check_dataset_dir(out)
    reg = vocab.motions()
    requested = tuple(m for m in p.resolved_motions() if set(reg[m].shapes) & set(p.shapes))
    existing = read_dataset_json(root)
    kept: tuple[str, ...] = ()
    if existing is not None:
        old = existing.get("params", {})
        new = non_motion_params(p)
        diff = [k for k in NON_MOTION_PARAMS if old.get(k) != new[k]]
        if diff and not force:
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diff)
            raise DatasetMismatchError(
                f"output dir {str(root)!r} holds a dataset built with different parameters ({detail}); "
                f"use a new --out, or --force to rebuild it with the new parameters")
        if not diff:
            prev = previous_motions(root)
            missing = [m for m in prev if m not in reg]
            if missing and not force:
                raise DatasetMismatchError(
                    f"dataset at {str(root)!r} contains motion(s) {missing} that are not registered now "
                    f"(plugins are named by ${vocab.PLUGIN_ENV}); register them, use a new --out, or --force")
            kept = tuple(m for m in prev if m not in requested and m in reg)
    union = set(requested) | set(kept)
    merged = replace(p, motions=tuple(m for m in reg if m in union))
    return Request(root, merged, requested, tuple(m for m in merged.motions if m in kept))


def manifest_table(specs: Iterable[ShardSpec]) -> pa.Table:
    """One row per sample, in shard order then position within the shard."""
    rows: dict[str, list] = {f.name: [] for f in MANIFEST_SCHEMA}
    for s in specs:
        for i, c in enumerate(s.clips):
            for name, value in (("key", c.key), ("shard", s.path), ("split", s.split), ("prompt", c.prompt),
                                ("color", c.color), ("shape", c.shape), ("motion", c.motion), ("seed", c.seed),
                                ("frames", c.frames), ("height", c.size), ("width", c.size), ("index", i)):
                rows[name].append(value)
    return pa.table(rows, schema=MANIFEST_SCHEMA)


def shards_table(infos: Iterable[ShardInfo]) -> pa.Table:
    infos = sorted(infos, key=lambda i: i.path)
    return pa.table({f.name: [getattr(i, f.name) for i in infos] for f in SHARDS_SCHEMA}, schema=SHARDS_SCHEMA)


def _checksum(infos: Iterable[ShardInfo]) -> str:
    body = "\n".join(f"{i.path}\t{i.motion}\t{i.split}\t{i.sha256}\t{i.count}\t{i.bytes}"
                     for i in sorted(infos, key=lambda i: i.path))
    return hashlib.sha256(body.encode()).hexdigest()


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def publish(root: str | os.PathLike[str], params: DataParams, specs: list[ShardSpec],
            infos: list[ShardInfo]) -> Path:
    """Write dataset.json, shards.parquet and manifest.parquet (in that order, each atomically) for
    shards that have already been verified; returns the manifest path.

    manifest.parquet goes last: its presence means the rest is complete. Shard files under
    `shards/` that this manifest does not list (left by a forced rebuild) and stale temporary
    files are removed afterwards.
    """
    root = Path(root)
    by_path = {i.path: i for i in infos}
    if sorted(by_path) != sorted(s.path for s in specs):
        raise ValueError("shard infos do not match the planned shards: "
                         f"{sorted(set(by_path) ^ {s.path for s in specs})}")
    for s in specs:
        if by_path[s.path].count != len(s.clips):
            raise ValueError(f"{s.path}: {by_path[s.path].count} samples, planned {len(s.clips)}")
    reg = vocab.motions()
    meta = {
        "format": FORMAT,
        "params": non_motion_params(params),
        "motions": {m: reg[m].spec_hash for m in params.resolved_motions()},
        "renderer_version": renderer_version(),
        "format_version": format_version(),
        "manifest_checksum": _checksum(infos),
        "counts": count_summary(manifest_table(specs).to_pandas()),
    }
    previous = {i.path for i in load_shards(root)} if (root / SHARDS_TABLE).is_file() else set()
    atomic_write_bytes(root / DATASET_JSON, (json.dumps(meta, indent=2) + "\n").encode())
    atomic_write_bytes(root / SHARDS_TABLE, _parquet_bytes(shards_table(infos)))
    atomic_write_bytes(root / MANIFEST, _parquet_bytes(manifest_table(specs)))
    prune_superseded(root, previous, set(by_path))
    return root / MANIFEST


_TMP_TAIL = re.compile(r"\.[0-9a-f]{8}\.tmp")  # what `atomic_write_bytes` appends to a hidden temp name


def prune_superseded(root: Path, previous: set[str], listed: set[str]) -> list[str]:
    """Remove the shards the previous manifest listed and this one does not, and the temporary files
    a killed writer of one of those shards left behind; returns their paths.

    Only files the pipeline provably wrote go: a file that no manifest of this root ever listed, or a
    temporary name that is not a shard's, stays, whatever its name looks like.
    """
    removed = []
    for rel in sorted(previous - listed):
        path = root / rel
        if path.is_file():
            path.unlink()
            removed.append(rel)
    for rel in sorted(previous | listed):
        shard = root / rel
        if not shard.parent.is_dir():
            continue
        for tmp in shard.parent.glob(f".{glob_escape(shard.name)}.*.tmp"):
            if _TMP_TAIL.fullmatch(tmp.name[len(shard.name) + 1:]) and tmp.is_file():
                tmp.unlink()
                removed.append(tmp.relative_to(root).as_posix())
    return removed


def load_manifest(root: str | os.PathLike[str]) -> pd.DataFrame:
    """The published per-sample manifest; raises FileNotFoundError naming the root when there is none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} under {str(root)!r}: run `t2v data --out {root}` first")
    return pq.read_table(path).to_pandas()


def load_shards(root: str | os.PathLike[str]) -> list[ShardInfo]:
    """The published per-shard table, as ShardInfos sorted by path."""
    path = Path(root) / SHARDS_TABLE
    if not path.is_file():
        raise FileNotFoundError(f"no {SHARDS_TABLE} under {str(root)!r}: run `t2v data --out {root}` first")
    return [ShardInfo(**r) for r in pq.read_table(path).to_pylist()]


class ShardIntegrityError(ValueError):
    """A listed shard is missing or its bytes are not the ones the manifest published."""


def shard_urls(root: str | os.PathLike[str], split: str, verify: bool = True) -> list[str]:
    """Absolute paths of the shards the published manifest lists for one split, for `webdataset`.

    Exactly those: a file dropped into `shards/<split>/` is never read, so a run's manifest checksum
    names all it trained or was judged on. With `verify`, each shard is read once: its sha256 is
    checked against the manifest, then its tar headers by `member_problems`. On a 2-core machine the
    default dataset (15.6 MiB, 65 shards) takes 0.75 s, about 24 s per 500 MB; sha256 alone is 0.5 s
    per 500 MB, and Python's tar header parsing is most of the rest.
    """
    root = Path(root)
    if not (root / SHARDS_TABLE).is_file():
        raise FileNotFoundError(f"no {split} shards under {str(root)!r}: it has no published manifest "
                                f"({SHARDS_TABLE}); build a dataset first with `t2v data --out {root}`")
    infos = [i for i in load_shards(root) if i.split == split]
    if not infos:
        raise FileNotFoundError(f"no {split} shards under {str(root)!r}: its manifest lists none "
                                f"(expected shards/{split}/<motion>-NNNN{sh.SHARD_SUFFIX})")
    if verify:
        bad = []
        for i in infos:
            path = root / i.path
            if not path.is_file():
                bad.append(f"{i.path} is missing")
                continue
            data = path.read_bytes()  # once, for both checks
            if (digest := hashlib.sha256(data).hexdigest()) != i.sha256:
                bad.append(f"{i.path} has sha256 {digest[:12]}, the manifest {i.sha256[:12]}")
            else:
                bad += [f"{i.path}: {problem}" for problem in member_problems(data)]
        if bad:
            raise ShardIntegrityError(f"{len(bad)} {split} shard(s) of {str(root)!r} differ from its manifest: "
                                      f"{'; '.join(bad[:5])}; rerun `t2v data --out {root}` with the same "
                                      f"parameters to rebuild them")
    return [str(root / i.path) for i in infos]


def member_problems(data: bytes, max_ratio: int = 32) -> list[str]:
    """What is wrong with the tar headers of a shard's bytes, found without extracting or allocating by them:
    member names that are absolute or climb out (`..`), members that are not regular files (links,
    devices), sizes declared past the end of the archive, and more than `max_ratio` times its
    compressed size when decompressed (a gzip bomb). Empty for every shard the pipeline writes."""
    import tarfile
    import zlib
    from pathlib import PurePosixPath

    cap = max_ratio * len(data) + 2**20
    try:
        z = zlib.decompressobj(wbits=31)  # gzip
        raw = z.decompress(data, cap + 1)
    except zlib.error as e:
        return [f"is not gzip data ({e})"]
    if len(raw) > cap or z.unconsumed_tail:
        return [f"decompresses past {cap:,} bytes ({max_ratio}x its size): refused unread"]
    problems = []
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for m in tar:
                parts = PurePosixPath(m.name).parts
                if m.name.startswith("/") or ".." in parts:
                    problems.append(f"member {m.name!r} is an absolute path or climbs out of the archive")
                elif not m.isreg():
                    problems.append(f"member {m.name!r} is not a regular file")
                elif m.offset_data + m.size > len(raw):
                    problems.append(f"member {m.name!r} declares {m.size:,} bytes; the archive holds "
                                    f"{max(0, len(raw) - m.offset_data):,} after its header")
    except tarfile.TarError as e:
        problems.append(f"is not a readable tar ({type(e).__name__}: {e})")
    return problems


def contract_sample(sample: dict) -> dict:
    """Only the members the shard contract names (and webdataset's `__key__`/`__url__`): anything else
    in a tar, a `.pyd` pickle say, is dropped before a decoder sees it."""
    return {k: v for k, v in sample.items() if k in SAMPLE_KEYS or k.startswith("__")}


def geometry(root: str | os.PathLike[str]) -> tuple[int, int]:
    """(frames, side) of the dataset's clips, from its manifest (no shard is opened): one geometry, square."""
    m = pq.read_table(Path(root) / MANIFEST, columns=["frames", "height", "width"]) if (
        Path(root) / MANIFEST).is_file() else None
    if m is None or m.num_rows == 0:
        raise FileNotFoundError(f"no train shards under {str(root)!r}: it has no published manifest ({MANIFEST}); "
                                f"build a dataset first with `t2v data --out {root}`")
    sizes = set(zip(*(m.column(c).to_pylist() for c in ("frames", "height", "width"))))
    if len(sizes) != 1:
        raise ValueError(f"dataset {str(root)!r} mixes clip geometries (frames, height, width): {sorted(sizes)}")
    frames, height, width = sizes.pop()
    if height != width:
        raise ValueError(f"clips must be square, got {height}x{width}")
    return int(frames), int(height)


def write_dataset(root: str | os.PathLike[str], params: DataParams) -> list[ShardInfo]:
    """Plan, render and publish a whole dataset in this process: the data stage's bytes without Prefect
    (tests, notebooks). Validation, marker and pruning as in the flow."""
    req = validate_request(params, root, force=True)
    claim(req.root)
    specs = sh.plan(req.params)
    infos = [sh.write_shard(req.root, s) for s in specs]
    publish(req.root, req.params, specs, infos)
    return infos


def count_summary(manifest: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Clips per motion and split: {motion: {"train": n, "val": n, "heldout": n}}."""
    out: dict[str, dict[str, int]] = {}
    for (motion, split), n in manifest.groupby(["motion", "split"], sort=False).size().items():
        out.setdefault(motion, {s: 0 for s in sh.SPLITS})[split] = int(n)
    return out


def split_totals(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    """Clips per split, summed over the motions of a `count_summary`."""
    return {s: sum(c[s] for c in counts.values()) for s in sh.SPLITS}


def summary_profile(root: str | os.PathLike[str]) -> dict[str, object]:
    """What a dataset holds, for a person reading a run: clips per split, the motions, the shards."""
    counts = count_summary(load_manifest(root))
    return {"clips": split_totals(counts), "motions": sorted(counts), "shards": len(load_shards(root))}


def manifest_checksum(root: str | os.PathLike[str]) -> str:
    """sha256 over the published shards table sorted by path: changes iff any shard's content changes."""
    return _checksum(load_shards(root))


DASK_SCHEMES = ("tcp", "tls")  # how `dask scheduler` listens (its default is tcp://HOST:8786)


def check_dask_address(address: str, timeout: float = 10.0) -> str:
    """`address` if a Dask scheduler answers there, else ValueError naming it: checked before any work."""
    parts = urlsplit(address)
    if parts.scheme not in DASK_SCHEMES or not parts.hostname or parts.port is None:
        raise ValueError(f"dask_address must look like tcp://HOST:PORT (schemes: {', '.join(DASK_SCHEMES)}), "
                         f"got {address!r}")
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout):
            pass
    except OSError as e:
        raise ValueError(f"no Dask scheduler reachable at {address} ({e}); start one with `dask scheduler` "
                         f"and workers with `dask worker {address}`, or leave dask_address out to render in "
                         f"local processes") from None
    return address
