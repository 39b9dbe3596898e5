"""Model layers, the baseline's parameter count, the text encoder's factoring, and the sampler round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from t2v import models, text, vocab
from t2v.models import GeneratorSpec, build_generator, count_parameters
from t2v.models.baseline import BaselineDiscriminator, BaselineGenerator
from t2v.models.video import (ANGLES, HARMONICS, POSE_RANGE, RADIUS, SCALE_RANGE, TRACK_PER_FRAME, TRACK_PER_STEP,
                              TRACK_STATS,
                              LayeredGenerator, PairDiscriminator, VideoDiscriminators, concavity, crop_real,
                              fourier_basis, ink_moments,
                              MotionStats, same_motion_partner, spread_gap, track_features, track_gap,
                              track_stats)
from t2v.sampler import export_generator, load_generator

FAMILIES = models.names()  # every registered family: video, baseline, conv3d, rnn, transformer

T, S, B = 8, 32, 3
PROMPTS = ["red circle moving up", "square spinning clockwise", "purple triangle expanding"]


def test_baseline_parameter_count_is_the_tutorials() -> None:
    """Counted by hand from the tutorial's layer list (64x64 frames, noise 100, text 10)."""
    fc1 = (100 + 10) * 256 * 8 * 8 + 256 * 8 * 8
    deconv1 = 256 * 128 * 4 * 4 + 128
    deconv2 = 128 * 64 * 4 * 4 + 64
    deconv3 = 64 * 3 * 4 * 4 + 3
    conv1 = 3 * 64 * 4 * 4 + 64
    conv2 = 64 * 128 * 4 * 4 + 128
    conv3 = 128 * 256 * 4 * 4 + 256
    fc = 256 * 8 * 8 + 1
    assert count_parameters(BaselineGenerator(16, 64)) == fc1 + deconv1 + deconv2 + deconv3 == 2_477_251
    assert count_parameters(BaselineDiscriminator(64)) == conv1 + conv2 + conv3 + fc == 675_265
    _, emb = build_generator(GeneratorSpec("baseline", 16, 64))
    assert count_parameters(emb) == text.vocab_size() * 10  # nn.Embedding(vocab, 10)


def test_baseline_shapes_and_independent_frames() -> None:
    g, d = BaselineGenerator(T, S), BaselineDiscriminator(S)
    noise, t = g.sample_noise(B), torch.randn(B, 10)
    assert noise.shape == (B, T, 100)
    clip = g(noise, t)
    assert clip.shape == (B, 3, T, S, S)
    assert clip.abs().max() <= 1
    assert not torch.allclose(clip[:, :, 0], clip[:, :, 1])  # fresh noise per frame, as the tutorial samples
    p = d(clip[:, :, 0])
    assert p.shape == (B, 1)
    assert ((p > 0) & (p < 1)).all()


def test_text_encoder_shapes_and_factoring() -> None:
    te = text.TextEncoder(text.vocab_size(), text.token_roles(), dim=16)
    ids = text.encode(PROMPTS)
    assert ids.shape == (3, text.max_prompt_len())
    assert ids.dtype == torch.long
    codes = te(ids)
    assert codes.shape == (3, 3, 16)
    # each code reads only its role's words: a held-out pair is a new combination of trained codes
    a, b = te(text.encode(["purple square moving left", "purple circle expanding"]))
    assert torch.allclose(a[0], b[0])  # same colour code
    c, d = te(text.encode(["square moving left", "blue square moving left"]))
    assert torch.allclose(c[1:], d[1:])
    assert not torch.allclose(c[0], d[0])  # no colour word -> the "none" colour code


def test_unknown_word_is_a_clear_error() -> None:
    with pytest.raises(vocab.VocabularyError, match="'hexagon'") as e:
        text.encode(["red hexagon moving up"])
    assert "circle" in str(e.value)
    assert "red" in str(e.value)  # lists the known words


