"""The classic 3D-convolution video GAN (`conv3d`), text-conditioned as a conditional GAN.

generator -- [noise z ; text code] as a 1x1x1 volume                                # (B, Z+E, 1, 1, 1)
  ConvTranspose3d to (8w, t0, 4, 4), BatchNorm3d, ReLU                               # the published first block
  ConvTranspose3d(k=4, s=2) + BatchNorm3d + ReLU, doubling T, H, W, halving channels  # the published blocks
  ConvTranspose3d(k=(1,4,4), s=(1,2,2)) blocks doubling H, W only                     # the extension: to T x H x W
    (run per frame as ConvTranspose2d: the same operator, ~2.6x faster on CPU than the 3D kernel)
  the last block outputs 3 channels through Tanh                                     # (B, 3, T, H, W)
discriminator -- Conv3d(k=4, s=2) + LeakyReLU(0.2) (+ BatchNorm3d after the first) down to 4x4 frames,
  then the text embedding replicated over the volume and concatenated (Reed et al.'s conditional D),
  a 1x1x1 conv and a final conv to one logit per clip.
Adam 2e-4, betas (0.5, 0.999), BCE, DCGAN's N(0, 0.02) initialisation, no EMA-specific tricks:
`--set stabilize=true` swaps in this project's critic recipe: hinge, spectral norm (instead of BatchNorm
in D), R1, and the text joined by projection (Miyato & Koyama, as in every other critic here) instead of
by concatenation, on PyTorch's default initialisation, as the other pixel families train. With the
concatenation, the stabilised D let G collapse to one clip for every prompt (README, "Model families").
"""

from __future__ import annotations

import torch
import torch.nn as nn

from t2v import text
from t2v.config import TrainConfig
from t2v.models import GeneratorSpec
from t2v.models.common import Models, build_models, spec_code_width, spec_text_encoder
from t2v.models import pixel

G_WIDTH = 8  # channels of the last hidden block (8x this in the first): 64-32-16-8 at 64 px, 1/8 of the published
# 512-256-128-64 ladder; 1/4 (16, the critic's fraction) ran ~3x slower on a 2-core CPU and collapsed all the same


