"""Model families: each is one module plus one `register_family` line, as a motion is one function.

A family module provides, for `t2v.train` and `t2v.sampler` to call with no family-specific branch:
- `build_generator(spec) -> (generator, text_encoder)`: what the sampler rebuilds from an export;
- `build(cfg, spec, device) -> Models`: fresh generator, text encoder, critic(s), optimisers (and EMA copies);
- `step(cfg, models, device, start_step)`: a callable doing one GAN step on a batch, returning losses;
- `batches(stream, cfg, frames) -> (batches, clips_per_step)`: what the step eats, from clip batches.

This registry is torch-free (a family's module is imported on first use), so the CLI and
`t2v.config` can list and check model names without importing torch. A user's own family is a module
named in `T2V_MODEL_PLUGINS` (comma-separated) that calls `register_family` when imported; the
README shows one.
"""

from __future__ import annotations

import importlib
import os
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
    text_encoders: tuple[str, ...] = ("slots",)  # generator-side text encoders it can be built with; first = its own
    code: tuple[str, ...] = ()  # other modules whose source decides its weights (part of its training cache key)
    switches: tuple[str, ...] = ()  # TrainConfig on/off switches it honours ("stabilize", "sprite_prior", ...); others refuse them


PLUGIN_ENV = "T2V_MODEL_PLUGINS"
_FAMILIES: dict[str, Family] = {}
_plugins_loaded: list[str] = []


def register_family(name: str, module: str, config_defaults: Mapping[str, Any] | None = None,
                    prompt_dropout: bool = True, text_encoders: tuple[str, ...] = ("slots",),
                    code: tuple[str, ...] = (), switches: tuple[str, ...] = ()) -> Family:
    """Make `name` selectable everywhere a model is chosen (--model, flows, deployments)."""
    if not name or name != name.strip().lower() or " " in name:
        raise ValueError(f"model name must be one lower-case word, got {name!r}")
    if name in _FAMILIES and _FAMILIES[name].module != module:
        raise ValueError(f"model {name!r} is already registered by {_FAMILIES[name].module}")
    fam = Family(name, module, MappingProxyType(dict(config_defaults or {})), prompt_dropout, tuple(text_encoders),
                 tuple(code), tuple(switches))
    _FAMILIES[name] = fam
    return fam


def _load_plugins() -> None:
    """Import the modules `T2V_MODEL_PLUGINS` names (once per value of the variable)."""
    value = os.environ.get(PLUGIN_ENV, "")
    if value in _plugins_loaded:
        return
    for mod in filter(None, (m.strip() for m in value.split(","))):
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise ValueError(f"{PLUGIN_ENV} names {mod!r}, which cannot be imported: {e}") from e
    _plugins_loaded.append(value)


def names() -> tuple[str, ...]:
    _load_plugins()
    return tuple(_FAMILIES)


def family(name: str) -> Family:
    _load_plugins()
    if name not in _FAMILIES:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def text_encoder(name: str, requested: str = "default") -> str:
    """The generator-side text encoder model `name` is built with: its own for "default", else `requested`
    if the family supports it (ValueError naming the ones it does)."""
    fam = family(name)
    if requested in ("default", ""):
        return fam.text_encoders[0]
    if requested not in fam.text_encoders:
        raise ValueError(f"model {name!r} cannot use text_encoder={requested!r}; valid for it: "
                         f"default ({fam.text_encoders[0]}), {', '.join(fam.text_encoders)}")
    return requested


def check_switches(name: str, on: Mapping[str, bool]) -> None:
    """ValueError if a switch that is on is one family `name` does not honour, naming the families that do."""
    fam = family(name)
    for switch, value in on.items():
        if value and switch not in fam.switches:
            honour = [n for n, f in _FAMILIES.items() if switch in f.switches]
            raise ValueError(f"{switch}=true does not apply to model {name!r}; models that take it: "
                             f"{', '.join(honour) or 'none'}")


def implementation(name: str) -> ModuleType:
    """The module of family `name` (imports torch)."""
    return importlib.import_module(family(name).module)


SIZE_NOISE_DIM = 4  # video's sprite prior reads the clip's size off this noise dim (the anchor reads 0-1, the shift 3)


