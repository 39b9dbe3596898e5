"""What every family's training shares: the models a checkpoint holds, the EMA, the GAN losses."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from t2v import models, text
from t2v.models import GeneratorSpec

if TYPE_CHECKING:
    from t2v.config import TrainConfig


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


def spec_text_encoder(spec: GeneratorSpec, slots: int = 1) -> nn.Module:
    """The generator-side text encoder `spec` names (the family's own for an export from before the option)."""
    return text.build_encoder(models.text_encoder(spec.model, spec.text_encoder), spec.words, spec.text_dim, slots)


def spec_code_width(spec: GeneratorSpec, slots: int = 1) -> int:
    """Width of the flattened codes `spec_text_encoder(spec, slots)` returns: what the generator reads."""
    return text.code_width(models.text_encoder(spec.model, spec.text_encoder), spec.text_dim, slots)


def build_models(cfg: TrainConfig, spec: GeneratorSpec, device: torch.device, generator: nn.Module,
                 text_encoder: nn.Module, critics: nn.Module) -> Models:
    """Adam on G + its text encoder and on the critics (the config's rates and betas), EMA copies of G."""
    g, te, d = generator.to(device), text_encoder.to(device), critics.to(device)
    opt_g = torch.optim.Adam([*g.parameters(), *te.parameters()], lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    g_ema, te_ema = copy.deepcopy(g).requires_grad_(False), copy.deepcopy(te).requires_grad_(False)
    return Models(spec, g, te, d, opt_g, opt_d, g_ema, te_ema)


@torch.no_grad()  # else every lerp_ chains the EMA weights into the autograd graph, step after step
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, m in zip(ema.parameters(), model.parameters()):
        e.lerp_(m, 1.0 - decay)
    for e, m in zip(ema.buffers(), model.buffers()):
        e.copy_(m)


def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ignoring targets of -1 (a prompt with no colour word); 0 when every target is -1."""
    keep = target >= 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep].float(), target[keep])


def hinge_real(s: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    loss = F.relu(1.0 - s.float())
    if mask is None:
        return loss.mean()
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def hinge_fake(s: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    loss = F.relu(1.0 + s.float())
    if mask is None:
        return loss.mean()
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)
