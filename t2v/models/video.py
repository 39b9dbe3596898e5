"""The clip-level layered GAN (`video`): this project's model.

video generator -- a content/motion split, composited like a layered GAN:
  text ids --TextEncoder--> colour code, shape code, motion code          # (B, 3, D)
  fill    = MLP(colour code, z)           per clip                       # (B, 3)
  contour = exp(Fourier(MLP(shape code)))  per clip, radius at N angles  # (B, N)
  sprite prior (sprite_prior, on by default): fill = MLP(colour code), one per colour word; the contour divided
            by its largest radius (circumradius 1); the pose's scale times a circumradius drawn per clip, uniform in
            the vocabulary's 10-16% of the side, off noise dim 4, which the pose MLP does not see
  pose_t  = MLP(motion code, z) -> per-frame (x, y, log-scale, angle)    # (B, T, 4)
            = MLP(h + e_t) + readout_t(h) + velocity(h) * t                 (explicit time modelling)
            + (x, y) anchor: softplus(Linear(motion code)) * erf(z[:2] / sqrt 2)   (anchor > 0: where it starts)
            read at frames t + softplus(Linear(motion code)) * 8 * erf(z[3] / sqrt 2) of a padded timeline
                                                                       (shift > 0: where in its cycle)
  centre  = 0.85 * tanh(pose x, y); wall bounds (wall_bounds, on by default): wall * squash(pose x, y / wall),
            the path itself to 0.95 of the way to the renderer's walls, then tanh into them
  frame_t = white * (1 - a_t) + fill * a_t,  a_t = anti-aliased inside of the posed contour
The sprite is a learned star-shaped contour (log-radius as a Fourier series in the polar angle)
rasterised analytically: no texture to fill with speckle, always one solid anti-aliased shape, so
the critics only have to teach its outline; a concavity penalty (on the series smoothed of its
corner ringing, so sharp corners stay cheap) keeps it out of lumpy-star minima.
Each prompt part drives exactly one factor, so held-out pairs (purple square, circle moving
up-right) are new combinations of factors that were each trained on other pairs.

video discriminators -- all three see the prompt (projection on a bag of words) and carry AC-GAN heads:
  FrameD: K random frames per clip, a full-resolution window around the shape -> real/fake + colour + shape
  VideoD: the whole clip at half resolution, frames stacked as channels       -> real/fake + motion (+ colour, shape)
  TrackD: per-frame ink moments of the half-resolution clip (centre, size,
          2/3/4-fold symmetry and orientation), their changes and rates
          (turning, orbiting, speed, acceleration), an MLP                    -> real/fake + motion + shape
During training the generator renders only what the critics see (the half-resolution clip and
K windows), never the full-resolution clip: ~3x fewer pixels.
Spectral norm on every D layer; hinge loss; real clips with shuffled prompts are extra negatives.
  PairD (optional, pair_weight > 0): two centre tracks of one motion side by side (PacGAN packing)
         -> real/fake (projection on the motion): the only critic that sees two samples of a prompt
         at once, so the only one that can tell that they all start in the same place.
  Spread term (optional, spread_weight > 0): no critic; the per-axis variance of the start centres of
         8 noises per prompt is pulled to that of real clips of its motion (running sums, MotionStats).
  Track match (match_weight > 0; 0.02 by default): no critic; 14 direction-free statistics of the centre tracks of
         4 noises per prompt (speed, turning, travel, range, speed wander, orbit rate, distance from the
         centre and its range: track_stats), averaged, are pulled to the real clips' mean for its motion
         (MotionStats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm
from torch.profiler import record_function

from t2v import distributed, motions, render, text, vocab
from t2v.config import TrainConfig
from t2v.loader import to_model
from t2v.models import SIZE_NOISE_DIM, GeneratorSpec
from t2v.models.common import Models, build_models, ce, spec_text_encoder, ema_update, hinge_fake, hinge_real


# ----------------------------------------------------------------------------- video generator

def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, o))


HARMONICS = tuple(range(1, 13))  # Fourier terms of the contour: squares need multiples of 4, triangles of 3
ANGLES = 256  # the contour is tabulated at this many polar angles and interpolated per pixel
RADIUS = 0.26  # initial circumradius in canvas units (13% of the side, mid-range of the data's 10-16%)
POSE_RANGE = 0.85  # centres stay within this fraction of the canvas half-side
# Soft (tanh) bounds in log space, never clamps: a shape that shrank to nothing would give no
# gradient and the generator would stay blank for good.
SCALE_RANGE = 0.9  # scale within e^-0.9..e^0.9 of RADIUS: 3.4-20 px radius at 64 px (data: 3.6-12.8 px)
CONTOUR_RANGE = 0.8  # contour radius within e^-0.8..e^0.8 of the scale: a triangle needs corners 2x its apothem, no more
SHIFT_PAD = 8  # frames of timeline before and after a clip that a time shift can read (half a 16-frame clip)
# The soft bounds pass almost no gradient far out: a run that sent a fifth of its frames there (centre tanh
# arguments up to 11, log-scale ones up to 10: the sprite parked in a corner at its smallest) learnt nothing
# more. Past KNEE (tanh' = 0.027; healthy runs' EMA weights stay within 1.7, their raw G overshoots in its
# first steps too) a penalty pulls the argument back (README).
KNEE = 2.5
# wall_bounds' squash: the identity to 0.95 of the way to the walls (orbits and bounces run out to them; one
# that bent paths from 0.8 of the way lost the orbits: README trial table), then tanh into them; its bound penalty
# where its slope is tanh's at KNEE
SQUASH_LINEAR = 0.95
SQUASH_KNEE = SQUASH_LINEAR + KNEE * (1.0 - SQUASH_LINEAR)
BOUND_WEIGHT = 1.0  # on the mean squared overshoot past KNEE; exactly 0, so no gradient at all, inside it


@dataclass
class Layers:
    """A clip before compositing: per-clip fill and contour, per-frame pose in canvas units ([-1, 1], y down)."""

    fill: torch.Tensor  # (B, 3) in [-1, 1]
    contour: torch.Tensor  # (B, ANGLES) radius of the unit-scale contour at polar angles -pi + 2 pi j / ANGLES
    outline: torch.Tensor  # (B, ANGLES) the contour with its corner ringing smoothed: what the concavity prior sees
    cx: torch.Tensor  # (B, T)
    cy: torch.Tensor  # (B, T)
    scale: torch.Tensor  # (B, T) radius of the unit contour, canvas units
    angle: torch.Tensor  # (B, T) radians, clockwise on screen
    excess: torch.Tensor  # () mean squared overshoot of the bounds' tanh arguments (centre, log-scale) past KNEE


def fourier_basis(harmonics: tuple[int, ...], angles: int, lanczos: bool = False) -> torch.Tensor:
    """[1, s_k cos k theta, s_k sin k theta for k in harmonics] at `angles` polar angles from -pi.

    s_k = 1, or with `lanczos` sinc(k / (K + 1)), Lanczos' sigma factors, which smooth away the
    ringing (Gibbs) of a truncated series at a corner while keeping its low-frequency dents.
    # (angles, 1 + 2K)"""
    th = torch.arange(angles, dtype=torch.float64) * (2 * math.pi / angles) - math.pi
    top = max(harmonics) + 1
    cols = [torch.ones_like(th)]
    for k in harmonics:
        sigma = math.sin(math.pi * k / top) / (math.pi * k / top) if lanczos else 1.0
        cols += [sigma * torch.cos(k * th), sigma * torch.sin(k * th)]
    return torch.stack(cols, 1).float()


