"""Warm start (`init_from`): a fresh run starts from an exported generator, even when the vocabulary grew."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn as nn

from t2v import train as t2v_train
from t2v.config import config_for
from t2v.train import _copy_matching


@pytest.fixture(scope="module")
def tiny_data(tiny_dataset: Callable[..., Path]) -> Path:
    return tiny_dataset(motions=("moving up", "moving right"), clips_per_combo=2, val_per_combo=1, frames=8, size=32)


def test_grown_embedding_keeps_its_old_rows() -> None:
    old, new = nn.Embedding(5, 4), nn.Embedding(7, 4)
    fresh_rows = new.weight[5:].detach().clone()
    assert _copy_matching(new, old.state_dict()) == 1
    assert torch.equal(new.weight[:5], old.weight)
    assert torch.equal(new.weight[5:], fresh_rows)  # the new words keep their fresh init


def load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def test_fresh_run_starts_from_the_exported_generator(tiny_data: Path, tmp_path: Path) -> None:
    common = dict(max_steps=2, batch_size=4, num_workers=0, log_every=1, ckpt_every=100, sample_every=100)
    first = t2v_train.train(config_for("cpu-demo", **common), tiny_data, tmp_path / "a")
    cold = t2v_train.train(config_for("cpu-demo", **common, seed=1), tiny_data, tmp_path / "cold")
    warm = t2v_train.train(config_for("cpu-demo", **common, seed=1, lr_g=1e-12,
                                                init_from=str(first.export_dir)), tiny_data, tmp_path / "warm")
    a, c, w = (load(r.export_dir / "text_encoder.pt") for r in (first, cold, warm))
    assert all(torch.allclose(a[k], w[k], atol=1e-5) for k in a)  # started from, and (lr ~ 0) stayed at, A
    assert not all(torch.allclose(a[k], c[k], atol=1e-5) for k in a)  # a cold start with that seed differs


def test_init_from_must_be_an_export(tiny_data: Path, tmp_path: Path) -> None:
    cfg = config_for("cpu-demo", max_steps=1, batch_size=4, num_workers=0, init_from=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a generator export"):
        t2v_train.train(cfg, tiny_data, tmp_path / "out")


def test_champion_export_downloads_the_champions_generator(prefect_api: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from prefect import flow

    from t2v.models import GeneratorSpec, build_generator
    from t2v.sampler import export_generator, load_generator
    from registry import pyfunc, tracking
    from tasks.train import champion_export

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    spec = GeneratorSpec("video", 8, 32)
    export = export_generator(*build_generator(spec), spec, tmp_path / "export")
    t = tracking.configure()
    try:
        with mlflow.start_run(experiment_id=t.experiment_id):
            info = pyfunc.log_generator(export, 8, 32)
        t.client().set_registered_model_alias(pyfunc.REGISTERED_MODEL, "champion", info.registered_model_version)

        @flow
        def fetch() -> str | None:
            return champion_export(str(tmp_path / "data"))

        got = Path(fetch())
    finally:
        mlflow.set_tracking_uri(None)
    assert got == tmp_path / "data" / "runs" / "warm-start" / f"v{info.registered_model_version}"
    assert sorted(p.name for p in got.iterdir()) == ["config.json", "generator.pt", "text_encoder.pt"]
    assert sorted(p.name for p in got.parent.iterdir()) == [got.name]  # no temporary directory left behind
    assert all(torch.equal(a, b) for a, b in zip(load(export / "generator.pt").values(), load(got / "generator.pt").values()))
    assert load_generator(got).generate(["red circle moving up"], seed=0).shape == (1, 8, 32, 32, 3)
