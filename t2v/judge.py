"""Pixel judge: does a clip show what its prompt says, read from its pixels alone?

Every frame is segmented against the white background (pixels darker than white by more than a
small margin), and the shape is tracked by coverage-weighted moments: centre, area (anti-aliased
edge pixels count fractionally), and k-fold angular moments M_k = sum(coverage * z**k) around the
centre. A circle has no M_2/M_3/M_4, a square a strong M_4 and a triangle a strong M_3; the phase of
that moment is the shape's orientation modulo its symmetry (90 or 120 degrees), unwrapped from frame
to frame. Colour, shape and motion are then read off by the rules of `vocabulary.md`. Screen
convention: x right, y down, angles clockwise as a viewer sees them.

Everything is vectorised across frames and clips (one pass over the pixels, then per-frame sums over
the few pixels that are not white), so thousands of clips can be scored in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from t2v import vocab

# Straight-travel phrases by 45-degree sector of the screen direction, counter-clockwise from "right"
# with y pointing up (i.e. atan2(-dy, dx)).
_SECTORS = ("moving right", "moving up-right", "moving up", "moving up-left",
            "moving left", "moving down-left", "moving down", "moving down-right")
_AREA_PER_R2 = {"circle": math.pi, "square": 2.0, "triangle": 3.0 * math.sqrt(3.0) / 4.0}  # area / circumradius^2
_SYMMETRY = {"square": (4, 180.0), "triangle": (3, 90.0)}  # fold k, phase of M_k at orientation 0 (deg)
# (m3, m4) of each ideal shape, anti-aliased at 3-12 px circumradius; m3 and m4 never exceed 0.05
# for a circle, 0.07 (m3) for a square or 0.12 (m4) for a triangle on the renderer's clips.
_PROTOTYPES = {"circle": (0.0, 0.0), "square": (0.0, 0.43), "triangle": (0.66, 0.0)}


@dataclass(frozen=True)
class JudgeConfig:
    """Thresholds of the judge; each default follows vocabulary.md or leaves a margin the renderer respects."""

    ink: int = 24  # summed RGB deficit from white that marks a pixel as shape: 8 levels per channel ignores mild noise
    full: float = 0.96  # "fully covered": this close to the clip's darkest, above the 14/15 anti-aliasing level
    max_color_dist: float = 56.0  # RGB distance to the nearest palette colour: half the closest pair (blue-purple, 112)
    max_elongation: float = 0.15  # m2 above this is an elongated blob, none of the three shapes (they have m2 = 0)
    max_shape_dist: float = 0.2  # (m3, m4) farther than this from every prototype is no known shape
    travel: float = 0.40  # vocabulary: straight travel covers >= 40% of the side
    straightness: float = 0.9  # net / path length of a straight move; a bounce or zigzag is far below
    still: float = 0.05  # centre wander, as a fraction of the side, that still counts as "in place"
    scale: float = 2.0  # vocabulary: area ratio end/start <= 1/2 (shrinking) or >= 2 (expanding)
    orbit_turns: float = 0.75  # vocabulary: orbit the frame centre by >= 3/4 of a turn
    orbit_min: float = 0.1  # orbit radius (fraction of side) below which the angle around the centre is noise
    orbit_roundness: float = 0.3  # (max - min) / mean orbit radius: a circle around the centre, not a drift past it
    spin_deg: float = 90.0  # vocabulary: spinning turns >= 90 degrees
    steady: float = 0.75  # fraction of frame steps that must go the clip's overall way (travel, turn, growth)
    hysteresis: float = 0.03  # fraction of side a coordinate must come back to count as a reversal
    across_max: float = 0.08  # bounce: at most this range across the axis; zigzag: at least this much side to side
    bounce_min: float = 0.15  # bounce: range along the axis (the renderer travels >= 0.2 of the side)
    zigzag_min: float = 0.25  # zigzag: net travel along the axis
    speed_tol: float = 0.35  # bounce: a step within this fraction of the median step counts as steady speed
    steady_speed: float = 0.7  # bounce: fraction of steps at steady speed (a reflection step is shorter)


@dataclass(frozen=True)
class Track:
    """Per-frame measurements of the one shape in a clip, from its pixels. Arrays are (T,)."""

    x: np.ndarray  # coverage-weighted centre, px from the left edge (pixel i spans [i, i+1))
    y: np.ndarray  # px from the top edge, y down
    area: np.ndarray  # px^2, anti-aliased pixels counted by coverage; 0 in an empty frame
    angle3: np.ndarray  # orientation in the triangle convention, deg clockwise, unwrapped modulo 120
    angle4: np.ndarray  # orientation in the square convention, deg clockwise, unwrapped modulo 90
    m2: np.ndarray  # strength of 2-fold (elongation), 3-fold and 4-fold symmetry, each in [0, 1]
    m3: np.ndarray
    m4: np.ndarray
    rgb: np.ndarray  # (3,) mean colour of the clip's fully covered pixels; nan when the clip is blank
    height: int
    width: int

    @property
    def present(self) -> np.ndarray:
        """Frames in which a shape was found. # (T,) bool"""
        return self.area > 0

    def angle(self, shape: str) -> np.ndarray:
        """Orientation in the renderer's convention for `shape` (square or triangle), unwrapped. # (T,)"""
        if shape not in _SYMMETRY:
            raise ValueError(f"orientation is defined for square and triangle, not {shape!r}")
        return self.angle4 if shape == "square" else self.angle3

    def shape_gap(self, shape: str, config: JudgeConfig = JudgeConfig()) -> float:
        """How far this clip is from being named `shape`: the larger of its elongation and its distance to
        that shape's prototype, each over the judge's threshold. At most 1 exactly where the judge names
        that shape (the prototypes are over two thresholds apart); inf for a blank clip. A progress
        measure for models whose blobs the judge names nothing."""
        if shape not in _PROTOTYPES:
            raise ValueError(f"unknown shape(s) {[shape]}; shapes: {', '.join(_PROTOTYPES)}")
        found, m2, dist = _shape_moments({k: getattr(self, k)[None] for k in ("area", "m2", "m3", "m4")})
        gap = max(m2[0] / config.max_elongation, dist[0, list(_PROTOTYPES).index(shape)] / config.max_shape_dist)
        return float(gap) if found[0] else math.inf

    def radius(self, shape: str) -> np.ndarray:
        """Circumradius implied by the area if the shape is `shape`. # (T,) px"""
        if shape not in _AREA_PER_R2:
            raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(vocab.SHAPES)}")
        return np.sqrt(self.area / _AREA_PER_R2[shape])


