"""Model families: each is one module plus one `register_family` line, as a motion is one function.

A family module provides, for `t2v.train` and `t2v.sampler` to call with no family-specific branch:
- `build_generator(spec) -> (generator, text_encoder)`: what the sampler rebuilds from an export;
- `build(cfg, spec, device) -> Models`: fresh generator, text encoder, critic(s), optimisers (and EMA copies);
- `step(cfg, models, device, start_step)`: a callable doing one GAN step on a batch, returning losses;
- `batches(stream, cfg, frames) -> (batches, clips_per_step)`: what the step eats, from clip batches.

This registry is torch-free (a family's module is imported on first use), so the CLI and
`t2v.config` can list and check model names without importing torch.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any, Mapping

from t2v import vocab


@dataclass(frozen=True)
class Family:
    name: str
    module: str  # the module implementing it (imported on first use)
    config_defaults: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig fields it sets unless overridden
    prompt_dropout: bool = True  # whether training prompts may lose their colour word (TrainConfig.color_dropout)


_FAMILIES: dict[str, Family] = {}


def register_family(name: str, module: str, config_defaults: Mapping[str, Any] | None = None,
                    prompt_dropout: bool = True) -> Family:
    """Make `name` selectable everywhere a model is chosen (--model, flows, deployments)."""
    fam = Family(name, module, MappingProxyType(dict(config_defaults or {})), prompt_dropout)
    _FAMILIES[name] = fam
    return fam


def names() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def family(name: str) -> Family:
    if name not in _FAMILIES:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def implementation(name: str) -> ModuleType:
    """The module of family `name` (imports torch)."""
    return importlib.import_module(family(name).module)


@dataclass(frozen=True)
class GeneratorSpec:
    """What the sampler needs to rebuild a generator: written to the export's config.json."""

    model: str  # a registered family: "video", "baseline", ...
    frames: int  # T
    size: int  # H = W
    z_dim: int = 32
    text_dim: int = 64
    words: tuple[str, ...] = field(default_factory=lambda: tuple(vocab.words()))  # token id i+1 = words[i]

    @property
    def n_vocab(self) -> int:
        return len(self.words) + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["words"] = list(self.words)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorSpec":
        d = dict(d)
        d["words"] = tuple(d["words"])
        return cls(**d)


def _roles(words: tuple[str, ...]) -> list[int]:
    return [0] + [1 if w in vocab.COLORS else 2 if w in vocab.SHAPES else 3 for w in words]


def build_generator(spec: GeneratorSpec) -> tuple[Any, Any]:
    """(generator, text encoder) for a spec, freshly initialised, by its family."""
    return implementation(spec.model).build_generator(spec)


def count_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


register_family("video", "t2v.models.video")
# The tutorial's optimiser and batch; it ships its last generator (no selection, which would also spend
# ~8 s a time judging its noise), and its prompts keep their colour words as the tutorial's do.
register_family("baseline", "t2v.models.baseline",
                config_defaults={"batch_size": 16, "lr_g": 2e-4, "lr_d": 2e-4, "betas": (0.5, 0.999), "select_every": 0},
                prompt_dropout=False)
