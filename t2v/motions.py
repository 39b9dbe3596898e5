"""The built-in motions of `vocabulary.md`: one layout function per phrase.

A motion function draws random start, path length, speed and phase from `rng` within the
vocabulary's rules and returns the per-frame trajectory. Screen coordinates: x right, y down,
pixels; angles in degrees, clockwise on screen. Every layout keeps the whole shape inside the
canvas (no wrap-around). To add a motion, write one function here (or in a module named by
`T2V_MOTION_PLUGINS`) and decorate it with its phrase.
"""

from __future__ import annotations

import numpy as np

from t2v.vocab import MotionParams, Trajectory, register_motion

MIN_TRAVEL = 0.45  # net displacement as a fraction of the side: the rule says >= 0.40, keep a margin


def _margin(radius: float) -> float:
    return radius + 1.5  # circumradius plus the anti-aliasing ramp


def _s(p: MotionParams) -> np.ndarray:
    return np.linspace(0.0, 1.0, p.frames)


def _const(v: float, p: MotionParams) -> np.ndarray:
    return np.full(p.frames, float(v))


def _spin_start(rng: np.random.Generator) -> float:
    return float(rng.uniform(0.0, 360.0))


def _straight(rng: np.random.Generator, p: MotionParams, dx: int, dy: int) -> Trajectory:
    m = _margin(p.radius)
    span = p.size - 2 * m  # room along one axis
    diag = dx != 0 and dy != 0
    max_len = span * (np.sqrt(2.0) if diag else 1.0)
    length = rng.uniform(MIN_TRAVEL * p.size, max(max_len, MIN_TRAVEL * p.size))
    step = length / np.sqrt(2.0) if diag else length
    s = _s(p)

    def axis(d: int) -> np.ndarray:
        if d == 0:
            return _const(rng.uniform(m, p.size - m), p)
        start = rng.uniform(m, p.size - m - step) if d > 0 else rng.uniform(m + step, p.size - m)
        return start + d * step * s

    x, y = axis(dx), axis(dy)
    return Trajectory(x, y, _const(p.radius, p), _const(_spin_start(rng), p))


def _fold(u: np.ndarray, span: float) -> np.ndarray:
    """Reflect a straight path into [0, span]: a ball bouncing off both walls."""
    v = np.mod(u, 2 * span)
    return span - np.abs(v - span)


def _bounce(rng: np.random.Generator, p: MotionParams, vertical: bool) -> Trajectory:
    m = _margin(p.radius)
    span = p.size - 2 * m
    direction = rng.choice([-1.0, 1.0])
    to_wall = rng.uniform(0.2, 0.8) * span  # reversal lands inside the clip, never on its first frame
    start = span - to_wall if direction > 0 else to_wall
    path = to_wall + rng.uniform(0.35, 0.9) * span
    along = m + _fold(start + direction * path * _s(p), span)
    across = _const(rng.uniform(m, p.size - m), p)
    x, y = (across, along) if vertical else (along, across)
    return Trajectory(x, y, _const(p.radius, p), _const(_spin_start(rng), p))


