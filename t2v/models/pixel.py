"""What the pixel-space families (`conv3d`, `rnn`, `transformer`, and a user's own) share.

Unlike `video`, which draws one parametric sprite, these generators output every pixel. They share:
- the losses: the published BCE (non-saturating G), or with `stabilize` this project's hinge loss;
- the critics' text conditioning: a bag of word vectors, so an unseen pair is scored from its words;
- `FrameCritic` (K random frames, 2D convs) and `ClipCritic` (the clip at half resolution, 3D convs);
- `FrameDecoder`, a DCGAN-style 2D decoder from a per-frame code to a frame;
- `PixelStep`: update D on every critic (real + prompt, fake.detach() + prompt, optionally real +
  wrong prompt and R1), then update G, then the EMA.
A family module builds its generator and a critic module whose forward(clip, ids) returns one logit
per clip and critic, and hands them to `t2v.models.common.build_models`.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from t2v import distributed, text
from t2v.config import TrainConfig
from t2v.loader import to_model
from t2v.models import GeneratorSpec
from t2v.models.common import Models, ema_update, hinge_fake, hinge_real


def maybe_sn(m: nn.Module, on: bool) -> nn.Module:
    """Spectral norm on `m` when the family trains stabilised."""
    return spectral_norm(m) if on else m


def d_loss(real: torch.Tensor, fake: torch.Tensor, hinge: bool) -> torch.Tensor:
    """D's loss on real and fake logits: BCE as published, or hinge."""
    if hinge:
        return hinge_real(real) + hinge_fake(fake)
    r, f = real.float(), fake.float()
    return F.binary_cross_entropy_with_logits(r, torch.ones_like(r)) + \
        F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))


def d_wrong(s: torch.Tensor, mask: torch.Tensor, hinge: bool) -> torch.Tensor:
    """Real clips under a wrong prompt are negatives (only where `mask` says the prompt is wrong)."""
    per = F.relu(1.0 + s.float()) if hinge else F.binary_cross_entropy_with_logits(
        s.float(), torch.zeros_like(s, dtype=torch.float32), reduction="none")
    return (per * mask).sum() / mask.sum().clamp(min=1.0)


def g_loss(fake: torch.Tensor, hinge: bool) -> torch.Tensor:
    """G's loss: the non-saturating BCE of the GAN papers, or hinge's -D(G(z))."""
    f = fake.float()
    return -f.mean() if hinge else F.binary_cross_entropy_with_logits(f, torch.ones_like(f))


# ----------------------------------------------------------------------------- generator pieces