def test_layered_generator_shapes_and_crops() -> None:
    g = LayeredGenerator(T, S, z_dim=8, text_dim=16)
    te = text.TextEncoder(text.vocab_size(), text.token_roles(), dim=16)
    layers = g.layers(g.sample_noise(B), te(text.encode(PROMPTS)))
    assert layers.fill.shape == (B, 3)
    assert layers.contour.shape == (B, ANGLES)
    assert layers.cx.shape == layers.cy.shape == layers.scale.shape == layers.angle.shape == (B, T)
    full = g.render(layers)
    assert full.shape == (B, 3, T, S, S)
    assert full.min() >= -1
    assert full.max() <= 1
    half = g.render(layers, S // 2)
    assert half.shape == (B, 3, T, S // 2, S // 2)
    assert (half - nn.functional.avg_pool3d(full, (1, 2, 2))).abs().mean() < 0.02  # coarse edges stay anti-aliased
    frames = torch.tensor([[0, 3], [1, 7], [5, 5]])
    crops, origin = g.crops(layers, frames, S // 2)
    assert crops.shape == (B, 3, 2, S // 2, S // 2)
    assert origin.shape == (B, 2, 2)
    # rendering a window equals cutting it from the full render: real and fake windows are made alike
    real_crops, real_origin = crop_real(full, frames, layers.cx, layers.cy, S // 2)
    assert torch.equal(origin, real_origin)
    assert torch.allclose(crops, real_crops, atol=1e-5)
    c, v, concave, excess = g.views(g.sample_noise(B), te(text.encode(PROMPTS)), frames, S // 2, S // 2)
    assert c.shape == crops.shape
    assert v.shape == half.shape
    assert concave.shape == excess.shape == ()
    assert excess == 0  # a fresh generator is well inside its bounds
    assert g(g.sample_noise(B), te(text.encode(PROMPTS))).shape == (B, 3, T, S, S)


def test_half_res_is_avg_pool_bit_for_bit_on_real_pixel_values() -> None:
    """The training step's pooling of real clips must not change a trained weight (README: bit-identical runs)."""
    from t2v.loader import to_model
    from t2v.models.video import half_res
    u8 = torch.randint(0, 256, (4, 3, 5, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    u8[0] = 255  # white background, the common case
    x = to_model(u8, torch.device("cpu"))
    out = half_res(x)
    assert out.shape == (4, 3, 5, 32, 32)
    assert torch.equal(out, nn.functional.avg_pool3d(x, (1, 2, 2)))
    assert not torch.equal(out, x.view(4, 3, 5, 32, 2, 32, 2).mean((4, 6)))  # a summation order that differs does show


def test_start_anchor_places_each_noise_elsewhere_and_round_trips(tmp_path) -> None:
    """anchor > 0: two noise dims shift the whole path by up to +-anchor (pre-bound), so samples of one
    prompt start apart from the first step; anchor 0 builds no anchor layer (exports before the option load)."""
    te = text.TextEncoder(text.vocab_size(), text.token_roles(), dim=16)
    codes = te(text.encode(["red circle moving up"] * 64)).detach()

    def start_spread(anchor: float) -> float:
        torch.manual_seed(0)
        g = LayeredGenerator(T, S, z_dim=8, text_dim=16, anchor=anchor)
        with torch.no_grad():
            layers = g.layers(g.sample_noise(64, torch.Generator().manual_seed(1)), codes)
        return float(torch.stack([layers.cx[:, 0], layers.cy[:, 0]], 1).std(0).norm())

    assert start_spread(0.6) > 3 * start_spread(0.0)
    assert "anchor.bias" not in LayeredGenerator(T, S, z_dim=8, text_dim=16).state_dict()
    spec = GeneratorSpec("video", T, S, z_dim=8, text_dim=16, anchor=0.6)
    g, te = build_generator(spec)
    assert torch.allclose(nn.functional.softplus(g.anchor.bias), torch.full((2,), 0.6))
    sampler = load_generator(export_generator(g, te, spec, tmp_path / "export"))
    assert sampler.generator.anchor is not None
    old = GeneratorSpec("video", T, S, z_dim=8, text_dim=16).to_dict()
    del old["anchor"]  # a config.json written before the option
    assert GeneratorSpec.from_dict(old).anchor == 0.0
    with pytest.raises(ValueError, match="anchor"):
        from t2v.config import config_for

        config_for("cpu-demo", anchor=-0.1)


def test_bound_penalty_pulls_a_parked_sprite_back_and_is_exactly_zero_inside() -> None:
    """A pose far past the soft bounds (the corner, the smallest size: where tanh passes no gradient and one
    run stalled) costs its squared overshoot, whose gradient points back inside; within KNEE the penalty and
    its gradient are exactly 0."""
    te = text.TextEncoder(text.vocab_size(), text.token_roles(), dim=16)
    codes = te(text.encode(["red circle moving up"] * 4)).detach()
    torch.manual_seed(0)
    g = LayeredGenerator(T, S, z_dim=8, text_dim=16, anchor=0.3)
    z = g.sample_noise(4, torch.Generator().manual_seed(1))
    inside = g.layers(z, codes).excess
    inside.backward()
    assert inside.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in g.parameters())
    with torch.no_grad():  # every frame's centre far right and up, its log-scale far below the range
        g.direct.bias.view(T, 4)[:, :3] = torch.tensor([6.0, -6.0, -8.0])
    g.zero_grad()
    out = g.layers(z, codes)
    assert out.cx.min() > 0.99 * POSE_RANGE and out.scale.max() < 1.01 * RADIUS * math.exp(-SCALE_RANGE)
    assert out.excess > 1.0
    out.excess.backward()
    grad = g.direct.bias.grad.view(T, 4)
    assert bool((grad[:, 0] > 0).all() and (grad[:, 1] < 0).all() and (grad[:, 2] < 0).all())  # descent: back inside
    assert bool((grad[:, 3] == 0).all())  # the angle has no bound


def test_time_shift_reads_the_same_path_later_or_earlier_and_round_trips(tmp_path) -> None:
    """shift > 0: a fourth noise dim moves each clip along a padded timeline, so a clip shifted by one frame
    shows, in frames 0..T-2, what the unshifted clip shows in frames 1..T-1; shift 0 exactly the unshifted
    pose; off, nothing is built and every other weight starts as without it."""
    torch.manual_seed(0)
    plain = LayeredGenerator(T, S, z_dim=8, text_dim=16, anchor=0.3)
    torch.manual_seed(0)
    g = LayeredGenerator(T, S, z_dim=8, text_dim=16, anchor=0.3, shift=0.3)
    assert all(torch.equal(v, g.state_dict()[k]) for k, v in plain.state_dict().items())
    assert not any(k.startswith(("shift.", "time_pad", "direct_pad")) for k in plain.state_dict())
    with torch.no_grad():
        g.velocity.weight.normal_(0, 0.5)  # some motion to shift
        g.direct_pad.weight.normal_(0, 0.5)
        h = torch.randn(3, g.time.shape[1])
        unshifted = (g.pose(h.unsqueeze(1) + g.time.unsqueeze(0)) + g.direct(h).view(-1, T, 4)
                     + g.velocity(h).unsqueeze(1) * g.ramp)
        assert torch.equal(g.shifted_pose(h, torch.zeros(3, 1)), unshifted)
        later = g.shifted_pose(h, torch.ones(3, 1))
        assert torch.allclose(later[:, :-1], unshifted[:, 1:], atol=1e-5)
        half = g.shifted_pose(h, torch.full((3, 1), 0.5))[:, :-1]  # between two frames: between their poses
        lo, hi = torch.minimum(unshifted[:, :-1], unshifted[:, 1:]), torch.maximum(unshifted[:, :-1], unshifted[:, 1:])
        assert not torch.allclose(half, unshifted[:, :-1])
        assert bool(((half >= lo - 0.2) & (half <= hi + 0.2)).float().mean() > 0.9)  # the MLP bends it a little
    spec = GeneratorSpec("video", T, S, z_dim=8, text_dim=16, anchor=0.3, shift=0.5)
    g2, te = build_generator(spec)
    assert torch.allclose(nn.functional.softplus(g2.shift.bias), torch.full((1,), 0.5))
    assert load_generator(export_generator(g2, te, spec, tmp_path / "export")).generator.shift is not None
    old = spec.to_dict()
    del old["shift"]  # a config.json written before the option
    assert GeneratorSpec.from_dict(old).shift == 0.0
    from t2v.config import config_for, generator_spec

    assert generator_spec(config_for("cpu-demo"), T, S).shift == 0.3  # video's family default
    assert config_for("cpu-demo", model="baseline").shift == 0.0
    with pytest.raises(ValueError, match="shift"):
        config_for("cpu-demo", shift=-0.1)


def test_sprite_prior_draws_the_vocabularys_size_per_clip_and_one_fill_per_colour(tmp_path) -> None:
    """sprite_prior: the contour has circumradius 1, a fifth noise dim draws the clip's circumradius uniformly in
    the vocabulary's 10-16% of the side (what the pose's scale channel multiplies) and moves nothing else (the pose
    MLP never sees it, so training cannot undo the draw), and the fill is the colour code's alone; the spec
    round-trips, old exports load without it, and only video takes the switch."""
    from t2v import render

    torch.manual_seed(0)
    g = LayeredGenerator(T, S, z_dim=8, text_dim=16, anchor=0.3, shift=0.3, sprite_prior=True)
    with torch.no_grad():
        g.contour[-1].weight.normal_(0, 0.5)  # a lumpy contour, whose largest radius is not 1 before scaling
        codes = torch.randn(1, 3, 16).expand(6, -1, -1)  # one prompt, six noises
        z = torch.randn(6, 8)
        z[:, 4] = torch.tensor([-9.0, 9.0, 0.0, 0.5, -0.5, 1.0])
        layers = g.layers(z, codes)
        assert torch.allclose(layers.contour.amax(1), torch.ones(6))
        assert torch.allclose(layers.fill, layers.fill[:1].expand(6, -1), rtol=0, atol=1e-6)  # one fill, whatever the noise
        mid = z.clone()
        mid[:, 4] = 0.0
        ref = g.layers(mid, codes)
        for name in ("cx", "cy", "angle", "fill", "contour"):
            assert torch.equal(getattr(layers, name), getattr(ref, name)), name
        lo, hi = render.RADIUS_RANGE
        radius = 2 * (lo + (hi - lo) * 0.5 * (1 + torch.erf(z[:, 4] / math.sqrt(2))))  # canvas units (half-side 1)
        ratio = layers.scale / ref.scale  # (6, T): the whole clip by one factor, the drawn radius over the middle one
        assert torch.allclose(ratio, (radius / (lo + hi)).unsqueeze(1).expand(-1, T), atol=1e-5)
        assert abs(ratio[0, 0] - 2 * lo / (lo + hi)) < 1e-4 and abs(ratio[1, 0] - 2 * hi / (lo + hi)) < 1e-4
        for lin in (g.pose[-1], g.direct, g.velocity, g.direct_pad):  # a pose of 0: the scale is the drawn radius
            lin.weight.zero_()
            lin.bias.zero_()
        assert torch.allclose(g.layers(z, codes).scale, radius.unsqueeze(1).expand(-1, T), atol=1e-6)
    spec = GeneratorSpec("video", T, S, z_dim=8, text_dim=16, sprite_prior=True)
    g2, te = build_generator(spec)
    assert load_generator(export_generator(g2, te, spec, tmp_path / "export")).generator.sprite_prior
    old = spec.to_dict()
    del old["sprite_prior"]  # a config.json written before the option
    assert not GeneratorSpec.from_dict(old).sprite_prior
    assert not build_generator(GeneratorSpec.from_dict(old))[0].sprite_prior
    from t2v.config import config_for, generator_spec

    assert generator_spec(config_for("cpu-demo"), T, S).sprite_prior  # video's default (README)
    assert not generator_spec(config_for("cpu-demo", sprite_prior="false"), T, S).sprite_prior
    assert not config_for("cpu-demo", model="baseline").sprite_prior  # only video's default
    with pytest.raises(ValueError, match=r"sprite_prior .*z_dim must be at least 5, got 4; or set sprite_prior=false"):
        config_for("cpu-demo", z_dim=4)
    assert config_for("cpu-demo", z_dim=4, sprite_prior=False).z_dim == 4
    with pytest.raises(ValueError, match=r"sprite_prior.*video"):
        config_for("cpu-demo", model="baseline", sprite_prior=True)


def test_wall_bounds_keep_the_path_itself_to_the_renderers_walls_and_stop_it_there(tmp_path) -> None:
    """wall_bounds: the centre is the pre-bound path itself to 0.95 of the way to the renderer's walls at
    +-(1 - circumradius - 1.5 px), then squashed into them, so a bounce's reflection at a wall stays sharp (the
    judge calls it one) and a path past a wall stops there; the tanh bounds instead reach 0.85 of the half-side,
    past those walls. No weights of its own; the bound penalty starts where the squash is as flat as tanh at
    KNEE; the spec round-trips, old exports load without it, and only video takes the switch."""
    from t2v import judge, render
    from t2v.models.video import SQUASH_KNEE, SQUASH_LINEAR, squash

    v = torch.tensor([-0.5, 0.0, SQUASH_LINEAR, 1.0, 1.3, 4.0, -4.0])
    assert torch.equal(squash(v)[:3], v[:3])  # the identity up to SQUASH_LINEAR, then into the wall, never past it
    assert bool((squash(v)[3:5] > SQUASH_LINEAR).all() and (squash(v)[3:].abs() <= 1).all() and squash(v)[5] > 0.999)
    assert squash(v)[3] < squash(v)[4] < squash(v)[5] and squash(v)[6] == -squash(v)[5]
    frames, side = 16, 64
    torch.manual_seed(0)
    plain = LayeredGenerator(frames, side, z_dim=8, text_dim=16, sprite_prior=True)
    torch.manual_seed(0)
    g = LayeredGenerator(frames, side, z_dim=8, text_dim=16, sprite_prior=True, wall_bounds=True)
    assert set(g.state_dict()) == set(plain.state_dict())  # no weights of its own, every weight as without it
    assert all(torch.equal(v, g.state_dict()[k]) for k, v in plain.state_dict().items())
    codes = torch.randn(1, 3, 16)
    z = torch.zeros(1, 8)
    z[0, 4] = 0.7  # a circumradius above the middle of the range
    lo, hi = render.RADIUS_RANGE
    wall = 1 - 2 * (lo + (hi - lo) * 0.5 * (1 + math.erf(0.7 / math.sqrt(2)))) - 3 / side
    t = torch.arange(frames)
    paths = {"bouncing vertically": 1 - (t - 11.5).abs() / 7.5,  # down to the wall (between frames 11 and 12), back
             "moving down": (t - 4) / 7.5}  # the same speed straight on, past the wall from frame 11.5
    with torch.no_grad():
        for m in (g, plain):
            for lin in (m.pose[-1], m.direct, m.velocity, m.fill[-1]):
                lin.weight.zero_()
                lin.bias.zero_()
            m.fill[-1].bias.copy_(torch.tensor([3.0, -3.0, -3.0]))  # red
            m.direct.bias.view(frames, 4)[:, 0] = 0.3  # a column right of the middle
        pose = g.direct.bias.view(frames, 4)
        for label, path in paths.items():
            pose[:, 1] = wall * path
            layers = g.layers(z, codes)
            assert torch.allclose(layers.cx[0], torch.full((frames,), 0.3), atol=1e-6)  # inside: the path itself
            video = ((g.render(layers)[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            assert judge.judge(video.numpy()).motion == label
            if label == "moving down":
                stop = layers.cy[0]
                assert torch.allclose(stop, wall * squash(path), atol=1e-6) and float(stop.max()) <= wall
                assert torch.allclose(stop[:12], wall * path[:12], atol=1e-6)  # alike until it nears the wall
            else:
                assert torch.allclose(layers.cy[0], wall * path, atol=1e-6)  # out and back at the same speed
        pose[:, 1] = 5.0  # far past the bottom wall: stopped there, where the tanh bound goes past it
        plain.direct.bias.view(frames, 4)[:, 1] = 5.0
        assert float(g.layers(z, codes).cy.max()) <= wall < 0.84 < float(plain.layers(z, codes).cy.min())
    for u, free in (((SQUASH_KNEE - 0.05) * wall, True), ((SQUASH_KNEE + 0.2) * wall, False)):
        with torch.no_grad():  # the bound penalty starts where the squash is as flat as the tanh bounds at KNEE
            pose[:, 1] = u
        g.zero_grad()
        excess = g.layers(z, codes).excess
        assert (excess == 0) == free, u
        if not free:
            excess.backward()
            assert g.direct.bias.grad.view(frames, 4)[:, 1].gt(0).all()  # descent pulls it back inside
    unbounded = LayeredGenerator(frames, side, z_dim=8, text_dim=16, wall_bounds=True)  # no prior: tanh's 0.85
    with torch.no_grad():
        for lin in (unbounded.pose[-1], unbounded.direct, unbounded.velocity):
            lin.weight.zero_()
            lin.bias.zero_()
        unbounded.direct.bias.view(frames, 4)[:, 1] = 0.6 * t / frames  # 0.6 of the half-side at most
        assert torch.allclose(unbounded.layers(z, codes).cy[0], 0.6 * t / frames, atol=1e-6)
    spec = GeneratorSpec("video", T, S, z_dim=8, text_dim=16, sprite_prior=True, wall_bounds=True)
    g2, te = build_generator(spec)
    assert load_generator(export_generator(g2, te, spec, tmp_path / "export")).generator.wall_bounds
    old = spec.to_dict()
    del old["wall_bounds"]  # a config.json written before the option
    assert not build_generator(GeneratorSpec.from_dict(old))[0].wall_bounds
    assert not GeneratorSpec.from_dict({**old, "reflect_walls": False}).wall_bounds  # the switch it replaced, off
    with pytest.raises(ValueError, match=r"reflect_walls=true.*wall_bounds.*retrain"):
        GeneratorSpec.from_dict({**old, "reflect_walls": True})
    from t2v.config import config_for, generator_spec

    assert generator_spec(config_for("cpu-demo"), T, S).wall_bounds  # video's default (README)
    assert not generator_spec(config_for("cpu-demo", wall_bounds="false"), T, S).wall_bounds
    assert not config_for("cpu-demo", model="rnn").wall_bounds  # only video's default
    with pytest.raises(ValueError, match=r"wall_bounds.*video"):
        config_for("cpu-demo", model="rnn", wall_bounds=True)


def test_concavity_prior_spares_polygons_and_penalises_stars() -> None:
    th = torch.arange(ANGLES) * (2 * math.pi / ANGLES) - math.pi
    square = 1 / torch.stack([torch.cos(th - k * math.pi / 2) for k in range(4)]).max(0).values  # r = apothem / cos
    star = torch.exp(0.3 * torch.cos(5 * th))
    assert concavity(torch.ones(1, ANGLES)) == 0
    assert concavity(square[None]) < 1e-3 < 0.5 < concavity(star[None])


def test_concavity_prior_judges_the_smoothed_outline_so_sharp_squares_cost_little() -> None:
    """The generator's series is truncated at HARMONICS: its best square rings at the corners, which the
    plain prior would punish like a star; the Lanczos-smoothed outline keeps the star's dents only."""
    th = torch.arange(ANGLES, dtype=torch.float64) * (2 * math.pi / ANGLES) - math.pi
    square = 1 / torch.stack([torch.cos(th - k * math.pi / 2) for k in range(4)]).max(0).values
    coef = torch.linalg.lstsq(fourier_basis(HARMONICS, ANGLES).double(), torch.log(square)[:, None]).solution.float().T
    star = torch.zeros_like(coef)
    star[0, 2 * 5 - 1] = 0.3  # cos 5 theta
    raw, smooth = fourier_basis(HARMONICS, ANGLES), fourier_basis(HARMONICS, ANGLES, lanczos=True)
    assert concavity(torch.exp(coef @ raw.T)) > 0.3  # the truncated square, as rendered
    assert concavity(torch.exp(coef @ smooth.T)) < 0.06 < 0.5 < concavity(torch.exp(star @ smooth.T))
    g = LayeredGenerator(T, S, z_dim=8, text_dim=16)
    layers = g.layers(torch.randn(B, 8), torch.randn(B, 3, 16))
    assert layers.outline.shape == layers.contour.shape == (B, ANGLES)


def test_track_features_read_spin_and_orbit_direction() -> None:
    """The rates products of consecutive frames: clockwise and counter-clockwise give opposite signs."""
    from t2v.render import ClipSpec, render

    def feats(shape: str, motion: str) -> torch.Tensor:
        clip, _ = render(ClipSpec("k", "red", shape, motion, seed=3, frames=T, size=S))
        x = torch.from_numpy(clip).permute(3, 0, 1, 2).float()[None] / 127.5 - 1
        f = track_features(ink_moments(x))
        assert f.shape == (1, TRACK_PER_FRAME * T - TRACK_PER_STEP)
        return f[0, 18 * T - 9:18 * T - 9 + 4 * (T - 1)].view(T - 1, 4)  # (T-1, [orbit, turn3, turn4, speed])

    for shape, k in (("triangle", 1), ("square", 2)):
        cw, ccw = feats(shape, "spinning clockwise"), feats(shape, "spinning counter-clockwise")
        assert (cw[:, k] > 0).all()
        assert (ccw[:, k] < 0).all()
        assert cw[:, 3].max() < 0.5  # spinning in place: no speed
    cw, ccw = feats("circle", "rotating clockwise"), feats("circle", "rotating counter-clockwise")
    assert (cw[:, 0] > 0).all()
    assert (ccw[:, 0] < 0).all()
    assert (cw[:, 3] > 0.5).all()


def test_track_features_show_a_reflection_as_one_spike_and_a_rounded_turn_as_a_spread() -> None:
    """The centre's acceleration (the last 3 (T - 2) features): a real bounce keeps its speed up to the wall,
    so its acceleration is one spike; a generator's rounded turn slows over several frames."""
    t = torch.linspace(-1, 1, 16)
    sharp = 0.6 - 0.8 * t.abs()  # a V: steady speed, reflected at t = 0
    rounded = 0.6 - 0.8 * torch.sqrt(t ** 2 + 0.1)  # the same path with its turn eased over ~5 frames

    def acc_norm(y: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(1, 16, 9)
        m[0, :, 1] = y
        return track_features(m)[0, -14:]  # (T - 2,)

    a_sharp, a_round = acc_norm(sharp), acc_norm(rounded)
    assert int((a_sharp > 0.1 * a_sharp.max()).sum()) <= 2  # the reflection step(s) only
    assert int((a_round > 0.1 * a_round.max()).sum()) >= 5
    assert a_sharp.max() > 2 * a_round.max()


def test_track_features_show_how_far_an_orbit_is_from_round() -> None:
    """The distance from the canvas centre less its clip mean (T features after the distance itself): flat on a
    real orbit, a ramp on a spiral, which the pixel judge refuses (radius range over 0.3x its mean)."""
    from t2v.render import ClipSpec, render

    def wobble(m: torch.Tensor) -> torch.Tensor:
        return track_features(m)[0, 23 * T - 13:24 * T - 13]  # (T,)

    clip, _ = render(ClipSpec("k", "red", "circle", "rotating clockwise", seed=3, frames=T, size=S))
    real = wobble(ink_moments(torch.from_numpy(clip).permute(3, 0, 1, 2).float()[None] / 127.5 - 1))
    phi = torch.linspace(0, 1.6 * math.pi, T)
    m = torch.zeros(1, T, 9)
    radius = torch.linspace(0.4, 0.55, T)  # 13 -> 18 px at 64 px: a spiral
    m[0, :, 0], m[0, :, 1] = radius * torch.cos(phi), radius * torch.sin(phi)
    spiral = wobble(m)
    assert real.abs().max() < 0.05
    assert spiral[-1] - spiral[0] > 0.5 and (spiral[1:] > spiral[:-1]).all()


def test_video_discriminator_shapes() -> None:
    n_m = len(vocab.motion_names())
    d = VideoDiscriminators(T, S, text.vocab_size(), n_m, width=8, frame_samples=2, feat=32)
    crops, clip = torch.randn(B, 3, 2, S // 2, S // 2), torch.randn(B, 3, T, S // 2, S // 2)
    h = d(crops, clip)
    assert h["frame"].shape == (B * 2, 32)
    assert h["video"].shape == h["track"].shape == (B, 32)
    s = d.scores(h, text.encode(PROMPTS))
    assert s["frame"].shape == (B * 2,)
    assert s["video"].shape == s["track"].shape == (B,)
    logits = d.logits(h)
    assert logits["frame_color"].shape == (B * 2, len(vocab.COLORS))
    assert logits["frame_shape"].shape == (B * 2, len(vocab.SHAPES))
    assert logits["video_motion"].shape == logits["track_motion"].shape == (B, n_m)
    assert logits["track_shape"].shape == (B, len(vocab.SHAPES))


def test_same_motion_partner_pairs_distinct_clips_of_one_motion() -> None:
    motion = torch.tensor([0, 1, 0, 2, 1, 0])
    partner, has = same_motion_partner(motion, torch.Generator().manual_seed(0))
    assert has.tolist() == [True, True, True, False, True, True]
    for i in range(len(motion)):
        if has[i]:
            assert int(partner[i]) != i
            assert int(motion[partner[i]]) == int(motion[i])


def test_start_stats_give_each_motions_real_mean_and_variance_over_batches() -> None:
    """The running sums over batches give each motion's mean of any statistic (`dims` values per clip) and the
    unbiased per-axis variance of its real starts, and say which motions have too few clips for either."""
    torch.manual_seed(0)
    starts, motion = torch.randn(40, 2) * torch.tensor([0.5, 0.1]), torch.tensor([0, 1] * 19 + [2, 0])
    values = torch.randn(40, 5)
    stats, five = MotionStats(3), MotionStats(3, dims=5)
    for i in range(0, 40, 8):
        stats.update(starts[i:i + 8], motion[i:i + 8])
        five.update(values[i:i + 8], motion[i:i + 8])
    var, has = stats.variance(torch.tensor([0, 1, 2]))
    assert has.tolist() == [True, True, False]  # motion 2 has one start: no variance
    mean, has = five.mean(torch.tensor([0, 1, 2]))
    assert has.tolist() == [True, True, True]
    assert not MotionStats(3).mean(torch.tensor([1]))[1].any()  # nothing counted yet: no mean
    for k in (0, 1, 2):
        assert torch.allclose(mean[k], values[motion == k].mean(0), atol=1e-5)
        if k < 2:
            assert torch.allclose(var[k], starts[motion == k].var(0), atol=1e-5)


def test_track_stats_read_a_motion_whichever_way_it_goes_and_track_gap_pulls_to_the_real_mean() -> None:
    """A zigzag up and its mirror image down give the same statistics but the signed net travel, which
    flips, a wider zigzag other ones; clockwise and counter-clockwise orbits differ in the orbit rate's
    sign (and their signed travel). The gap is 0 at the real mean, ignores clips without one, and its
    gradient moves the generated tracks towards it; a path the wrong way costs far more than a slower one."""
    t = torch.arange(16, dtype=torch.float32)
    side = torch.where(t % 2 == 0, 0.15, -0.15)
    up = torch.stack([side, 0.6 - 0.08 * t], -1).unsqueeze(0)  # (1, T, 2) zigzag up, 0.3 side to side
    down = up * torch.tensor([-1.0, -1.0])
    wide = torch.stack([side * 2, 0.6 - 0.08 * t], -1).unsqueeze(0)
    a, b, w = track_stats(up), track_stats(down), track_stats(wide)
    assert a.shape == (1, TRACK_STATS)  # per axis |step|, |change of step|, its largest, |net|, range; speed wander;
    # orbit; distance and its range; signed net travel
    assert torch.allclose(a[:, :14], b[:, :14], atol=1e-6)
    assert torch.allclose(a[0, 14:], torch.tensor([-0.3, -1.2]), atol=1e-5) and torch.allclose(a[0, 14:], -b[0, 14:])
    assert abs(float(a[0, 6]) - 0.3) < 1e-6 and abs(float(a[0, 7]) - 1.2) < 1e-5  # net across (ends on the other side), along
    assert abs(float(a[0, 8]) - 0.3) < 1e-6 and abs(float(w[0, 8]) - 0.6) < 1e-6  # range side to side
    assert abs(float(a[0, 2]) - 0.6) < 1e-6 and abs(float(a[0, 3])) < 1e-6  # the side switches every frame
    assert float(a[0, 10]) < 1e-4  # steady speed
    bounce = torch.stack([torch.zeros(16), (0.8 - (0.1 * t - 0.8).abs())], -1).unsqueeze(0)  # reflects once
    rounded = torch.stack([torch.zeros(16), 0.8 * torch.sin(t * math.pi / 15)], -1).unsqueeze(0)  # turns smoothly
    sb, sr = track_stats(bounce), track_stats(rounded)
    assert abs(float(sb[0, 5]) - 0.2) < 1e-5 and float(sr[0, 5]) < 0.1  # one spike, spread thin
    assert float(sb[0, 10]) < 0.02 < float(sr[0, 10])  # steady speed, or not
    phi = t * (2 * math.pi / 16)
    cw = torch.stack([0.5 * torch.cos(phi), 0.5 * torch.sin(phi)], -1).unsqueeze(0)  # y down: growing angle is clockwise
    ccw = cw * torch.tensor([1.0, -1.0])
    s_cw, s_ccw = track_stats(cw), track_stats(ccw)
    assert float(s_cw[0, 11]) > 0.1 and torch.allclose(s_cw[0, 11], -s_ccw[0, 11])  # orbit rate
    assert torch.allclose(s_cw[0, :11], s_ccw[0, :11], atol=1e-6) and torch.allclose(s_cw[0, 12], torch.tensor(0.5), atol=1e-4)
    assert float(s_cw[0, 13]) < 1e-4 and float(s_ccw[0, 13]) < 1e-4  # a circle about the centre keeps its distance
    drift = track_stats(cw + torch.tensor([0.2, 0.0]))  # the same circle off-centre: a drift past the centre
    assert abs(float(drift[0, 13]) - 0.4) < 1e-3 and abs(float(drift[0, 12]) - 0.5) < 0.05  # ring 0.7 - 0.3

    real = torch.cat([a, a, a])  # (3, TRACK_STATS) the real mean of each clip's motion
    has = torch.tensor([True, True, False])
    fake = torch.stack([torch.cat([up] * 4), torch.cat([up] * 4), torch.cat([wide] * 4)])  # (3, n=4, T, 2)
    stats = lambda tracks: track_stats(tracks.flatten(0, 1)).view(3, 4, TRACK_STATS)
    assert float(track_gap(stats(fake), real, has)) < 1e-6  # the third clip has no real mean: free
    fake = torch.stack([torch.cat([wide] * 4)] * 3).requires_grad_(True)
    gap = track_gap(stats(fake), real, has)
    assert float(gap) > 1.0
    gap.backward()
    stepped = fake.detach() - 1e-4 * fake.grad
    assert float(track_gap(stats(stepped), real, has)) < float(gap)
    assert torch.all(fake.grad[2] == 0)
    off = float(track_gap(real.unsqueeze(1) + 0.05, real, has))  # every statistic one MATCH_SCALE away
    assert abs(off - TRACK_STATS) < 1e-3
    slow = torch.stack([side, 0.6 - 0.04 * t], -1).unsqueeze(0)  # the zigzag up at half the speed
    one = torch.tensor([True])
    wrong_way, half_speed = (float(track_gap(track_stats(x).unsqueeze(1), a, one)) for x in (down, slow))
    assert wrong_way > 4 * half_speed > 0  # the signed travel: going down for "up" is the bigger error


def test_spread_gap_pulls_each_prompts_start_variance_to_its_motions_real_one() -> None:
    """The spread term is 0 when noises of a prompt spread their starts as real clips of its motion do, grows
    when they collapse or over-spread, compares each axis on its own, ignores a clip without a real
    variance, and its gradient widens collapsed starts."""
    torch.manual_seed(0)
    var_real = torch.tensor([[0.16, 0.0]] * 4 + [[0.0, 0.04]] * 4 + [[0.0, 0.0]])  # x only, y only, none yet
    has = torch.tensor([True] * 8 + [False])
    n = 8
    unit = torch.linspace(-1, 1, n)
    unit = unit / unit.std()  # unit variance over the n noises
    matched = torch.zeros(9, n, 2)
    matched[:4, :, 0] = unit * 0.4
    matched[4:8, :, 1] = unit * 0.2
    matched[8] = torch.randn(n, 2) * 5  # a clip without a real variance costs nothing
    assert float(spread_gap(matched, var_real, has)) < 1e-6
    assert float(spread_gap(matched.flip(-1), var_real, has)) > 1.0  # the right spread on the wrong axis
    assert float(spread_gap(matched * 2, var_real, has)) > 1.0  # over-spread costs too
    collapsed = (0.01 * torch.randn(9, n, 2)).requires_grad_(True)
    gap = spread_gap(collapsed, var_real, has)
    assert float(gap) > 1.0
    gap.backward()
    stepped = collapsed.detach() - 0.05 * collapsed.grad
    assert float(stepped[:4, :, 0].var(1).mean()) > float(collapsed.detach()[:4, :, 0].var(1).mean())
    assert torch.all(collapsed.grad[8] == 0)


def test_pair_discriminator_tells_identical_samples_from_spread_ones() -> None:
    """Trained briefly, the pair critic scores two different paths above two identical ones: what the
    per-clip critics cannot see."""
    torch.manual_seed(0)
    d = PairDiscriminator(T, 3, feat=32)
    opt = torch.optim.Adam(d.parameters(), lr=3e-3)
    motion = torch.zeros(64, dtype=torch.long)
    for _ in range(150):
        a, b = torch.rand(64, T, 2) - 0.5, torch.rand(64, T, 2) - 0.5
        same = torch.rand(64, T, 2) - 0.5
        loss = torch.relu(1 - d(a, b, motion)).mean() + torch.relu(1 + d(same, same, motion)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    a, b = torch.rand(64, T, 2) - 0.5, torch.rand(64, T, 2) - 0.5
    with torch.no_grad():
        assert d(a, b, motion).shape == (64,)
        assert float(d(a, b, motion).mean()) > float(d(a, a, motion).mean()) + 0.5


def test_ink_moments_read_position_size_and_symmetry() -> None:
    """The track critic's features on rendered data clips: centre, size, and which k-fold symmetry is strong."""
    from t2v.render import ClipSpec, render
    clips = []
    for shape in vocab.SHAPES:
        clip, traj = render(ClipSpec(f"k-{shape}", "red", shape, "moving right", seed=0, frames=T, size=S))
        clips.append(torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 127.5 - 1)
    clips = torch.stack(clips)
    m = ink_moments(clips)  # (3, T, 9)
    assert m.shape == (3, T, 9)
    _, traj = render(ClipSpec("k-circle", "red", "circle", "moving right", seed=0, frames=T, size=S))
    assert torch.allclose(m[0, :, 0], torch.tensor(traj.x / S * 2 - 1, dtype=torch.float32), atol=0.02)
    frames = torch.arange(T).expand(3, T)
    windows, origin = crop_real(clips, frames, m[:, :, 0], m[:, :, 1], S // 2)  # windows give the same statistics
    assert torch.allclose(ink_moments(windows, origin, S), m, atol=5e-3)
    assert (m[0, 1:, 0] > m[0, :-1, 0]).all()  # moving right
    m3 = torch.hypot(m[..., 5], m[..., 6]).mean(1)
    m4 = torch.hypot(m[..., 7], m[..., 8]).mean(1)
    assert m3.argmax() == 2
    assert m4.argmax() == 1  # triangle: 3-fold, square: 4-fold


@pytest.mark.parametrize("model", FAMILIES)
def test_sampler_round_trip(tmp_path, model: str) -> None:
    spec = GeneratorSpec(model, T, S, z_dim=8, text_dim=16)
    g, te = build_generator(spec)
    out = export_generator(g, te, spec, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generator.pt", "text_encoder.pt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left behind
    sampler = load_generator(out)
    prompts = [*PROMPTS, "circle moving up-right"]  # a colourless, held-out prompt is fine
    a, b, c = sampler.generate(prompts, seed=3), sampler.generate(prompts, seed=3), sampler.generate(prompts, seed=4)
    assert a.dtype == np.uint8
    assert a.shape == (4, T, S, S, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    alone = sampler.generate(prompts[:2], seed=3, batch_size=1).astype(int)  # same noise whatever the batch
    assert np.abs(alone - a[:2].astype(int)).max() <= 1  # (kernels may round a level apart)
    with torch.no_grad():  # the loaded weights are the exported ones
        for k, v in g.state_dict().items():
            assert torch.equal(v, sampler.generator.state_dict()[k])
    with pytest.raises(vocab.VocabularyError, match="'dancing'"):
        sampler.generate(["red circle dancing"])


def test_symmetric_sampling_draws_each_clip_as_a_symmetry_that_keeps_its_prompt(tmp_path) -> None:
    """A clip's canvas symmetry is one that maps its motion to itself (the judge still names that motion),
    drawn from (seed, i): one path copied many times comes out starting in several places; the export
    records the switch, video turns it on by default, an export from before the option samples as it did."""
    from t2v import diversity, featnet, judge
    from t2v.config import config_for, generator_spec
    from t2v.evaluate import render_reference
    from t2v.sampler import motion_symmetries, symmetric_images

    sym = motion_symmetries()
    assert set(sym) == set(vocab.motion_names()) and all(g[0] == 0 and max(g) < 8 for g in sym.values())
    assert sym["moving up"] == (0, 2) and sym["rotating clockwise"] == (0, 3, 5, 6)  # a mirror would turn it round
    assert len(sym["shrinking"]) == 8
    prompts = ["red circle rotating counter-clockwise", "blue square zigzagging horizontally", "green triangle moving up",
               "yellow square spinning clockwise"]
    real, _ = render_reference(prompts, 16, 64, seed=5)
    n = 24
    copies = np.repeat(real, n, axis=0)  # a generator that draws one clip per prompt
    texts = [p for p in prompts for _ in range(n)]
    out = symmetric_images(copies, texts, seed=2)
    assert np.array_equal(out, symmetric_images(copies, texts, seed=2))
    assert not np.array_equal(out, symmetric_images(copies, texts, seed=3))
    for k, p in enumerate(prompts):
        motion = vocab.parse_prompt(p).motion
        used = set()
        for i in range(k * n, (k + 1) * n):
            used |= {g for g in sym[motion] if np.array_equal(out[i], featnet.apply_symmetry(copies[i], g))}
        assert used == set(sym[motion])  # every symmetry of the prompt, and nothing else
        assert {j.motion for j in judge.judge_many(out[k * n:(k + 1) * n])} == {motion}
        assert diversity.start_spread(copies[k * n:(k + 1) * n]) == 0.0
        assert diversity.start_spread(out[k * n:(k + 1) * n]) > 0.05

    cfg = config_for("cpu-demo")
    assert cfg.sample_symmetry and generator_spec(cfg, T, S).symmetric  # video's family default
    assert not config_for("cpu-demo", model="baseline").sample_symmetry  # the tutorial samples as it did
    spec = GeneratorSpec("video", T, S, z_dim=8, text_dim=16, anchor=0.3)
    g, te = build_generator(spec)
    plain = load_generator(export_generator(g, te, spec, tmp_path / "plain"))
    on = GeneratorSpec("video", T, S, z_dim=8, text_dim=16, anchor=0.3, symmetric=True)
    symmetric = load_generator(export_generator(g, te, on, tmp_path / "symmetric"))
    assert symmetric.spec.symmetric and not plain.spec.symmetric
    texts = ["red circle rotating clockwise"] * 6 + ["purple square moving up-right"] * 6
    assert np.array_equal(symmetric.generate(texts, seed=1), symmetric_images(plain.generate(texts, seed=1), texts, 1))
    old = on.to_dict()
    del old["symmetric"]  # a config.json written before the option
    assert not GeneratorSpec.from_dict(old).symmetric


def test_export_replaces_previous_export_whole(tmp_path) -> None:
    spec = GeneratorSpec("video", T, S, z_dim=8, text_dim=16)
    g1, te1 = build_generator(spec)
    export_generator(g1, te1, spec, tmp_path / "export")
    g2, te2 = build_generator(spec)
    export_generator(g2, te2, spec, tmp_path / "export")
    loaded = load_generator(tmp_path / "export").generator.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in g2.state_dict().items())
    with pytest.raises(FileNotFoundError, match="generator.pt"):
        load_generator(tmp_path)