def _zigzag(rng: np.random.Generator, p: MotionParams, vertical: bool) -> Trajectory:
    m = _margin(p.radius)
    span = p.size - 2 * m
    amp = rng.uniform(0.06, 0.1) * p.size
    direction = rng.choice([-1.0, 1.0])
    length = rng.uniform(MIN_TRAVEL * p.size, max(span, MIN_TRAVEL * p.size))
    start = rng.uniform(m, p.size - m - length) if direction > 0 else rng.uniform(m + length, p.size - m)
    along = start + direction * length * _s(p)
    period = int(rng.integers(1, 3))  # switch sides every frame or every two frames
    phase = int(rng.integers(0, 2 * period))
    side = np.where(((np.arange(p.frames) + phase) // period) % 2 == 0, 1.0, -1.0)
    centre = rng.uniform(m + amp, p.size - m - amp)
    across = centre + amp * side
    x, y = (across, along) if vertical else (along, across)
    return Trajectory(x, y, _const(p.radius, p), _const(_spin_start(rng), p))


def _scale(rng: np.random.Generator, p: MotionParams, grow: bool) -> Trajectory:
    big = p.radius * 1.25
    small = big * rng.uniform(0.45, 0.62)  # area ratio 0.20-0.38, the rule asks <= 0.5
    m = _margin(big)
    r = small + (big - small) * _s(p)
    r = r if grow else r[::-1].copy()
    return Trajectory(_const(rng.uniform(m, p.size - m), p), _const(rng.uniform(m, p.size - m), p),
                      r, _const(_spin_start(rng), p))


def _orbit(rng: np.random.Generator, p: MotionParams, clockwise: bool) -> Trajectory:
    m = _margin(p.radius)
    orbit = rng.uniform(0.2 * p.size, p.size / 2 - m)
    turn = rng.uniform(0.8, 0.95) * 2 * np.pi  # >= 3/4 turn, < 1 turn so direction stays unambiguous
    phi = rng.uniform(0, 2 * np.pi) + (1 if clockwise else -1) * turn * _s(p)  # y down: +phi is clockwise
    c = p.size / 2
    return Trajectory(c + orbit * np.cos(phi), c + orbit * np.sin(phi), _const(p.radius, p),
                      _const(_spin_start(rng), p))


def _spin(rng: np.random.Generator, p: MotionParams, clockwise: bool) -> Trajectory:
    m = _margin(p.radius)
    turn = rng.uniform(100.0, 170.0)  # >= 90 deg; per-frame step stays far below the square's 45 deg alias
    a = _spin_start(rng) + (1 if clockwise else -1) * turn * _s(p)
    return Trajectory(_const(rng.uniform(m, p.size - m), p), _const(rng.uniform(m, p.size - m), p),
                      _const(p.radius, p), a)


@register_motion("moving up")
def moving_up(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _straight(rng, p, 0, -1)


@register_motion("moving down")
def moving_down(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _straight(rng, p, 0, 1)


@register_motion("moving left")
def moving_left(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _straight(rng, p, -1, 0)


@register_motion("moving right")
def moving_right(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _straight(rng, p, 1, 0)


@register_motion("moving up-left")
def moving_up_left(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _straight(rng, p, -1, -1)


@register_motion("moving up-right")
def moving_up_right(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _straight(rng, p, 1, -1)


@register_motion("moving down-left")
def moving_down_left(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _straight(rng, p, -1, 1)


@register_motion("moving down-right")
def moving_down_right(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _straight(rng, p, 1, 1)


@register_motion("bouncing vertically")
def bouncing_vertically(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _bounce(rng, p, vertical=True)


@register_motion("bouncing horizontally")
def bouncing_horizontally(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _bounce(rng, p, vertical=False)


@register_motion("zigzagging vertically")
def zigzagging_vertically(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _zigzag(rng, p, vertical=True)


@register_motion("zigzagging horizontally")
def zigzagging_horizontally(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _zigzag(rng, p, vertical=False)


@register_motion("shrinking")
def shrinking(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _scale(rng, p, grow=False)


@register_motion("expanding")
def expanding(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _scale(rng, p, grow=True)


@register_motion("rotating clockwise")
def rotating_clockwise(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _orbit(rng, p, clockwise=True)


@register_motion("rotating counter-clockwise")
def rotating_counter_clockwise(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _orbit(rng, p, clockwise=False)


@register_motion("spinning clockwise", shapes=("square", "triangle"))
def spinning_clockwise(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _spin(rng, p, clockwise=True)


@register_motion("spinning counter-clockwise", shapes=("square", "triangle"))
def spinning_counter_clockwise(rng: np.random.Generator, p: MotionParams) -> Trajectory:
    return _spin(rng, p, clockwise=False)
