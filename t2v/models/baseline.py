"""The tutorial's per-frame GAN (`baseline`), kept for the comparison row with its defects.

Each frame comes from fresh noise (nothing moves coherently), the discriminator never sees the prompt,
and the text embedding is never optimised (defect 7): see shared/reference/seed-tutorial.md.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from t2v import text
from t2v.config import TrainConfig
from t2v.loader import to_model
from t2v.models import GeneratorSpec
from t2v.models.common import Models

BASELINE_NOISE = 100
BASELINE_TEXT = 10


class BaselineGenerator(nn.Module):
    """The tutorial's frame generator: concat(noise 100, text 10) -> Linear -> 256 x s/8 x s/8 -> 3 ConvT.

    At size 64 this is layer for layer the tutorial's; a clip is T frames with independent noise."""

    def __init__(self, frames: int, size: int) -> None:
        super().__init__()
        self.frames, self.size, self.base = frames, size, size // 8
        self.fc1 = nn.Linear(BASELINE_NOISE + BASELINE_TEXT, 256 * self.base * self.base)
        self.deconv1 = nn.ConvTranspose2d(256, 128, 4, 2, 1)
        self.deconv2 = nn.ConvTranspose2d(128, 64, 4, 2, 1)
        self.deconv3 = nn.ConvTranspose2d(64, 3, 4, 2, 1)

    def frame(self, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(M, 100), (M, 10) -> (M, 3, H, W) in [-1, 1]"""
        x = self.fc1(torch.cat([noise, t], 1)).view(-1, 256, self.base, self.base)  # (M, 256, s/8, s/8)
        x = F.relu(self.deconv1(x))  # (M, 128, s/4, s/4)
        x = F.relu(self.deconv2(x))  # (M, 64, s/2, s/2)
        return torch.tanh(self.deconv3(x))  # (M, 3, s, s)

    def sample_noise(self, n: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """Fresh noise for every frame, as the tutorial samples. # (N, T, 100)"""
        return torch.randn(n, self.frames, BASELINE_NOISE, generator=gen)

    def forward(self, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, T, 100), (B, 10) -> (B, 3, T, H, W)"""
        B, T, _ = noise.shape
        frames = self.frame(noise.reshape(B * T, -1), t.repeat_interleave(T, 0))  # (B*T, 3, H, W)
        return frames.view(B, T, 3, self.size, self.size).transpose(1, 2)


class BaselineDiscriminator(nn.Module):
    """The tutorial's frame discriminator: 3 strided convs + LeakyReLU(0.2) -> Linear -> Sigmoid; no text."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 4, 2, 1)
        self.conv2 = nn.Conv2d(64, 128, 4, 2, 1)
        self.conv3 = nn.Conv2d(128, 256, 4, 2, 1)
        self.fc1 = nn.Linear(256 * (size // 8) ** 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(M, 3, H, W) -> (M, 1) probability of real"""
        x = F.leaky_relu(self.conv1(x), 0.2)  # (M, 64, H/2, W/2)
        x = F.leaky_relu(self.conv2(x), 0.2)  # (M, 128, H/4, W/4)
        x = F.leaky_relu(self.conv3(x), 0.2)  # (M, 256, H/8, W/8)
        return torch.sigmoid(self.fc1(x.flatten(1)))


def build_generator(spec: GeneratorSpec) -> tuple[nn.Module, nn.Module]:
    return BaselineGenerator(spec.frames, spec.size), text.MeanEmbedding(spec.n_vocab, BASELINE_TEXT)


def build(cfg: TrainConfig, spec: GeneratorSpec, device: torch.device) -> Models:
    """Fresh generator, frozen text embedding, frame critic and the tutorial's Adam optimisers."""
    g, te = build_generator(spec)
    d = BaselineDiscriminator(spec.size)
    g, te, d = g.to(device), te.to(device), d.to(device)
    # defect 7 reproduced: the text embedding is in no optimiser, so it stays at its random init
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    te.requires_grad_(False)
    return Models(spec, g, te, d, opt_g, opt_d)


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


def step(cfg: TrainConfig, m: Models, device: torch.device, start_step: int = 0) -> BaselineStep:
    return BaselineStep(cfg, m, device, start_step)


def batches(stream: Iterator[dict[str, Any]], cfg: TrainConfig, frames: int) -> tuple[Iterator[dict[str, Any]], float]:
    """Frame batches of `batch_size` frames: a step sees batch_size / T clips' worth."""
    return frame_batches(stream, cfg.batch_size), cfg.batch_size / frames
