"""Training throughput: clips/s of every model family through the real training loop.

All families are measured in one run on the same dataset and machine, after a warm-up, from the
loop's own `clips_per_s` metric (data loading included), with ratios against the baseline. On a
CUDA machine pass `--device cuda`.

Usage: python bench/bench_train.py [--steps 120] [--models baseline video ...] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
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


def measure(model: str, data: Path, out: Path, steps: int, device: str, profile: str) -> dict:
    cfg = config_for(profile, model=model, max_steps=steps, max_seconds=0.0, log_every=max(1, steps // 6),
                               ckpt_every=10 * steps, sample_every=10 * steps, select_every=0, device=device)
    seen: list[dict[str, float]] = []
    hooks = t2v_train.TrainHooks(on_metrics=lambda step, m: seen.append({"step": step, **m}))
    t0 = time.perf_counter()
    t2v_train.train(cfg, data, out, hooks)
    wall = time.perf_counter() - t0
    steady = [m for m in seen[1:] if "clips_per_s" in m] or [m for m in seen if "clips_per_s" in m]
    clips_per_s = sum(m["clips_per_s"] for m in steady) / len(steady)
    return {"model": model, "device": device, "batch_size": cfg.batch_size, "steps": steps,
            "clips_per_s": clips_per_s, "steps_per_s": sum(m["steps_per_s"] for m in steady) / len(steady),
            "frames_per_s": clips_per_s * 16, "wall_s_incl_startup": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=120, help="training steps per model")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--profile", default=None, help="config profile (default: cpu-demo on cpu, gpu on cuda)")
    ap.add_argument("--models", nargs="+", default=["baseline", *[m for m in models.names() if m != "baseline"]],
                    help="families to measure, the first is the ratios' reference (default: baseline, then every other)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    for m in args.models:
        models.family(m)  # unknown family: the error lists the registered ones, before any work
    profile = args.profile or ("gpu" if args.device.startswith("cuda") else "cpu-demo")
    with tempfile.TemporaryDirectory() as d:
        data = Path(d) / "data"
        dataset.write_dataset(data, DataParams(clips_per_combo=8, val_per_combo=1))
        rows = [measure(m, data, Path(d) / m, args.steps, args.device, profile) for m in args.models]
    ref = rows[0]
    report = {"machine": {"cpus": os.cpu_count(), "device": args.device}, "profile": profile, "rows": rows,
              **{f"ratio_{r['model']}_vs_{ref['model']}_clips_per_s": r["clips_per_s"] / ref["clips_per_s"]
                 for r in rows[1:]}}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
