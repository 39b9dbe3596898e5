"""Training: the GAN loop, from fresh or resumed models to the exported EMA generator.

`train(cfg, data_dir, out_dir)` streams `data_dir/shards/train/*.tar.gz`, trains `cfg.model`
(any registered family), writes `out_dir/checkpoints/last.pt` every `ckpt_every` steps (atomically)
and `out_dir/export/` (the sampler's files) at the end, and returns a `TrainResult`. A run whose
`out_dir` already holds a checkpoint of the same config resumes from it; a different config there
is an error (pick a new `out_dir`). Logging is the caller's: pass `TrainHooks`. The config and its
checks live in `t2v.config`, checkpoint I/O in `t2v.checkpoint`.

With `world_size` > 1 every torchrun rank calls `train` inside an initialised process group
(`t2v.distributed`): each reads its own slice of the shards and the gradients are averaged, and
only rank 0 calls the hooks, judges, samples, checkpoints and exports; the others wait for it at
the end and return the same paths.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

from t2v import dataset, distributed, judge, models, text, vocab
from t2v.io import atomic_write_bytes
from t2v.checkpoint import load_checkpoint, restore, rng_state, save_checkpoint, set_rng_state
from t2v.config import CKPT_NAME, TrainConfig, check_device, check_export, check_resumable, generator_spec
from t2v.loader import DatasetInfo, dataset_info, make_loader
from t2v.models import GeneratorSpec
from t2v.models.common import Models
from t2v.sampler import Sampler, export_generator

@dataclass
class TrainHooks:
    """Callbacks for the caller's logging (MLflow etc.); every one optional, every one may raise to stop."""

    on_metrics: Callable[[int, dict[str, float]], None] | None = None
    on_sample: Callable[[int, np.ndarray], None] | None = None  # grid (H, W, 3) uint8
    on_checkpoint: Callable[[int, Path], None] | None = None


@dataclass(frozen=True)
class TrainResult:
    step: int  # last completed step
    checkpoint: Path  # out_dir/checkpoints/last.pt
    export_dir: Path  # out_dir/export: load with t2v.sampler.load_generator
    metrics: dict[str, float] = field(default_factory=dict)  # last logged metrics (+ clips_per_s)
    resumed_from: int | None = None  # step of the checkpoint this run started from, None if fresh
    selected_step: int | None = None  # step whose EMA weights were exported (None: selection off, the last step)
    selected_score: float | None = None  # its train-prompt score by select_by (pixel judge, all-three)


RESULT_NAME = "train-result.json"  # under out_dir: what a torchrun rank 0 hands back to the process that launched it


def save_result(r: TrainResult, out_dir: Path) -> Path:
    """`r` as JSON in `out_dir` (written to a temporary name, renamed into place)."""
    doc = {"step": r.step, "checkpoint": str(r.checkpoint), "export_dir": str(r.export_dir), "metrics": r.metrics,
           "resumed_from": r.resumed_from, "selected_step": r.selected_step, "selected_score": r.selected_score}
    path = Path(out_dir) / RESULT_NAME
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode())
    return path


def load_result(out_dir: Path) -> TrainResult:
    doc = json.loads((Path(out_dir) / RESULT_NAME).read_text())
    return TrainResult(int(doc["step"]), Path(doc["checkpoint"]), Path(doc["export_dir"]),
                       {k: float(v) for k, v in doc["metrics"].items()}, doc["resumed_from"], doc["selected_step"],
                       doc["selected_score"])


# ----------------------------------------------------------------------------- setup

