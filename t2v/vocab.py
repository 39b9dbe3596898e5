"""The prompt vocabulary: palette, shapes, motion registry, prompt grammar and held-out combinations.

This module is the code form of `vocabulary.md`: a prompt is "<colour> <shape> <motion phrase>"
(colour optional) and every word has one meaning in pixels. Motions are registered by
`t2v.motions`; adding a motion there (one function plus its phrase) extends the grammar, the
token vocabulary and the dataset plan without touching anything here.
"""

from __future__ import annotations

import importlib
import inspect
import os
import types
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from t2v.io import source_hash

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 200, 30),
    "purple": (150, 60, 200),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUND: tuple[int, int, int] = (255, 255, 255)

# shape x motion pairs held out for every colour, and colour x shape pairs held out for every motion.
HELD_OUT_SHAPE_MOTION: tuple[tuple[str, str], ...] = (
    ("circle", "moving up-right"),
    ("square", "bouncing vertically"),
    ("triangle", "rotating counter-clockwise"),
    ("circle", "expanding"),
    ("triangle", "zigzagging horizontally"),
    ("square", "spinning clockwise"),
)
HELD_OUT_COLOR_SHAPE: tuple[tuple[str, str], ...] = (("purple", "square"),)

PLUGIN_ENV = "T2V_MOTION_PLUGINS"


@dataclass(frozen=True)
class MotionParams:
    """What a motion function may know about the clip it lays out."""

    frames: int  # T
    size: int  # frame side in pixels (square canvas)
    radius: float  # circumradius in pixels drawn for this clip (10-16% of the side)


@dataclass(frozen=True)
class Trajectory:
    """Per-frame ground truth: centre (x right, y down, pixels), circumradius, angle (deg, clockwise on screen)."""

    x: np.ndarray  # (T,)
    y: np.ndarray  # (T,)
    radius: np.ndarray  # (T,)
    angle: np.ndarray  # (T,)


MotionFn = Callable[[np.random.Generator, MotionParams], Trajectory]


@dataclass(frozen=True)
class Motion:
    phrase: str
    fn: MotionFn
    shapes: tuple[str, ...]  # shapes on which the motion is visible

    @property
    def slug(self) -> str:
        return slug(self.phrase)

    @property
    def spec_hash(self) -> str:
        """Changes when the motion's phrase, shapes or code (helpers included) change: part of its shards' cache key."""
        return source_hash(f"{self.phrase}|{self.shapes}|{reachable_source(self.fn)}".encode())


def reachable_source(fn: Callable) -> str:
    """Source of `fn` plus the module-level functions and constants it reaches, so editing one motion's
    helper changes that motion's hash while adding another motion changes none."""
    seen: dict[str, str] = {}

    def visit(f: Callable) -> None:
        key = f"{f.__module__}.{f.__qualname__}"
        if key in seen:
            return
        seen[key] = inspect.getsource(f)
        for name in _names(f.__code__):
            obj = f.__globals__.get(name)
            if inspect.isfunction(obj) and obj.__module__ == f.__module__:
                visit(obj)
            elif isinstance(obj, (int, float, str, tuple)):
                seen[f"{key}:{name}"] = repr(obj)

    visit(fn)
    return "\n".join(f"{k}\n{v}" for k, v in sorted(seen.items()))


def _names(code: types.CodeType) -> set[str]:
    """Global names a code object uses, including inside its comprehensions, lambdas and closures."""
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _names(const)
    return names


_REGISTRY: dict[str, Motion] = {}


def register_motion(phrase: str, shapes: Iterable[str] = SHAPES) -> Callable[[MotionFn], MotionFn]:
    """Decorator: make `fn` the layout of `phrase`. Registration order fixes token ids, so append only."""
    shapes = tuple(shapes)
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        raise ValueError(f"unknown shape(s) {bad} for motion {phrase!r}; valid: {list(SHAPES)}")
    if not phrase or phrase != phrase.strip().lower() or "  " in phrase:
        raise ValueError(f"motion phrase must be lower case words separated by single spaces: {phrase!r}")

    def deco(fn: MotionFn) -> MotionFn:
        if phrase in _REGISTRY and _REGISTRY[phrase].fn is not fn:
            existing = _REGISTRY[phrase].fn
            if (existing.__module__, existing.__qualname__) != (fn.__module__, fn.__qualname__):
                raise ValueError(f"motion {phrase!r} is already registered by {existing.__module__}")
        _REGISTRY[phrase] = Motion(phrase, fn, shapes)
        return fn

    return deco


def _load() -> None:
    importlib.import_module("t2v.motions")
    for mod in filter(None, (m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(","))):
        importlib.import_module(mod)


