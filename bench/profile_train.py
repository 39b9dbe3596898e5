"""Where a training step's time goes: torch.profiler over the real loop's pieces.

Builds the model, the loader and the GAN step exactly as `t2v.train` does (same profile and
config), runs `--warmup` steps, then profiles `--steps` steps with the loader's `next()` and the
step's phases (the family's `record_function` regions) as labelled ranges. Prints JSON: ms per step
of each region and the top operators by self CPU time; `--trace` also writes a Chrome trace.

Usage: python bench/profile_train.py [--model video] [--steps 20] [--warmup 10] [--trace out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="video")
    ap.add_argument("--profile", default="cpu-demo")
    ap.add_argument("--steps", type=int, default=20, help="profiled steps")
    ap.add_argument("--warmup", type=int, default=10, help="steps before profiling starts")
    ap.add_argument("--top", type=int, default=15, help="operators listed")
    ap.add_argument("--trace", type=Path, help="write a Chrome trace (chrome://tracing, Perfetto) here")
    a = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from t2v import dataset, models
    from t2v import config
    from t2v.config import config_for
    from t2v.loader import make_loader
    from t2v.shards import DataParams

    cfg = config_for(a.profile, model=a.model, device="cpu")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) - cfg.num_workers))
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data"
        dataset.write_dataset(data, DataParams(clips_per_combo=8, val_per_combo=1))
        frames, size = dataset.geometry(data)
        family = models.implementation(cfg.model)
        device = torch.device("cpu")
        m = family.build(cfg, config.generator_spec(cfg, frames, size), device)
        step_fn = family.step(cfg, m, device, 0)
        loader = make_loader(data, cfg.batch_size, num_workers=cfg.num_workers, shuffle_buffer=cfg.shuffle_buffer,
                             seed=cfg.seed, color_dropout=cfg.color_dropout)
        work = iter(family.batches(iter(loader), cfg, frames)[0])
        for _ in range(a.warmup):
            step_fn(next(work))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(a.steps):
                with record_function("loader: next batch"):
                    batch = next(work)
                with record_function("step"):
                    losses = step_fn(batch)
                    float(losses["loss_d"])  # the loop's sync point, inside the step's range
        del work, loader
    events = prof.key_averages()
    regions = {e.key: e.cpu_time_total / 1e3 / a.steps for e in events
               if e.key in ("loader: next batch", "step") or e.key.startswith(("D:", "G:"))}
    ops = sorted((e for e in events if not e.key.startswith(("D:", "G:", "step", "loader"))),
                 key=lambda e: e.self_cpu_time_total, reverse=True)[:a.top]
    per_step = regions.get("step", 0.0) + regions.get("loader: next batch", 0.0)
    if "step" in regions:  # what the step spends outside its named phases: real crops, pooling, EMA, metrics
        regions["step: outside the D/G phases"] = regions.pop("step") - sum(
            v for k, v in regions.items() if k.startswith(("D:", "G:")))
    report = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
              "model": cfg.model, "profile": cfg.profile, "batch_size": cfg.batch_size, "steps": a.steps,
              "ms_per_step": round(per_step, 1),
              "regions_ms_per_step": {k: round(v, 1) for k, v in sorted(regions.items(), key=lambda kv: -kv[1])},
              "top_ops_self_ms_per_step": {e.key: round(e.self_cpu_time_total / 1e3 / a.steps, 1) for e in ops}}
    print(json.dumps(report, indent=1))
    if a.trace:
        prof.export_chrome_trace(str(a.trace))


if __name__ == "__main__":
    main()