SAMPLE_PROMPTS = (  # sample-grid rows: held-out combinations first, then seen ones
    "purple square moving left", "red circle moving up-right", "blue square bouncing vertically",
    "green triangle rotating counter-clockwise", "yellow circle expanding", "red triangle zigzagging horizontally",
    "blue square spinning clockwise", "circle moving down",
)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` is CUDA when there is one (a torchrun rank takes the GPU of its `LOCAL_RANK`), else CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    check_device(name)
    if name == "cuda" and local_rank:
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


@contextlib.contextmanager
def _rank0_work(world: distributed.World) -> Iterator[None]:
    """What rank 0 does alone (judging, samples) leaves its RNG states as the other ranks' are."""
    if world.world_size == 1:
        yield
        return
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


@torch.no_grad()
def _copy_matching(module: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Copy every tensor whose name matches; a tensor whose first dimension grew (a vocabulary that
    gained words) gets its old rows. Returns how many tensors were copied."""
    copied = 0
    own = module.state_dict()
    with torch.no_grad():
        for name, src in state.items():
            dst = own.get(name)
            if dst is None or dst.dim() != src.dim() or dst.shape[1:] != src.shape[1:]:
                continue
            rows = min(dst.shape[0], src.shape[0]) if dst.dim() else None
            if rows is None:
                dst.copy_(src)
            else:
                dst[:rows].copy_(src[:rows])
            copied += 1
    return copied


def warm_start(m: Models, export_dir: Path, device: torch.device) -> int:
    """Start a fresh run from an exported generator (the champion): its generator and text encoder
    weights go into G (and its EMA); the critics start from scratch. Returns tensors copied."""
    files = {"generator.pt": [m.generator, m.generator_ema], "text_encoder.pt": [m.text_encoder, m.text_encoder_ema]}
    check_export(export_dir)
    copied = 0
    for name, modules in files.items():
        state = torch.load(export_dir / name, map_location=device, weights_only=True)
        for module in filter(None, modules):
            copied += _copy_matching(module, state)
    if copied == 0:
        raise ValueError(f"init_from={str(export_dir)!r} shares no weights with model {m.spec}")
    return copied


# ----------------------------------------------------------------------------- samples

@torch.no_grad()
def sample_grid(generator: nn.Module, text_encoder: nn.Module, device: torch.device, seed: int = 0,
                columns: int = 8) -> np.ndarray:
    """Rows = SAMPLE_PROMPTS, columns = evenly spaced frames. # (rows*H, columns*W, 3) uint8"""
    was = generator.training
    generator.eval()
    ids = text.encode(list(SAMPLE_PROMPTS)).to(device)
    noise = generator.sample_noise(len(SAMPLE_PROMPTS), torch.Generator().manual_seed(seed)).to(device)
    clips = generator(noise, text_encoder(ids)).float()  # (N, 3, T, H, W)
    generator.train(was)
    N, C, T, H, W = clips.shape
    idx = torch.linspace(0, T - 1, min(columns, T)).round().long().to(device)
    u8 = ((clips[:, :, idx].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (N, 3, F, H, W)
    return u8.permute(0, 3, 2, 4, 1).reshape(N * H, len(idx) * W, 3).cpu().numpy()


# ----------------------------------------------------------------------------- selection

def train_prompts(data_dir: Path) -> list[str]:
    """The distinct prompts of the train split: selection judges these only, so held-out prompts never
    steer which weights ship. From the manifest."""
    m = dataset.load_manifest(data_dir)
    return sorted(set(m.loc[m["split"] == "train", "prompt"]))


def all3_scores(clips: np.ndarray, prompts: list[str]) -> dict[str, float]:
    """The pixel judge's all-three accuracy of `clips` against `prompts`: `mean` over every clip, and
    `worst_motion`, the lowest motion phrase's, what the per-motion quality target reads."""
    parsed = [vocab.parse_prompt(p) for p in prompts]
    ok = judge.hits(judge.judge_many(clips), parsed)["all3"]
    motions = np.array([p.motion for p in parsed])
    worst = min(float(ok[motions == motion].mean()) for motion in set(motions.tolist()))
    return {"mean": float(ok.mean()), "worst_motion": worst}


def selection_scores(generator: nn.Module, text_encoder: nn.Module, spec: GeneratorSpec, prompts: list[str],
                     device: torch.device, seed: int = 0, samples: int = 1) -> dict[str, float]:
    """`all3_scores` of fresh samples of `prompts` (`samples` noises each, the sampler's for `seed`): what
    the exported model would score on them."""
    modes = (generator.training, text_encoder.training)
    batch = list(prompts) * samples
    clips = Sampler(spec, generator, text_encoder, device).generate(batch, seed)
    generator.train(modes[0])
    text_encoder.train(modes[1])
    return all3_scores(clips, batch)


def _snapshot(modules: tuple[nn.Module, nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach().clone() for k, v in mod.state_dict().items()}
            for name, mod in zip(("generator", "text_encoder"), modules)}


# ----------------------------------------------------------------------------- learning rates

def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Multiplier of every learning rate for the step taken after `step` steps: 1, then, with lr_decay > 0,
    a linear fall towards 0 over the last lr_decay of max_steps, so a fixed budget ends on a settled
    generator instead of one draw from the GAN's oscillation. A function of the step alone: a resumed run
    takes the rates it would have taken (a longer max_steps on resume moves the fall with it)."""
    if cfg.lr_decay <= 0:
        return 1.0
    return min(1.0, max(0.0, (cfg.max_steps - step) / (cfg.lr_decay * cfg.max_steps)))


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    """Scale each param group's rate from its `initial_lr` (torch's scheduler convention: recorded on first
    use, saved in the optimizer's state, so a resume scales from the configured rate, not a decayed one)."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor


# ----------------------------------------------------------------------------- the loop

def train(cfg: TrainConfig, data_dir: Path, out_dir: Path, hooks: TrainHooks | None = None) -> TrainResult:
    """Train `cfg.model` on `data_dir`'s train shards; resume from `out_dir`'s checkpoint when it matches."""
    t_start = time.perf_counter()
    world = distributed.current()
    if world.world_size != cfg.world_size:
        raise ValueError(f"world_size={cfg.world_size} but this process is rank {world.rank} of {world.world_size}: "
                         f"start {cfg.world_size} ranks with torchrun (`t2v train --nproc-per-node N`) and join "
                         f"them with t2v.distributed.init first")
    hooks = (hooks or TrainHooks()) if world.main else TrainHooks()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    info = dataset_info(data_dir)  # also fails early when there are no train shards
    device = resolve_device(cfg.device, world.local_rank)
    ckpt_path = out_dir / "checkpoints" / CKPT_NAME
    ckpt = load_checkpoint(ckpt_path, device) if ckpt_path.is_file() else None
    if ckpt is not None:
        check_resumable(ckpt, cfg, info.frames, info.size, ckpt_path)  # before any work or any write
    threads_before, deterministic_before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if world.world_size > 1 else 1  # they share the cores
        torch.set_num_threads(cfg.threads or max(1, ((os.cpu_count() or 1) - cfg.num_workers) // ranks_here))
    try:
        return _train(cfg, data_dir, out_dir, hooks, info, device, ckpt_path, ckpt, t_start, world)
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


def _train(cfg: TrainConfig, data_dir: Path, out_dir: Path, hooks: TrainHooks, info: DatasetInfo,
           device: torch.device, ckpt_path: Path, ckpt: dict[str, Any] | None, t_start: float,
           world: distributed.World) -> TrainResult:
    if device.type == "cuda":
        fast = not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = fast
        torch.backends.cudnn.allow_tf32 = fast
        torch.backends.cudnn.benchmark = fast
        torch.backends.cudnn.deterministic = cfg.deterministic
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=False)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    family = models.implementation(cfg.model)
    m = family.build(cfg, generator_spec(cfg, info.frames, info.size), device)
    step, resumed_from = 0, None
    best: dict[str, Any] = {}  # {"step", "score", "weights"}: the selected EMA weights so far
    if ckpt is not None:
        restore(m, ckpt, ckpt_path)
        step = resumed_from = int(ckpt["step"])
        best = ckpt.get("best") or {}
        del ckpt
    elif cfg.init_from:
        warm_start(m, Path(cfg.init_from), device)
    distributed.broadcast_modules(list(m.modules().values()))  # every rank starts from rank 0's weights
    distributed.average_gradients([m.opt_g, m.opt_d])

    step_fn = family.step(cfg, m, device, step)
    metrics: dict[str, float] = {}
    last_saved = step
    prompts = train_prompts(data_dir) if cfg.select_every else []

    def select(step: int) -> dict[str, float]:
        """Judge the shipped weights now; keep them if they beat the best so far by `select_by` (ties: the
        mean, then the later step)."""
        nonlocal best
        with _rank0_work(world):
            scores = selection_scores(*m.shipped(), m.spec, prompts, device, cfg.seed, cfg.select_samples)
        key = (scores[cfg.select_by], scores["mean"])
        if not best or key >= (best["score"], best.get("mean", best["score"])):
            best = {"step": step, "score": key[0], "mean": key[1], "weights": _snapshot(m.shipped())}
        return scores

    if step < cfg.max_steps:
        loader = make_loader(data_dir, cfg.batch_size, num_workers=cfg.num_workers, shuffle_buffer=cfg.shuffle_buffer,
                             seed=cfg.seed * 7_919 + step,
                             color_dropout=cfg.color_dropout if models.family(cfg.model).prompt_dropout else 0.0,
                             pin_memory=device.type == "cuda", rank=world.rank, world_size=world.world_size)
        batches: Iterator[dict[str, Any]] = iter(loader)
        work, per_step = family.batches(batches, cfg, info.frames)  # what a step eats; clips per step
        t_log, n_log = time.perf_counter(), 0
        for batch in work:
            if cfg.lr_decay > 0:
                set_lr([m.opt_g, m.opt_d], lr_factor(cfg, step))
            losses = step_fn(batch)
            step += 1
            n_log += 1
            out_of_time = cfg.max_seconds > 0 and time.perf_counter() - t_start > cfg.max_seconds
            done = step >= cfg.max_steps or out_of_time
            if step % cfg.log_every == 0 or done:
                metrics = distributed.mean_over_ranks({k: float(v) for k, v in losses.items()})  # the only device sync
                if not all(np.isfinite(v) for v in metrics.values()):
                    raise FloatingPointError(f"non-finite losses at step {step}: {metrics}; the last checkpoint "
                                             f"(step {last_saved}) is intact")
                dt = time.perf_counter() - t_log
                metrics = {**metrics, "clips_per_s": n_log * per_step / dt, "steps_per_s": n_log / dt,
                           "frames_per_s": n_log * per_step * info.frames / dt,
                           "elapsed_s": time.perf_counter() - t_start}
                if cfg.lr_decay > 0:
                    metrics["lr_scale"] = lr_factor(cfg, step - 1)  # what the last step's rates were multiplied by
                if hooks.on_metrics:
                    hooks.on_metrics(step, metrics)
                t_log, n_log = time.perf_counter(), 0
            if cfg.select_every and (step % cfg.select_every == 0 or done) and world.main:
                t_sel = time.perf_counter()
                scores = select(step)
                if hooks.on_metrics:
                    hooks.on_metrics(step, {"select_train_all3": scores["mean"],
                                            "select_train_worst_motion": scores["worst_motion"]})
                t_log += time.perf_counter() - t_sel  # the judge's second is not training throughput
            if (step % cfg.sample_every == 0 or done) and hooks.on_sample:
                with _rank0_work(world):
                    hooks.on_sample(step, sample_grid(*m.shipped(), device, cfg.seed))
            if (step % cfg.ckpt_every == 0 or done) and world.main:
                save_checkpoint(ckpt_path, step, cfg, info, m, best)
                last_saved = step
                if hooks.on_checkpoint:
                    hooks.on_checkpoint(step, ckpt_path)
            if done:
                break
        del work, batches, loader  # stops the workers (the stream is endless: the loop always ends judged, at `done`)
    elif cfg.select_every and best.get("step", -1) < step and world.main:
        select(step)  # resumed with nothing left to train, from a checkpoint whose step was never judged
    export_dir = out_dir / "export"
    if not world.main:  # rank 0 writes the checkpoint and the export; the others return once it has
        distributed.barrier()
        return TrainResult(step, ckpt_path, export_dir, metrics, resumed_from, best.get("step"), best.get("score"))
    if last_saved != step or not ckpt_path.is_file():
        save_checkpoint(ckpt_path, step, cfg, info, m, best)
    shipped = m.shipped()
    if best and best["step"] != step:  # an earlier step judged better: ship its weights
        shipped = tuple(copy.deepcopy(mod) for mod in shipped)
        for mod, name in zip(shipped, ("generator", "text_encoder")):
            mod.load_state_dict(best["weights"][name])
    export_generator(*shipped, m.spec, export_dir)
    distributed.barrier()
    return TrainResult(step, ckpt_path, export_dir, metrics, resumed_from,
                       best.get("step"), best.get("score"))
