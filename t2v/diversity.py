"""Diversity of generated clips: does one prompt give many clips, and are they new?

Two failure modes that accuracy cannot see:
- mode collapse: every sample of a prompt starts in the same place. Measured as the spread of the
  shape's start position (frame 0, located by the pixel judge's tracker) over the samples of one
  prompt, as a fraction of the frame side; N copies of one clip score exactly 0, real clips ~0.2.
- memorisation: generated clips that are copies of training clips. Measured as the distance from
  each generated clip to its nearest neighbour in a sample of training clips, in downsampled pixel
  space, next to the same distance for fresh real clips (val split or newly rendered): a generator
  that copies sits far below the real value.

Pure numpy/torch; never imports prefect or mlflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from t2v import featnet, judge


@dataclass(frozen=True)
class DiversityConfig:
    """What the memorisation check compares; defaults keep it to ~1 s per few hundred clips on one core."""

    side: int = 16  # clips are area-downsampled to this side before distances: position and shape, not anti-aliasing
    bank_size: int = 2000  # training clips compared against (a fixed seeded sample): the nearest of 2000 is near enough
    seed: int = 0  # which training clips form the bank


def start_positions(clips: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Centre of the shape in each clip's first frame, by the pixel judge's tracker; NaN where frame 0
    shows no shape. # (N, T, H, W, 3) uint8 -> (N, 2) px (x right, y down)"""
    if len(clips) == 0:
        return np.zeros((0, 2))
    judged = judge.judge_many(clips)
    return np.array([[j.track.x[0], j.track.y[0]] if j.track.present[0] else [math.nan, math.nan]
                     for j in judged], np.float64)


def spread(positions: np.ndarray, side: int) -> float:
    """Root-mean-square distance of start positions from their mean, as a fraction of the frame side.

    0 when every sample starts in the same place (mode collapse); NaN with fewer than two located
    starts (a blank sample cannot be placed, and counts against the model in accuracy instead).
    """
    p = np.asarray(positions, np.float64)
    p = p[np.isfinite(p).all(axis=1)]
    if len(p) < 2:
        return math.nan
    d = p[:, None] - p[None]  # pairwise form of the same quantity: exactly 0 for copies, no round-off of a mean
    return float(np.sqrt((d ** 2).sum(-1).mean() / 2.0) / side)


def start_spread(clips: np.ndarray) -> float:
    """Spread of the start positions of samples of one prompt. # (N, T, H, W, 3) uint8"""
    clips = np.asarray(clips)
    return spread(start_positions(clips), clips.shape[2])


def spread_by_prompt(clips: np.ndarray, prompts: Sequence[str]) -> dict[str, float]:
    """Start spread per distinct prompt over its samples (prompts repeated once per sample)."""
    clips = np.asarray(clips)
    if len(clips) != len(prompts):
        raise ValueError(f"{len(clips)} clips but {len(prompts)} prompts")
    pos = start_positions(clips)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p, []).append(i)
    return {p: spread(pos[idx], clips.shape[2]) for p, idx in groups.items()}


def codes(clips: np.ndarray, side: int) -> np.ndarray:
    """Clips as vectors for pixel distances: ink in [0, 1], area-downsampled. # (N, T, H, W, 3) -> (N, T*side*side*3) float32"""
    small = featnet.downsample(np.asarray(clips), side)
    return (1.0 - small.reshape(len(small), -1).astype(np.float32) / 255.0)


def nearest_distances(queries: np.ndarray, bank: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """RMS per-element distance from each query code to its nearest bank code, and that code's index.

    # (N, D), (M, D) float32 -> (N,) float64 in [0, 1], (N,) int64
    """
    q = torch.from_numpy(np.ascontiguousarray(queries, np.float32))
    b = torch.from_numpy(np.ascontiguousarray(bank, np.float32))
    if q.ndim != 2 or b.ndim != 2 or q.shape[1] != b.shape[1]:
        raise ValueError(f"codes must be (N, D) and (M, D) with the same D (same clip geometry), "
                         f"got {tuple(q.shape)} and {tuple(b.shape)}")
    if len(b) == 0:
        raise ValueError("the training bank is empty")
    b2 = (b * b).sum(1)  # (M,)
    dist, idx = [], []
    for i in range(0, len(q), batch):
        part = q[i:i + batch]
        d2 = (part * part).sum(1, keepdim=True) + b2[None] - 2.0 * part @ b.T  # (n, M)
        best, arg = d2.min(1)
        dist.append(best.clamp_min(0.0).double().div(q.shape[1]).sqrt())
        idx.append(arg)
    if not dist:
        return np.zeros(0), np.zeros(0, np.int64)
    return torch.cat(dist).numpy(), torch.cat(idx).numpy()


@dataclass
class Bank:
    """Codes of a fixed sample of training clips, and which clips they are."""

    codes: np.ndarray  # (M, D) float32
    keys: list[str]
    prompts: list[str]
    frames: int
    frame_size: int
    side: int


def train_bank(root: Path | str, cfg: DiversityConfig = DiversityConfig(), split: str = "train") -> Bank:
    """The memorisation reference: cfg.bank_size training clips read with stock webdataset, as codes."""
    parts, keys, prompts, geometry = [], [], [], set()
    for clips, metas in featnet.iter_split(root, split, cfg.bank_size, cfg.seed):
        parts.append(codes(clips, cfg.side))
        keys += [m["key"] for m in metas]
        prompts += [m["prompt"] for m in metas]
        geometry.add(clips.shape[1:3])
    if not parts:
        raise ValueError(f"no {split} clips under {root}")
    if len(geometry) != 1:
        raise ValueError(f"{split} shards under {root} mix clip geometries (frames, side): {sorted(geometry)}")
    frames, size = geometry.pop()
    return Bank(np.concatenate(parts), keys, prompts, frames, size, cfg.side)


def nearest_train(clips: np.ndarray, bank: Bank) -> tuple[np.ndarray, list[str]]:
    """Distance from each clip to its nearest training clip in the bank, and that clip's key."""
    clips = np.asarray(clips)
    if clips.shape[1:3] != (bank.frames, bank.frame_size):
        raise ValueError(f"clips are {clips.shape[1]} frames of {clips.shape[2]} px, the training bank holds "
                         f"{bank.frames} frames of {bank.frame_size} px")
    d, idx = nearest_distances(codes(clips, bank.side), bank.codes)
    return d, [bank.keys[int(i)] for i in idx]


def memorisation(generated: np.ndarray, real: np.ndarray, bank: Bank) -> dict[str, float]:
    """Nearest-training-clip distances of generated clips against those of fresh real clips.

    `nn_ratio` below ~0.5 says the samples sit much closer to training clips than new real clips do:
    copies. `copy_rate` is the fraction of generated clips closer to the bank than 95% of real clips.
    """
    d_gen, _ = nearest_train(generated, bank)
    d_real, _ = nearest_train(real, bank)
    if len(d_gen) == 0 or len(d_real) == 0:
        return {"nn_generated": math.nan, "nn_real": math.nan, "nn_ratio": math.nan, "copy_rate": math.nan}
    low = float(np.quantile(d_real, 0.05))
    real_mean = float(d_real.mean())
    return {"nn_generated": float(d_gen.mean()), "nn_real": real_mean,
            "nn_ratio": float(d_gen.mean()) / real_mean if real_mean > 0 else math.nan,
            "copy_rate": float((d_gen < low).mean())}
