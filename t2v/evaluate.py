"""Evaluation of a generator, as pure functions: which prompts, which metrics, which model wins.

A generator is any function `generate(prompts, seed) -> uint8 (N, T, H, W, 3)`. It is asked for every
held-out prompt of the dataset's vocabulary and a fixed sample of seen prompts, `samples` clips each,
with one fixed seed, so two models are always compared on the same prompts and the same noise. Each
clip is read three ways:
- the pixel judge (t2v.judge): colour, shape, motion and all-three accuracy, seen vs held-out;
- the learned metric (t2v.featnet): its accuracy, and the Fréchet distance between the clips'
  features and those of real clips rendered for the same prompts, next to the real-vs-real floor;
- diversity (t2v.diversity): start-position spread per prompt, and nearest-training-clip distance.

Champion promotion is decided here too (`decide`): held-out all-three accuracy of the pixel judge
first, the held-out Fréchet distance breaking ties. Never imports prefect or mlflow.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from t2v import judge, media, vocab
from t2v.io import atomic_dir, safe_name, source_hash
from t2v.render import ClipSpec, render

if TYPE_CHECKING:  # torch-based: imported where the metrics run, so checking a request needs no torch
    from t2v import diversity, featnet

GenerateFn = Callable[[list[str], int], np.ndarray]
METRIC_CODE = ("t2v.evaluate", "t2v.judge", "t2v.featnet", "t2v.diversity", "t2v.render", "t2v.motions")  # decides the numbers
GROUPS = ("seen", "heldout")
PRIMARY = "judge_heldout_all3"  # what promotion compares first: higher wins
TIEBREAK = "fd_heldout"  # compared when PRIMARY ties: lower wins


@dataclass(frozen=True)
class EvalConfig:
    """What an evaluation asks of a model; champion and challenger are always asked the same."""

    samples: int = 4  # clips per prompt: enough for a start spread, cheap enough for every held-out prompt
    seen_prompts: int = 24  # seen prompts asked (a fixed seeded sample): the in-distribution anchor next to ~46 held-out ones
    seed: int = 0  # generation seed, the same for every model compared
    prompt_seed: int = 0  # which seen prompts are sampled
    reference_seed: int = 1_000_003  # render seed of the real reference clips: not the dataset's, so never training clips

    def validate(self) -> None:
        for name in ("samples", "seen_prompts"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")


@dataclass(frozen=True)
class PromptSet:
    """The prompts of an evaluation and the clip geometry every model must produce."""

    heldout: tuple[str, ...]
    seen: tuple[str, ...]
    frames: int  # T
    size: int  # H = W

    def expanded(self, samples: int) -> tuple[list[str], list[bool]]:
        """Each prompt repeated `samples` times, held-out ones first, and which are held out."""
        prompts = [p for p in (*self.heldout, *self.seen) for _ in range(samples)]
        held = [True] * (len(self.heldout) * samples) + [False] * (len(self.seen) * samples)
        return prompts, held


def prompt_set(colors: Sequence[str], shapes: Sequence[str], motions: Sequence[str], frames: int, size: int,
               cfg: EvalConfig = EvalConfig()) -> PromptSet:
    """Every held-out combination of the given vocabulary and a seeded sample of the seen ones, in vocabulary order."""
    cfg.validate()
    combos = vocab.combinations(colors, shapes, motions)
    held = [vocab.canonical_prompt(*c) for c in combos if vocab.is_held_out(*c)]
    seen = [vocab.canonical_prompt(*c) for c in combos if not vocab.is_held_out(*c)]
    if len(seen) > cfg.seen_prompts:
        pick = np.sort(np.random.default_rng(cfg.prompt_seed).choice(len(seen), cfg.seen_prompts, replace=False))
        seen = [seen[i] for i in pick]
    if not held and not seen:
        raise ValueError("no prompts to evaluate: the vocabulary given has no valid (colour, shape, motion)")
    return PromptSet(tuple(held), tuple(seen), frames, size)


def render_reference(prompts: Sequence[str], frames: int, size: int, seed: int) -> tuple[np.ndarray, list]:
    """Real clips for prompts (one per entry, repeats give new clips) and their trajectories.

    A prompt without a colour gets a palette colour drawn from its key. # (N, T, H, W, 3) uint8
    """
    clips, trajs = [], []
    colors = list(vocab.COLORS)
    for i, text in enumerate(prompts):
        p = vocab.parse_prompt(text)
        key = f"eval-{i}-{vocab.slug(text)}"
        color = p.color or colors[int(np.random.default_rng([seed, i]).integers(len(colors)))]
        clip, traj = render(ClipSpec(key, color, p.shape, p.motion, seed, frames, size))
        clips.append(clip)
        trajs.append(traj)
    if not clips:
        return np.zeros((0, frames, size, size, 3), np.uint8), []
    return np.stack(clips), trajs


def reference_generator(frames: int, size: int) -> GenerateFn:
    """Real clips as a generator: the upper bound every model is measured against (the 'real' row)."""

    def generate(prompts: list[str], seed: int) -> np.ndarray:
        return render_reference(prompts, frames, size, seed)[0]

    return generate


@dataclass
class Evaluation:
    """Metrics of one model, and the clips they were computed from."""

    metrics: dict[str, float]
    prompts: list[str]  # one per clip
    held_out: list[bool]  # one per clip
    clips: np.ndarray  # (N, T, H, W, 3) uint8


def code_version() -> str:
    """Hash of the metric, judge, classifier and renderer sources: part of the evaluation cache key."""
    return source_hash(*METRIC_CODE)


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray([x for x in values if not math.isnan(x)], np.float64)
    return float(v.mean()) if len(v) else math.nan


def _fd(a: np.ndarray, b: np.ndarray) -> float:
    from t2v import featnet

    return featnet.frechet_distance(a, b) if min(len(a), len(b)) >= 2 else math.nan


def check_clips(clips: np.ndarray, n: int, frames: int, size: int) -> np.ndarray:
    """The generator's output must be the contracted uint8 (N, T, H, W, 3) at the dataset's geometry."""
    clips = np.asarray(clips)
    want = (n, frames, size, size, 3)
    if clips.dtype != np.uint8 or clips.shape != want:
        raise ValueError(f"the generator returned {clips.dtype} {clips.shape}; evaluation on this dataset needs "
                         f"uint8 {want} (a model trained on other clip sizes cannot be compared here)")
    return clips


EVAL_PHASES = ("generate", "render real clips", "pixel judge", "featnet", "diversity")  # what `on_phase` reports


def evaluate(generate: GenerateFn, prompts: PromptSet, clf: featnet.Classifier, bank: diversity.Bank | None = None,
             cfg: EvalConfig = EvalConfig(), on_phase: Callable[[str], None] | None = None) -> Evaluation:
    """Generate every prompt's samples with cfg.seed and compute all metrics, seen vs held-out.

    Metric keys: judge_{seen,heldout,all}_{color,shape,shape_gap,motion,all3} (`judge.score`'s; an inf shape
    gap is not sent to MLflow); featnet_{seen,heldout}_{color,shape,
    motion,all3}; fd_{g}, fd_floor_{g} (real vs real) and fd_n_{g} (the sample count both are taken at);
    spread_{g} and spread_real_{g} (mean per-prompt start spread, fraction of the side); nn_generated,
    nn_real, nn_ratio, copy_rate (memorisation, when a bank is given); n_prompts_{g}, samples.
    `on_phase(name)` is called as each of EVAL_PHASES starts (a progress bar's hook).
    """
    from t2v import diversity, featnet

    phase = on_phase or (lambda name: None)
    cfg.validate()
    texts, held = prompts.expanded(cfg.samples)
    phase("generate")
    clips = check_clips(generate(list(texts), cfg.seed), len(texts), prompts.frames, prompts.size)
    phase("render real clips")
    real, _ = render_reference(texts, prompts.frames, prompts.size, cfg.reference_seed)
    real2, _ = render_reference(texts, prompts.frames, prompts.size, cfg.reference_seed + 1)
    held_arr = np.asarray(held, bool)
    m: dict[str, float] = {"samples": float(cfg.samples)}

    phase("pixel judge")
    scored = judge.score(clips, texts, held_out=held)
    for g in (*GROUPS, "all"):
        for k in ("color", "shape", "shape_gap", "motion", "all3"):
            m[f"judge_{g}_{k}"] = scored[f"{g}_{k}"]

    phase("featnet")
    feats, preds = clf.features_and_predictions(clips)
    f_real, f_real2 = clf.features(real), clf.features(real2)
    parsed = [vocab.parse_prompt(t) for t in texts]
    phase("diversity")
    spreads = diversity.spread_by_prompt(clips, texts)
    spreads_real = diversity.spread_by_prompt(real, texts)
    for g, sel in (("seen", ~held_arr), ("heldout", held_arr)):
        idx = np.flatnonzero(sel)
        acc = featnet.accuracy([preds[i] for i in idx], [parsed[i].motion for i in idx],
                               [parsed[i].shape for i in idx], [parsed[i].color for i in idx])
        for k, name in (("color", "color"), ("shape", "shape"), ("motion", "motion"), ("all", "all3")):
            m[f"featnet_{g}_{name}"] = acc[k]
        m[f"fd_{g}"] = _fd(feats[idx], f_real[idx])
        m[f"fd_floor_{g}"] = _fd(f_real2[idx], f_real[idx])
        m[f"fd_n_{g}"] = float(len(idx))
        group_prompts = prompts.heldout if g == "heldout" else prompts.seen
        m[f"n_prompts_{g}"] = float(len(group_prompts))
        m[f"spread_{g}"] = _nanmean([spreads[p] for p in group_prompts])
        m[f"spread_real_{g}"] = _nanmean([spreads_real[p] for p in group_prompts])
    if bank is not None:
        m.update(diversity.memorisation(clips, real, bank))
    return Evaluation(m, list(texts), held, clips)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def _score(metrics: Mapping[str, float], key: str, worst: float) -> float:
    v = metrics.get(key, math.nan)
    return worst if v is None or math.isnan(v) else float(v)


def decide(challenger: Mapping[str, float], champion: Mapping[str, float] | None) -> Decision:
    """Promote when held-out all-three accuracy (pixel judge) is higher; on a tie, when the held-out
    Fréchet distance is lower. A missing score counts as the worst; a full tie keeps the champion."""
    if champion is None:
        return Decision(True, "first evaluated model: no champion yet")
    a, b = _score(challenger, PRIMARY, -1.0), _score(champion, PRIMARY, -1.0)
    if not math.isclose(a, b, abs_tol=1e-9):
        if a > b:
            return Decision(True, f"{PRIMARY} {a:.4f} > champion's {b:.4f}")
        return Decision(False, f"{PRIMARY} {a:.4f} < champion's {b:.4f}")
    fa, fb = _score(challenger, TIEBREAK, math.inf), _score(champion, TIEBREAK, math.inf)
    if fa < fb:
        return Decision(True, f"{PRIMARY} tied at {a:.4f}; {TIEBREAK} {fa:.4g} < champion's {fb:.4g}")
    return Decision(False, f"{PRIMARY} tied at {a:.4f}; {TIEBREAK} {fa:.4g} not below champion's {fb:.4g}")


def tile(clips: np.ndarray, gap: int = 1, grey: int = 200) -> np.ndarray:
    """Samples side by side in one clip, a grey line between them. # (N, T, H, W, 3) -> (T, H, N*W + (N-1)*gap, 3)"""
    clips = np.asarray(clips)
    if clips.ndim != 5 or len(clips) == 0:
        raise ValueError(f"expected (N, T, H, W, 3) clips with N >= 1, got shape {clips.shape}")
    n, t, h, w, c = clips.shape
    out = np.full((t, h, n * w + (n - 1) * gap, c), grey, np.uint8)
    for i in range(n):
        out[:, :, i * (w + gap):i * (w + gap) + w] = clips[i]
    return out


def metrics_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown table, one column per model: the metrics a reader compares, seen vs held-out."""
    keys = [
        ("pixel judge all-three", "judge_{g}_all3"), ("pixel judge colour", "judge_{g}_color"),
        ("pixel judge shape", "judge_{g}_shape"),
        ("shape gap, median clip (at most 1: shape named)", "judge_{g}_shape_gap"),
        ("pixel judge motion", "judge_{g}_motion"),
        ("featnet all-three", "featnet_{g}_all3"), ("featnet Fréchet distance", "fd_{g}"),
        ("Fréchet floor, real vs real", "fd_floor_{g}"), ("start spread", "spread_{g}"),
        ("start spread, real", "spread_real_{g}"),
    ]
    names = list(rows)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"

    for g in GROUPS:
        for label, key in keys:
            k = key.format(g=g)
            lines.append(f"| {label} ({g}) | " + " | ".join(fmt(rows[n].get(k)) for n in names) + " |")
    for label, k in (("nearest train clip, generated", "nn_generated"), ("nearest train clip, real", "nn_real"),
                     ("copy rate", "copy_rate")):
        lines.append(f"| {label} | " + " | ".join(fmt(rows[n].get(k)) for n in names) + " |")
    return "\n".join(lines)


def write_media(out_dir: Path, evaluation: Evaluation, fps: int = 8) -> dict[str, list[str]]:
    """A GIF and an MP4 per prompt (its samples side by side), a contact sheet (one row per prompt,
    first sample, one column per frame) and metrics.json, published as a whole directory at once."""
    order = list(dict.fromkeys(evaluation.prompts))
    held = dict(zip(evaluation.prompts, evaluation.held_out))
    files: dict[str, list[str]] = {"gif": [], "mp4": [], "png": []}
    with atomic_dir(Path(out_dir)) as tmp:
        rows, jobs = [], []
        for p in order:
            idx = [i for i, q in enumerate(evaluation.prompts) if q == p]
            strip = tile(evaluation.clips[idx])
            name = f"{'heldout' if held[p] else 'seen'}-{safe_name(p)}"
            jobs += [(media.write_gif, tmp / "clips" / f"{name}.gif", strip),
                     (media.write_mp4, tmp / "clips" / f"{name}.mp4", strip)]
            files["gif"].append(f"clips/{name}.gif")
            files["mp4"].append(f"clips/{name}.mp4")
            rows.append((f"{p}{' (held out)' if held[p] else ''}", evaluation.clips[idx[0]]))
        # one file per job, each encoded outside the GIL (Pillow's encoder, an ffmpeg process): a thread per core
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for done in [pool.submit(write, path, strip, fps=fps) for write, path, strip in jobs]:
                done.result()  # the first failure, if any, is raised here
        media.write_contact_sheet(tmp / "contact_sheet.png", rows)
        files["png"].append("contact_sheet.png")
        (tmp / "metrics.json").write_text(json.dumps(evaluation.metrics, indent=1, sort_keys=True))
    return files
