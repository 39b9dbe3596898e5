"""The literature's model families (conv3d, rnn, transformer), the text-encoder option and a user's own
family loaded from T2V_MODEL_PLUGINS: shapes, the published conv3d architecture, a few real CPU steps
through the loop with checkpoint and resume, and the plugin example in the README trained and
registered through the real `t2v train` (Prefect, MLflow) and loaded back as a pyfunc model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn as nn

from t2v import config, models, text
from t2v.config import config_for
from t2v.loader import make_loader
from t2v.models import GeneratorSpec, build_generator
from t2v.sampler import load_generator
from t2v.train import TrainHooks, train

REPO = Path(__file__).resolve().parents[1]
NEW = ("conv3d", "rnn", "transformer")
TINY = dict(batch_size=4, num_workers=0, shuffle_buffer=16, z_dim=8, text_dim=16, width=8, log_every=1,
            sample_every=2, ckpt_every=2, select_every=0)


@pytest.fixture(scope="module")
def data(tiny_dataset: Callable[..., Path]) -> Path:
    return tiny_dataset(motions=("moving up", "moving left"), clips_per_combo=2, val_per_combo=1, frames=8,
                        size=32, shard_size=12)


def fake_batch(B: int, T: int, S: int) -> dict[str, torch.Tensor]:
    return {"clips": torch.randint(0, 256, (B, 3, T, S, S), dtype=torch.uint8),
            "ids": text.encode(["red circle moving up", "blue square moving left"] * (B // 2)),
            "color": torch.tensor([0, -1] * (B // 2)), "true_color": torch.tensor([0, 2] * (B // 2)),
            "shape": torch.tensor([0, 1] * (B // 2)), "motion": torch.tensor([0, 2] * (B // 2))}


@pytest.mark.parametrize("model", NEW)
@pytest.mark.parametrize("T,S", [(16, 64), (8, 32)])
def test_generator_and_critic_shapes(model: str, T: int, S: int) -> None:
    cfg = config_for("cpu-demo", model=model, **{**TINY, "batch_size": 2})
    spec = config.generator_spec(cfg, T, S)
    m = models.implementation(model).build(cfg, spec, torch.device("cpu"))
    ids = text.encode(["red circle moving up", "purple square moving left"])
    codes = m.text_encoder(ids)
    assert codes.dim() == 3 and codes.shape[0] == 2  # (B, S, E) for every encoder
    clip = m.generator(m.generator.sample_noise(2), codes).detach()
    assert clip.shape == (2, 3, T, S, S)
    assert float(clip.min()) >= -1.0 and float(clip.max()) <= 1.0  # Tanh
    scores = m.discriminator(clip, ids)
    assert scores and all(s.dim() == 1 and s.shape[0] % 2 == 0 for s in scores.values())
    assert {"generator_ema", "text_encoder_ema"} <= set(m.modules())


def test_conv3d_is_the_published_architecture_plus_spatial_blocks() -> None:
    from t2v.models import conv3d, pixel

    cfg = config_for("cpu-demo", model="conv3d")
    assert (cfg.lr_g, cfg.lr_d, cfg.betas, cfg.stabilize, cfg.mismatch_weight, cfg.batch_size) == \
        (2e-4, 2e-4, (0.5, 0.999), False, 0.0, 16)  # Adam 2e-4, (0.5, 0.999), BCE (so no R1), real/fake only
    g = conv3d.Conv3dGenerator(16, 64, 32, 64)
    kinds = [type(l).__name__ for l in g.net]
    w = conv3d.G_WIDTH
    assert kinds == ["ConvTranspose3d", "BatchNorm3d", "ReLU"] + ["ConvTranspose3d", "BatchNorm3d", "ReLU"] * 3 + \
        ["SpatialUp", "Tanh"]  # the published ladder (1 -> 2 -> 4 -> 8 -> 16 frames) + one spatial block to 64
    deconvs = [l for l in g.net if isinstance(l, nn.ConvTranspose3d)]
    assert deconvs[0].in_channels == 32 + 64  # noise and text code concatenated
    assert [(l.out_channels, l.kernel_size, l.stride) for l in deconvs] == [
        (8 * w, (2, 4, 4), (1, 1, 1)), (4 * w, (4, 4, 4), (2, 2, 2)), (2 * w, (4, 4, 4), (2, 2, 2)),
        (w, (4, 4, 4), (2, 2, 2))]
    assert g.net[-2].conv.out_channels == 3
    assert conv3d.ladder(16, 64) == (2, 3, 1)

    d = conv3d.Conv3dDiscriminator(16, 64, text.vocab_size(), width=16)
    convs = [l for l in d.features if isinstance(l, nn.Conv3d)]
    assert all(c.kernel_size == (4, 4, 4) and c.stride == (2, 2, 2) for c in convs[:3])
    assert [type(l).__name__ for l in d.features[:5]] == ["Conv3d", "LeakyReLU", "Conv3d", "BatchNorm3d", "LeakyReLU"]
    assert all(l.negative_slope == 0.2 for l in d.features if isinstance(l, nn.LeakyReLU))
    stab = conv3d.Conv3dDiscriminator(16, 64, text.vocab_size(), width=16, stabilize=True)
    assert not any(isinstance(l, nn.BatchNorm3d) for l in stab.features)
    assert any(hasattr(l, "parametrizations") for l in stab.features)  # spectral norm
    assert (d.projection, stab.projection) == (False, True)  # text concatenated as published, projected stabilised
    assert isinstance(stab.head, pixel.TextProjection) and not hasattr(stab, "embed") and not hasattr(d, "head")
    torch.manual_seed(0)  # DCGAN's initialisation, as published: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales
    spec = config.generator_spec(cfg, 16, 64)
    pub = conv3d.build(cfg, spec, torch.device("cpu"))
    for net in (pub.generator, pub.discriminator):
        convs = [l.weight for l in net.modules() if isinstance(l, (nn.Conv3d, nn.ConvTranspose3d, nn.ConvTranspose2d))]
        assert all(0.015 < float(w.std()) < 0.025 and abs(float(w.mean())) < 0.005 for w in convs)
        bns = [l for l in net.modules() if isinstance(l, nn.BatchNorm3d)]
        assert bns and all(abs(float(b.weight.mean()) - 1) < 0.02 and 0.01 < float(b.weight.std()) < 0.03  # (default: 1s)
                           and not b.bias.any() for b in bns)
    stab_d = conv3d.build(config_for("cpu-demo", model="conv3d", stabilize=True), spec, torch.device("cpu")).discriminator
    assert float(stab_d.features[0].parametrizations.weight.original.std()) > 0.03  # PyTorch's own, as rnn's critics
    clip, ids = torch.rand(2, 3, 16, 64, 64) * 2 - 1, text.encode(["red circle moving up", "blue square moving up"])
    with torch.no_grad():
        stab.eval()  # no power iteration between the two calls
        a, b = stab(clip, ids)["clip"], stab(clip, ids.flip(0))["clip"]
    assert a.shape == (2,) and not torch.allclose(a, b)  # the logit reads the prompt


def test_rnn_motion_comes_from_the_gru_and_content_is_shared() -> None:
    g, te = build_generator(GeneratorSpec("rnn", 8, 32, z_dim=8, text_dim=16, text_encoder="bag"))
    g.eval()
    codes = te(text.encode(["red circle moving up"] * 2))
    noise = g.sample_noise(1).repeat(2, 1)
    noise[1, 8:] = torch.randn(noise.shape[1] - 8)  # same content noise, new motion noise
    with torch.no_grad():
        z_m = g.motion(noise[:, 8:].view(2, 8, -1), codes.flatten(1))
        a, b = g(noise, codes)
    assert z_m.shape == (2, 8, 16)
    assert not torch.allclose(z_m[0], z_m[1])
    assert not torch.equal(a, b)


def test_transformer_frames_are_causal_in_time() -> None:
    g, te = build_generator(GeneratorSpec("transformer", 8, 32, z_dim=8, text_dim=16))
    g.eval()
    assert g.causal.shape == (9, 9)
    codes = te(text.encode(["red circle moving up"]))
    z = g.sample_noise(1)
    with torch.no_grad():
        before = g(z, codes)
        g.time[5:] += 1.0  # change the inputs of frames 5..7 only
        after = g(z, codes)
    assert torch.equal(before[:, :, :5], after[:, :, :5])  # earlier frames cannot see later ones
    assert not torch.equal(before[:, :, 5:], after[:, :, 5:])


def test_text_encoder_option_and_its_errors() -> None:
    assert config.generator_spec(config_for("cpu-demo", model="conv3d"), 8, 32).text_encoder == "bag"
    assert config.generator_spec(config_for("cpu-demo", model="transformer"), 8, 32).text_encoder == "transformer"
    assert config.generator_spec(config_for("cpu-demo"), 8, 32).text_encoder == "slots"
    spec = config.generator_spec(config_for("cpu-demo", model="rnn", text_encoder="transformer"), 8, 32)
    assert isinstance(build_generator(spec)[1], text.TransformerTextEncoder)
    with pytest.raises(ValueError, match=r"'baseline' cannot use text_encoder='transformer'; valid for it: default \(bag\)"):
        config_for("cpu-demo", model="baseline", text_encoder="transformer")
    with pytest.raises(ValueError, match="valid for it: default"):
        config_for("cpu-demo", model="video", text_encoder="lstm")
    with pytest.raises(ValueError, match="valid models: video, baseline, conv3d, rnn, transformer"):
        config_for("cpu-demo", model="vgan")


def test_switches_only_where_a_family_honours_them() -> None:
    for model in ("video", "baseline"):
        with pytest.raises(ValueError, match=rf"stabilize=true does not apply to model '{model}'; "
                                             r"models that take it: conv3d, rnn, transformer"):
            config_for("cpu-demo", model=model, stabilize=True)
    assert config_for("cpu-demo", model="transformer").stabilize  # its default, honoured


def test_rnn_and_transformer_train_with_one_recipe() -> None:
    """Their rows differ by generator: the same objective, stabilisers, optimiser and negatives."""
    fields = ("stabilize", "lr_g", "lr_d", "betas", "mismatch_weight", "aux_weight", "r1_weight", "batch_size")
    rnn, tf = config_for("cpu-demo", model="rnn"), config_for("cpu-demo", model="transformer")
    assert [getattr(rnn, f) for f in fields] == [getattr(tf, f) for f in fields]
    assert rnn.stabilize and rnn.lr_g == 5e-4


@pytest.mark.parametrize("model,extra", [("conv3d", {}), ("rnn", {}), ("transformer", {}),
                                         ("rnn", {"stabilize": False, "lr_g": 2e-4, "lr_d": 2e-4, "betas": (0.5, 0.999),
                                                  "mismatch_weight": 0.0}),  # MoCoGAN's recipe
                                         ("conv3d", {"stabilize": True, "r1_every": 1, "text_encoder": "transformer"}),
                                         ("video", {"text_encoder": "transformer"})])
def test_family_trains_checkpoints_resumes_and_exports(data: Path, tmp_path: Path, model: str, extra: dict) -> None:
    out = tmp_path / "run"
    res = train(config_for("cpu-demo", model=model, max_steps=2, **TINY, **extra), data, out)
    assert res.step == 2
    ckpt = torch.load(res.checkpoint, weights_only=True)
    assert ckpt["step"] == 2 and ckpt["config"]["model"] == model
    assert {"generator", "text_encoder", "discriminator", "generator_ema", "text_encoder_ema"} <= set(ckpt["models"])
    steps: list[int] = []
    res = train(config_for("cpu-demo", model=model, max_steps=3, **TINY, **extra), data, out,
                TrainHooks(on_metrics=lambda s, m: steps.append(s) if "loss_d" in m else None))
    assert (res.resumed_from, res.step, steps) == (2, 3, [3])
    assert all(np.isfinite(v) for v in res.metrics.values())
    if extra.get("stabilize"):
        assert res.metrics["r1"] > 0
    s = load_generator(res.export_dir)
    assert s.spec.text_encoder == models.text_encoder(model, extra.get("text_encoder", "default"))
    a = s.generate(["purple square moving up", "circle moving left"], seed=0)
    assert a.shape == (2, 8, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, s.generate(["purple square moving up", "circle moving left"], seed=0))


@pytest.mark.parametrize("model", NEW)
def test_one_step_moves_both_sides(data: Path, model: str) -> None:
    cfg = config_for("cpu-demo", model=model, **TINY)
    impl = models.implementation(model)
    m = impl.build(cfg, config.generator_spec(cfg, 8, 32), torch.device("cpu"))
    before = {k: [p.detach().clone() for p in v.parameters()] for k, v in m.modules().items() if "ema" not in k}
    batch = next(iter(make_loader(data, cfg.batch_size, num_workers=0, shuffle_buffer=16, seed=0)))
    losses = impl.step(cfg, m, torch.device("cpu"))(batch)
    assert all(np.isfinite(float(v)) for v in losses.values())
    for k, old in before.items():
        new = list(m.modules()[k].parameters())
        assert any(not torch.equal(a, b) for a, b in zip(old, new)), f"{k} did not move"


PLUGIN_BEGIN, PLUGIN_END = "<!-- PLUGIN:BEGIN -->", "<!-- PLUGIN:END -->"


def readme_plugin() -> str:
    """The example family exactly as the README shows it."""
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index(PLUGIN_BEGIN):readme.index(PLUGIN_END)]
    return re.search(r"```python\n(.*?)```", block, re.S).group(1)


def test_readme_plugin_family_trains_registers_and_serves(tmp_path: Path, data: Path, mlflow_store: str,
                                                         t2v_cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    code = readme_plugin()
    assert len([line for line in code.splitlines() if line.strip()]) <= 30  # "a 30-line example"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "my_family.py").write_text(code)
    env = {"T2V_MODEL_PLUGINS": "my_family", "MLFLOW_TRACKING_URI": mlflow_store,
           "PYTHONPATH": os.pathsep.join([str(REPO), str(plugins)])}
    help_ = t2v_cli("train", "--help", env=env)
    assert "tiny" in help_.stdout
    sets = [a for k, v in {**TINY, "select_every": 0}.items() for a in ("--set", f"{k}={v}")]
    r = t2v_cli("train", "--data", str(data), "--model", "tiny", "--max-steps", "2", "--out", str(tmp_path / "run"),
                "--experiment", "plugins", *sets, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["config"]["model"] == "tiny"

    client = textwrap.dedent("""
        import json, sys
        import mlflow
        from mlflow import MlflowClient
        c = MlflowClient()
        v = max(c.search_model_versions("name='t2v-generator'"), key=lambda v: int(v.version))
        clips = mlflow.pyfunc.load_model(f"models:/t2v-generator/{v.version}").predict(["red circle moving up"])
        print(json.dumps({"model": v.tags["model"], "step": v.tags["step"], "shape": list(clips.shape),
                          "dtype": str(clips.dtype)}))
    """)
    p = subprocess.run([sys.executable, "-c", client], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, **env})
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {"model": "tiny", "step": "2", "shape": [1, 8, 32, 32, 3],
                                                           "dtype": "uint8"}
    bad = t2v_cli("train", "--data", str(data), "--model", "tiny", env={**env, "T2V_MODEL_PLUGINS": "no_such_family"})
    assert bad.returncode == 2
    assert "T2V_MODEL_PLUGINS names 'no_such_family', which cannot be imported" in bad.stderr
