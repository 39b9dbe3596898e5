"""The data-stage flow on a real Prefect server: manifest, stock-webdataset round trip, caching,
growth by motion, rebuilding of missing/corrupt shards, and crash safety."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from t2v import dataset, vocab
from t2v.render import ClipSpec, render
from t2v.io import atomic_write_bytes, sha256_file
from t2v.shards import DataParams, ShardInfo, plan

# Tiny but complete: held-out combos in both motions (purple square; square + bouncing vertically),
# several shards per (motion, split), and every shard holds at least 2 clips.
TINY: dict[str, Any] = dict(motions=["moving up", "bouncing vertically"], colors=["red", "purple"],
                            shapes=["circle", "square"], clips_per_combo=2, val_per_combo=2, frames=8, size=32,
                            seed=3, shard_size=3, workers=2)


def tiny_params(**over: Any) -> DataParams:
    kw = {**TINY, **over}
    return DataParams(colors=tuple(kw["colors"]), shapes=tuple(kw["shapes"]), motions=tuple(kw["motions"]),
                      clips_per_combo=kw["clips_per_combo"], val_per_combo=kw["val_per_combo"], frames=kw["frames"],
                      size=kw["size"], seed=kw["seed"], shard_size=kw["shard_size"])


def shard_paths(motions: list[str]) -> set[str]:
    return {s.path for s in plan(tiny_params(motions=motions))}


def run_flow(out: Path, **over: Any) -> dict[str, Any]:
    """Reruns use one worker process: each spawned worker costs seconds of start-up on a 2-core CI box,
    and the first (two-worker) run already exercises parallel rendering."""
    from flows.data import data_stage

    return data_stage(out=str(out), **{**TINY, "workers": 1, **over})


def tree(root: Path) -> dict[str, str]:
    """Every file under root (cache excluded) -> sha256."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and ".cache" not in p.parts}


