"""The recurrent video GAN (`rnn`): MoCoGAN's content/motion decomposition, text-conditioned.

generator --
  content  z_c = [noise ; text code]  one per clip                              # (B, Zc + E)
  motion   h_0 = Linear(text code);  h_t = GRUCell(eps_t, h_{t-1}),  eps_t ~ N(0, I) per frame
           z_m(t) = h_t: a trajectory in latent space, driven by the prompt     # (B, T, M)
  frames   x_t = FrameDecoder([z_c ; z_m(t)]): one shared 2D image generator    # (B, 3, T, H, W)
critics -- both see the prompt (projection on a bag of word vectors):
  image  D_I: single random frames, 2D convs      -> is this frame a real frame of this prompt?
  video  D_V: the clip (half resolution), 3D convs -> is this a real clip of this prompt (its motion)?
Trained as the transformer family is (hinge, spectral norm, R1, wrong-prompt negatives, Adam 5e-4, betas
(0.5, 0.99)); MoCoGAN's published recipe (BCE, Adam 2e-4, betas (0.5, 0.999), no negatives) is
`--set stabilize=false --set lr_g=2e-4 --set lr_d=2e-4 --set betas=0.5,0.999 --set mismatch_weight=0`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from t2v.config import TrainConfig
from t2v.models import GeneratorSpec
from t2v.models.common import Models, build_models, spec_code_width, spec_text_encoder
from t2v.models import pixel

MOTION_DIM = 16  # GRU state = motion code per frame (MoCoGAN: 10)
EPS_DIM = 8  # per-frame noise feeding the GRU (MoCoGAN: 10)
G_WIDTH = 8  # FrameDecoder channels at full resolution (x2 per halving, capped at 8x): ~2 steps/s on 2 cores


class RecurrentGenerator(nn.Module):
    """(B, Zc + T*EPS) noise, (B, S, E) text codes -> (B, 3, T, H, W) in [-1, 1]"""

    def __init__(self, frames: int, size: int, z_dim: int, code: int) -> None:
        super().__init__()
        self.frames, self.z_dim = frames, z_dim
        self.h0 = nn.Linear(code, MOTION_DIM)
        self.gru = nn.GRUCell(EPS_DIM, MOTION_DIM)
        self.decoder = pixel.FrameDecoder(z_dim + code + MOTION_DIM, size, G_WIDTH)

    def sample_noise(self, n: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """Content noise and the per-frame motion noise, flat. # (N, Zc + T*EPS)"""
        return torch.randn(n, self.z_dim + self.frames * EPS_DIM, generator=gen)

    def motion(self, eps: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """(B, T, EPS), (B, E) -> (B, T, M): the GRU's trajectory from the prompt's start state"""
        h, out = torch.tanh(self.h0(code)), []
        for t in range(eps.shape[1]):
            h = self.gru(eps[:, t], h)
            out.append(h)
        return torch.stack(out, 1)

    def forward(self, noise: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        B, T = noise.shape[0], self.frames
        code = codes.flatten(1)  # (B, E)
        z_c, eps = noise[:, :self.z_dim], noise[:, self.z_dim:].view(B, T, EPS_DIM)
        z_m = self.motion(eps, code)  # (B, T, M)
        content = torch.cat([z_c, code], 1).unsqueeze(1).expand(-1, T, -1)  # (B, T, Zc + E)
        frames = self.decoder(torch.cat([content, z_m], 2).flatten(0, 1))  # (B*T, 3, H, W)
        return pixel.to_clip(frames, B)


def build_generator(spec: GeneratorSpec) -> tuple[nn.Module, nn.Module]:
    return (RecurrentGenerator(spec.frames, spec.size, spec.z_dim, spec_code_width(spec)), spec_text_encoder(spec))


def build(cfg: TrainConfig, spec: GeneratorSpec, device: torch.device) -> Models:
    g, te = build_generator(spec)
    return build_models(cfg, spec, device, g, te, pixel.frame_and_clip_critics(cfg, spec))


step, batches = pixel.step, pixel.batches  # the shared GAN step on clip batches
