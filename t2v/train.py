"""Training: the GAN loop, from fresh or resumed models to the exported EMA generator.

`train(cfg, data_dir, out_dir)` streams `data_dir/shards/train/*.tar.gz`, trains `cfg.model`
("video" or "baseline"), writes `out_dir/checkpoints/last.pt` every `ckpt_every` steps (atomically)
and `out_dir/export/` (the sampler's files) at the end, and returns a `TrainResult`. A run whose
`out_dir` already holds a checkpoint of the same config resumes from it; a different config there
is an error (pick a new `out_dir`). Logging is the caller's: pass `TrainHooks`. The config and its
checks live in `t2v.config`, checkpoint I/O in `t2v.checkpoint`.
"""

from __future__ import annotations

import copy
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from t2v import dataset, judge, text, vocab
from t2v.loader import DatasetInfo, dataset_info, make_loader, to_model
from t2v.models import (BASELINE_NOISE, BaselineDiscriminator, GeneratorSpec, VideoDiscriminators,
                        build_generator, crop_real)
from t2v.checkpoint import load_checkpoint, restore, save_checkpoint
from t2v.config import CKPT_NAME, TrainConfig, check_device, check_export, check_resumable
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
    selected_score: float | None = None  # its all-three accuracy on the train prompts (pixel judge)


# ----------------------------------------------------------------------------- setup

SAMPLE_PROMPTS = (  # sample-grid rows: held-out combinations first, then seen ones
    "purple square moving left", "red circle moving up-right", "blue square bouncing vertically",
    "green triangle rotating counter-clockwise", "yellow circle expanding", "red triangle zigzagging horizontally",
    "blue square spinning clockwise", "circle moving down",
)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(name)
    return torch.device(name)


@dataclass
class Models:
    """Everything a checkpoint holds besides the step and RNG states."""

    spec: GeneratorSpec
    generator: nn.Module
    text_encoder: nn.Module
    discriminator: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    generator_ema: nn.Module | None = None  # video only: what is sampled and exported
    text_encoder_ema: nn.Module | None = None

    def modules(self) -> dict[str, nn.Module]:
        out = {"generator": self.generator, "text_encoder": self.text_encoder, "discriminator": self.discriminator}
        if self.generator_ema is not None:
            out.update(generator_ema=self.generator_ema, text_encoder_ema=self.text_encoder_ema)
        return out

    def shipped(self) -> tuple[nn.Module, nn.Module]:
        """The generator and text encoder that are sampled and exported (EMA for video)."""
        if self.generator_ema is not None:
            return self.generator_ema, self.text_encoder_ema
        return self.generator, self.text_encoder


