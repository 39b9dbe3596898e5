"""The transformer text-to-video family (`transformer`).

text    -- a transformer encoder over the prompt tokens (learned positions, self-attention), pooled into
           TEXT_SLOTS codes by learned queries (`t2v.text.TransformerTextEncoder`)    # (B, S, E)
frames  -- a transformer decoder over [noise token ; T frame tokens]:                 # (B, 1+T, E)
           the noise token is Linear(z) (one per clip: what differs between samples of a prompt), frame
           token t is a learned time embedding; self-attention is causal in time (frame t sees the noise
           and frames <= t), every token cross-attends to the text codes
pixels  -- a shared convolutional FrameDecoder renders each frame token               # (B, 3, T, H, W)
Objective: adversarial, with the rnn family's image and video critics under this project's stabilisers
(hinge, spectral norm, R1, real clips under wrong prompts as negatives). A likelihood objective over
pixels (VideoGPT's VQ tokens) needs a trained tokenizer and many more steps than a CPU budget; a
regression objective averages the start positions of a prompt into a blur. So the row compares a
transformer generator under the objective this project trains its own model with.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from t2v.config import TrainConfig
from t2v.models import GeneratorSpec
from t2v.models.common import Models, build_models, spec_text_encoder
from t2v.models import pixel

TEXT_SLOTS = 4  # text codes the frame tokens cross-attend to
LAYERS, HEADS = 2, 4  # decoder depth and heads: enough to order 16 frames, cheap next to the pixels
G_WIDTH = 8  # FrameDecoder channels at full resolution (as the rnn family's)


class TransformerGenerator(nn.Module):
    """(B, Z) noise, (B, S, E) text codes -> (B, 3, T, H, W) in [-1, 1]"""

    def __init__(self, frames: int, size: int, z_dim: int, dim: int) -> None:
        super().__init__()
        self.frames, self.z_dim = frames, z_dim
        self.noise = nn.Linear(z_dim, dim)
        self.time = nn.Parameter(torch.randn(frames, dim) * 0.02)  # frame tokens' input: where in the clip
        layer = nn.TransformerDecoderLayer(dim, HEADS, dim_feedforward=4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, LAYERS)
        self.norm = nn.LayerNorm(dim)
        mask = torch.triu(torch.full((frames + 1, frames + 1), float("-inf")), 1)  # causal: token i sees j <= i
        self.register_buffer("causal", mask, persistent=False)
        self.frame = pixel.FrameDecoder(dim, size, G_WIDTH)

    def sample_noise(self, n: int, gen: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.z_dim, generator=gen)  # (N, Z)

    def forward(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        B = z.shape[0]
        tokens = torch.cat([self.noise(z).unsqueeze(1), self.time.unsqueeze(0).expand(B, -1, -1)], 1)  # (B, 1+T, E)
        h = self.decoder(tokens, codes, tgt_mask=self.causal, tgt_is_causal=True)  # (B, 1+T, E)
        frames = self.frame(self.norm(h[:, 1:]).flatten(0, 1))  # (B*T, 3, H, W)
        return pixel.to_clip(frames, B)


def build_generator(spec: GeneratorSpec) -> tuple[nn.Module, nn.Module]:
    te = spec_text_encoder(spec, slots=TEXT_SLOTS)  # bag: one code, (B, 1, E)
    return TransformerGenerator(spec.frames, spec.size, spec.z_dim, spec.text_dim), te


def build(cfg: TrainConfig, spec: GeneratorSpec, device: torch.device) -> Models:
    g, te = build_generator(spec)
    return build_models(cfg, spec, device, g, te, pixel.frame_and_clip_critics(cfg, spec))


step, batches = pixel.step, pixel.batches  # the shared GAN step on clip batches