@dataclass(frozen=True)
class Judgement:
    """What the pixels show; None where they match nothing in the vocabulary."""

    color: str | None
    shape: str | None
    motion: str | None
    track: Track


# ---------------------------------------------------------------------------------------------
# tracking


def _as_batch(clips: np.ndarray) -> np.ndarray:
    clips = np.asarray(clips)
    if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(f"expected uint8 clips shaped (N, T, H, W, 3), got {clips.dtype} {clips.shape}")
    return clips


def _measure(clips: np.ndarray, cfg: JudgeConfig) -> dict[str, np.ndarray]:
    """Per-frame moments of a batch of clips. # (N, T, H, W, 3) uint8 -> arrays (N, T), rgb (N, 3)"""
    n, t, h, w, _ = clips.shape
    flat = np.ascontiguousarray(clips).reshape(-1, 3)
    idx = _ink_pixels(flat, cfg.ink)  # the few shape pixels, in (clip, frame, row, col) order
    px = flat[idx].astype(np.int16)  # (P, 3)
    d = 765 - px[:, 0] - px[:, 1] - px[:, 2]  # summed deficit from white
    keep = d > cfg.ink
    idx, px, d = idx[keep], px[keep], d[keep].astype(np.float64)
    frame = idx // (h * w)  # global frame index n*T + t, sorted
    pix = idx - frame * (h * w)
    yy = (pix // w).astype(np.float64) + 0.5
    xx = (pix % w).astype(np.float64) + 0.5
    clip_of = frame // t
    dmax = np.zeros(n)
    np.maximum.at(dmax, clip_of, d)

    # fill colour and its darkness from the fully covered pixels; coverage = darkness / fill darkness
    full = d >= cfg.full * dmax[clip_of]
    nfull, *sums = _segment_sums(clip_of[full], [np.ones(int(full.sum())), *px[full].T, d[full]], n)
    rgb = np.stack(sums[:3], 1) / np.where(nfull > 0, nfull, np.nan)[:, None]  # (N, 3)
    dfull = sums[3] / np.maximum(nfull, 1)
    alpha = np.minimum(d / np.maximum(dfull, 1.0)[clip_of], 1.0)

    nt = n * t
    area, sx, sy = _segment_sums(frame, [alpha, alpha * xx, alpha * yy], nt)
    safe = np.where(area > 0, area, 1.0)
    cx, cy = sx / safe, sy / safe
    u = xx - cx[frame]
    v = yy - cy[frame]
    r2 = u * u + v * v
    rho = np.sqrt(r2)
    z2r, z2i = u * u - v * v, 2.0 * u * v  # z^2, z = u + iv (v down: phase grows clockwise on screen)
    z3r, z3i = z2r * u - z2i * v, z2r * v + z2i * u
    z4r, z4i = z2r * z2r - z2i * z2i, 2.0 * z2r * z2i
    mom = _segment_sums(frame, [alpha * c for c in (z2r, z2i, r2, z3r, z3i, r2 * rho, z4r, z4i, r2 * r2)], nt)
    out: dict[str, np.ndarray] = {"x": cx, "y": cy, "area": area}
    for j, k in enumerate((2, 3, 4)):
        mr, mi, nk = mom[3 * j:3 * j + 3]
        out[f"m{k}"] = np.hypot(mr, mi) / np.where(nk > 0, nk, 1.0)
        out[f"phase{k}"] = np.degrees(np.arctan2(mi, mr))
    res = {k: a.reshape(n, t) for k, a in out.items()}
    for shape, (k, offset) in _SYMMETRY.items():
        period = 360.0 / k
        raw = (res.pop(f"phase{k}") - offset) / k  # orientation modulo `period`
        res[f"angle{k}"] = _unwrap(raw, period)
    res.pop("phase2")
    res["rgb"] = rgb
    return res


def _segment_sums(keys: np.ndarray, cols: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Sum each column over runs of equal sorted `keys` into arrays of length `size` (missing keys: 0).

    `np.add.reduceat` over the runs is several times faster than `bincount` per column.
    """
    out = [np.zeros(size) for _ in cols]
    if keys.size:
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        at = keys[starts]
        for o, c in zip(out, cols):
            o[at] = np.add.reduceat(np.asarray(c, np.float64), starts)
    return out


def _ink_pixels(flat: np.ndarray, ink: int) -> np.ndarray:
    """Indices of pixels whose summed deficit from white may exceed `ink` (a superset; sorted).

    Such a pixel has a channel below 255 - ink/3. A mostly white clip is scanned 8 bytes at a time
    (words that are all 0xFF hold only white pixels), so only the words around the shape are expanded.
    # (P, 3) uint8 -> (K,) int64
    """
    buf = flat.reshape(-1)
    limit = 255 - ink // 3  # a byte below this can belong to an inked pixel
    if buf.size % 8 == 0:
        words = buf.view(np.uint64)
        cand = np.flatnonzero(words != np.uint64(0xFFFFFFFFFFFFFFFF))
        if cand.size * 4 < words.size:  # sparse: expand just these words to their bytes
            byte = (cand[:, None] * 8 + np.arange(8)).reshape(-1)
            byte = byte[buf[byte] < limit]
        else:  # noisy background: plain byte scan
            byte = np.flatnonzero(buf < limit)
    else:
        byte = np.flatnonzero(buf < limit)
    pix = byte // 3
    if pix.size:
        pix = pix[np.concatenate([[True], pix[1:] != pix[:-1]])]
    return pix


def _unwrap(a: np.ndarray, period: float) -> np.ndarray:
    """Unwrap angles along the last axis, taking the shortest step modulo `period`. # (N, T)"""
    step = np.diff(a, axis=-1)
    step = (step + period / 2) % period - period / 2
    return np.concatenate([a[..., :1], a[..., :1] + np.cumsum(step, axis=-1)], axis=-1)


def _tracks(m: dict[str, np.ndarray], h: int, w: int) -> list[Track]:
    return [Track(m["x"][i], m["y"][i], m["area"][i], m["angle3"][i], m["angle4"][i], m["m2"][i], m["m3"][i],
                  m["m4"][i], m["rgb"][i], h, w) for i in range(len(m["x"]))]


def track(clip: np.ndarray, config: JudgeConfig = JudgeConfig()) -> Track:
    """Per-frame centre, area, orientation and symmetry of the shape in one clip. # (T, H, W, 3) uint8"""
    clip = np.asarray(clip)
    batch = _as_batch(clip[None])
    return _tracks(_measure(batch, config), *batch.shape[2:4])[0]


# ---------------------------------------------------------------------------------------------
# reading off colour, shape, motion


def _reversals(p: np.ndarray, h: np.ndarray | float) -> np.ndarray:
    """Direction changes of each row of p that come back by at least h (hysteresis). # (N, T) -> (N,)"""
    n, t = p.shape
    h = np.broadcast_to(np.asarray(h, np.float64), (n,))
    direction = np.zeros(n)
    ext = p[:, 0].copy()
    lo, hi = p[:, 0].copy(), p[:, 0].copy()
    count = np.zeros(n, np.int64)
    for i in range(1, t):
        q = p[:, i]
        lo, hi = np.minimum(lo, q), np.maximum(hi, q)
        start_up = (direction == 0) & (q - lo >= h)
        start_down = (direction == 0) & (hi - q >= h) & ~start_up
        up, down = direction > 0, direction < 0
        ext = np.where(up, np.maximum(ext, q), np.where(down, np.minimum(ext, q), ext))
        turn_down = up & (ext - q >= h)
        turn_up = down & (q - ext >= h)
        count += turn_down | turn_up
        direction = np.where(start_up | turn_up, 1.0, np.where(start_down | turn_down, -1.0, direction))
        ext = np.where(start_up | start_down | turn_down | turn_up, q, ext)
    return count


def _agree(steps: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """Fraction of steps whose sign is `sign` (per row). # (N, T-1), (N,) -> (N,)"""
    return np.mean(np.sign(steps) == sign[:, None], axis=1)


def _colors(rgb: np.ndarray, cfg: JudgeConfig) -> list[str | None]:
    names = list(vocab.COLORS)
    pal = np.asarray([vocab.COLORS[c] for c in names], np.float64)
    dist = np.linalg.norm(rgb[:, None, :] - pal[None], axis=-1)  # (N, 5); nan for blank clips
    best = np.argmin(np.nan_to_num(dist, nan=np.inf), axis=1)
    ok = dist[np.arange(len(rgb)), best] <= cfg.max_color_dist
    return [names[b] if o else None for b, o in zip(best, ok)]


def _shape_moments(m: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per clip: whether any shape was found, its mean elongation m2, and the distance of its mean (m3, m4)
    to each prototype, from the area-weighted larger frames (small ones are coarse). # (N,), (N,), (N, 3)"""
    area = m["area"]
    big = area >= 0.5 * area.max(1, keepdims=True)
    wgt = np.where(big & (area > 0), area, 0.0)
    tot = wgt.sum(1)
    mean = {k: (wgt * m[k]).sum(1) / np.where(tot > 0, tot, 1.0) for k in ("m2", "m3", "m4")}
    proto = np.asarray([_PROTOTYPES[s] for s in _PROTOTYPES])  # (3, 2)
    feats = np.stack([mean["m3"], mean["m4"]], 1)  # (N, 2)
    return tot > 0, mean["m2"], np.linalg.norm(feats[:, None] - proto[None], axis=-1)


def _shapes(m: dict[str, np.ndarray], cfg: JudgeConfig) -> list[str | None]:
    """The nearest prototype, where the clip is round enough and near enough to it."""
    found, m2, dist = _shape_moments(m)
    names = list(_PROTOTYPES)
    best = np.argmin(dist, 1)
    ok = found & (m2 <= cfg.max_elongation) & (dist[np.arange(len(best)), best] <= cfg.max_shape_dist)
    return [names[b] if o else None for b, o in zip(best, ok)]


def shape_gaps(clips: Sequence[np.ndarray] | np.ndarray, shapes: Sequence[str],
               config: JudgeConfig = JudgeConfig(), batch: int = 256) -> np.ndarray:
    """`Track.shape_gap` of each clip against `shapes[i]`, judged `batch` clips at a time. # -> (N,)"""
    if len(shapes) != len(clips):
        raise ValueError(f"{len(clips)} clips but {len(shapes)} shapes")
    bad = sorted({s for s in shapes if s not in _PROTOTYPES})
    if bad:
        raise ValueError(f"unknown shape(s) {bad}; shapes: {', '.join(_PROTOTYPES)}")
    return np.asarray([j.track.shape_gap(s, config) for j, s in zip(judge_many(clips, config, batch), shapes)])


def _motions(m: dict[str, np.ndarray], shapes: list[str | None], h: int, w: int, cfg: JudgeConfig) -> list[str | None]:
    """Motion of each clip by the vocabulary's rules, first match wins. # arrays (N, T)"""
    x, y, area = m["x"], m["y"], m["area"]
    n, t = x.shape
    if t < 2:
        return [None] * n
    side = float(min(h, w))
    present = (area > 0).all(1)
    safe_area = np.where(area > 0, area, 1.0)

    dx, dy = x[:, -1] - x[:, 0], y[:, -1] - y[:, 0]
    net = np.hypot(dx, dy)
    sx, sy = np.diff(x, axis=1), np.diff(y, axis=1)
    path = np.hypot(sx, sy).sum(1)
    wander = np.hypot(x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)).max(1)
    still = wander <= cfg.still * side

    # shrinking / expanding: area ratio end/start, growing or shrinking steadily, centre in place
    ratio = safe_area[:, -1] / safe_area[:, 0]
    da = np.diff(area, axis=1)
    shrinking = still & (ratio <= 1 / cfg.scale) & (_agree(da, -np.ones(n)) >= cfg.steady)
    expanding = still & (ratio >= cfg.scale) & (_agree(da, np.ones(n)) >= cfg.steady)

    # spinning: orientation (modulo the shape's symmetry) turns >= 90 deg one way, centre in place
    poly = np.array([s in _SYMMETRY for s in shapes])
    ang = np.where(np.array([s == "square" for s in shapes])[:, None], m["angle4"], m["angle3"])
    turn = ang[:, -1] - ang[:, 0]
    spin = still & poly & (np.abs(turn) >= cfg.spin_deg) & (_agree(np.diff(ang, axis=1), np.sign(turn)) >= cfg.steady)

    # rotating: orbit the frame centre; y down, so a growing atan2 angle is clockwise on screen
    ox, oy = x - w / 2.0, y - h / 2.0
    rho = np.hypot(ox, oy)
    dphi = np.diff(np.arctan2(oy, ox), axis=1)
    dphi = (dphi + np.pi) % (2 * np.pi) - np.pi
    orbit_turn = dphi.sum(1)
    orbit = ((np.abs(orbit_turn) >= cfg.orbit_turns * 2 * np.pi) & (rho.min(1) >= cfg.orbit_min * side)
             & (np.ptp(rho, 1) <= cfg.orbit_roundness * rho.mean(1))
             & (_agree(dphi, np.sign(orbit_turn)) >= cfg.steady))

    hyst = cfg.hysteresis * side
    # zigzagging: steady travel along the axis of larger net travel, alternating across it every frame or two
    zvert = np.abs(dy) >= np.abs(dx)
    along, across = np.where(zvert[:, None], y, x), np.where(zvert[:, None], x, y)
    net_along = along[:, -1] - along[:, 0]
    need = max(2, (t - 1) // 2 - 1)  # side switches every two frames at the slowest: T//2-ish reversals
    zigzag = ((np.abs(net_along) >= cfg.zigzag_min * side)
              & (_agree(np.diff(along, axis=1), np.sign(net_along)) >= cfg.steady)
              & (np.ptp(across, 1) >= cfg.across_max * side) & (_reversals(across, hyst) >= need))

    # bouncing: back and forth along the axis of larger range at steady speed, little motion across
    bvert = np.ptp(y, 1) >= np.ptp(x, 1)
    along, across = np.where(bvert[:, None], y, x), np.where(bvert[:, None], x, y)
    speed = np.abs(np.diff(along, axis=1))
    med = np.median(speed, 1)
    steady_speed = np.mean(np.abs(speed - med[:, None]) <= cfg.speed_tol * med[:, None], 1) >= cfg.steady_speed
    bounce = ((np.ptp(across, 1) <= cfg.across_max * side) & (np.ptp(along, 1) >= cfg.bounce_min * side)
              & (med > 0) & steady_speed & (_reversals(along, hyst) >= 1))

    # straight travel: far enough, nearly straight; direction by 45-degree sector
    straight = (net >= cfg.travel * side) & (net >= cfg.straightness * path)
    sector = np.round(np.arctan2(-dy, dx) / (np.pi / 4)).astype(np.int64) % 8

    rules = [
        (shrinking, "shrinking"), (expanding, "expanding"),
        (spin & (turn > 0), "spinning clockwise"), (spin & (turn < 0), "spinning counter-clockwise"),
        (orbit & (orbit_turn > 0), "rotating clockwise"), (orbit & (orbit_turn < 0), "rotating counter-clockwise"),
        (zigzag & zvert, "zigzagging vertically"), (zigzag & ~zvert, "zigzagging horizontally"),
        (bounce & bvert, "bouncing vertically"), (bounce & ~bvert, "bouncing horizontally"),
    ]
    out: list[str | None] = []
    for i in range(n):
        label = None
        if present[i]:
            label = next((name for cond, name in rules if cond[i]), None)
            if label is None and straight[i]:
                label = _SECTORS[sector[i]]
        out.append(label)
    return out


def judge_batch(clips: np.ndarray, config: JudgeConfig = JudgeConfig()) -> list[Judgement]:
    """Judge clips of one size at once. # (N, T, H, W, 3) uint8"""
    clips = _as_batch(clips)
    h, w = clips.shape[2:4]
    m = _measure(clips, config)
    shapes = _shapes(m, config)
    return [Judgement(c, s, mo, tr) for c, s, mo, tr in
            zip(_colors(m["rgb"], config), shapes, _motions(m, shapes, h, w, config), _tracks(m, h, w))]


def judge(clip: np.ndarray, config: JudgeConfig = JudgeConfig()) -> Judgement:
    """Colour, shape and motion that one clip shows (None where nothing in the vocabulary matches). # (T, H, W, 3)"""
    return judge_batch(np.asarray(clip)[None], config)[0]


def judge_many(clips: Sequence[np.ndarray] | np.ndarray, config: JudgeConfig = JudgeConfig(),
               batch: int = 256) -> list[Judgement]:
    """Judge any number of clips, batching clips of equal shape (memory stays at `batch` clips)."""
    out: list[Judgement | None] = [None] * len(clips)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, c in enumerate(clips):
        groups.setdefault(tuple(np.shape(c)), []).append(i)
    for ids in groups.values():
        for k in range(0, len(ids), batch):
            part = ids[k:k + batch]
            for i, j in zip(part, judge_batch(np.stack([np.asarray(clips[i]) for i in part]), config)):
                out[i] = j
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# scoring


def _traj_arrays(traj: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, radius, angle) of a `vocab.Trajectory` or a meta.json trajectory mapping."""
    get = (lambda k: traj[k]) if isinstance(traj, Mapping) else (lambda k: getattr(traj, k))
    return tuple(np.asarray(get(k), np.float64) for k in ("x", "y", "radius", "angle"))  # type: ignore[return-value]


def hits(judged: Sequence[Judgement], parsed: Sequence[vocab.Prompt]) -> dict[str, np.ndarray]:
    """Per clip, whether the judge found its prompt's `color`, `shape`, `motion` and all three at once
    (bool arrays). A prompt without a colour counts any palette colour as right."""
    color = np.array([j.color is not None and (p.color is None or j.color == p.color) for j, p in zip(judged, parsed)], bool)
    shape = np.array([j.shape == p.shape for j, p in zip(judged, parsed)], bool)
    motion = np.array([j.motion == p.motion for j, p in zip(judged, parsed)], bool)
    return {"color": color, "shape": shape, "motion": motion, "all3": color & shape & motion}


def score(clips: Sequence[np.ndarray] | np.ndarray, prompts: Sequence[str],
          trajectories: Sequence[Any] | None = None, held_out: Sequence[bool] | None = None,
          config: JudgeConfig = JudgeConfig()) -> dict[str, float]:
    """Accuracy of clips against their prompts, for seen and held-out prompts separately, plus trajectory error.

    Keys: `{seen,heldout,all}_{n,color,shape,motion,all3}` (accuracies in [0, 1], nan for an empty group),
    `{seen,heldout,all}_shape_gap` (the median clip's `Track.shape_gap` against its prompt's shape: at most 1
    once over half the clips are named it, inf when at least half are blank) and, where ground truth is given, `traj_n`, `traj_center_px` (mean centre distance over frames),
    `traj_radius_px` (mean |circumradius error|, the radius read from the area as the prompt's shape) and
    `traj_angle_deg` (mean |orientation error| of squares and triangles, modulo their symmetry) and
    `traj_missing` (fraction of frames with no shape found). A prompt without a colour counts any
    palette colour as right. `held_out` defaults to `vocab.is_held_out`; a colourless prompt is held
    out when its shape x motion is.
    """
    if len(clips) != len(prompts):
        raise ValueError(f"{len(clips)} clips but {len(prompts)} prompts")
    if trajectories is not None and len(trajectories) != len(prompts):
        raise ValueError(f"{len(trajectories)} trajectories but {len(prompts)} prompts")
    if held_out is not None and len(held_out) != len(prompts):
        raise ValueError(f"{len(held_out)} held-out flags but {len(prompts)} prompts")
    parsed = [vocab.parse_prompt(p) for p in prompts]  # bad prompts fail before any work
    if held_out is None:
        held_out = [(p.shape, p.motion) in vocab.HELD_OUT_SHAPE_MOTION
                    or (p.color is not None and vocab.is_held_out(p.color, p.shape, p.motion)) for p in parsed]
    held = np.asarray(held_out, bool)
    judged = judge_many(clips, config)

    ok = hits(judged, parsed)
    color_ok, shape_ok, motion_ok, all_ok = ok["color"], ok["shape"], ok["motion"], ok["all3"]
    gaps = np.array([j.track.shape_gap(p.shape, config) for j, p in zip(judged, parsed)])
    res: dict[str, float] = {}
    for group, sel in (("seen", ~held), ("heldout", held), ("all", np.ones_like(held))):
        cnt = int(sel.sum())
        res[f"{group}_n"] = float(cnt)
        for name, ok in (("color", color_ok), ("shape", shape_ok), ("motion", motion_ok), ("all3", all_ok)):
            res[f"{group}_{name}"] = float(ok[sel].mean()) if cnt else math.nan
        res[f"{group}_shape_gap"] = float(np.median(gaps[sel])) if cnt else math.nan

    if trajectories is not None:
        centre, radius, angle, missing, frames, used, poly_frames = 0.0, 0.0, 0.0, 0, 0, 0, 0
        for j, p, traj in zip(judged, parsed, trajectories):
            if traj is None:
                continue
            gx, gy, gr, ga = _traj_arrays(traj)
            tr = j.track
            ok = tr.present
            if len(gx) != len(ok):
                raise ValueError(f"trajectory has {len(gx)} frames, clip has {len(ok)}")
            used += 1
            frames += len(ok)
            missing += int((~ok).sum())
            centre += float(np.hypot(tr.x - gx, tr.y - gy)[ok].sum())
            radius += float(np.abs(tr.radius(p.shape) - gr)[ok].sum())
            if p.shape in _SYMMETRY:
                period = 360.0 / _SYMMETRY[p.shape][0]
                err = (tr.angle(p.shape) - ga + period / 2) % period - period / 2
                angle += float(np.abs(err)[ok].sum())
                poly_frames += int(ok.sum())
        found = frames - missing
        res["traj_n"] = float(used)
        res["traj_center_px"] = centre / found if found else math.nan
        res["traj_radius_px"] = radius / found if found else math.nan
        res["traj_angle_deg"] = angle / poly_frames if poly_frames else math.nan
        res["traj_missing"] = missing / frames if frames else math.nan
    return res