def concavity(contour: torch.Tensor) -> torch.Tensor:
    """How far a polar outline r(theta) is from convex: a curve is convex where
    r^2 + 2 r'^2 - r r'' >= 0; the mean violation, scale-free. Corners (kinks outwards) are convex;
    the dents between the lobes of a star are not. (B, N) -> scalar"""
    step = 2 * math.pi / contour.shape[1]
    nxt, prv = contour.roll(-1, 1), contour.roll(1, 1)
    d1 = (nxt - prv) / (2 * step)
    d2 = (nxt - 2 * contour + prv) / step ** 2
    return F.relu(-(contour ** 2 + 2 * d1 ** 2 - contour * d2) / contour ** 2).mean()


def uniform_noise(z: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Noise dims lo..hi-1 mapped through the normal CDF to uniform in (-1, 1): what the anchor, the time
    shift and the sprite prior's size draw read. (B, z) -> (B, hi - lo)"""
    return torch.erf(z[:, lo:hi].float() / math.sqrt(2.0))


def squash(u: torch.Tensor) -> torch.Tensor:
    """A path u squashed into walls at -1 and 1: the identity to SQUASH_LINEAR, then tanh, so a path that overshoots
    slows to a stop, and one that stays inside (an orbit, a bounce's sharp turn) is not bent. (...) -> (...) in
    [-1, 1]"""
    a, k = u.abs(), SQUASH_LINEAR
    return torch.where(a <= k, u, u.sign() * (k + (1.0 - k) * torch.tanh((a - k) / (1.0 - k))))


def pixel_centres(start: torch.Tensor, n: int, side: int) -> torch.Tensor:
    """Canvas coordinates of pixels start..start+n-1 on a `side`-pixel canvas. (...,) -> (..., n)"""
    return (start.unsqueeze(-1) + torch.arange(n, device=start.device) + 0.5) * (2.0 / side) - 1.0


def composite(layers: Layers, frames: torch.Tensor | None, gx: torch.Tensor, gy: torch.Tensor,
              side: int) -> torch.Tensor:
    """Rasterise the star-shaped sprite at canvas points and blend the fill over white.

    The sprite is the region rho < scale * R(theta) in the shape's own frame (R tabulated, linearly
    interpolated); coverage is the renderer's one-pixel anti-aliasing ramp on the radial distance to
    the contour, in pixels of a `side`-pixel canvas. frames (B, F) picks poses (None = all T);
    gx (B, F, w), gy (B, F, h) are the canvas coordinates of the output columns / rows.
    -> (B, 3, F, h, w) in [-1, 1]"""
    pose = [layers.cx, layers.cy, layers.scale, layers.angle]
    if frames is not None:
        pose = [p.gather(1, frames) for p in pose]
    cx, cy, scale, ang = (p.float().unsqueeze(-1).unsqueeze(-1) for p in pose)  # (B, F, 1, 1)
    dx = gx.unsqueeze(-2) - cx  # (B, F, 1, w)
    dy = gy.unsqueeze(-1) - cy  # (B, F, h, 1)
    cos, sin = torch.cos(ang), torch.sin(ang)
    u = cos * dx + sin * dy  # (B, F, h, w): R(-angle) (p - c), canvas units in the shape's frame
    v = -sin * dx + cos * dy
    rho = torch.sqrt(u * u + v * v + 1e-12)
    table = layers.contour.float()  # (B, N)
    B, N = table.shape
    f = (torch.atan2(v, u) + math.pi) * (N / (2 * math.pi))  # (B, F, h, w) fractional table index
    j0 = f.detach().floor()
    wgt = f - j0
    j0 = j0.long().remainder(N).view(B, -1)
    j1 = (j0 + 1).remainder(N)
    r = table.gather(1, j0).view_as(rho) * (1 - wgt) + table.gather(1, j1).view_as(rho) * wgt
    d_px = (rho - scale * r) * (side / 2.0)  # radial distance outside the contour, pixels
    a = (0.5 - d_px).clamp(0.0, 1.0).unsqueeze(1)  # (B, 1, F, h, w)
    return 1.0 - a * (1.0 - layers.fill.float().view(B, 3, 1, 1, 1))


class LayeredGenerator(nn.Module):
    """Per-clip fill and contour, per-frame pose; rasterised over white.

    noise (B, z), codes (B, 3, D) -> clip (B, 3, T, H, W) in [-1, 1]"""

    def __init__(self, frames: int, size: int, z_dim: int = 32, text_dim: int = 64, hidden: int = 256,
                 anchor: float = 0.0, shift: float = 0.0, sprite_prior: bool = False, wall_bounds: bool = False
                 ) -> None:
        super().__init__()
        self.frames, self.size, self.z_dim, self.sprite_prior = frames, size, z_dim, sprite_prior
        self.wall_bounds = wall_bounds  # no weights of its own: a different bound on the same pose
        # per-clip placement read straight off two noise dims: the path's offset is u * spread(motion code),
        # u uniform in (-1, 1)^2, so every sample of a prompt starts elsewhere unless the critics shrink the spread
        self.anchor = nn.Linear(text_dim, 2) if anchor > 0 else None
        if self.anchor is not None:
            nn.init.zeros_(self.anchor.weight)
            nn.init.constant_(self.anchor.bias, math.log(math.expm1(anchor)))  # softplus(bias) = anchor
        self.fill = _mlp(text_dim if sprite_prior else text_dim + z_dim, 128, 3)  # sprite prior: one fill per colour word
        self.contour = _mlp(text_dim, 128, 1 + 2 * len(HARMONICS))  # shape code only: a shape looks the same in any motion
        nn.init.zeros_(self.contour[-1].weight)  # start as a circle of radius `scale`
        nn.init.zeros_(self.contour[-1].bias)
        self.register_buffer("basis", fourier_basis(HARMONICS, ANGLES), persistent=False)
        # what the concavity prior judges: the same series without its corner ringing, so a sharp
        # square costs ~0.05 instead of ~0.47 while a lumpy star keeps most of its dents
        self.register_buffer("smooth_basis", fourier_basis(HARMONICS, ANGLES, lanczos=True), persistent=False)
        self.motion = _mlp(text_dim + z_dim, hidden, hidden)
        self.time = nn.Parameter(torch.randn(frames, hidden) * 0.1)  # learned per-frame embedding
        self.pose = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 4))
        self.direct = nn.Linear(hidden, frames * 4)  # per-frame pose readout: straight lines and zigzags are linear in it
        # per-clip rate of change of each pose channel: one parameter moves the whole clip coherently
        # (travel, growth, turning), where per-frame readouts would each have to learn the ramp
        self.velocity = nn.Linear(hidden, 4)
        self.register_buffer("ramp", torch.linspace(-1.0, 1.0, frames).view(1, frames, 1), persistent=False)
        for lin in (self.direct, self.velocity):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        # per-clip shift of the clip's time along a longer timeline (SHIFT_PAD frames either side), read off a
        # fourth noise dim: where in its cycle a clip starts (a bounce's turn, an orbit's phase, a zigzag's
        # side), which the per-frame tables cannot shift on their own
        self.shift = nn.Linear(text_dim, 1) if shift > 0 else None
        if self.shift is not None:
            nn.init.zeros_(self.shift.weight)
            nn.init.constant_(self.shift.bias, math.log(math.expm1(shift)))  # softplus(bias) = shift (x SHIFT_PAD frames)
            self.time_pad = nn.Parameter(torch.randn(2 * SHIFT_PAD, hidden) * 0.1)  # rows before and after the clip
            self.direct_pad = nn.Linear(hidden, 2 * SHIFT_PAD * 4)
            nn.init.zeros_(self.direct_pad.weight)
            nn.init.zeros_(self.direct_pad.bias)

    def sample_noise(self, n: int, gen: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.z_dim, generator=gen)

    def layers(self, z: torch.Tensor, codes: torch.Tensor) -> Layers:
        """Content (fill, contour) from the colour/shape codes, motion (pose per frame) from the motion code + z."""
        c_col, c_shape, c_mot = codes.float().unbind(1)  # (B, D) each
        fill = torch.tanh(self.fill(c_col if self.sprite_prior else torch.cat([c_col, z], 1)))  # (B, 3)
        coef = self.contour(c_shape)  # (B, 1 + 2K) log-radius Fourier coefficients
        contour, outline = (torch.exp(CONTOUR_RANGE * torch.tanh(coef @ b.T / CONTOUR_RANGE))  # soft-bounded, never 0
                            for b in (self.basis, self.smooth_basis))  # (B, ANGLES) each
        z_pose = z
        if self.sprite_prior:  # circumradius 1: a shape code cannot draw its shape larger or smaller than the pose says;
            contour = contour / contour.amax(1, keepdim=True)  # and the pose MLP never sees the size draw, so cannot undo it
            z_pose = z.index_fill(1, torch.tensor([SIZE_NOISE_DIM], device=z.device), 0.0)
        h = self.motion(torch.cat([c_mot, z_pose], 1))  # (B, hidden)
        if self.shift is None:  # not folded into shifted_pose: its other evaluation order changes the gradients'
            # float summation, so the weights of every recipe measured without the option
            pose = (self.pose(h.unsqueeze(1) + self.time.unsqueeze(0)) + self.direct(h).view(-1, self.frames, 4)
                    + self.velocity(h).unsqueeze(1) * self.ramp)  # (B, T, 4)
        else:
            delta = F.softplus(self.shift(c_mot)) * SHIFT_PAD * uniform_noise(z, 3, 4)  # (B, 1) frames
            pose = self.shifted_pose(h, delta)
        pose = pose.float()
        if self.anchor is not None:
            u = uniform_noise(z, 0, 2)  # (B, 2)
            offset = F.softplus(self.anchor(c_mot)) * u  # (B, 2) pre-bound units
            pose = torch.cat([pose[..., :2] + offset.unsqueeze(1), pose[..., 2:]], -1)
        radius: torch.Tensor | float = RADIUS
        if self.sprite_prior:  # the vocabulary's circumradius range, uniform per clip as the renderer draws it (canvas units)
            lo, hi = render.RADIUS_RANGE
            u = (uniform_noise(z, SIZE_NOISE_DIM, SIZE_NOISE_DIM + 1) + 1.0) / 2.0  # (B, 1) in (0, 1)
            radius = 2.0 * (lo + (hi - lo) * u)
        scale = radius * torch.exp(SCALE_RANGE * torch.tanh(pose[..., 2] / SCALE_RANGE))
        if not self.wall_bounds:
            args = torch.stack([pose[..., 0], pose[..., 1], pose[..., 2] / SCALE_RANGE], -1)  # (B, T, 3) the tanh arguments
            return Layers(fill, contour, outline, POSE_RANGE * torch.tanh(pose[..., 0]),
                          POSE_RANGE * torch.tanh(pose[..., 1]), scale, pose[..., 3] * math.pi,
                          F.relu(args.abs() - KNEE).pow(2).mean())
        # the renderer's walls: the centre stays a circumradius and its anti-aliasing margin from the edge
        margin = 2.0 * motions._margin(0.0) / self.size  # canvas units, read off the renderer's motions, not copied
        wall = (1.0 - radius - margin).unsqueeze(-1) if self.sprite_prior else POSE_RANGE  # (B, 1, 1) or a float
        w = pose[..., :2] / wall  # (B, T, 2) in walls
        centre = wall * squash(w)  # the path itself almost to the wall, so a reflection there stays sharp
        over = torch.cat([F.relu(w.abs() - SQUASH_KNEE).pow(2), F.relu((pose[..., 2:3] / SCALE_RANGE).abs() - KNEE).pow(2)], -1)  # (B, T, 3)
        return Layers(fill, contour, outline, centre[..., 0], centre[..., 1], scale, pose[..., 3] * math.pi, over.mean())

    def shifted_pose(self, h: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The pose read at frames t + delta of the padded timeline, linearly between its rows: at delta = 0
        exactly the unshifted pose. h (B, hidden), delta (B, 1) frames -> (B, T, 4)"""
        P, T = SHIFT_PAD, self.frames
        table = torch.cat([self.time_pad[:P], self.time, self.time_pad[P:]])  # (T + 2P, hidden)
        pad = self.direct_pad(h).view(-1, 2 * P, 4)
        direct = torch.cat([pad[:, :P], self.direct(h).view(-1, T, 4), pad[:, P:]], 1)  # (B, T + 2P, 4)
        at = (torch.arange(T, device=h.device) + P + delta).clamp(0, T + 2 * P - 1)  # (B, T) fractional rows
        i0 = at.floor().long().clamp(max=T + 2 * P - 2)
        f = (at - i0).unsqueeze(-1)  # (B, T, 1)

        def read(rows: torch.Tensor) -> torch.Tensor:  # (B, T + 2P, C) -> (B, T, C) at `at`
            idx = i0.unsqueeze(-1).expand(-1, -1, rows.shape[-1])
            return rows.gather(1, idx) * (1 - f) + rows.gather(1, idx + 1) * f

        e = read(table.unsqueeze(0).expand(h.shape[0], -1, -1))  # (B, T, hidden)
        ramp = self.ramp + delta.unsqueeze(-1) * (2.0 / (T - 1))  # (B, T, 1) the same line, shifted
        return self.pose(h.unsqueeze(1) + e) + read(direct) + self.velocity(h).unsqueeze(1) * ramp

    def render(self, layers: Layers, res: int | None = None) -> torch.Tensor:
        """Whole clip on a res x res canvas (default: full size). # (B, 3, T, res, res)"""
        res = res or self.size
        B, T = layers.cx.shape
        g = pixel_centres(torch.zeros(B, T, device=layers.cx.device), res, res)  # (B, T, res)
        return composite(layers, None, g, g, res)

    def crops(self, layers: Layers, frames: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-resolution size x size windows around the shape in frames (B, K), on whole-pixel offsets.

        -> windows (B, 3, K, size, size), origins (B, K, 2) (top-left pixel x, y of each window)"""
        x0 = crop_origin(layers.cx.gather(1, frames).detach(), self.size, size)  # (B, K)
        y0 = crop_origin(layers.cy.gather(1, frames).detach(), self.size, size)
        gx, gy = pixel_centres(x0, size, self.size), pixel_centres(y0, size, self.size)
        return composite(layers, frames, gx, gy, self.size), torch.stack([x0, y0], -1)

    def views(self, z: torch.Tensor, codes: torch.Tensor, frames: torch.Tensor, crop: int, res: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the critics see of a fake clip, rendered directly: full-resolution windows around the
        shape in frames (B, K), the whole clip at res x res; and two priors: the sprite's concavity and
        how far its pose overshoots the soft bounds. # (B, 3, K, c, c), (B, 3, T, res, res), (), ()"""
        layers = self.layers(z, codes)
        return (self.crops(layers, frames, crop)[0], self.render(layers, res), concavity(layers.outline),
                layers.excess)

    def track(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The sprite's centre in every frame, without rendering (what the pair critic sees). # (B, T, 2)"""
        layers = self.layers(z, codes)
        return torch.stack([layers.cx, layers.cy], -1)

    def forward(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return self.render(self.layers(z, codes))


def half_res(clips: torch.Tensor) -> torch.Tensor:
    """Each frame 2x2 average-pooled: what the video and track critics see of a real clip. The same sums in the
    same order, ((a + b) + c) + d, then / 4, as F.avg_pool3d(clips, (1, 2, 2)), so bit-identical on CPU, in half
    its time there (12 ms of a 300-ms step went to the pooling kernel). (B, C, T, H, W) -> (B, C, T, H/2, W/2)"""
    B, C, T, H, W = clips.shape
    v = clips.view(B, C, T, H // 2, 2, W // 2, 2)
    return (v[:, :, :, :, 0, :, 0] + v[:, :, :, :, 0, :, 1] + v[:, :, :, :, 1, :, 0] + v[:, :, :, :, 1, :, 1]) / 4


def crop_origin(c: torch.Tensor, side: int, size: int) -> torch.Tensor:
    """Top-left pixel of a size-wide window centred on canvas coordinate c, kept inside the canvas."""
    px = (c + 1.0) * (side / 2.0)  # pixels
    return (px - size / 2.0).round().clamp(0, side - size)


def crop_real(clips: torch.Tensor, frames: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, size: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same windows cut from real clips, centred on their true centres (canvas units, (B, T)).

    clips (B, 3, T, H, W), frames (B, K) -> windows (B, 3, K, size, size), origins (B, K, 2) pixels"""
    B, C, T, H, W = clips.shape
    K = frames.shape[1]
    x0 = crop_origin(cx.gather(1, frames), W, size)  # (B, K)
    y0 = crop_origin(cy.gather(1, frames), H, size)
    ar = torch.arange(size, device=clips.device)
    rows = (y0.long().unsqueeze(-1) + ar).view(B, 1, K, size, 1)
    cols = (x0.long().unsqueeze(-1) + ar).view(B, 1, K, 1, size)
    bi = torch.arange(B, device=clips.device).view(B, 1, 1, 1, 1)
    ci = torch.arange(C, device=clips.device).view(1, C, 1, 1, 1)
    return clips[bi, ci, frames.view(B, 1, K, 1, 1), rows, cols], torch.stack([x0, y0], -1)


# ----------------------------------------------------------------------------- video discriminators

def _sn(m: nn.Module) -> nn.Module:
    return spectral_norm(m)


class FrameDiscriminator(nn.Module):
    """Single frames, cropped around the shape at full resolution: features for a projection
    real/fake score and colour/shape heads. Position is the video critic's job."""

    def __init__(self, crop: int, width: int = 32, feat: int = 256) -> None:
        super().__init__()
        w = width
        self.convs = nn.Sequential(
            _sn(nn.Conv2d(3, w, 4, 2, 1)), nn.LeakyReLU(0.2),  # (N, w, c/2, c/2)
            _sn(nn.Conv2d(w, 2 * w, 4, 2, 1)), nn.LeakyReLU(0.2),  # (N, 2w, c/4, c/4)
            _sn(nn.Conv2d(2 * w, 4 * w, 4, 2, 1)), nn.LeakyReLU(0.2),  # (N, 4w, c/8, c/8)
        )
        self.fc = nn.Sequential(_sn(nn.Linear(4 * w * (crop // 8) ** 2, feat)), nn.LeakyReLU(0.2))
        self.score = _sn(nn.Linear(feat, 1))
        self.heads = nn.ModuleDict({"color": nn.Linear(feat, len(vocab.COLORS)), "shape": nn.Linear(feat, len(vocab.SHAPES))})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, c, c) -> features (N, feat)"""
        return self.fc(self.convs(x).flatten(1))

    def judge(self, h: torch.Tensor, tvec: torch.Tensor) -> torch.Tensor:
        """Projection score: unconditional term + <prompt vector, features>. # (N,)"""
        return self.score(h).squeeze(1) + (h * tvec).sum(1)


class VideoDiscriminator(nn.Module):
    """Whole clips at half resolution, frames stacked as channels (early fusion: every first-layer
    filter sees all T frames of its patch, so motion is read from the start, at 2D-conv cost):
    features for a projection score and motion/colour/shape heads."""

    def __init__(self, frames: int, res: int, n_motions: int, width: int = 32, feat: int = 256) -> None:
        super().__init__()
        w = width
        self.convs = nn.Sequential(
            _sn(nn.Conv2d(3 * frames, 2 * w, 4, 2, 1)), nn.LeakyReLU(0.2),  # (B, 2w, r/2, r/2)
            _sn(nn.Conv2d(2 * w, 4 * w, 4, 2, 1)), nn.LeakyReLU(0.2),  # (B, 4w, r/4, r/4)
            _sn(nn.Conv2d(4 * w, 4 * w, 4, 2, 1)), nn.LeakyReLU(0.2),  # (B, 4w, r/8, r/8)
        )
        self.fc = nn.Sequential(_sn(nn.Linear(4 * w * (res // 8) ** 2, feat)), nn.LeakyReLU(0.2))
        self.score = _sn(nn.Linear(feat, 1))
        self.heads = nn.ModuleDict({"motion": nn.Linear(feat, n_motions), "color": nn.Linear(feat, len(vocab.COLORS)),
                                    "shape": nn.Linear(feat, len(vocab.SHAPES))})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, r, r) -> features (B, feat)"""
        B, C, T, H, W = x.shape
        return self.fc(self.convs(x.reshape(B, C * T, H, W)).flatten(1))

    def judge(self, h: torch.Tensor, tvec: torch.Tensor) -> torch.Tensor:
        return self.score(h).squeeze(1) + (h * tvec).sum(1)  # (B,)


INK_GAIN = 2.0  # conv critics' input gain on ink (see VideoDiscriminators.forward)
MOMENT_GAIN = 4.0  # track critic's gain on moments (see track_features)


def ink_moments(clip: torch.Tensor, origin: torch.Tensor | None = None, side: int | None = None) -> torch.Tensor:
    """Per-frame shape statistics read from pixels, differentiably (the pixel judge's quantities):
    centre (canvas units), sqrt(area) and the complex moments M2, M3, M4 (elongation, 3- and 4-fold
    symmetry and their orientation), each normalised to be scale-free.

    clip (B, 3, T, h, w) in [-1, 1] is either whole frames, or windows whose top-left pixels are
    `origin` (B, T, 2) on a `side`-pixel canvas. Central moments up to order 4 come from two small matmuls
    per frame (separable in x and y) on centred coordinates; the complex moments are sums of them.
    -> (B, T, 9)"""
    B, C, T, h, w = clip.shape
    side = side or w
    ink = ((1.0 - clip.float()) * 0.5).sum(1).clamp(min=0.0)  # (B, T, h, w)
    # coverage, ~1 inside the shape; dividing by the clip's darkest pixel (not detached) makes every
    # feature blind to how dark the fill is, so no gradient can pale the shape away
    a = ink / (ink.flatten(1).amax(1).view(B, 1, 1, 1) + 1e-3)
    xs = (torch.arange(w, device=clip.device) + 0.5 - w / 2) * (2.0 / side)  # window-centred canvas units
    ys = (torch.arange(h, device=clip.device) + 0.5 - h / 2) * (2.0 / side)
    m0 = a.sum((-2, -1)).clamp(min=1e-3)  # (B, T); blank frames give finite features and gradients
    lx, ly = (a.sum(-2) @ xs) / m0, (a.sum(-1) @ ys) / m0  # centre inside the window

    def powers(d: torch.Tensor) -> torch.Tensor:  # (B, T, n) -> (B, T, n, 5): d^0 .. d^4
        d2 = d * d
        return torch.stack([torch.ones_like(d), d, d2, d2 * d, d2 * d2], -1)

    # central moments by two batched matmuls: central[q, p] = sum a (y - ly)^q (x - lx)^p
    central = powers(ys - ly.unsqueeze(-1)).transpose(-1, -2) @ a @ powers(xs - lx.unsqueeze(-1))  # (B, T, 5, 5)

    def mu(p: int, q: int) -> torch.Tensor:
        return central[..., q, p]

    s2 = mu(2, 0) + mu(0, 2) + 1e-4  # sum a |z|^2
    norm = {k: m0 * (s2 / m0) ** (k / 2) for k in (2, 3, 4)}
    moments = [  # Re and Im of sum a z^k, z = (x - lx) + i (y - ly)
        (mu(2, 0) - mu(0, 2), 2 * mu(1, 1)),
        (mu(3, 0) - 3 * mu(1, 2), 3 * mu(2, 1) - mu(0, 3)),
        (mu(4, 0) - 6 * mu(2, 2) + mu(0, 4), 4 * mu(3, 1) - 4 * mu(1, 3)),
    ]
    off_x = 0.0 if origin is None else origin[..., 0].float() * (2.0 / side)
    off_y = 0.0 if origin is None else origin[..., 1].float() * (2.0 / side)
    cx = lx + w / side + off_x - 1.0
    cy = ly + h / side + off_y - 1.0
    feats = [cx, cy, torch.sqrt(m0 * (4.0 / (side * side)))]
    for k, (re, im) in zip((2, 3, 4), moments):
        feats += [re / norm[k], im / norm[k]]
    return torch.stack(feats, -1)  # (B, T, 9)


def track_features(m: torch.Tensor) -> torch.Tensor:
    """The moments, their per-frame changes, and rates a ReLU MLP cannot cheaply form from them
    (products of consecutive frames): the turning of the 3- and 4-fold orientation (spin direction),
    the angular velocity about the canvas centre, the distance from it and that distance less its clip mean
    (orbits: the judge refuses a spiral, whose radius range is over 0.3x its mean), the speed (a
    bounce keeps it steady), and the centre's acceleration with its magnitude (a reflection is one
    spike of it, a rounded turn, which the pixel judge refuses, spreads it over frames; the MLP could form
    these from the changes, but by the three-seed results it did not). Gains matter under spectral norm,
    where the input scale sets how fast the heads learn (4x on the moments: motion classification in
    ~100 steps instead of ~300).
    (B, T, 9) -> (B, TRACK_PER_FRAME * T - TRACK_PER_STEP)"""
    g = m * MOMENT_GAIN
    d = (g[:, 1:] - g[:, :-1]) * 4.0  # (B, T-1, 9) per-frame change, scaled up to the positions' range
    a, b = m[:, :-1], m[:, 1:]
    orbit = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]  # (B, T-1) ~ rho^2 dphi, > 0 clockwise on screen (y down)
    turn3 = a[..., 5] * b[..., 6] - a[..., 6] * b[..., 5]  # Im(conj(M3_t) M3_t+1) = |M3|^2 sin(3 dtheta)
    turn4 = a[..., 7] * b[..., 8] - a[..., 8] * b[..., 7]  # |M4|^2 sin(4 dtheta)
    speed = torch.sqrt((b[..., 0] - a[..., 0]) ** 2 + (b[..., 1] - a[..., 1]) ** 2 + 1e-6)
    rates = torch.stack([orbit, turn3, turn4, speed], -1) * (4.0 * MOMENT_GAIN)  # (B, T-1, 4)
    rho = torch.sqrt(m[..., 0] ** 2 + m[..., 1] ** 2 + 1e-6) * MOMENT_GAIN  # (B, T) distance from the centre
    wobble = rho - rho.mean(1, keepdim=True)  # (B, T) 0 on a round orbit, a ramp on a spiral
    acc = (d[:, 1:, :2] - d[:, :-1, :2]) * 4.0  # (B, T-2, 2) centre acceleration: one spike at a reflection, spread when rounded
    acc_norm = torch.sqrt((acc ** 2).sum(-1) + 1e-6)  # (B, T-2)
    return torch.cat([g.flatten(1), d.flatten(1), rates.flatten(1), rho, wobble, acc.flatten(1), acc_norm], 1)


TRACK_PER_FRAME, TRACK_PER_STEP = 9 + 9 + 4 + 2 + 3, 9 + 4 + 6  # track_features: 27 T - 19 values per clip


class TrackDiscriminator(nn.Module):
    """Whole clips seen as the track of their shape (track_features of ink_moments): a cheap MLP
    critic that reads motion and shape the way the pixel judge does. Features for a projection
    score and motion/shape heads."""

    def __init__(self, frames: int, n_motions: int, feat: int = 256) -> None:
        super().__init__()
        n = TRACK_PER_FRAME * frames - TRACK_PER_STEP  # track_features
        self.fc = nn.Sequential(_sn(nn.Linear(n, feat)), nn.LeakyReLU(0.2), _sn(nn.Linear(feat, feat)), nn.LeakyReLU(0.2))
        self.score = _sn(nn.Linear(feat, 1))
        self.heads = nn.ModuleDict({"motion": nn.Linear(feat, n_motions), "shape": nn.Linear(feat, len(vocab.SHAPES))})

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, r, r) -> features (B, feat)"""
        return self.fc(track_features(ink_moments(clip)))

    def judge(self, h: torch.Tensor, tvec: torch.Tensor) -> torch.Tensor:
        return self.score(h).squeeze(1) + (h * tvec).sum(1)  # (B,)


class PairDiscriminator(nn.Module):
    """Two paths of one motion side by side (PacGAN's packing, on the sprite's centre track): real
    pairs are two training clips of the same motion, fake pairs two noises of one prompt. Only a
    critic that sees two samples at once can tell that a generator starts every sample of a prompt
    in the same place. Projection score on the motion.

    (B, T, 2) x 2 centre tracks in canvas units, motion ids (B,) -> score (B,)"""

    def __init__(self, frames: int, n_motions: int, feat: int = 256) -> None:
        super().__init__()
        n = 3 * 2 * frames  # both tracks and their difference
        self.fc = nn.Sequential(_sn(nn.Linear(n, feat)), nn.LeakyReLU(0.2), _sn(nn.Linear(feat, feat)), nn.LeakyReLU(0.2))
        self.score = _sn(nn.Linear(feat, 1))
        self.embed = nn.Embedding(n_motions, feat)

    def forward(self, a: torch.Tensor, b: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([a, b, a - b], -1).flatten(1).float() * MOMENT_GAIN)  # (B, feat)
        return self.score(h).squeeze(1) + (h * self.embed(motion)).sum(1)


SPREAD_NOISES = 8  # noises per prompt whose start centres the spread term compares with real clips'
SPREAD_SCALE = 0.1  # canvas units^2: a per-axis variance gap of this size costs 1 (real: 0.01-0.34 by motion and axis)


class MotionStats(nn.Module):
    """Running per-motion sums of a per-clip statistic of real clips (`dims` values: the start centre for the spread
    term, track_stats for the track match), over every batch so far: the target of a moment-matching term, a dataset
    constant that one batch (one or two clips of a motion) estimates too noisily.
    Buffers, so a checkpoint carries them and a resumed run continues the same sums."""

    def __init__(self, n_motions: int, dims: int = 2) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(n_motions))
        self.register_buffer("total", torch.zeros(n_motions, dims))
        self.register_buffer("squares", torch.zeros(n_motions, dims))

    @torch.no_grad()
    def update(self, values: torch.Tensor, motion: torch.Tensor) -> None:
        """Add a batch: values (B, dims) of real clips, motion (B,); on N ranks, the union of their batches."""
        s, k = values.to(self.total.dtype), values.shape[1]
        batch = torch.zeros(self.count.shape[0], 1 + 2 * k, dtype=self.total.dtype, device=self.total.device)
        batch.index_add_(0, motion, torch.cat([torch.ones_like(s[:, :1]), s, s.pow(2)], 1))  # (M, 1 + 2k)
        distributed.sum_over_ranks(batch)
        self.count += batch[:, 0]
        self.total += batch[:, 1:1 + k]
        self.squares += batch[:, 1 + k:]

    def mean(self, motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean of each clip's motion's real values, and whether it has one. motion (B,) -> (B, dims), (B,) bool"""
        n = self.count[motion]
        return self.total[motion] / n.clamp(min=1.0).unsqueeze(1), n >= 1

    def variance(self, motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unbiased per-axis variance of each clip's motion's real values, and whether there are 2 to have one.
        motion (B,) -> (B, dims), (B,) bool"""
        n = self.count[motion].unsqueeze(1)  # (B, 1)
        mean = self.total[motion] / n.clamp(min=1.0)
        var = (self.squares[motion] - n * mean.pow(2)) / (n - 1.0).clamp(min=1.0)
        return var.clamp(min=0.0), n.squeeze(1) >= 2


def spread_gap(fake: torch.Tensor, var_real: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """How far the start centre's per-axis variance over the noises of each prompt is from the real one of
    its motion, averaged over the clips that have a real variance.

    fake (B, n, 2) start centres of n noises per prompt, var_real (B, 2), has (B,) bool -> scalar"""
    err = ((fake.float().var(1) - var_real.float()) / SPREAD_SCALE).pow(2).sum(1)  # (B,)
    keep = has.float()
    return (err * keep).sum() / keep.sum().clamp(min=1.0)


TRACK_STATS = 16  # track_stats values per clip
MATCH_NOISES = 4  # noises per prompt whose centre tracks the track match compares with real clips': with 4
# instead of 8, seeds 0, 1 and 2 of the default recipe met every target (8: seed 0 lost an orbit; README trial table)
MATCH_SCALE = 0.05  # canvas units (1.6 px at 64): a gap of this size in one track statistic costs 1


def track_stats(c: torch.Tensor) -> torch.Tensor:
    """What a motion does to the sprite's centre: per axis the mean absolute step (speed), the mean and the
    largest absolute change of step (a reflection is one spike of it, a zigzag turns every frame, a rounded
    turn spreads it thin), absolute net travel and range; how far the speed strays from its clip mean (a
    bounce keeps it steady); the mean orbit rate about the canvas centre (signed: clockwise and
    counter-clockwise are two motions), the mean distance from it and that distance's range over the clip
    (an orbit keeps it, a circle drawn off the centre or an ellipse does not); and the signed net travel per
    axis. The match compares means over noises, so a motion whose clips go either way (a zigzag runs up or
    down) has a signed mean near 0 and keeps both ways, while "moving down" is pulled down: without the
    signed terms a straight move could settle going the wrong way, which no small step of the
    adversarial losses undoes (README, design note). c (B, T, 2) canvas units -> (B, TRACK_STATS)"""
    c = c.float()
    d = c[:, 1:] - c[:, :-1]  # (B, T-1, 2)
    dd = d[:, 1:] - d[:, :-1]  # (B, T-2, 2)
    speed = torch.sqrt((d * d).sum(-1) + 1e-6)  # (B, T-1)
    a, b = c[:, :-1], c[:, 1:]
    orbit = (a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]).mean(1, keepdim=True) * 4.0  # ~ rho^2 dphi, > 0 clockwise
    r = torch.sqrt((c * c).sum(-1) + 1e-6)  # (B, T)
    rho, ring = r.mean(1, keepdim=True), (r.amax(1) - r.amin(1)).unsqueeze(1)
    wander = (speed - speed.mean(1, keepdim=True)).abs().mean(1, keepdim=True)
    # the net travel is taken twice on purpose: one shared tensor sums its two gradients in another order, and a
    # 60-step training then exports other weights (sha256 3881fd2d... against 20dd9656...), not the quality block's
    return torch.cat([d.abs().mean(1), dd.abs().mean(1), dd.abs().amax(1), (c[:, -1] - c[:, 0]).abs(),
                      c.amax(1) - c.amin(1), wander, orbit, rho, ring, c[:, -1] - c[:, 0]], 1)


def track_gap(fake: torch.Tensor, real_mean: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """How far the mean track statistics over the noises of each prompt are from the real mean of its motion,
    averaged over the clips whose motion has real clips so far: squared gaps in units of MATCH_SCALE, summed.

    fake (B, n, TRACK_STATS) over n noises per prompt, real_mean (B, TRACK_STATS), has (B,) bool -> scalar"""
    err = ((fake.float().mean(1) - real_mean.float()) / MATCH_SCALE).pow(2).sum(1)  # (B,)
    keep = has.float()
    return (err * keep).sum() / keep.sum().clamp(min=1.0)


def same_motion_partner(motion: torch.Tensor, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each clip of a batch another clip of the same motion, drawn at random, and whether it has one.

    motion (B,) -> partner index (B,), has-partner mask (B,) bool"""
    same = motion.unsqueeze(0) == motion.unsqueeze(1)
    same.fill_diagonal_(False)
    has = same.any(1)
    weights = same.float() + (~has).float().unsqueeze(1) * torch.eye(len(motion), device=motion.device)
    return torch.multinomial(weights, 1, generator=gen).squeeze(1), has


class VideoDiscriminators(nn.Module):
    """The three critics plus their own prompt embeddings (bag of words, one per critic).

    Inputs are prepared by the caller: windows (B, 3, K, c, c) at full resolution around the shape
    in K frames, and the whole clip at half resolution (B, 3, T, H/2, W/2)."""

    def __init__(self, frames: int, size: int, n_vocab: int, n_motions: int, width: int = 32,
                 frame_samples: int = 2, feat: int = 256, pair: bool = False, starts: bool = False,
                 tracks: bool = False) -> None:
        super().__init__()
        if size % 16:
            raise ValueError(f"frame size must be a multiple of 16 for the discriminators, got {size}")
        self.frame_samples, self.crop, self.res, self.size = frame_samples, size // 2, size // 2, size
        self.frame = FrameDiscriminator(self.crop, width, feat)
        self.video = VideoDiscriminator(frames, self.res, n_motions, width, feat)
        self.track = TrackDiscriminator(frames, n_motions, feat)
        self.pair = PairDiscriminator(frames, n_motions, feat) if pair else None
        self.starts = MotionStats(n_motions) if starts else None  # real start statistics, for the spread term
        self.tracks = MotionStats(n_motions, TRACK_STATS) if tracks else None  # real track statistics, for the track match
        self.frame_text = text.BagOfWords(n_vocab, feat)
        self.video_text = text.BagOfWords(n_vocab, feat)
        self.track_text = text.BagOfWords(n_vocab, feat)

    def forward(self, crops: torch.Tensor, clip: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of each critic: frame (B*K, feat), video (B, feat), track (B, feat)

        crops (B, 3, K, c, c): full-resolution windows around the shape in K frames; clip
        (B, 3, T, r, r): the whole clip at half resolution. The conv critics see ink,
        (x - 1) * INK_GAIN: the white background becomes 0 and the small shape a strong signal.
        Under spectral norm (every layer at most unit gain) this makes the class heads learn about
        10x faster than on raw pixels."""
        B, C, K, h, w = crops.shape
        ink_crops = (crops.transpose(1, 2).reshape(B * K, C, h, w) - 1.0) * INK_GAIN
        return {"frame": self.frame(ink_crops), "video": self.video((clip - 1.0) * INK_GAIN), "track": self.track(clip)}

    def scores(self, h: dict[str, torch.Tensor], ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Projection scores of each critic for prompts `ids` (B, L): frame (B*K,), video (B,), track (B,)"""
        K = h["frame"].shape[0] // h["video"].shape[0]
        return {"frame": self.frame.judge(h["frame"], self.frame_text(ids).repeat_interleave(K, 0)),
                "video": self.video.judge(h["video"], self.video_text(ids)),
                "track": self.track.judge(h["track"], self.track_text(ids))}

    def logits(self, h: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """AC-GAN class logits, keyed "<critic>_<attribute>": frame colour/shape (B*K, .), video and track (B, .)"""
        return {f"{name}_{k}": head(h[name]) for name, critic in (("frame", self.frame), ("video", self.video),
                                                                   ("track", self.track))
                for k, head in critic.heads.items()}


# ----------------------------------------------------------------------------- construction and training

def build_generator(spec: GeneratorSpec) -> tuple[nn.Module, nn.Module]:
    return (LayeredGenerator(spec.frames, spec.size, spec.z_dim, spec.text_dim, anchor=spec.anchor, shift=spec.shift,
                             sprite_prior=spec.sprite_prior, wall_bounds=spec.wall_bounds),
            spec_text_encoder(spec, slots=3))


def build(cfg: TrainConfig, spec: GeneratorSpec, device: torch.device) -> Models:
    """Fresh generator, text encoder, the three critics, Adam for each side, and EMA copies of G."""
    g, te = build_generator(spec)
    d = VideoDiscriminators(spec.frames, spec.size, spec.n_vocab, len(vocab.motion_names()), cfg.width,
                            cfg.frame_samples, pair=cfg.pair_weight > 0, starts=cfg.spread_weight > 0,
                            tracks=cfg.match_weight > 0)
    return build_models(cfg, spec, device, g, te, d)


class VideoStep:
    """One GAN step of the clip model: update D (real, fake, real + wrong prompt, AC heads, lazy R1), then update G."""

    def __init__(self, cfg: TrainConfig, m: Models, device: torch.device, start_step: int = 0) -> None:
        self.cfg, self.m, self.device, self.start_step = cfg, m, device, start_step
        self.amp = cfg.amp and device.type == "cuda"
        self.views, self.TE, self.D = m.generator.views, m.text_encoder, m.discriminator
        if cfg.compile and device.type == "cuda":
            self.views, self.D = torch.compile(self.views), torch.compile(self.D)
        self.calls = 0

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def aux_targets(self, lab: dict[str, torch.Tensor], K: int, true_color: bool) -> dict[str, torch.Tensor]:
        """Class targets for every AC head (colour -1 = prompt without colour: ignored)."""
        color = lab["true_color"] if true_color else lab["color"]
        return {"frame_color": color.repeat_interleave(K), "frame_shape": lab["shape"].repeat_interleave(K),
                "video_motion": lab["motion"], "video_color": color, "video_shape": lab["shape"],
                "track_motion": lab["motion"], "track_shape": lab["shape"]}

    def __call__(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg, m, dev = self.cfg, self.m, self.device
        self.calls += 1
        x = to_model(batch["clips"], dev)  # (B, 3, T, H, W)
        centre = batch["centre"].to(dev, non_blocking=True)  # (B, T, 2)
        lab = {k: batch[k].to(dev, non_blocking=True) for k in ("color", "shape", "motion", "true_color")}
        ids = batch["ids"].to(dev, non_blocking=True)  # (B, L)
        B, T, K = x.shape[0], x.shape[2], cfg.frame_samples
        D: VideoDiscriminators = m.discriminator
        z = distributed.randn(B, cfg.z_dim, device=dev)  # this rank's rows of the global batch's noise
        z2 = distributed.randn(B, cfg.z_dim, device=dev) if cfg.pair_weight > 0 else None  # a second sample per prompt (pair critic)
        fidx = distributed.randint(T, B, K, device=dev)
        real_crops = crop_real(x, fidx, centre[..., 0], centre[..., 1], D.crop)[0]  # (B, 3, K, c, c)
        real_clip = half_res(x)  # (B, 3, T, r, r)
        # a real clip under another clip's prompt is a negative where that prompt is wrong for what the critic sees
        perm = torch.roll(torch.arange(B, device=dev), 1)
        ids_w = ids[perm]
        color_w = lab["color"][perm]
        color_wrong = (color_w >= 0) & (color_w != lab["true_color"])
        shape_wrong = lab["shape"][perm] != lab["shape"]
        motion_wrong = lab["motion"][perm] != lab["motion"]
        wrong = {"frame": (color_wrong | shape_wrong).float().repeat_interleave(K),  # a frame shows no motion
                 "video": (color_wrong | shape_wrong | motion_wrong).float(),
                 "track": (shape_wrong | motion_wrong).float()}  # moments carry no colour

        # (1) update D
        self.D.requires_grad_(True)
        m.opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            with record_function("D: render fakes"):
                codes = self.TE(ids)  # (B, 3, D)
                fake_crops, fake_clip, concave, excess = self.views(z, codes, fidx, D.crop, D.res)  # (B, 3, K, c, c), (B, 3, T, r, r)
            with record_function("D: critics and losses"):
                h_r = self.D(real_crops, real_clip)
                h_f = self.D(fake_crops.detach(), fake_clip.detach())
                s_r, s_f, s_w = D.scores(h_r, ids), D.scores(h_f, ids), D.scores(h_r, ids_w)
                adv_d = sum(hinge_real(s_r[k]) + hinge_fake(s_f[k]) + cfg.mismatch_weight * hinge_fake(s_w[k], wrong[k])
                            for k in s_r)
                logits_r = D.logits(h_r)
                targets = self.aux_targets(lab, K, true_color=True)
                aux_d = sum(ce(logits_r[k], targets[k]) for k in logits_r)
                loss_d = adv_d + cfg.aux_weight * aux_d
            pair_d = torch.zeros((), device=dev)
            if cfg.pair_weight > 0:
                with record_function("D: pair critic"):
                    partner, has = same_motion_partner(lab["motion"])
                    with torch.no_grad():
                        fake_a, fake_b = m.generator.track(z, codes), m.generator.track(z2, codes)  # (B, T, 2) each
                    s_pr = D.pair(centre, centre[partner], lab["motion"])
                    s_pf = D.pair(fake_a, fake_b, lab["motion"])
                    # a clip alone with its motion in the batch has no real partner
                    pair_d = hinge_real(s_pr, has.float()) + hinge_fake(s_pf)
                    loss_d = loss_d + cfg.pair_weight * pair_d
        with record_function("D: R1 penalty"):
            r1 = torch.zeros((), device=dev)
            if cfg.r1_weight > 0 and self.calls % cfg.r1_every == 0:
                rc, rv = real_crops.detach().requires_grad_(True), real_clip.detach().requires_grad_(True)
                s = D.scores(self.D(rc, rv), ids)  # on the pixel critics: the track critic reads pixels through
                # moment ratios whose input gradients are huge near empty pixels, and is bounded by spectral norm
                gc, gv = torch.autograd.grad(s["frame"].float().sum() + s["video"].float().sum(), [rc, rv], create_graph=True)
                r1 = gc.pow(2).flatten(1).sum(1).mean() + gv.pow(2).flatten(1).sum(1).mean()
                loss_d = loss_d + cfg.r1_weight * 0.5 * cfg.r1_every * r1
        with record_function("D: backward and Adam"):
            loss_d.backward()
            m.opt_d.step()

        # (2) update G (through the just-updated D, whose weights stay fixed here)
        self.D.requires_grad_(False)
        m.opt_g.zero_grad(set_to_none=True)
        with self.autocast():
            with record_function("G: critics and losses"):
                h = self.D(fake_crops, fake_clip)
                s_g = D.scores(h, ids)
                adv_g = -sum(v.float().mean() for v in s_g.values())
                logits = D.logits(h)
                targets = self.aux_targets(lab, K, true_color=False)
                aux_g = sum(ce(logits[k], targets[k]) for k in logits)
                loss_g = adv_g + cfg.aux_weight * aux_g + cfg.convex_weight * concave + BOUND_WEIGHT * excess
                pair_g = torch.zeros((), device=dev)
                if cfg.pair_weight > 0:  # two noises, one prompt: the pair critic judges them side by side
                    pair_g = -D.pair(m.generator.track(z, codes), m.generator.track(z2, codes), lab["motion"]).float().mean()
                    loss_g = loss_g + cfg.pair_weight * pair_g
                spread_g = torch.zeros((), device=dev)
                if cfg.spread_weight > 0:  # start centres of SPREAD_NOISES noises per prompt (pose path only: no pixels)
                    zs = distributed.randn(B * SPREAD_NOISES, cfg.z_dim, device=dev)
                    starts = m.generator.track(zs, codes.repeat_interleave(SPREAD_NOISES, 0))[:, 0]  # (B*n, 2)
                    D.starts.update(centre[:, 0], lab["motion"])
                    spread_g = spread_gap(starts.view(B, SPREAD_NOISES, 2), *D.starts.variance(lab["motion"]))
                    loss_g = loss_g + cfg.spread_weight * spread_g
                match_g = torch.zeros((), device=dev)
                if cfg.match_weight > 0:  # centre tracks of MATCH_NOISES noises per prompt (pose path only: no pixels)
                    zm = distributed.randn(B * MATCH_NOISES, cfg.z_dim, device=dev)
                    tracks = m.generator.track(zm, codes.repeat_interleave(MATCH_NOISES, 0))  # (B*n, T, 2)
                    D.tracks.update(track_stats(centre), lab["motion"])
                    match_g = track_gap(track_stats(tracks).view(B, MATCH_NOISES, TRACK_STATS), *D.tracks.mean(lab["motion"]))
                    loss_g = loss_g + cfg.match_weight * match_g
        with record_function("G: backward and Adam"):
            loss_g.backward()
            m.opt_g.step()

        decay = cfg.ema_decay if self.calls + self.start_step > cfg.ema_start else 0.0
        ema_update(m.generator_ema, m.generator, decay)
        ema_update(m.text_encoder_ema, m.text_encoder, decay)
        with torch.no_grad():  # how often D's heads read the prompt's class off fakes (G) and off real clips (D)
            real_t = self.aux_targets(lab, K, true_color=True)
            acc = {f"acc_{k}": (logits[k].argmax(1) == targets[k]).float()[targets[k] >= 0].mean()
                   for k in ("video_motion", "track_motion", "frame_shape", "frame_color")}
            acc.update({f"acc_real_{k}": (logits_r[k].argmax(1) == real_t[k]).float().mean()
                        for k in ("video_motion", "track_motion", "frame_shape")})
        out = {"loss_d": loss_d, "loss_g": loss_g, "adv_d": adv_d, "adv_g": adv_g, "aux_d": aux_d, "aux_g": aux_g,
               "r1": r1, "concavity": concave, "bound_excess": excess, "pair_d": pair_d, "pair_g": pair_g, "spread_g": spread_g, "match_g": match_g, **{f"d_real_{k}": v.mean() for k, v in s_r.items()},
               **{f"d_fake_{k}": v.mean() for k, v in s_f.items()}, **acc}
        return {k: v.detach().float() for k, v in out.items()}  # tensors: no device sync until they are logged


def step(cfg: TrainConfig, m: Models, device: torch.device, start_step: int = 0) -> VideoStep:
    return VideoStep(cfg, m, device, start_step)


def batches(stream: Iterator[dict[str, Any]], cfg: TrainConfig, frames: int) -> tuple[Iterator[dict[str, Any]], float]:
    """Clip batches as they come: a step sees batch_size clips."""
    return stream, cfg.batch_size
