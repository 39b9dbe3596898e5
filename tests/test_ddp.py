"""Data-parallel training with real torchrun ranks (gloo, 2 CPU processes): readers split the shards
without duplicates; two ranks take the step one process takes on their union batch; `t2v train
--nproc-per-node 2` is one MLflow run and one registered version that honours the pyfunc contract,
resumes with the same world size and refuses another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from t2v.config import TrainConfig, config_for
from t2v.shards import DataParams

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = DataParams(motions=("moving up", "bouncing vertically"), colors=("red", "blue"),
                       shapes=("circle", "square"), clips_per_combo=3, val_per_combo=1, frames=8, size=32,
                       shard_size=6)


@pytest.fixture(scope="module")
def data_dir(tiny_dataset: Callable[..., Path]) -> Path:
    return tiny_dataset(**vars(TINY_DATA))


def env_with_repo() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- readers

def test_readers_split_every_shard_by_sample_without_duplicates(data_dir: Path) -> None:
    from t2v import dataset
    from t2v.loader import TrainStream

    every = {(i.path, k) for i in dataset.load_shards(data_dir) if i.split == "train" for k in range(i.count)}
    seen: list[set[str]] = []
    for rank in range(2):
        for worker in range(2):  # 2 ranks x 2 loader workers = 4 readers
            s = TrainStream(data_dir, batch_size=1, shuffle_buffer=0, seed=0, rank=rank, world_size=2, num_workers=2)
            pipe = s.pipeline(seed=rank, reader=rank * 2 + worker)
            keys = set()
            for n, batch in enumerate(pipe):  # endless: read enough for every shard's slice to come round
                keys.update(batch["key"])
                if n >= 60:
                    break
            seen.append(keys)
    for a in range(4):
        for b in range(a + 1, 4):
            assert not seen[a] & seen[b], f"readers {a} and {b} share clips"
    assert sum(len(k) for k in seen) == len(every) > 12  # together they read every train clip


def test_more_readers_than_clips_in_a_shard_is_a_clear_error(data_dir: Path) -> None:
    from t2v.loader import TrainStream

    with pytest.raises(ValueError, match=r"fewer than the 8 readers \(world_size 4 x 2 loader workers\)"):
        TrainStream(data_dir, batch_size=1, world_size=4, num_workers=2)


# ----------------------------------------------------------------------------- one step, two ranks

def union_config(model: str, world_size: int) -> TrainConfig:
    """A tiny config whose step decomposes over ranks: no wrong-prompt pairs (they pair within a rank's
    batch) and no colour-less prompts (the colour heads' loss is a mean over the clips that name one)."""
    return config_for("cpu-demo", model=model, batch_size=4, width=8, mismatch_weight=0.0, color_dropout=0.0,
                      world_size=world_size, num_workers=0, shuffle_buffer=8)


def union_batch(data: Path, n: int) -> dict[str, Any]:
    """The same n real clips on every rank (one reader, seeded)."""
    from t2v.loader import make_loader

    return next(iter(make_loader(data, n, num_workers=0, shuffle_buffer=8, seed=3, color_dropout=0.0)))


def build_and_step(cfg: TrainConfig, data: Path, batch: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    """Seed and build the family as `t2v.train` does, average gradients over the ranks, take one step
    on `batch` (none: the initial weights)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build_and_step(cfg, batch)
    finally:
        torch.set_num_threads(threads)  # later tests in this process compare against other processes' floats


def _build_and_step(cfg: TrainConfig, batch: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    from t2v import distributed, models
    from t2v.config import generator_spec

    torch.manual_seed(cfg.seed)
    family = models.implementation(cfg.model)
    m = family.build(cfg, generator_spec(cfg, TINY_DATA.frames, TINY_DATA.size), torch.device("cpu"))
    distributed.average_gradients([m.opt_g, m.opt_d])
    names = {id(p): f"{name}.{k}" for name, mod in m.modules().items() for k, p in mod.named_parameters()}
    grads: dict[str, torch.Tensor] = {}

    def keep(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:  # runs after the averaging hook
        grads.update({f"grad:{names[id(p)]}": p.grad.clone() for g in opt.param_groups for p in g["params"]
                      if p.grad is not None})

    for opt in (m.opt_g, m.opt_d):
        opt.register_step_pre_hook(keep)
    if batch is not None:
        family.step(cfg, m, torch.device("cpu"), 0)(batch)
    return {**{f"{name}.{k}": v.detach().clone() for name, mod in m.modules().items()
               for k, v in mod.state_dict().items()}, **grads}


def test_two_ranks_step_like_one_process_on_their_union_batch(data_dir: Path, tmp_path: Path) -> None:
    """The video family's step decomposes over clips (no BatchNorm, no dropout), so the averaged gradients
    of two ranks on 4 clips each are one process's on the 8 (float summation order aside)."""
    out = tmp_path / "ddp.pt"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        str(REPO / "tests" / "ddp_union_step.py"), str(data_dir), str(out), "video"],
                       env=env_with_repo(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)

    cfg = union_config("video", world_size=1)
    init = build_and_step(cfg, data_dir, None)
    single = build_and_step(cfg, data_dir, union_batch(data_dir, 2 * cfg.batch_size))
    assert ddp.keys() == single.keys()
    grads = [k for k in single if k.startswith("grad:")]
    assert len(grads) > 20
    for k in grads:  # what rank 0 stepped with: the mean over the ranks, to float precision
        scale = single[k].abs().max().item()
        # 1e-4 of the scale: a bias's gradient sums thousands of terms that mostly cancel, so its rounding is relative
        # to the terms, not the sum (3e-5 on an AVX-512 CPU for the time shift's bias); a wrong average (a sum, one
        # rank's half) is off by 50% or more. The floor: gradients that are 0 but for rounding
        assert (ddp[k] - single[k]).abs().max().item() <= 1e-4 * max(scale, 1e-4), k
    # Adam's first step is lr * g / (|g| + eps): wherever the gradient is not ~0 the weights agree
    weights = [k for k, v in single.items() if not k.startswith("grad:") and v.is_floating_point()]
    assert max((single[k] - init[k]).abs().max().item() for k in weights) > 1e-4  # the step moved the weights
    checked = 0
    for name in (k.removeprefix("grad:") for k in grads):
        g = single[f"grad:{name}"]
        clear = g.abs() > 1e-3 * max(g.abs().max().item(), 1e-4)
        checked += int(clear.sum())
        assert not clear.any() or (ddp[name] - single[name])[clear].abs().max().item() < 2e-5, name
    assert checked > 10_000


# ----------------------------------------------------------------------------- t2v train --nproc-per-node 2

def test_train_on_two_ranks_is_one_run_and_one_version(data_dir: Path, tmp_path: Path, prefect_api: str,
                                                       t2v_cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "PREFECT_API_URL": prefect_api, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    common = ["train", "--data", str(data_dir), "--out", str(out), "--no-progress", "--set", "batch_size=4",
              "--set", "width=8", "--set", "log_every=1", "--set", "ckpt_every=2", "--set", "sample_every=2",
              "--set", "select_every=2", "--set", "shuffle_buffer=8"]
    p = t2v_cli(*common, "--max-steps", "2", "--nproc-per-node", "2", env=env, timeout=400)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("t2v").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["world_size"] == "2" and run.data.params["global_batch"] == "8"
    history = client.get_metric_history(run.info.run_id, "loss_d")
    assert [h.step for h in history] == [1, 2]  # rank 0 alone logs: one point per step, averaged over the ranks
    assert run.data.tags["checkpoint.step"] == "2"
    versions = client.search_model_versions("name='t2v-generator'")
    assert len(versions) == 1 and versions[0].run_id == run.info.run_id

    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model("models:/t2v-generator/1")
        clips = model.predict(["red circle moving up"], params={"seed": 0})
    finally:
        mlflow.set_tracking_uri(None)
    assert clips.shape == (1, TINY_DATA.frames, TINY_DATA.size, TINY_DATA.size, 3)

    # the same world size resumes: same MLflow run, from the step-2 checkpoint
    p = t2v_cli(*common, "--max-steps", "4", "--nproc-per-node", "2", env=env, timeout=400)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert "resumed from step 2" in p.stdout
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert [h.step for h in client.get_metric_history(run.info.run_id, "loss_d")] == [1, 2, 3, 4]

    # another world size is refused before any work, naming both
    p = t2v_cli(*common, "--max-steps", "6", env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "world_size: checkpoint 2 vs now 1" in p.stderr
    assert json.loads((out / "checkpoints" / "last.json").read_text())["step"] == 4


def test_torchrun_of_the_cli_directly_is_one_flow_one_run_and_one_version(data_dir: Path, tmp_path: Path,
                                                                         prefect_api: str) -> None:
    """`torchrun --nproc-per-node 2 -m cli train ...`: rank 0 runs the train-stage flow and trains in it,
    rank 1 only trains; what lands is what `t2v train --nproc-per-node 2` gives."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**env_with_repo(), "MLFLOW_TRACKING_URI": uri, "PREFECT_API_URL": prefect_api}
    out = tmp_path / "run"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    p = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "cli", "train", "--data",
                        str(data_dir), "--out", str(out), "--no-progress", "--max-steps", "2", "--set", "batch_size=4",
                        "--set", "width=8", "--set", "log_every=1", "--set", "ckpt_every=2", "--set",
                        "sample_every=1000", "--set", "select_every=0", "--set", "shuffle_buffer=8"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert p.stdout.count("registered: t2v-generator version 1") == 1  # rank 0 alone reports
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("t2v").experiment_id])
    assert run.data.params["world_size"] == "2" and run.data.params["global_batch"] == "8"
    assert [v.run_id for v in client.search_model_versions("name='t2v-generator'")] == [run.info.run_id]
    assert json.loads((out / "checkpoints" / "last.json").read_text())["step"] == 2


def test_bad_launch_requests_fail_before_any_work(data_dir: Path, tmp_path: Path,
                                                  t2v_cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    out = tmp_path / "never"
    cases = {
        ("--nproc-per-node", "0"): "nproc_per_node must be an integer from 1 to 1024, got 0",
        ("--nnodes", "2"): "nnodes=2 needs rdzv_endpoint HOST:PORT",
        ("--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:1"): "node_rank must be an integer from 0 to",
        ("--nnodes", "2", "--rdzv-endpoint", "nohost"): "rdzv_endpoint must be HOST:PORT, got 'nohost'",
        ("--set", "world_size=2"): "set world_size with --nproc-per-node and --nnodes, not as an override",
    }
    for args, message in cases.items():
        p = t2v_cli("train", "--data", str(data_dir), "--out", str(out), *args, timeout=60)
        assert p.returncode == 2 and message in p.stderr, (args, p.stderr)
    assert not out.exists()


def test_a_rank_killed_mid_training_stops_the_others_and_the_retry_resumes(
        data_dir: Path, tmp_path: Path, prefect_api: str) -> None:
    """Fault injection: SIGKILL rank 1 after the first checkpoint. torchrun stops rank 0 at once (no
    hang), the task fails with the checkpoint kept, and its automatic retry resumes from it: one run,
    one version, nothing lost beyond the steps since that checkpoint."""
    import signal
    import time

    import psutil
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    env = {**env_with_repo(), "MLFLOW_TRACKING_URI": uri, "PREFECT_API_URL": prefect_api}
    cmd = [sys.executable, "-m", "cli", "train", "--data", str(data_dir), "--out", str(out), "--no-progress",
           "--nproc-per-node", "2", "--max-steps", "40", "--set", "batch_size=4", "--set", "width=8",
           "--set", "ckpt_every=5", "--set", "select_every=0", "--set", "sample_every=1000",
           "--set", "shuffle_buffer=8"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    meta = out / "checkpoints" / "last.json"
    deadline = time.monotonic() + 240
    while not meta.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert meta.is_file(), "no checkpoint was written"
    victims = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "cli.rank" in " ".join(p.cmdline()) and p.environ().get("RANK") == "1"]
    assert len(victims) == 1
    killed_at = json.loads(meta.read_text())["step"]
    victims[0].send_signal(signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stdout[-2000:] + stderr[-4000:]
    assert "torchrun exited with status" in stdout + stderr  # the failed attempt, reported
    resumed = int(stdout.split("resumed from step ")[1].split()[0].rstrip(","))
    assert killed_at <= resumed < 40 and resumed % 5 == 0
    assert "step 40" in stdout
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("t2v").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["resumed_from_step"] == str(resumed)
    assert len(client.search_model_versions("name='t2v-generator'")) == 1
