"""The shipped generator: export the EMA generator + text encoder, load it back, generate clips.

An export directory holds `generator.pt` and `text_encoder.pt` (torch.save of state_dicts: plain
tensors only, loaded with `weights_only=True`) and `config.json` (model kind, frames, size, latent
and text widths, the token vocabulary it was trained with, whether to draw each clip as one of its
prompt's canvas symmetries). Nothing else is needed to sample.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from t2v import featnet, text, vocab
from t2v.models import GeneratorSpec, build_generator
from t2v.io import atomic_dir, atomic_write_bytes

FILES = ("generator.pt", "text_encoder.pt", "config.json")


def _state_bytes(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in module.state_dict().items()}, buf)
    return buf.getvalue()


def export_generator(generator: nn.Module, text_encoder: nn.Module, spec: GeneratorSpec, out_dir: Path) -> Path:
    """Write the sampler's three files into `out_dir`, replacing any previous export all at once.

    The files go to a hidden sibling directory first, which is then renamed into place."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        atomic_write_bytes(tmp / "generator.pt", _state_bytes(generator))
        atomic_write_bytes(tmp / "text_encoder.pt", _state_bytes(text_encoder))
        atomic_write_bytes(tmp / "config.json", json.dumps(spec.to_dict(), indent=2).encode())
    return out_dir


def noise_seed(seed: int, index: int) -> int:
    """Seed of the i-th clip's noise for a call with `seed`."""
    return (int(seed) * 1_000_003 + index) % 2**63


CANVAS = range(8)  # featnet's symmetry bits 0-2 (transpose, mirror left-right, mirror top-bottom): the square
# canvas's mirrors and quarter turns. Not bit 3 (playing backwards): a bounce's turn falls at other times reversed.


def motion_symmetries() -> dict[str, tuple[int, ...]]:
    """For each motion, the canvas symmetries that map it to itself: a mirror turns a zigzag's travel round,
    a quarter turn moves an orbit's start a quarter of the way round, and the renderer draws those
    directions and starts evenly, so the image of a real clip is as likely as the clip. (Built-in motions;
    a plugin's phrase says nothing of its symmetries, so it gets only the identity.)"""
    labels = featnet.Labels.current()
    table = featnet.symmetry_table(labels)
    return {m: tuple(g for g in CANVAS if table[g, i] == i) for i, m in enumerate(labels.motion)}


def symmetric_images(clips: np.ndarray, prompts: list[str], seed: int) -> np.ndarray:
    """Each clip under one of its prompt's motion symmetries, drawn from (seed, i) as its noise is, so a
    prompt's samples start as widely as real clips do even where the generator draws one path.
    # (N, T, H, W, 3) -> same"""
    sym = motion_symmetries()
    out = np.empty_like(clips)
    for i, p in enumerate(prompts):
        gs = sym[vocab.parse_prompt(p).motion]
        g = gs[int(np.random.default_rng(noise_seed(seed, i)).integers(len(gs)))]
        out[i] = featnet.apply_symmetry(clips[i], g)
    return out


class Sampler:
    """A loaded generator: prompts in, uint8 clips out, deterministic per seed."""

    def __init__(self, spec: GeneratorSpec, generator: nn.Module, text_encoder: nn.Module,
                 device: str | torch.device = "cpu") -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.generator = generator.to(self.device).eval()
        self.text_encoder = text_encoder.to(self.device).eval()

    @property
    def frames(self) -> int:
        return self.spec.frames

    @property
    def size(self) -> int:
        return self.spec.size

    @torch.no_grad()
    def generate(self, prompts: list[str], seed: int = 0, batch_size: int = 256) -> np.ndarray:
        """Clips for `prompts`. # (N, T, H, W, 3) uint8

        Unknown words raise VocabularyError (naming the word) before anything is generated. Clip i's
        noise comes from a CPU generator seeded by (seed, i), so it does not depend on the device,
        on `batch_size` or on the other prompts; so does its canvas symmetry, where the spec asks for one."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = text.encode(list(prompts))  # validates every prompt first
        unknown = int(ids.max()) >= self.spec.n_vocab if ids.numel() else False
        if unknown:
            bad = [w for p in prompts for w in p.split() if w.lower() not in self.spec.words]
            raise vocab.VocabularyError(f"word(s) {bad} are newer than this model; it knows: {', '.join(self.spec.words)}")
        noise = torch.cat([self.generator.sample_noise(1, torch.Generator().manual_seed(noise_seed(seed, i)))
                           for i in range(len(prompts))])  # (N, ...) on CPU: clip i depends on (seed, i) only
        out = np.zeros((len(prompts), self.frames, self.size, self.size, 3), np.uint8)
        for i in range(0, len(prompts), batch_size):
            t = self.text_encoder(ids[i:i + batch_size].to(self.device))
            clip = self.generator(noise[i:i + batch_size].to(self.device), t).float()  # (B, 3, T, H, W)
            u8 = ((clip.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            out[i:i + batch_size] = u8.permute(0, 2, 3, 4, 1).cpu().numpy()
        return symmetric_images(out, list(prompts), seed) if self.spec.symmetric else out


def _load_state(path: Path, device: str | torch.device) -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


def load_generator(path: Path, device: str | torch.device = "cpu") -> Sampler:
    """Load an export directory written by `export_generator` (weights_only loading throughout)."""
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a generator export: missing {', '.join(missing)}")
    spec = GeneratorSpec.from_dict(json.loads((path / "config.json").read_text()))
    known = vocab.words()
    if list(spec.words) != known[: len(spec.words)]:
        raise ValueError(f"{path} was trained with a different token vocabulary ({len(spec.words)} words); "
                         f"its words: {', '.join(spec.words)}")
    generator, text_encoder = build_generator(spec)
    generator.load_state_dict(_load_state(path / "generator.pt", "cpu"))
    text_encoder.load_state_dict(_load_state(path / "text_encoder.pt", "cpu"))
    return Sampler(spec, generator, text_encoder, device)
