"""Clips as files people can look at: GIF, MP4 and PNG contact sheets.

Clips are tiny (64 px), so every writer upscales with nearest-neighbour (no blur invented between
pixels). Every file is written under a temporary name in the destination dir and renamed into
place, so a viewer or a crash never sees half a file.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from t2v.io import atomic_write_bytes

MEDIA_EXTENSIONS = (".gif", ".mp4", ".png")
LABEL_PAD = 6  # px around contact-sheet labels
GRID_GREY = 200  # 1 px lines between frames: white clips on a white sheet would run together


def _check_clip(clip: np.ndarray) -> np.ndarray:
    clip = np.asarray(clip)
    if clip.ndim != 4 or clip.shape[-1] != 3 or clip.dtype != np.uint8:
        raise ValueError(f"expected a (T, H, W, 3) uint8 clip, got shape {clip.shape} dtype {clip.dtype}")
    return clip


def _check_scale(scale: int) -> None:
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")


def upscale(clip: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscale. # (T, H, W, 3) -> (T, H*scale, W*scale, 3)"""
    _check_scale(scale)
    return clip.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else clip


def check_media_path(path: str | os.PathLike[str]) -> str:
    """The file's extension if `save_clip` can write it; otherwise an error listing the valid ones."""
    ext = Path(path).suffix.lower()
    if ext not in MEDIA_EXTENSIONS:
        raise ValueError(f"cannot write {str(path)!r}: unknown extension {ext or '(none)'!r}; "
                         f"valid: {', '.join(MEDIA_EXTENSIONS)}")
    return ext


def write_gif(path: str | os.PathLike[str], clip: np.ndarray, fps: int = 8, scale: int = 4) -> Path:
    """Looping animated GIF with exactly T frames.

    Each frame gets its palette at the clip's own size and is upscaled as palette indices: the same
    pixels as quantising the upscaled frame (a clip of at most 256 colours is exact either way) at
    ~15x less CPU, which was most of the evaluation's media phase. Pillow merges identical consecutive
    frames; to keep the frame count a viewer (or a test) expects, a frame equal to the one before gets
    its top-left source pixel's blue value toggled by one level.
    """
    _check_scale(scale)
    clip = _check_clip(clip).copy()
    for t in range(1, len(clip)):
        if np.array_equal(clip[t], clip[t - 1]):
            clip[t, 0, 0, 2] ^= 1
    _, h, w, _ = clip.shape
    frames = [Image.fromarray(f).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
              .resize((w * scale, h * scale), Image.Resampling.NEAREST) for f in clip]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps),
                   loop=0, optimize=False)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def write_mp4(path: str | os.PathLike[str], clip: np.ndarray, fps: int = 8, scale: int = 4) -> Path:
    """H.264 MP4 (yuv420p, plays everywhere); dims are padded with white to even sizes."""
    import imageio_ffmpeg

    clip = upscale(_check_clip(clip), scale)
    t, h, w, _ = clip.shape
    if h % 2 or w % 2:  # yuv420p needs even sides
        clip = np.pad(clip, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
        h, w = clip.shape[1:3]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp.mp4"  # ffmpeg picks the muxer by extension
    try:
        writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                             macro_block_size=1, ffmpeg_log_level="error",
                                             output_params=["-crf", "18"])
        writer.send(None)
        for frame in clip:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_contact_sheet(path: str | os.PathLike[str], rows: Sequence[tuple[str, np.ndarray]], scale: int = 2) -> Path:
    """PNG grid: one row per (label, clip), one column per frame, the label at the left of its row."""
    if not rows:
        raise ValueError("a contact sheet needs at least one (label, clip) row")
    clips = [upscale(_check_clip(c), scale) for _, c in rows]
    font = ImageFont.load_default()
    label_w = max((int(font.getbbox(label)[2]) if label else 0) for label, _ in rows)
    label_w = label_w + 2 * LABEL_PAD if label_w else 0
    cell_h = max(c.shape[1] for c in clips)
    cell_w = max(c.shape[2] for c in clips)
    cols = max(c.shape[0] for c in clips)
    sheet = np.full((len(rows) * (cell_h + 1), label_w + cols * (cell_w + 1), 3), GRID_GREY, np.uint8)
    sheet[:, :label_w] = 255
    for r, clip in enumerate(clips):
        t, h, w, _ = clip.shape
        y = r * (cell_h + 1)
        for k in range(t):
            x = label_w + k * (cell_w + 1)
            sheet[y:y + h, x:x + w] = clip[k]
    img = Image.fromarray(sheet)
    draw = ImageDraw.Draw(img)
    for r, (label, _) in enumerate(rows):
        if label:
            draw.text((LABEL_PAD, r * (cell_h + 1) + cell_h // 2), label, fill=(0, 0, 0), font=font, anchor="lm")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def save_clip(path: str | os.PathLike[str], clip: np.ndarray, fps: int = 8, label: str = "") -> Path:
    """Write `clip` in the format named by the extension: .gif, .mp4 or .png (a one-row contact sheet)."""
    writers: dict[str, Callable[[], Path]] = {
        ".gif": lambda: write_gif(path, clip, fps=fps),
        ".mp4": lambda: write_mp4(path, clip, fps=fps),
        ".png": lambda: write_contact_sheet(path, [(label, clip)]),
    }
    return writers[check_media_path(path)]()
