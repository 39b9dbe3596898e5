"""The `t2v` command as a user runs it (a subprocess), and the media writers behind `t2v preview`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from t2v import dataset, media
from t2v.render import ClipSpec, render


def test_every_subcommand_has_help_and_vocab_does_not_import_prefect(t2v_cli: Callable) -> None:
    top = t2v_cli("--help")
    assert top.returncode == 0
    assert all(c in top.stdout for c in ("vocab", "preview", "data"))
    for command in ("vocab", "preview", "data"):
        r = t2v_cli(command, "--help")
        assert r.returncode == 0, r.stderr
        assert f"usage: t2v {command}" in r.stdout, r.stderr
    r = t2v_cli("vocab", "--json", env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert r.returncode == 0
    assert "t2v.vocab" in imported
    assert not {m.split(".")[0] for m in imported} & {"prefect", "torch", "mlflow"}
    assert "flows.data" not in imported


def test_vocab_json(t2v_cli: Callable) -> None:
    r = t2v_cli("vocab", "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert set(v) == {"colors", "shapes", "motions", "held_out"}
    assert v["colors"] == ["red", "green", "blue", "yellow", "purple"]
    assert v["shapes"] == ["circle", "square", "triangle"]
    assert len(v["motions"]) == 18
    assert "spinning counter-clockwise" in v["motions"]
    assert "red circle moving up-right" in v["held_out"]
    assert "purple square moving up" in v["held_out"]
    assert all(len(p.split()) >= 3 and p.split()[0] in v["colors"] for p in v["held_out"])  # full, with colour
    assert "red circle moving up" not in v["held_out"]


@pytest.mark.parametrize("ext", [".gif", ".mp4"])
def test_preview_writes_a_decodable_animation_with_t_frames(t2v_cli: Callable, tmp_path: Path, ext: str) -> None:
    out = tmp_path / f"clip{ext}"
    r = t2v_cli("preview", "red circle moving up-right", "-o", str(out), "--frames", "8", "--size", "32",
                "--seed", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout
    assert "held-out" in r.stdout
    frames = read_frames(out)
    assert frames.shape == (8, 128, 128, 3)  # 4x nearest-neighbour upscale of 32 px
    expect, _ = render(ClipSpec("preview-red-circle-moving-up-right", "red", "circle", "moving up-right", 5, 8, 32))
    small = frames[:, 2::4, 2::4].astype(int)  # one pixel from the middle of each 4x4 block
    tolerance = 0 if ext == ".gif" else 40  # GIF palette holds the clip's 16 colours exactly; H.264 is lossy
    assert np.abs(small - expect).max() <= tolerance
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary files left


def test_preview_png_is_a_contact_sheet_of_exact_frames(t2v_cli: Callable, tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    r = t2v_cli("preview", "blue triangle spinning clockwise", "-o", str(out), "--frames", "4", "--size", "32",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    sheet = np.asarray(Image.open(out).convert("RGB"))
    expect, _ = render(ClipSpec("preview-blue-triangle-spinning-clockwise", "blue", "triangle",
                                "spinning clockwise", 0, 4, 32))
    cell = 64 + 1  # 2x upscale plus a grid line
    label_w = sheet.shape[1] - 4 * cell
    assert sheet.shape[0] == cell
    assert label_w > 0
    last = sheet[:64, label_w + 3 * cell:label_w + 3 * cell + 64]
    assert np.array_equal(last, media.upscale(expect, 2)[3])


@pytest.mark.parametrize("prompt,out,fragments", [
    ("red circle moving sideways", "clip.gif", ["'sideways'", "known words", "moving up"]),
    ("red hexagon moving up", "clip.gif", ["'hexagon'", "circle"]),
    ("red circle moving up", "clip.avi", ["'.avi'", ".gif, .mp4, .png"]),
])
def test_preview_bad_input_exits_2_and_writes_nothing(t2v_cli: Callable, tmp_path: Path, prompt: str, out: str,
                                                      fragments: list[str]) -> None:
    r = t2v_cli("preview", prompt, "-o", str(tmp_path / out), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert all(f in r.stderr for f in fragments), r.stderr
    assert list(tmp_path.iterdir()) == []


def test_data_end_to_end_through_the_command(t2v_cli: Callable, prefect_api: str, tmp_path: Path) -> None:
    out = tmp_path / "data"
    r = t2v_cli("data", "--out", str(out), "--clips-per-combo", "2", "--val-per-combo", "1",
                "--motions", "moving up", "expanding", "--colors", "red", "blue", "--shapes", "circle",
                "--frames", "8", "--size", "32", "--shard-size", "4", "--workers", "2", "--no-progress",
                env={"PREFECT_API_URL": prefect_api}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = out / "manifest.parquet"
    assert f"manifest: {manifest}" in r.stdout
    m = dataset.load_manifest(out)
    # moving up: 2 seen combos x (2 train + 1 val); expanding is held out on circles: 2 x 1 heldout
    assert len(m) == 8
    assert set(m[m["motion"] == "expanding"]["split"]) == {"heldout"}
    n_shards = len(dataset.load_shards(out))
    assert f"clips: 8 in {n_shards} shards: {n_shards} rendered, 0 cached" in r.stdout
    assert "moving up" in r.stdout
    assert "expanding" in r.stdout
    # the terminal gets one line for the stage, not Prefect's INFO record per task run
    assert f"data-stage: 8 clips in {n_shards} shards at {out} ({n_shards} rendered, 0 cached)" in r.stderr
    assert "INFO" not in r.stderr, r.stderr[-3000:]
    assert "Task run" not in r.stderr

    # --verbose hands the terminal back to Prefect's console: every task run's records (here: cached)
    again = t2v_cli("--verbose", "data", "--out", str(out), "--clips-per-combo", "2", "--val-per-combo", "1",
                    "--motions", "moving up", "expanding", "--colors", "red", "blue", "--shapes", "circle",
                    "--frames", "8", "--size", "32", "--shard-size", "4", "--workers", "2", "--no-progress",
                    env={"PREFECT_API_URL": prefect_api}, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"clips: 8 in {n_shards} shards: 0 rendered, {n_shards} cached" in again.stdout
    assert again.stderr.count("| INFO    | Task run 'render ") >= n_shards, again.stderr[-3000:]
    assert again.stderr.count("data-stage: 8 clips") == 1  # the stage line once, through Prefect's console


def read_frames(path: Path) -> np.ndarray:
    if path.suffix == ".gif":
        with Image.open(path) as im:
            frames = []
            for k in range(im.n_frames):
                im.seek(k)
                frames.append(np.asarray(im.convert("RGB")))
        return np.stack(frames)
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    w, h = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])


def test_gif_holds_every_frame_of_the_upscaled_clip_exactly(tmp_path: Path) -> None:
    """The palette is taken at the clip's size and the indices upscaled: the pixels must still be the
    upscaled clip's (antialiased edges included), and a repeated frame must not be merged away."""
    clip, _ = render(ClipSpec("k", "purple", "triangle", "spinning clockwise", 3, 6, 32))
    clip = np.concatenate([clip, clip[-1:]])  # a still last frame: Pillow would merge it
    assert len(np.unique(clip.reshape(-1, 3), axis=0)) == 16  # fill, background and 14 antialiased edge shades
    out = media.write_gif(tmp_path / "c.gif", clip, scale=3)
    frames = read_frames(out).astype(int)
    expect = media.upscale(clip, 3).astype(int)
    assert frames.shape == expect.shape == (7, 96, 96, 3)
    expect[-1, :3, :3, 2] ^= 1  # the repeated frame's marker: its top-left source pixel, one blue level
    assert np.array_equal(frames, expect)