def ladder(frames: int, size: int) -> tuple[int, int, int]:
    """(t0, joint, spatial): the first block's frames, the blocks that double T, H and W together (the
    published ones), and the blocks that double H and W only (the extension), from a 4x4 first frame."""
    spatial = (size // 4).bit_length() - 1
    if 4 * 2**spatial != size:
        raise ValueError(f"conv3d needs a frame side of 4 x a power of two, got {size}")
    t0, joint = frames, 0
    while t0 % 2 == 0 and t0 > 2 and joint < spatial:
        t0, joint = t0 // 2, joint + 1
    return t0, joint, spatial - joint


class SpatialUp(nn.Module):
    """ConvTranspose3d with a (1, 4, 4) kernel and stride (1, 2, 2), computed frame by frame.
    (B, C, T, H, W) -> (B, C', T, 2H, 2W)"""

    def __init__(self, a: int, b: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(a, b, 4, 2, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        y = self.conv(x.transpose(1, 2).reshape(B * T, C, H, W))  # (B*T, C', 2H, 2W)
        return y.view(B, T, *y.shape[1:]).transpose(1, 2)


class Conv3dGenerator(nn.Module):
    """(B, Z), (B, S, E) text codes -> (B, 3, T, H, W) in [-1, 1]"""

    def __init__(self, frames: int, size: int, z_dim: int, code: int, width: int = G_WIDTH) -> None:
        super().__init__()
        self.z_dim = z_dim
        t0, joint, spatial = ladder(frames, size)
        n = joint + spatial
        ch = [width * 2**(n - 1 - i) for i in range(n)]  # e.g. 128, 64, 32, 16
        layers: list[nn.Module] = [nn.ConvTranspose3d(z_dim + code, ch[0], (t0, 4, 4), bias=False),
                                   nn.BatchNorm3d(ch[0]), nn.ReLU(True)]  # (B, 8w, t0, 4, 4)
        outs = ch[1:] + [3]
        for i, (a, b) in enumerate(zip(ch, outs)):
            layers.append(nn.ConvTranspose3d(a, b, 4, 2, 1, bias=b == 3) if i < joint else SpatialUp(a, b, b == 3))
            layers += [nn.Tanh()] if b == 3 else [nn.BatchNorm3d(b), nn.ReLU(True)]
        self.net = nn.Sequential(*layers)

    def sample_noise(self, n: int, gen: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.z_dim, generator=gen)  # (N, Z)

    def forward(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, codes.flatten(1)], 1)  # (B, Z+E): text code concatenated to the noise
        return self.net(h.view(*h.shape, 1, 1, 1))  # (B, 3, T, H, W)


class Conv3dDiscriminator(nn.Module):
    """(B, 3, T, H, W), (B, L) -> {"clip": (B,)} one logit per clip; the text joins at the 4x4 volume,
    concatenated (published) or, stabilised, by projection."""

    frame_only: tuple[str, ...] = ()

    def __init__(self, frames: int, size: int, n_vocab: int, width: int = 16, stabilize: bool = False,
                 text_dim: int = 32) -> None:
        super().__init__()
        sn = stabilize
        _, joint, spatial = ladder(frames, size)
        layers: list[nn.Module] = []
        c, t = 3, frames
        for i in range(joint + spatial):
            out = min(8 * width, width * 2**i)
            k, s = ((4, 4, 4), (2, 2, 2)) if t >= 4 and t % 2 == 0 else ((3, 4, 4), (1, 2, 2))
            layers.append(pixel.maybe_sn(nn.Conv3d(c, out, k, s, (1, 1, 1), bias=i == 0 or stabilize), sn))
            if i > 0 and not stabilize:
                layers.append(nn.BatchNorm3d(out))
            layers.append(nn.LeakyReLU(0.2, True))
            c, t = out, t // s[0]
        self.features = nn.Sequential(*layers)  # (B, C, t, 4, 4)
        self.projection = stabilize
        if stabilize:
            self.head = pixel.TextProjection(c * t * 16, n_vocab, sn)
            return
        self.embed = nn.Sequential(text.MeanEmbedding(n_vocab, text_dim), nn.Linear(text_dim, text_dim),
                                   nn.LeakyReLU(0.2, True))
        self.joint = nn.Sequential(nn.Conv3d(c + text_dim, c, 1), nn.LeakyReLU(0.2, True))
        self.out = nn.Conv3d(c, 1, (t, 4, 4))

    def forward(self, clip: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(clip)  # (B, C, t, 4, 4)
        if self.projection:
            return {"clip": self.head(h.flatten(1), ids)}
        e = self.embed(ids)[:, :, None, None, None].expand(-1, -1, *h.shape[2:])  # (B, E, t, 4, 4)
        return {"clip": self.out(self.joint(torch.cat([h, e], 1))).flatten()}


def build_generator(spec: GeneratorSpec) -> tuple[nn.Module, nn.Module]:
    return (Conv3dGenerator(spec.frames, spec.size, spec.z_dim, spec_code_width(spec)), spec_text_encoder(spec))


def dcgan_init(m: nn.Module) -> None:
    """The published initialisation (DCGAN, kept by the 3D-conv video GANs): convolutions N(0, 0.02),
    BatchNorm scales N(1, 0.02) and shifts 0."""
    if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm3d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def build(cfg: TrainConfig, spec: GeneratorSpec, device: torch.device) -> Models:
    g, te = build_generator(spec)
    d = Conv3dDiscriminator(spec.frames, spec.size, spec.n_vocab, cfg.width, cfg.stabilize)
    if not cfg.stabilize:
        g.apply(dcgan_init)
        d.apply(dcgan_init)
    return build_models(cfg, spec, device, g, te, d)


step, batches = pixel.step, pixel.batches  # the shared GAN step on clip batches