@pytest.fixture(scope="module")
def built(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One first run, shared read-only; tests that change it work on a copy (the cache travels with it)."""
    from flows.data import data_stage

    root = tmp_path_factory.mktemp("built") / "data"
    state = data_stage(out=str(root), **TINY, return_state=True)
    return {"root": root, "summary": state.result(), "flow_run_id": state.state_details.flow_run_id}


@pytest.fixture
def copy_of(built: dict[str, Any], tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(built["root"], dst)
    return dst


def test_first_run_renders_every_planned_shard(built: dict[str, Any]) -> None:
    s = built["summary"]
    assert set(s["rendered"]) == shard_paths(TINY["motions"])
    assert s["cached"] == []
    assert s["root"] == str(built["root"])
    assert s["manifest"] == str(built["root"] / "manifest.parquet")


def test_manifest_schema_and_counts(built: dict[str, Any]) -> None:
    root = built["root"]
    m = dataset.load_manifest(root)
    assert list(m.columns) == ["key", "shard", "split", "prompt", "color", "shape", "motion", "seed", "frames",
                               "height", "width", "index"]
    infos = dataset.load_shards(root)
    assert {i.path for i in infos} == shard_paths(TINY["motions"])
    assert len(m) == sum(i.count for i in infos) == 14 + 12  # seen combos: 2 train + 2 val, held out: 2 each
    assert m["key"].is_unique
    for info in infos:  # published checksums are those of the files, and counts those of the manifest
        assert sha256_file(root / info.path) == info.sha256
        assert (root / info.path).stat().st_size == info.bytes
        rows = m[m["shard"] == info.path]
        assert len(rows) == info.count
        assert sorted(rows["index"]) == list(range(info.count))
        assert set(rows["motion"]) == {info.motion}
        assert set(rows["split"]) == {info.split}
    held = m.apply(lambda r: vocab.is_held_out(r["color"], r["shape"], r["motion"]), axis=1)
    assert (m.loc[held, "split"] == "heldout").all()
    assert (m.loc[~held, "split"] != "heldout").all()
    assert set(m.loc[held, "prompt"]) == {"purple square moving up", "red square bouncing vertically",
                                          "purple square bouncing vertically"}
    assert (m["frames"] == 8).all()
    assert (m["height"] == 32).all()
    assert (m["width"] == 32).all()
    assert dataset.count_summary(m) == built["summary"]["counts"] == {
        "moving up": {"train": 6, "val": 6, "heldout": 2},
        "bouncing vertically": {"train": 4, "val": 4, "heldout": 4},
    }
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["params"]["size"] == 32
    assert "motions" not in meta["params"]
    assert meta["motions"] == {mo: vocab.motions()[mo].spec_hash for mo in TINY["motions"]}
    assert meta["manifest_checksum"] == dataset.manifest_checksum(root) == built["summary"]["checksum"]
    assert not list(root.rglob(".*.tmp"))


def test_prefect_records_tasks_and_artifacts(built: dict[str, Any]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[built["flow_run_id"]])))
        names = sorted(r.name for r in runs)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[built["flow_run_id"]])))
    assert [n for n in names if n.startswith("render ")] == sorted(f"render {p}" for p in built["summary"]["rendered"])
    assert any(n.startswith("verify-shards") for n in names)
    assert any(n.startswith("publish-manifest") for n in names)
    progress = [a for a in artifacts if a.type == "progress"]
    assert progress
    assert all(float(a.data) == 100.0 for a in progress)
    (table,) = [a for a in artifacts if a.type == "table"]
    assert table.key == "data-stage-clips"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {r["motion"]: r["total"] for r in rows} == {"moving up": 14, "bouncing vertically": 12}


def test_round_trip_through_stock_webdataset(built: dict[str, Any]) -> None:
    import webdataset as wds

    root = built["root"]
    urls = [str(root / i.path) for i in dataset.load_shards(root)]
    seen = 0
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8"):
        meta = s["meta.json"]
        clip = s["clip.png"].reshape(meta["frames"], meta["height"], meta["width"], 3)
        expect, traj = render(ClipSpec(meta["key"], meta["color"], meta["shape"], meta["motion"], meta["seed"],
                                       meta["frames"], meta["height"]))
        assert clip.dtype == np.uint8, meta["key"]
        assert np.array_equal(clip, expect), meta["key"]
        assert s["prompt.txt"] == meta["prompt"]
        assert s["__key__"] == meta["key"]
        np.testing.assert_allclose(meta["trajectory"]["x"], traj.x, atol=1e-3)
        seen += 1
    assert seen == 26


def test_second_run_renders_nothing(built: dict[str, Any]) -> None:
    before = tree(built["root"])
    s = run_flow(built["root"])
    assert s["rendered"] == []
    assert set(s["cached"]) == shard_paths(TINY["motions"])
    assert tree(built["root"]) == before  # same manifest bytes too: publishing is deterministic


def test_adding_a_motion_renders_only_its_shards(copy_of: Path) -> None:
    before = tree(copy_of)
    s = run_flow(copy_of, motions=["shrinking"])
    assert set(s["rendered"]) == shard_paths(["shrinking"])
    assert set(s["cached"]) == shard_paths(TINY["motions"])
    assert s["kept_motions"] == TINY["motions"]
    after = tree(copy_of)
    assert {p: h for p, h in after.items() if p.startswith("shards/") and p in before} == \
        {p: h for p, h in before.items() if p.startswith("shards/")}  # no existing shard touched
    m = dataset.load_manifest(copy_of)
    assert set(m["motion"]) == {"moving up", "bouncing vertically", "shrinking"}
    assert len(m) == sum(i.count for i in dataset.load_shards(copy_of)) == 26 + 14
    assert set(json.loads((copy_of / "dataset.json").read_text())["motions"]) == set(m["motion"])


def test_missing_or_corrupt_shards_are_rebuilt(copy_of: Path) -> None:
    checksum = dataset.manifest_checksum(copy_of)
    infos = dataset.load_shards(copy_of)
    deleted, truncated, corrupted = infos[0].path, infos[1].path, infos[-1].path
    (copy_of / deleted).unlink()
    (copy_of / truncated).write_bytes((copy_of / truncated).read_bytes()[:100])
    data = bytearray((copy_of / corrupted).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    (copy_of / corrupted).write_bytes(bytes(data))

    s = run_flow(copy_of)
    assert sorted(s["rendered"]) == sorted([deleted, truncated, corrupted])
    assert set(s["cached"]) == shard_paths(TINY["motions"]) - {deleted, truncated, corrupted}
    assert dataset.manifest_checksum(copy_of) == checksum  # deterministic: rebuilt bytes are identical
    for info in dataset.load_shards(copy_of):
        assert sha256_file(copy_of / info.path) == info.sha256


def test_different_params_fail_clearly_unless_forced(copy_of: Path) -> None:
    before = tree(copy_of)
    with pytest.raises(dataset.DatasetMismatchError, match=r"size: 32 -> 40.*new --out.*--force"):
        run_flow(copy_of, size=40)
    assert tree(copy_of) == before

    s = run_flow(copy_of, motions=["moving up"], clips_per_combo=1, force=True)
    planned = {p.path for p in plan(tiny_params(motions=["moving up"], clips_per_combo=1))}
    # only train shards depend on clips_per_combo: val and heldout shards keep their cache keys
    assert set(s["rendered"]) == {p for p in planned if p.startswith("shards/train/")}
    assert set(s["cached"]) == {p for p in planned if not p.startswith("shards/train/")}
    m = dataset.load_manifest(copy_of)
    assert set(m["motion"]) == {"moving up"}
    on_disk = {p.relative_to(copy_of).as_posix() for p in copy_of.glob("shards/*/*.tar.gz")}
    assert on_disk == set(m["shard"])  # shards of the replaced dataset are gone


PLUGIN = '''
"""Test motion: fails while MARKER exists, after at least one clip has been laid out anywhere."""
import os
import numpy as np
from t2v.vocab import Trajectory, register_motion

MARKER = {marker!r}
LOG = {log!r}


@register_motion("wobbling")
def wobbling(rng, p):
    if os.path.exists(MARKER) and os.path.exists(LOG):
        raise RuntimeError("injected failure mid-shard")
    with open(LOG, "a") as f:
        f.write("laid out one clip\\n")
    x = p.size / 2 + 4 * np.sin(np.linspace(0, 6, p.frames))
    return Trajectory(x, np.full(p.frames, p.size / 2), np.full(p.frames, p.radius), np.zeros(p.frames))
'''


@pytest.fixture
def failing_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """A motion registered through T2V_MOTION_PLUGINS (so spawned workers load it too), unregistered after."""
    name = f"t2v_test_plugin_{os.getpid()}_{tmp_path.name}".replace("-", "_")
    pkg = tmp_path / "plugins"
    pkg.mkdir()
    files = {"marker": tmp_path / "fail.marker", "log": tmp_path / "layouts.log"}
    (pkg / f"{name}.py").write_text(textwrap.dedent(PLUGIN.format(marker=str(files["marker"]),
                                                                  log=str(files["log"]))))
    files["marker"].touch()
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(pkg), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv(vocab.PLUGIN_ENV, name)
    yield files
    vocab._REGISTRY.pop("wobbling", None)
    sys.modules.pop(name, None)


def test_failure_mid_shard_leaves_nothing_and_rerun_completes(copy_of: Path, failing_plugin: dict[str, Path]) -> None:
    before = tree(copy_of)
    wobbling = shard_paths(["wobbling"])
    assert all(len(s.clips) >= 2 for s in plan(tiny_params(motions=["wobbling"])))

    with pytest.raises(RuntimeError, match=r"shards failed to render.*injected failure"):
        run_flow(copy_of, motions=["wobbling"])
    assert failing_plugin["log"].read_text().count("\n") >= 1  # failed after rendering part of a shard
    assert not [p for p in wobbling if (copy_of / p).exists()]
    assert not [p for p in copy_of.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert tree(copy_of) == before  # manifest, shards.parquet, dataset.json and old shards untouched

    failing_plugin["marker"].unlink()
    s = run_flow(copy_of, motions=["wobbling"])
    assert set(s["rendered"]) == wobbling
    assert set(s["cached"]) == shard_paths(TINY["motions"])
    m = dataset.load_manifest(copy_of)
    assert set(m["motion"]) == {"moving up", "bouncing vertically", "wobbling"}
    for info in dataset.load_shards(copy_of):
        assert sha256_file(copy_of / info.path) == info.sha256


def test_atomic_write_failing_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "shards" / "train" / "x.tar.gz"

    def boom(fd: int) -> None:
        raise OSError("disk full (injected)")

    monkeypatch.setattr(os, "fsync", boom)  # the bytes are written; the sync before the rename fails
    with pytest.raises(OSError, match="injected"):
        atomic_write_bytes(target, b"x" * 100_000)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_manifest_checksum_follows_shard_content(tmp_path: Path) -> None:
    params = tiny_params(motions=["moving up"])
    specs = plan(params)
    infos = [ShardInfo(s.path, s.motion, s.split, hashlib.sha256(s.path.encode()).hexdigest(), len(s.clips), 1)
             for s in specs]
    dataset.publish(tmp_path, params, specs, infos)
    first = dataset.manifest_checksum(tmp_path)
    dataset.publish(tmp_path, params, specs, list(reversed(infos)))
    assert dataset.manifest_checksum(tmp_path) == first  # order-independent
    infos[0] = replace(infos[0], sha256="0" * 64)
    dataset.publish(tmp_path, params, specs, infos)
    assert dataset.manifest_checksum(tmp_path) != first
    with pytest.raises(ValueError, match="do not match the planned shards"):
        dataset.publish(tmp_path, params, specs, infos[1:])


def test_publish_removes_superseded_shards_and_stale_temp_files(tmp_path: Path) -> None:
    def infos_of(specs: list) -> list[ShardInfo]:
        return [ShardInfo(s.path, s.motion, s.split, "0" * 64, len(s.clips), 1) for s in specs]

    grown = plan(tiny_params(motions=["moving up", "bouncing vertically"]))
    dataset.publish(tmp_path, tiny_params(motions=["moving up", "bouncing vertically"]), grown, infos_of(grown))
    params = tiny_params(motions=["moving up"])
    specs = plan(params)
    dropped = [s for s in grown if s.motion == "bouncing vertically"]
    orphan = tmp_path / dropped[0].path  # listed by the previous manifest, not by the new one
    stale = tmp_path / "shards" / "train" / f".{Path(specs[0].path).name}.1234abcd.tmp"  # a killed writer's
    foreign = [tmp_path / "shards" / "train" / "dropped-motion-0000.tar.gz",  # never listed: not ours
               tmp_path / "shards" / "train" / ".keep.tmp"]
    for p in (orphan, stale, *foreign):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"junk")
    dataset.publish(tmp_path, params, specs, infos_of(specs))
    assert not orphan.exists()
    assert not stale.exists()
    assert all(p.read_bytes() == b"junk" for p in foreign)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json", "manifest.parquet", "shards",
                                                          "shards.parquet"]