class FrameDecoder(nn.Module):
    """Per-frame code -> frame, DCGAN style: Linear to (C, 4, 4), then ConvTranspose2d + BatchNorm + ReLU
    blocks doubling the side, Tanh. (N, in_dim) -> (N, 3, size, size)"""

    def __init__(self, in_dim: int, size: int, width: int = 16) -> None:
        super().__init__()
        self.blocks = max(1, (size // 4).bit_length() - 1)  # 4 -> size in `blocks` doublings
        if 4 * 2**self.blocks != size:
            raise ValueError(f"frame side must be 4 x a power of two, got {size}")
        ch = [min(8 * width, width * 2**(self.blocks - 1 - i)) for i in range(self.blocks)]  # e.g. 128, 64, 32, 16
        self.c0 = ch[0]
        self.fc = nn.Sequential(nn.Linear(in_dim, ch[0] * 16), nn.BatchNorm1d(ch[0] * 16), nn.ReLU(True))
        layers: list[nn.Module] = []
        for a, b in zip(ch, ch[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ch[-1], 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(h).view(-1, self.c0, 4, 4))


def to_clip(frames: torch.Tensor, B: int) -> torch.Tensor:
    """(B*T, 3, H, W) -> (B, 3, T, H, W)"""
    BT, C, H, W = frames.shape
    return frames.view(B, BT // B, C, H, W).transpose(1, 2)


# ----------------------------------------------------------------------------- critics

class TextProjection(nn.Module):
    """Projection-discriminator conditioning (Miyato & Koyama): logit = w.h + <e(prompt), h>, with
    e(prompt) a sum of word vectors. (N, F), (N, L) -> (N,)"""

    def __init__(self, feat: int, n_vocab: int, sn: bool) -> None:
        super().__init__()
        self.linear = maybe_sn(nn.Linear(feat, 1), sn)
        self.embed = text.BagOfWords(n_vocab, feat)

    def forward(self, h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.linear(h).squeeze(1) + (self.embed(ids) * h).sum(1)


class FrameCritic(nn.Module):
    """K random frames of each clip, strided 2D convs + LeakyReLU(0.2), text by projection (MoCoGAN's image
    discriminator, made text-aware). (B, 3, T, H, W), (B, L) -> (B*K,)"""

    def __init__(self, size: int, n_vocab: int, width: int = 16, frames: int = 1, sn: bool = False) -> None:
        super().__init__()
        self.k = frames
        chs = [min(8 * width, width * 2**i) for i in range((size // 4).bit_length() - 1)]  # size -> 4 by halving
        layers: list[nn.Module] = []
        for a, b in zip([3, *chs], chs):
            layers += [maybe_sn(nn.Conv2d(a, b, 4, 2, 1), sn), nn.LeakyReLU(0.2, True)]
        self.net = nn.Sequential(*layers, nn.Flatten())
        c = chs[-1]
        self.head = TextProjection(c * 16, n_vocab, sn)

    def forward(self, clip: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        B, C, T = clip.shape[:3]
        idx = distributed.randint(T, B, self.k, device=clip.device)  # (B, K)
        frames = clip.transpose(1, 2)[torch.arange(B, device=clip.device).unsqueeze(1), idx]  # (B, K, 3, H, W)
        h = self.net(frames.flatten(0, 1))  # (B*K, F)
        return self.head(h, ids.repeat_interleave(self.k, 0))


class ClipCritic(nn.Module):
    """The whole clip at half resolution, strided 3D convs + LeakyReLU(0.2), text by projection (MoCoGAN's
    video discriminator, made text-aware). (B, 3, T, H, W), (B, L) -> (B,)"""

    def __init__(self, frames: int, size: int, n_vocab: int, width: int = 16, sn: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, t, s, i = 3, frames, size // 2, 0
        while s > 4:
            out = min(8 * width, width * 2**i)
            kt, st = (4, 2) if t >= 4 else (1, 1)
            layers += [maybe_sn(nn.Conv3d(c, out, (kt, 4, 4), (st, 2, 2), (kt // 4, 1, 1)), sn), nn.LeakyReLU(0.2, True)]
            c, t, s, i = out, t // st, s // 2, i + 1
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.head = TextProjection(c * t * 16, n_vocab, sn)

    def forward(self, clip: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(F.avg_pool3d(clip, (1, 2, 2))), ids)


class Critics(nn.Module):
    """Named critics judged side by side; `frame_only` names those that see single frames (no motion)."""

    def __init__(self, frame_only: tuple[str, ...] = (), **critics: nn.Module) -> None:
        super().__init__()
        self.critics = nn.ModuleDict(critics)
        self.frame_only = frame_only

    def forward(self, clip: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: c(clip, ids) for k, c in self.critics.items()}


# ----------------------------------------------------------------------------- training

def frame_and_clip_critics(cfg: TrainConfig, spec: GeneratorSpec) -> Critics:
    """MoCoGAN's pair: an image critic on one random frame per clip and a video critic on the clip."""
    return Critics(frame_only=("image",),
                   image=FrameCritic(spec.size, spec.n_vocab, cfg.width, 1, cfg.stabilize),
                   video=ClipCritic(spec.frames, spec.size, spec.n_vocab, cfg.width, cfg.stabilize))


class PixelStep:
    """One GAN step: update D (every critic on real and detached fake clips, real clips under a wrong
    prompt when mismatch_weight > 0, lazy R1 when stabilised), then update G, then the EMA."""

    def __init__(self, cfg: TrainConfig, m: Models, device: torch.device, start_step: int = 0) -> None:
        self.cfg, self.m, self.device, self.start_step = cfg, m, device, start_step
        self.hinge = cfg.stabilize
        self.amp = cfg.amp and device.type == "cuda"
        self.G, self.D = m.generator, m.discriminator
        if cfg.compile and device.type == "cuda":
            self.G, self.D = torch.compile(self.G), torch.compile(self.D)
        self.calls = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg, m, dev, hinge = self.cfg, self.m, self.device, self.hinge
        self.calls += 1
        x = to_model(batch["clips"], dev)  # (B, 3, T, H, W)
        ids = batch["ids"].to(dev, non_blocking=True)  # (B, L)
        B = x.shape[0]
        z = distributed.rank_rows(m.generator.sample_noise, B).to(dev)  # seeded CPU draw, the same on any device
        ac = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.amp)

        # (1) update D
        self.D.requires_grad_(True)
        m.opt_d.zero_grad(set_to_none=True)
        with ac:
            fake = self.G(z, m.text_encoder(ids))  # (B, 3, T, H, W)
            s_r, s_f = self.D(x, ids), self.D(fake.detach(), ids)
            loss_d = sum(d_loss(s_r[k], s_f[k], hinge) for k in s_r)
            if cfg.mismatch_weight > 0:  # real clips under the previous clip's prompt
                perm = torch.roll(torch.arange(B, device=dev), 1)
                wrong = self._wrong_prompts(batch, perm)
                s_w = self.D(x, ids[perm])
                loss_d = loss_d + cfg.mismatch_weight * sum(
                    d_wrong(s_w[k], self._mask(wrong, k, s_w[k].shape[0]), hinge) for k in s_w)
        r1 = torch.zeros((), device=dev)
        if cfg.stabilize and cfg.r1_weight > 0 and self.calls % cfg.r1_every == 0:
            xr = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(sum(v.float().sum() for v in self.D(xr, ids).values()), [xr], create_graph=True)
            r1 = g.pow(2).flatten(1).sum(1).mean()
            loss_d = loss_d + cfg.r1_weight * 0.5 * cfg.r1_every * r1
        loss_d.backward()
        m.opt_d.step()

        # (2) update G (through the just-updated D, whose weights stay fixed here)
        self.D.requires_grad_(False)
        m.opt_g.zero_grad(set_to_none=True)
        with ac:
            s_g = self.D(fake, ids)
            loss_g = sum(g_loss(v, hinge) for v in s_g.values())
        loss_g.backward()
        m.opt_g.step()

        decay = cfg.ema_decay if self.calls + self.start_step > cfg.ema_start else 0.0
        ema_update(m.generator_ema, m.generator, decay)
        ema_update(m.text_encoder_ema, m.text_encoder, decay)
        out = {"loss_d": loss_d, "loss_g": loss_g, "r1": r1, **{f"d_real_{k}": v.mean() for k, v in s_r.items()},
               **{f"d_fake_{k}": v.mean() for k, v in s_f.items()}}
        return {k: v.detach().float() for k, v in out.items()}

    def _wrong_prompts(self, batch: dict[str, Any], perm: torch.Tensor) -> dict[str, torch.Tensor]:
        """Where the permuted prompt is wrong for what a critic sees: colour or shape for a single frame,
        also motion for a clip (a colourless prompt is right about any colour)."""
        lab = {k: batch[k].to(self.device) for k in ("color", "shape", "motion", "true_color")}
        color_w = lab["color"][perm]
        looks_wrong = ((color_w >= 0) & (color_w != lab["true_color"])) | (lab["shape"][perm] != lab["shape"])
        return {"frame": looks_wrong.float(), "clip": (looks_wrong | (lab["motion"][perm] != lab["motion"])).float()}

    def _mask(self, wrong: dict[str, torch.Tensor], critic: str, n: int) -> torch.Tensor:
        """Which of a critic's n scores saw a wrong prompt (a frame critic cannot see a wrong motion)."""
        w = wrong["frame"] if critic in getattr(self.m.discriminator, "frame_only", ()) else wrong["clip"]
        return w.repeat_interleave(n // w.shape[0])


def step(cfg: TrainConfig, m: Models, device: torch.device, start_step: int = 0) -> PixelStep:
    return PixelStep(cfg, m, device, start_step)


def batches(stream: Iterator[dict[str, Any]], cfg: TrainConfig, frames: int) -> tuple[Iterator[dict[str, Any]], float]:
    """Clip batches as they come: a step sees batch_size clips."""
    return stream, cfg.batch_size