def motions() -> dict[str, Motion]:
    """All registered motions in registration order (built-ins, then `T2V_MOTION_PLUGINS` modules)."""
    _load()
    return dict(_REGISTRY)


def motion_names() -> list[str]:
    return list(motions())


def slug(text: str) -> str:
    return text.replace(" ", "-")


def is_held_out(color: str, shape: str, motion: str) -> bool:
    return (shape, motion) in HELD_OUT_SHAPE_MOTION or (color, shape) in HELD_OUT_COLOR_SHAPE


def combinations(
    colors: Iterable[str] | None = None,
    shapes: Iterable[str] | None = None,
    motion_list: Iterable[str] | None = None,
) -> list[tuple[str, str, str]]:
    """Every valid (colour, shape, motion) triple, in vocabulary order."""
    reg = motions()
    colors = list(colors) if colors is not None else list(COLORS)
    shapes = list(shapes) if shapes is not None else list(SHAPES)
    motion_list = list(motion_list) if motion_list is not None else list(reg)
    return [
        (c, s, m)
        for m in motion_list
        for s in shapes
        if s in reg[m].shapes
        for c in colors
    ]


def canonical_prompt(color: str | None, shape: str, motion: str) -> str:
    return " ".join(w for w in (color, shape, motion) if w)


def held_out_prompts() -> list[str]:
    return [canonical_prompt(*c) for c in combinations() if is_held_out(*c)]


class VocabularyError(ValueError):
    """A prompt or a choice outside the vocabulary; the message names the word and the valid choices."""


def describe_vocabulary() -> str:
    return (
        f"colours: {', '.join(COLORS)}; shapes: {', '.join(SHAPES)}; "
        f"motions: {', '.join(repr(m) for m in motion_names())}"
    )


def words() -> list[str]:
    """Token vocabulary: colours, shapes, then motion words in registration order (ids stay stable as motions are added)."""
    out: list[str] = []
    for w in [*COLORS, *SHAPES, *(w for m in motion_names() for w in m.split())]:
        if w not in out:
            out.append(w)
    return out


@dataclass(frozen=True)
class Prompt:
    color: str | None
    shape: str
    motion: str

    @property
    def text(self) -> str:
        return canonical_prompt(self.color, self.shape, self.motion)


def parse_prompt(text: str) -> Prompt:
    """Parse "<colour>? <shape> <motion phrase>" exactly; any other word order or word is an error."""
    toks = text.strip().lower().split() if isinstance(text, str) else []
    if not toks:
        raise VocabularyError(f"empty prompt; expected '<colour> <shape> <motion>' with {describe_vocabulary()}")
    known = set(words())
    for t in toks:
        if t not in known:
            raise VocabularyError(f"unknown word {t!r} in prompt {text!r}; known words: {', '.join(words())}. "
                                  f"{describe_vocabulary()}")
    color = None
    if toks[0] in COLORS:
        color = toks.pop(0)
    extra_colors = [t for t in toks if t in COLORS]
    if extra_colors:
        raise VocabularyError(f"more than one colour in prompt {text!r}: {extra_colors[0]!r}; "
                              f"give at most one of {', '.join(COLORS)}")
    if not toks or toks[0] not in SHAPES:
        found = toks[0] if toks else "<nothing>"
        raise VocabularyError(f"expected a shape after the colour in {text!r}, got {found!r}; shapes: {', '.join(SHAPES)}")
    shape = toks.pop(0)
    extra_shapes = [t for t in toks if t in SHAPES]
    if extra_shapes:
        raise VocabularyError(f"more than one shape in prompt {text!r}: {extra_shapes[0]!r}; give one of {', '.join(SHAPES)}")
    phrase = " ".join(toks)
    reg = motions()
    if phrase not in reg:
        raise VocabularyError(f"unknown motion {phrase!r} in prompt {text!r}; motions: {', '.join(reg)}")
    if shape not in reg[phrase].shapes:
        raise VocabularyError(f"motion {phrase!r} is not visible on a {shape}; it takes: {', '.join(reg[phrase].shapes)}")
    return Prompt(color, shape, phrase)


def tokenize(text: str) -> list[int]:
    """Token ids (1-based; 0 is padding) of a valid prompt; raises VocabularyError naming an unknown word."""
    parse_prompt(text)
    index = {w: i + 1 for i, w in enumerate(words())}
    return [index[t] for t in text.strip().lower().split()]


def check_choices(kind: str, given: Iterable[str], valid: Iterable[str]) -> list[str]:
    """Validate user choices up front: the error names the bad value and lists the valid ones."""
    given, valid = list(given), list(valid)
    for g in given:
        if g not in valid:
            raise VocabularyError(f"unknown {kind} {g!r}; valid {kind}s: {', '.join(valid)}")
    return given