@dataclass(frozen=True)
class GeneratorSpec:
    """What the sampler needs to rebuild a generator: written to the export's config.json."""

    model: str  # a registered family: "video", "baseline", ...
    frames: int  # T
    size: int  # H = W
    z_dim: int = 32
    text_dim: int = 64
    words: tuple[str, ...] = field(default_factory=lambda: tuple(vocab.words()))  # token id i+1 = words[i]
    text_encoder: str = ""  # generator-side text encoder ("" = the family's own, as exports before the option)
    anchor: float = 0.0  # video: initial spread of the per-clip start anchor (0 = none, as exports before the option)
    shift: float = 0.0  # video: initial spread of the per-clip time shift, x 8 frames (0 = none, as before)
    symmetric: bool = False  # the sampler draws each clip as one of its prompt's canvas symmetries (False = none, as before)
    sprite_prior: bool = False  # video: size drawn per clip in the vocabulary's range, one fill per colour (False = as before)
    wall_bounds: bool = False  # video: the centre squashed into the renderer's walls (False = tanh bounds, as before)

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
        if d.pop("reflect_walls", False):  # exports of 2026-12-07's first switch, whose gate no code builds now
            raise ValueError("this export was trained with reflect_walls=true, a switch since replaced by "
                             "wall_bounds; retrain it (reflect_walls=false exports load as they are)")
        return cls(**d)


def build_generator(spec: GeneratorSpec) -> tuple[Any, Any]:
    """(generator, text encoder) for a spec, freshly initialised, by its family."""
    return implementation(spec.model).build_generator(spec)


def count_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


# video starts every path from a noise-driven anchor: 5x the start spread of paths read off z by the
# pose MLP alone, at a higher mean held-out accuracy over three seeds; its rates fall over the last
# half of the budget: it lifted the worst of three seeds from 92% held-out to 98%; and each clip starts
# elsewhere in its cycle (time shift): the held-out FD of three seeds 62-67 instead of 88-115; and its sampler
# draws each clip as one of the prompt's canvas symmetries: the real start spread, FD 31-76 instead of 50-101 (README).
# Its sprite prior, track match (0.02) and wall bounds: together, every quality target on seeds 0, 1 and 2 (held-out
# all-three 97-99%, every motion at least 83%, FD 27-33 against the recipe's 54-82), at 0.89x its steps per second,
# on the Xeon and the AVX2 EPYC. On an AVX-512 EPYC it met every target on one seed of six; so does the signed
# travel its match reads since, which stops straight moves going the wrong way but leaves the orbits weak (README)
register_family("video", "t2v.models.video", text_encoders=("slots", "transformer"), switches=("sprite_prior", "wall_bounds"),
                config_defaults={"anchor": 0.3, "lr_decay": 0.5, "shift": 0.3, "sample_symmetry": True,
                                 "sprite_prior": True, "match_weight": 0.02, "wall_bounds": True})
# The tutorial's optimiser and batch; it ships its last generator (no selection, which would also spend
# ~8 s a time judging its noise), and its prompts keep their colour words as the tutorial's do.
register_family("baseline", "t2v.models.baseline",
                config_defaults={"batch_size": 16, "lr_g": 2e-4, "lr_d": 2e-4, "betas": (0.5, 0.999), "select_every": 0},
                prompt_dropout=False, text_encoders=("bag",))
# The literature's families (README, "Model families"): conv3d trains with its published optimiser and loss.
_PUBLISHED = {"lr_g": 2e-4, "lr_d": 2e-4, "betas": (0.5, 0.999), "mismatch_weight": 0.0, "aux_weight": 0.0,
              "batch_size": 16}  # (their R1 applies only with stabilize)
_PIXEL = ("t2v.models.pixel",)  # their shared critics and GAN step
_SWITCHES = ("stabilize",)  # this project's stabilisers (hinge, spectral norm, R1), off as published
register_family("conv3d", "t2v.models.conv3d", config_defaults=_PUBLISHED, text_encoders=("bag", "transformer"),
                code=_PIXEL, switches=_SWITCHES)
# rnn and transformer train with the same critics and this project's objective (hinge, spectral norm, R1, wrong-prompt
# negatives, Adam 5e-4, betas (0.5, 0.99)), so their rows differ by generator. rnn drew no motion the judge could
# follow under MoCoGAN's published recipe (_PUBLISHED with stabilize=false) nor with the stabilisers alone (5,400
# steps); with this whole recipe it does, on seeds 0 and 1, within 1,800 steps (README, "Model families")
_PROJECT = {**_PUBLISHED, "lr_g": 5e-4, "lr_d": 5e-4, "betas": (0.5, 0.99), "stabilize": True, "mismatch_weight": 0.5}
register_family("rnn", "t2v.models.rnn", config_defaults=_PROJECT, text_encoders=("bag", "transformer"), code=_PIXEL,
                switches=_SWITCHES)
register_family("transformer", "t2v.models.transformer", text_encoders=("transformer", "bag"), code=_PIXEL,
                switches=_SWITCHES, config_defaults=_PROJECT)