def test_save_clip_rejects_unknown_extensions_and_bad_clips(tmp_path: Path) -> None:
    clip = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"'\.webm'.*\.gif, \.mp4, \.png"):
        media.save_clip(tmp_path / "x.webm", clip)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\) uint8"):
        media.save_clip(tmp_path / "x.gif", clip.astype(np.float32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ext", [".gif", ".mp4", ".png"])
def test_media_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str) -> None:
    clip, _ = render(ClipSpec("k", "green", "square", "moving left", 0, 4, 32))
    target = tmp_path / f"clip{ext}"
    target.write_bytes(b"previous version")

    def fail(src: str, dst: str) -> None:
        raise OSError("rename failed (injected)")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="injected"):
        media.save_clip(target, clip)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert target.read_bytes() == b"previous version"
    monkeypatch.undo()
    media.save_clip(target, clip)
    assert target.read_bytes() != b"previous version"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_quiet_console_passes_stage_lines_and_retries_only() -> None:
    """What `show_stage_lines` prints at INFO: a flow's `say` lines and Prefect's retry notices; warnings
    and errors are Prefect's own console handler's (so never printed twice)."""
    import logging

    from tasks.console import RETRY_PREFIX, STAGE_LINE, StageLines

    def record(msg: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
        r = logging.LogRecord("prefect.task_runs", level, __file__, 1, msg, None, None)
        r.__dict__.update(extra)
        return r

    f = StageLines()
    assert f.filter(record("data-stage: 8 clips", **{STAGE_LINE: True}))
    assert f.filter(record(f"{RETRY_PREFIX} RanksFailedError('torchrun exited with status 1') - Retry 1/1 will start"))
    assert not f.filter(record("rendered shards/train/moving-up-0000.tar.gz: 4 clips"))
    assert not f.filter(record("Finished in state Completed()"))
    assert not f.filter(record("data-stage: 8 clips", logging.WARNING, **{STAGE_LINE: True}))