def build(cfg: TrainConfig, info: DatasetInfo, device: torch.device) -> Models:
    """Fresh models and optimisers for `cfg` on clips of `info`'s geometry."""
    spec = GeneratorSpec(cfg.model, info.frames, info.size, cfg.z_dim, cfg.text_dim)
    g, te = build_generator(spec)
    if cfg.model == "baseline":
        d = BaselineDiscriminator(info.size)
        g, te, d = g.to(device), te.to(device), d.to(device)
        # defect 7 reproduced: the text embedding is in no optimiser, so it stays at its random init
        opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=cfg.betas)
        opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=cfg.betas)
        te.requires_grad_(False)
        return Models(spec, g, te, d, opt_g, opt_d)
    d = VideoDiscriminators(info.frames, info.size, spec.n_vocab, len(vocab.motion_names()), cfg.width,
                            cfg.frame_samples)
    g, te, d = g.to(device), te.to(device), d.to(device)
    opt_g = torch.optim.Adam([*g.parameters(), *te.parameters()], lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    g_ema, te_ema = copy.deepcopy(g).requires_grad_(False), copy.deepcopy(te).requires_grad_(False)
    return Models(spec, g, te, d, opt_g, opt_d, g_ema, te_ema)


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


@torch.no_grad()  # else every lerp_ chains the EMA weights into the autograd graph, step after step
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, m in zip(ema.parameters(), model.parameters()):
        e.lerp_(m, 1.0 - decay)
    for e, m in zip(ema.buffers(), model.buffers()):
        e.copy_(m)


# ----------------------------------------------------------------------------- GAN steps

def _ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ignoring targets of -1 (a prompt with no colour word); 0 when every target is -1."""
    keep = target >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep].float(), target[keep])


def _hinge_real(s: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - s.float()).mean()


def _hinge_fake(s: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    loss = F.relu(1.0 + s.float())
    if mask is None:
        return loss.mean()
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


class VideoStep:
    """One GAN step of the clip model: update D (real, fake, real + wrong prompt, AC heads, lazy R1), then update G."""

    def __init__(self, cfg: TrainConfig, m: Models, device: torch.device, start_step: int = 0) -> None:
        self.cfg, self.m, self.device, self.start_step = cfg, m, device, start_step
        self.amp = cfg.amp and device.type == "cuda"
        self.views, self.TE, self.D = m.generator.views, m.text_encoder, m.discriminator
        if cfg.compile and device.type == "cuda":
            self.views, self.D = torch.compile(self.views), torch.compile(self.D)
        self.calls = 0

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def aux_targets(self, lab: dict[str, torch.Tensor], K: int, true_color: bool) -> dict[str, torch.Tensor]:
        """Class targets for every AC head (colour -1 = prompt without colour: ignored)."""
        color = lab["true_color"] if true_color else lab["color"]
        return {"frame_color": color.repeat_interleave(K), "frame_shape": lab["shape"].repeat_interleave(K),
                "video_motion": lab["motion"], "video_color": color, "video_shape": lab["shape"],
                "track_motion": lab["motion"], "track_shape": lab["shape"]}

    def __call__(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg, m, dev = self.cfg, self.m, self.device
        self.calls += 1
        x = to_model(batch["clips"], dev)  # (B, 3, T, H, W)
        centre = batch["centre"].to(dev, non_blocking=True)  # (B, T, 2)
        lab = {k: batch[k].to(dev, non_blocking=True) for k in ("color", "shape", "motion", "true_color")}
        ids = batch["ids"].to(dev, non_blocking=True)  # (B, L)
        B, T, K = x.shape[0], x.shape[2], cfg.frame_samples
        D: VideoDiscriminators = m.discriminator
        z = torch.randn(B, cfg.z_dim, device=dev)
        fidx = torch.randint(0, T, (B, K), device=dev)
        real_crops = crop_real(x, fidx, centre[..., 0], centre[..., 1], D.crop)[0]  # (B, 3, K, c, c)
        real_clip = F.avg_pool3d(x, (1, x.shape[-1] // D.res, x.shape[-1] // D.res))  # (B, 3, T, r, r)
        # a real clip under another clip's prompt is a negative where that prompt is wrong for what the critic sees
        perm = torch.roll(torch.arange(B, device=dev), 1)
        ids_w = ids[perm]
        color_w = lab["color"][perm]
        color_wrong = (color_w >= 0) & (color_w != lab["true_color"])
        shape_wrong = lab["shape"][perm] != lab["shape"]
        motion_wrong = lab["motion"][perm] != lab["motion"]
        wrong = {"frame": (color_wrong | shape_wrong).float().repeat_interleave(K),  # a frame shows no motion
                 "video": (color_wrong | shape_wrong | motion_wrong).float(),
                 "track": (shape_wrong | motion_wrong).float()}  # moments carry no colour

        # (1) update D
        self.D.requires_grad_(True)
        m.opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            fake_crops, fake_clip, concave = self.views(z, self.TE(ids), fidx, D.crop, D.res)  # (B, 3, K, c, c), (B, 3, T, r, r)
            h_r = self.D(real_crops, real_clip)
            h_f = self.D(fake_crops.detach(), fake_clip.detach())
            s_r, s_f, s_w = D.scores(h_r, ids), D.scores(h_f, ids), D.scores(h_r, ids_w)
            adv_d = sum(_hinge_real(s_r[k]) + _hinge_fake(s_f[k]) + cfg.mismatch_weight * _hinge_fake(s_w[k], wrong[k])
                        for k in s_r)
            logits_r = D.logits(h_r)
            targets = self.aux_targets(lab, K, true_color=True)
            aux_d = sum(_ce(logits_r[k], targets[k]) for k in logits_r)
            loss_d = adv_d + cfg.aux_weight * aux_d
        r1 = torch.zeros((), device=dev)
        if cfg.r1_weight > 0 and self.calls % cfg.r1_every == 0:
            rc, rv = real_crops.detach().requires_grad_(True), real_clip.detach().requires_grad_(True)
            s = D.scores(self.D(rc, rv), ids)  # on the pixel critics: the track critic reads pixels through
            # moment ratios whose input gradients are huge near empty pixels, and is bounded by spectral norm
            gc, gv = torch.autograd.grad(s["frame"].float().sum() + s["video"].float().sum(), [rc, rv], create_graph=True)
            r1 = gc.pow(2).flatten(1).sum(1).mean() + gv.pow(2).flatten(1).sum(1).mean()
            loss_d = loss_d + cfg.r1_weight * 0.5 * cfg.r1_every * r1
        loss_d.backward()
        m.opt_d.step()

        # (2) update G (through the just-updated D, whose weights stay fixed here)
        self.D.requires_grad_(False)
        m.opt_g.zero_grad(set_to_none=True)
        with self.autocast():
            h = self.D(fake_crops, fake_clip)
            s_g = D.scores(h, ids)
            adv_g = -sum(v.float().mean() for v in s_g.values())
            logits = D.logits(h)
            targets = self.aux_targets(lab, K, true_color=False)
            aux_g = sum(_ce(logits[k], targets[k]) for k in logits)
            loss_g = adv_g + cfg.aux_weight * aux_g + cfg.convex_weight * concave
        loss_g.backward()
        m.opt_g.step()

        decay = cfg.ema_decay if self.calls + self.start_step > cfg.ema_start else 0.0
        ema_update(m.generator_ema, m.generator, decay)
        ema_update(m.text_encoder_ema, m.text_encoder, decay)
        with torch.no_grad():  # how often D's heads read the prompt's class off fakes (G) and off real clips (D)
            real_t = self.aux_targets(lab, K, true_color=True)
            acc = {f"acc_{k}": (logits[k].argmax(1) == targets[k]).float()[targets[k] >= 0].mean()
                   for k in ("video_motion", "track_motion", "frame_shape", "frame_color")}
            acc.update({f"acc_real_{k}": (logits_r[k].argmax(1) == real_t[k]).float().mean()
                        for k in ("video_motion", "track_motion", "frame_shape")})
        out = {"loss_d": loss_d, "loss_g": loss_g, "adv_d": adv_d, "adv_g": adv_g, "aux_d": aux_d, "aux_g": aux_g,
               "r1": r1, "concavity": concave, **{f"d_real_{k}": v.mean() for k, v in s_r.items()},
               **{f"d_fake_{k}": v.mean() for k, v in s_f.items()}, **acc}
        return {k: v.detach().float() for k, v in out.items()}  # tensors: no device sync until they are logged


class BaselineStep:
    """The tutorial's step on independent frames: BCE, D on real then fake.detach(), then G towards "real"."""

    def __init__(self, cfg: TrainConfig, m: Models, device: torch.device, start_step: int = 0) -> None:
        self.cfg, self.m, self.device = cfg, m, device
        self.amp = cfg.amp and device.type == "cuda"
        self.frame, self.D = m.generator.frame, m.discriminator
        if cfg.compile and device.type == "cuda":
            self.frame, self.D = torch.compile(self.frame), torch.compile(self.D)

    def __call__(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        m, dev = self.m, self.device
        real = to_model(batch["frames"], dev)  # (M, 3, H, W)
        ids = batch["ids"].to(dev, non_blocking=True)
        M = real.shape[0]
        ones, zeros = torch.ones(M, 1, device=dev), torch.zeros(M, 1, device=dev)
        with torch.no_grad():
            t = m.text_encoder(ids)  # (M, 10), fixed: never optimised (defect 7)
        noise = torch.randn(M, BASELINE_NOISE, device=dev)
        ac = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.amp)

        # (1) update D
        m.opt_d.zero_grad(set_to_none=True)
        with ac:
            fake = self.frame(noise, t)  # (M, 3, H, W)
            p_real, p_fake = self.D(real), self.D(fake.detach())
        loss_d = F.binary_cross_entropy(p_real.float(), ones) + F.binary_cross_entropy(p_fake.float(), zeros)
        loss_d.backward()
        m.opt_d.step()

        # (2) update G
        m.opt_g.zero_grad(set_to_none=True)
        with ac:
            p = self.D(fake)
        loss_g = F.binary_cross_entropy(p.float(), ones)
        loss_g.backward()
        m.opt_g.step()
        out = {"loss_d": loss_d, "loss_g": loss_g, "d_real": p_real.mean(), "d_fake": p_fake.mean()}
        return {k: v.detach().float() for k, v in out.items()}


def frame_batches(batches: Iterator[dict[str, Any]], size: int) -> Iterator[dict[str, Any]]:
    """The tutorial trains on frames, not clips: each batch of B clips becomes T shuffled batches of B
    independent frames (with their clip's prompt). # frames (B, 3, H, W) uint8"""
    for b in batches:
        clips = b["clips"]  # (B, 3, T, H, W)
        B, C, T, H, W = clips.shape
        frames = clips.transpose(1, 2).reshape(B * T, C, H, W)
        ids = b["ids"].repeat_interleave(T, 0)
        order = torch.randperm(B * T)
        for i in range(0, B * T - size + 1, size):
            j = order[i:i + size]
            yield {"frames": frames[j], "ids": ids[j]}


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


def prompt_accuracy(generator: nn.Module, text_encoder: nn.Module, spec: GeneratorSpec, prompts: list[str],
                    device: torch.device, seed: int = 0) -> float:
    """Fraction of fresh samples (one per prompt, the sampler's noise for `seed`) that the pixel judge
    finds right in colour, shape and motion at once: what the exported model would score."""
    modes = (generator.training, text_encoder.training)
    clips = Sampler(spec, generator, text_encoder, device).generate(prompts, seed)
    generator.train(modes[0])
    text_encoder.train(modes[1])
    return judge.score(clips, prompts)["all_all3"]


def _snapshot(modules: tuple[nn.Module, nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach().clone() for k, v in mod.state_dict().items()}
            for name, mod in zip(("generator", "text_encoder"), modules)}


# ----------------------------------------------------------------------------- the loop

def train(cfg: TrainConfig, data_dir: Path, out_dir: Path, hooks: TrainHooks | None = None) -> TrainResult:
    """Train `cfg.model` on `data_dir`'s train shards; resume from `out_dir`'s checkpoint when it matches."""
    t_start = time.perf_counter()
    hooks = hooks or TrainHooks()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    info = dataset_info(data_dir)  # also fails early when there are no train shards
    device = resolve_device(cfg.device)
    ckpt_path = out_dir / "checkpoints" / CKPT_NAME
    ckpt = load_checkpoint(ckpt_path, device) if ckpt_path.is_file() else None
    if ckpt is not None:
        check_resumable(ckpt, cfg, info.frames, info.size, ckpt_path)  # before any work or any write
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) - cfg.num_workers))
    try:
        return _train(cfg, data_dir, out_dir, hooks, info, device, ckpt_path, ckpt, t_start)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: TrainConfig, data_dir: Path, out_dir: Path, hooks: TrainHooks, info: DatasetInfo,
           device: torch.device, ckpt_path: Path, ckpt: dict[str, Any] | None, t_start: float) -> TrainResult:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)

    m = build(cfg, info, device)
    step, resumed_from = 0, None
    best: dict[str, Any] = {}  # {"step", "score", "weights"}: the selected EMA weights so far
    if ckpt is not None:
        restore(m, ckpt)
        step = resumed_from = int(ckpt["step"])
        best = ckpt.get("best") or {}
        del ckpt
    elif cfg.init_from:
        warm_start(m, Path(cfg.init_from), device)

    step_fn: VideoStep | BaselineStep = (VideoStep if cfg.model == "video" else BaselineStep)(cfg, m, device, step)
    metrics: dict[str, float] = {}
    last_saved = step
    prompts = train_prompts(data_dir) if cfg.select_every else []

    def select(step: int) -> float:
        """Judge the shipped weights now; keep them if they beat the best so far (ties: the later step)."""
        nonlocal best
        score = prompt_accuracy(*m.shipped(), m.spec, prompts, device, cfg.seed)
        if not best or score >= best["score"]:
            best = {"step": step, "score": score, "weights": _snapshot(m.shipped())}
        return score

    if step < cfg.max_steps:
        loader = make_loader(data_dir, cfg.batch_size, num_workers=cfg.num_workers, shuffle_buffer=cfg.shuffle_buffer,
                             seed=cfg.seed * 7_919 + step, color_dropout=cfg.color_dropout if cfg.model == "video" else 0.0,
                             pin_memory=device.type == "cuda")
        batches: Iterator[dict[str, Any]] = iter(loader)
        work = batches if cfg.model == "video" else frame_batches(batches, cfg.batch_size)
        per_step = cfg.batch_size if cfg.model == "video" else cfg.batch_size / info.frames  # clips per step
        t_log, n_log = time.perf_counter(), 0
        for batch in work:
            losses = step_fn(batch)
            step += 1
            n_log += 1
            out_of_time = cfg.max_seconds > 0 and time.perf_counter() - t_start > cfg.max_seconds
            done = step >= cfg.max_steps or out_of_time
            if step % cfg.log_every == 0 or done:
                metrics = {k: float(v) for k, v in losses.items()}  # the only device sync
                if not all(np.isfinite(v) for v in metrics.values()):
                    raise FloatingPointError(f"non-finite losses at step {step}: {metrics}; the last checkpoint "
                                             f"(step {last_saved}) is intact")
                dt = time.perf_counter() - t_log
                metrics = {**metrics, "clips_per_s": n_log * per_step / dt, "steps_per_s": n_log / dt,
                           "frames_per_s": n_log * per_step * info.frames / dt,
                           "elapsed_s": time.perf_counter() - t_start}
                if hooks.on_metrics:
                    hooks.on_metrics(step, metrics)
                t_log, n_log = time.perf_counter(), 0
            if cfg.select_every and (step % cfg.select_every == 0 or done):
                t_sel = time.perf_counter()
                score = select(step)
                if hooks.on_metrics:
                    hooks.on_metrics(step, {"select_train_all3": score})
                t_log += time.perf_counter() - t_sel  # the judge's second is not training throughput
            if step % cfg.sample_every == 0 or done:
                if hooks.on_sample:
                    hooks.on_sample(step, sample_grid(*m.shipped(), device, cfg.seed))
            if step % cfg.ckpt_every == 0 or done:
                save_checkpoint(ckpt_path, step, cfg, info, m, best)
                last_saved = step
                if hooks.on_checkpoint:
                    hooks.on_checkpoint(step, ckpt_path)
            if done:
                break
        del work, batches, loader  # stops the workers (the stream is endless: the loop always ends judged, at `done`)
    elif cfg.select_every and best.get("step", -1) < step:
        select(step)  # resumed with nothing left to train, from a checkpoint whose step was never judged
    if last_saved != step or not ckpt_path.is_file():
        save_checkpoint(ckpt_path, step, cfg, info, m, best)
    shipped = m.shipped()
    if best and best["step"] != step:  # an earlier step judged better: ship its weights
        shipped = tuple(copy.deepcopy(mod) for mod in shipped)
        for mod, name in zip(shipped, ("generator", "text_encoder")):
            mod.load_state_dict(best["weights"][name])
    export_dir = export_generator(*shipped, m.spec, out_dir / "export")
    return TrainResult(step, ckpt_path, export_dir, metrics, resumed_from,
                       best.get("step"), best.get("score"))
