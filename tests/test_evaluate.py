"""The evaluation as pure functions: real clips score like real clips, corrupted ones do not, every model
is asked the same prompts with the same seed, and bad prompts to `t2v generate` fail before any work."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from t2v import diversity, featnet, vocab
from t2v import evaluate as ev
from t2v.shards import DataParams

MOTIONS = ("moving up", "moving up-right", "rotating clockwise")
PARAMS = DataParams(motions=MOTIONS, clips_per_combo=16, val_per_combo=1, frames=8, size=32)
CFG = ev.EvalConfig(samples=3, seen_prompts=6)


@pytest.fixture(scope="module")
def setup(tiny_dataset: Callable[..., Path]) -> dict:
    root = tiny_dataset(**vars(PARAMS))
    clf = featnet.fit_from_shards(root, featnet.FeatNetConfig(epochs=8))
    prompts = ev.prompt_set(PARAMS.colors, PARAMS.shapes, MOTIONS, PARAMS.frames, PARAMS.size, CFG)
    return {"root": root, "clf": clf, "bank": diversity.train_bank(root), "prompts": prompts}


def test_prompt_set_is_every_held_out_combo_and_a_fixed_seen_sample() -> None:
    ps = ev.prompt_set(PARAMS.colors, PARAMS.shapes, MOTIONS, 8, 32, CFG)
    expected_held = [vocab.canonical_prompt(*c) for c in vocab.combinations(motion_list=MOTIONS) if vocab.is_held_out(*c)]
    assert list(ps.heldout) == expected_held
    assert "red circle moving up-right" in ps.heldout
    assert "purple square moving up" in ps.heldout  # colour x shape held out for every motion
    assert len(ps.seen) == 6
    assert not any(vocab.is_held_out(*_triple(p)) for p in ps.seen)
    assert ps == ev.prompt_set(PARAMS.colors, PARAMS.shapes, MOTIONS, 8, 32, CFG)  # deterministic
    prompts, held = ps.expanded(3)
    assert len(prompts) == 3 * (len(ps.heldout) + len(ps.seen))
    assert sum(held) == 3 * len(ps.heldout)
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        ev.prompt_set(PARAMS.colors, PARAMS.shapes, MOTIONS, 8, 32, ev.EvalConfig(samples=0))


def _triple(prompt: str) -> tuple[str, str, str]:
    p = vocab.parse_prompt(prompt)
    return p.color, p.shape, p.motion


def _recording(gen: ev.GenerateFn, calls: list) -> ev.GenerateFn:
    def generate(prompts: list[str], seed: int) -> np.ndarray:
        calls.append((list(prompts), seed))
        return gen(prompts, seed)

    return generate


def test_real_clips_score_as_real(setup: dict) -> None:
    calls: list = []
    real = ev.reference_generator(PARAMS.frames, PARAMS.size)
    res = ev.evaluate(_recording(real, calls), setup["prompts"], setup["clf"], setup["bank"], CFG)
    m = res.metrics
    assert calls == [(res.prompts, CFG.seed)]  # one call, every prompt's samples, the fixed seed
    assert m["judge_heldout_all3"] >= 0.95, m
    assert m["judge_seen_all3"] >= 0.95, m
    assert m["judge_heldout_shape_gap"] <= 1.0 and m["judge_seen_shape_gap"] <= 1.0, m  # the median clip is named
    assert m["featnet_seen_all3"] >= 0.8, m
    assert m["fd_n_heldout"] == 3 * len(setup["prompts"].heldout)
    assert m["fd_heldout"] < 3 * m["fd_floor_heldout"] + 1.0, m  # real clips sit near the real floor
    assert m["spread_heldout"] > 0.05
    assert m["spread_real_heldout"] > 0.05
    assert 0.6 < m["nn_ratio"] < 1.6, m  # new real clips are not copies of training clips
    assert res.clips.shape == (len(res.prompts), 8, 32, 32, 3)


def test_corrupted_clips_score_worse(setup: dict) -> None:
    real = ev.reference_generator(PARAMS.frames, PARAMS.size)
    good = ev.evaluate(real, setup["prompts"], setup["clf"], setup["bank"], CFG).metrics

    def shuffled(prompts: list[str], seed: int) -> np.ndarray:
        return featnet.shuffle_frames(real(prompts, seed), seed)

    def collapsed(prompts: list[str], seed: int) -> np.ndarray:  # one clip per prompt, repeated
        first = {p: real([p], seed)[0] for p in dict.fromkeys(prompts)}
        return np.stack([first[p] for p in prompts])

    bad = ev.evaluate(shuffled, setup["prompts"], setup["clf"], setup["bank"], CFG).metrics
    assert bad["judge_heldout_motion"] < 0.3, bad
    assert bad["judge_heldout_all3"] < good["judge_heldout_all3"] - 0.5, bad
    assert bad["fd_heldout"] > 2 * good["fd_heldout"], (bad["fd_heldout"], good["fd_heldout"])
    assert bad["featnet_heldout_all3"] < good["featnet_heldout_all3"]

    def smeared(prompts: list[str], seed: int) -> np.ndarray:  # each frame the mean of the clip: a motion-blurred blob
        clips = real(prompts, seed)
        return np.broadcast_to(clips.mean(1, keepdims=True), clips.shape).round().astype(np.uint8)

    blur = ev.evaluate(smeared, setup["prompts"], setup["clf"], None, CFG).metrics
    assert blur["judge_heldout_shape_gap"] > 1.0 > good["judge_heldout_shape_gap"], (blur, good)
    mode = ev.evaluate(collapsed, setup["prompts"], setup["clf"], None, CFG).metrics
    assert mode["spread_heldout"] == 0.0
    assert mode["spread_seen"] == 0.0
    assert "nn_ratio" not in mode
    assert mode["judge_heldout_all3"] >= 0.95  # each clip is right: only diversity sees the collapse


def test_wrong_clip_geometry_is_a_clear_error(setup: dict) -> None:
    def big(prompts: list[str], seed: int) -> np.ndarray:
        return ev.reference_generator(16, 64)(prompts, seed)

    with pytest.raises(ValueError, match=r"needs uint8 \(\d+, 8, 32, 32, 3\)"):
        ev.evaluate(big, setup["prompts"], setup["clf"], None, CFG)


def test_decide_accuracy_first_then_frechet() -> None:
    champ = {ev.PRIMARY: 0.5, ev.TIEBREAK: 10.0}
    assert ev.decide({ev.PRIMARY: 0.1, ev.TIEBREAK: 1.0}, None).promote  # the first model becomes champion
    assert ev.decide({ev.PRIMARY: 0.6, ev.TIEBREAK: 99.0}, champ).promote
    assert not ev.decide({ev.PRIMARY: 0.4, ev.TIEBREAK: 1.0}, champ).promote
    assert ev.decide({ev.PRIMARY: 0.5, ev.TIEBREAK: 9.0}, champ).promote  # tie: lower distance wins
    tie = ev.decide({ev.PRIMARY: 0.5, ev.TIEBREAK: 10.0}, champ)
    assert not tie.promote
    assert "tied" in tie.reason  # a full tie keeps the champion
    assert not ev.decide({ev.PRIMARY: math.nan, ev.TIEBREAK: 1.0}, champ).promote  # missing counts as worst
    assert ev.decide({ev.PRIMARY: 0.5, ev.TIEBREAK: 3.0}, {ev.PRIMARY: 0.5, ev.TIEBREAK: math.nan}).promote


def test_tile_and_table() -> None:
    clips = np.zeros((3, 4, 8, 10, 3), np.uint8)
    strip = ev.tile(clips)
    assert strip.shape == (4, 8, 32, 3)
    assert (strip[:, :, 10] == 200).all()
    assert (strip[:, :, :10] == 0).all()
    table = ev.metrics_table({"a": {"judge_heldout_all3": 0.5}, "b": {}})
    assert "| pixel judge all-three (heldout) | 0.5 | n/a |" in table


@pytest.mark.parametrize("prompt,names", [
    ("red blob moving up", ["'blob'", "circle", "moving"]),
    ("red blue circle moving up", ["'blue'", "red, green, blue, yellow, purple"]),
    ("   ", ["empty prompt", "shapes: circle, square, triangle"]),
    ("red circle moving up", ["--samples must be at most 1024, got 1025"]),
])
def test_generate_rejects_bad_prompts_before_loading_a_model(
        t2v_cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path, prompt: str, names: list[str]) -> None:
    out = tmp_path / "out.gif"
    store = f"sqlite:///{tmp_path / 'never' / 'mlflow.db'}"  # loading any model from here would fail differently
    extra = ("--samples", "1025") if names == ["--samples must be at most 1024, got 1025"] else ()
    proc = t2v_cli("generate", prompt, "-o", str(out), *extra, env={"MLFLOW_TRACKING_URI": store}, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("t2v generate: error:"), proc.stderr
    assert all(n in proc.stderr for n in names), proc.stderr
    assert not out.exists()
    assert not (tmp_path / "never").exists()
    assert list(tmp_path.iterdir()) == []


def test_evaluation_reports_each_phase_in_order(setup: dict) -> None:
    phases: list[str] = []
    real = ev.reference_generator(PARAMS.frames, PARAMS.size)
    ev.evaluate(real, setup["prompts"], setup["clf"], setup["bank"], CFG, on_phase=phases.append)
    assert phases == list(ev.EVAL_PHASES)
