"""Diversity metrics: start-position spread sees mode collapse, nearest-training-clip distance sees copies."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from t2v import diversity as dv
from t2v import featnet, vocab
from t2v.render import ClipSpec, render
from t2v.shards import DataParams

MOTIONS = ("moving up", "rotating clockwise")
PARAMS = DataParams(motions=MOTIONS, clips_per_combo=6, val_per_combo=2, frames=8, size=32)


@pytest.fixture(scope="module")
def data_root(tiny_dataset: Callable[..., Path]) -> Path:
    return tiny_dataset(**vars(PARAMS))


def _samples(prompt: str, n: int, tag: str = "s", size: int = 32) -> np.ndarray:
    p = vocab.parse_prompt(prompt)
    return np.stack([render(ClipSpec(f"{tag}-{i}", p.color, p.shape, p.motion, 3, 8, size))[0] for i in range(n)])


def test_real_samples_spread_and_copies_do_not() -> None:
    real = _samples("red circle moving up", 8)
    assert dv.start_spread(real) > 0.05  # random start positions: a real prompt has many valid clips
    copies = np.repeat(real[:1], 8, axis=0)
    assert dv.start_spread(copies) == 0.0  # mode collapse
    pos = dv.start_positions(real)
    assert pos.shape == (8, 2)
    assert np.isfinite(pos).all()


def test_start_positions_match_the_rendered_ground_truth() -> None:
    clip, traj = render(ClipSpec("gt", "blue", "square", "moving right", 0))
    x, y = dv.start_positions(clip[None])[0]
    assert abs(x - traj.x[0]) < 0.5
    assert abs(y - traj.y[0]) < 0.5


def test_spread_by_prompt_and_blank_samples() -> None:
    a, b = _samples("red circle moving up", 4, "a"), _samples("green square rotating clockwise", 4, "b")
    b[:] = b[:1]  # the second prompt collapsed
    out = dv.spread_by_prompt(np.concatenate([a, b]), ["red circle moving up"] * 4 + ["green square rotating clockwise"] * 4)
    assert out["red circle moving up"] > 0.05
    assert out["green square rotating clockwise"] == 0.0
    blank = np.full((3, 8, 32, 32, 3), 255, np.uint8)  # nothing to locate
    assert np.isnan(dv.start_positions(blank)).all()
    assert math.isnan(dv.start_spread(blank))
    mixed = np.concatenate([blank[:1], a[:2]])  # a blank sample is skipped, not placed at (0, 0)
    assert dv.start_spread(mixed) == pytest.approx(dv.start_spread(a[:2]))
    with pytest.raises(ValueError, match="3 clips but 2 prompts"):
        dv.spread_by_prompt(a[:3], ["x", "y"])


def test_a_training_clip_is_its_own_nearest_neighbour(data_root: Path) -> None:
    bank = dv.train_bank(data_root, dv.DiversityConfig(bank_size=50))
    assert len(bank.keys) == 50
    assert bank.codes.shape == (50, 8 * 16 * 16 * 3)
    clips, metas = next(featnet.iter_split(data_root, "train", limit=50, seed=0, chunk=5))  # the bank's clips
    d, keys = dv.nearest_train(clips, bank)
    assert np.allclose(d, 0.0, atol=1e-3)
    assert keys == [m["key"] for m in metas]
    fresh = _samples("red circle moving up", 5, "fresh")
    d_fresh, _ = dv.nearest_train(fresh, bank)
    assert (d_fresh > 0.01).all()


def test_memorisation_flags_copies_not_new_clips(data_root: Path) -> None:
    bank = dv.train_bank(data_root, dv.DiversityConfig(bank_size=10_000))  # the whole (tiny) train split
    train = np.concatenate([c for c, _ in featnet.iter_split(data_root, "train", limit=40, seed=1)])
    real = np.concatenate([c for c, _ in featnet.iter_split(data_root, "val")])
    copied = dv.memorisation(train, real, bank)
    assert copied["nn_generated"] < 1e-3
    assert copied["nn_ratio"] < 0.1
    assert copied["copy_rate"] == 1.0
    fresh = np.stack([render(ClipSpec(f"new-{i}", c, s, m, 11, 8, 32))[0]
                      for i, (c, s, m) in enumerate(vocab.combinations(motion_list=MOTIONS))])
    new = dv.memorisation(fresh, real, bank)
    assert 0.6 < new["nn_ratio"] < 1.6, new
    assert new["copy_rate"] < 0.3, new
    with pytest.raises(ValueError, match="training bank holds 8 frames of 32 px"):
        dv.nearest_train(_samples("red circle moving up", 2, size=64), bank)
