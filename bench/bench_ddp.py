"""Data-parallel training cost: one process against N torchrun ranks at the same global batch.

Both run the real loop (`t2v.train.train`; the ranks through `cli.rank`, as `t2v train
--nproc-per-node N` starts them) on the same dataset, side by side in one run, and report steps/s
from the loop's own metric (data loading included), the wall time with start-up, and the gradient
payload each step all-reduces. On one CPU machine the ranks share its cores, so the ratio is the
cost of the collectives and of N processes, not a speed-up: that needs more cores, GPUs or machines.

Usage: python bench/bench_ddp.py [--steps 60] [--nproc 2] [--model video] [--batch 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from t2v import dataset, models  # noqa: E402
from t2v import train as t2v_train  # noqa: E402
from t2v.config import config_for  # noqa: E402
from t2v.shards import DataParams  # noqa: E402


def _config(model: str, steps: int, batch: int, world_size: int) -> object:
    return config_for("cpu-demo", model=model, max_steps=steps, batch_size=batch, world_size=world_size,
                      log_every=max(1, steps // 6), ckpt_every=10 * steps, sample_every=10 * steps, select_every=0,
                      device="cpu")


def _steady(metrics: list[dict[str, float]]) -> float:
    rows = [m for m in metrics[1:] if "steps_per_s" in m] or metrics
    return sum(m["steps_per_s"] for m in rows) / len(rows)


def single(model: str, data: Path, out: Path, steps: int, batch: int) -> dict:
    seen: list[dict[str, float]] = []
    t0 = time.perf_counter()
    t2v_train.train(_config(model, steps, batch, 1), data, out,
                    t2v_train.TrainHooks(on_metrics=lambda step, m: seen.append(m)))
    return {"ranks": 1, "batch_per_rank": batch, "steps_per_s": _steady(seen), "wall_s": time.perf_counter() - t0}


def ranks(model: str, data: Path, out: Path, steps: int, batch: int, nproc: int) -> dict:
    cfg = _config(model, steps, batch // nproc, nproc)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "cli.rank",
           "--data", str(data), "--out", str(out), "--config", json.dumps(cfg.to_dict())]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    # rank 0 logs nothing without a run id: its steps/s over the whole loop is its last window's
    r = t2v_train.load_result(out)
    return {"ranks": nproc, "batch_per_rank": batch // nproc, "steps_per_s": r.metrics["steps_per_s"], "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--nproc", type=int, default=2, help="torchrun ranks (default 2)")
    ap.add_argument("--model", default="video")
    ap.add_argument("--batch", type=int, default=32, help="global batch, split over the ranks (default 32)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    models.family(args.model)
    if args.batch % args.nproc:
        ap.error(f"--batch {args.batch} must divide by --nproc {args.nproc}")
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data"
        dataset.write_dataset(data, DataParams(clips_per_combo=8, val_per_combo=1))
        one = single(args.model, data, Path(d) / "one", args.steps, args.batch)
        many = ranks(args.model, data, Path(d) / "many", args.steps, args.batch, args.nproc)
        import torch

        from t2v.config import generator_spec

        cfg = _config(args.model, 1, args.batch, 1)
        m = models.implementation(args.model).build(cfg, generator_spec(cfg, *dataset.geometry(data)), torch.device("cpu"))
        n = sum(p.numel() for opt in (m.opt_g, m.opt_d) for g in opt.param_groups for p in g["params"])
    out = {"model": args.model, "global_batch": args.batch, "steps": args.steps, "cpu_cores": os.cpu_count(),
           "single": one, "ddp": many, "ddp_vs_single_steps_per_s": many["steps_per_s"] / one["steps_per_s"],
           "gradient_floats_per_step": n, "allreduce_mb_per_step": n * 4 / 2**20}
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
