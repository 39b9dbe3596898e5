"""Vectorised, anti-aliased rendering of one shape along a trajectory.

All frames of a clip are rasterised in one numpy expression: a signed distance from every pixel
centre to the shape, turned into coverage by a one-pixel ramp, alpha-blended over white. No
per-pixel Python, no per-frame drawing calls. The same (seed, key) always gives the same clip.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from t2v import vocab
from t2v.io import source_hash
from t2v.vocab import BACKGROUND, COLORS, MotionParams, Trajectory

RADIUS_RANGE = (0.10, 0.16)  # circumradius as a fraction of the side (vocabulary.md)
LEVELS = 16  # anti-aliasing steps: smooth to the eye, and a 16-colour palette keeps shards ~1.8 KB a clip
_POLYGON = {  # sides, angle of the first edge normal (deg, clockwise on screen) at angle 0
    "square": (4, 0.0),  # axis-aligned
    "triangle": (3, -30.0),  # apex pointing up
}


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines one clip's pixels."""

    key: str
    color: str
    shape: str
    motion: str
    seed: int
    frames: int = 16
    size: int = 64

    @property
    def prompt(self) -> str:
        return vocab.canonical_prompt(self.color, self.shape, self.motion)


def clip_rng(seed: int, key: str) -> np.random.Generator:
    """Per-clip generator: depends on the dataset seed and the sample key only, not on render order."""
    digest = hashlib.sha256(key.encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def layout(spec: ClipSpec) -> Trajectory:
    """Draw the clip's random size and its motion's trajectory."""
    rng = clip_rng(spec.seed, spec.key)
    radius = float(rng.uniform(*RADIUS_RANGE) * spec.size)
    motion = vocab.motions()[spec.motion]
    return motion.fn(rng, MotionParams(spec.frames, spec.size, radius))


def signed_distance(shape: str, traj: Trajectory, x0: np.ndarray, y0: np.ndarray, w: int) -> np.ndarray:
    """Distance in pixels from each pixel centre of a w x w window at (x0, y0) to the shape's edge,
    negative inside. # (T, w, w)"""
    x = np.asarray(traj.x, np.float32)[:, None, None]
    y = np.asarray(traj.y, np.float32)[:, None, None]
    r = np.asarray(traj.radius, np.float32)[:, None, None]
    grid = np.arange(w, dtype=np.float32) + 0.5
    px = grid[None, None, :] + x0[:, None, None] - x  # (T, 1, w)
    py = grid[None, :, None] + y0[:, None, None] - y  # (T, w, 1)
    if shape == "circle":
        return np.sqrt(px * px + py * py) - r
    sides, first = _POLYGON[shape]
    apothem = r * np.float32(np.cos(np.pi / sides))
    a = np.deg2rad(np.asarray(traj.angle, np.float32))[:, None, None]
    d = None
    for k in range(sides):  # a regular polygon is the intersection of its edges' half-planes
        t = a + np.float32(np.deg2rad(first + 360.0 * k / sides))
        e = px * np.cos(t) + py * np.sin(t)
        d = e if d is None else np.maximum(d, e)
    return d - apothem


def coverage(shape: str, traj: Trajectory, size: int) -> np.ndarray:
    """Anti-aliased coverage in LEVELS steps (0 = background, LEVELS-1 = inside). # (T, H, W) uint8

    Only a window around the shape is rasterised: the shape covers a few percent of the frame.
    """
    frames = len(traj.x)
    w = min(size, int(np.ceil(2 * float(np.max(traj.radius)) + 4)))
    x0 = np.clip(np.floor(np.asarray(traj.x) - w / 2), 0, size - w).astype(np.int64)  # (T,)
    y0 = np.clip(np.floor(np.asarray(traj.y) - w / 2), 0, size - w).astype(np.int64)
    d = signed_distance(shape, traj, x0.astype(np.float32), y0.astype(np.float32), w)  # (T, w, w)
    cov = (np.clip(0.5 - d, 0.0, 1.0) * (LEVELS - 1) + 0.5).astype(np.uint8)
    out = np.zeros((frames, size, size), np.uint8)
    t = np.arange(frames)[:, None, None]
    rows = y0[:, None, None] + np.arange(w)[None, :, None]
    cols = x0[:, None, None] + np.arange(w)[None, None, :]
    out[t, rows, cols] = cov
    return out


@lru_cache(maxsize=None)
def palette(color: str) -> np.ndarray:
    """RGB of each coverage level: white blended towards the fill colour. # (LEVELS, 3) uint8"""
    bg = np.asarray(BACKGROUND, np.float64)
    fg = np.asarray(COLORS[color], np.float64)
    k = np.arange(LEVELS, dtype=np.float64)[:, None] / (LEVELS - 1)
    return (bg + k * (fg - bg) + 0.5).astype(np.uint8)


def rasterize(color: str, shape: str, traj: Trajectory, size: int) -> np.ndarray:
    """Anti-aliased clip of a filled shape over white. # (T, H, W, 3) uint8"""
    return palette(color)[coverage(shape, traj, size)]


def render_indexed(spec: ClipSpec) -> tuple[np.ndarray, np.ndarray, Trajectory]:
    """The clip as palette indices plus its palette, and its ground truth: what shards store losslessly.
    # (T, H, W) uint8, (LEVELS, 3) uint8"""
    traj = layout(spec)
    return coverage(spec.shape, traj, spec.size), palette(spec.color), traj


def render(spec: ClipSpec) -> tuple[np.ndarray, Trajectory]:
    """The clip and its per-frame ground truth. # (T, H, W, 3) uint8"""
    idx, pal, traj = render_indexed(spec)
    return pal[idx], traj


@lru_cache(maxsize=1)
def renderer_version() -> str:
    """Hash of the rasteriser's code: part of every shard's cache key."""
    return source_hash(__name__)
