"""What step budget a family needs: train it to each budget in turn and score the held-out prompts after each.

One run dir, resumed from budget to budget: max_steps is a run-length field, so the checkpoint at 1,800
steps trains on to 3,600 (weights, optimisers, RNG states and the selection's best carry over; the data
stream restarts, seeded by the step, so the result is that of a resumed run, not of one started with
max_steps=3600, and is the same on every rerun of this script).
After each budget the shipped weights (the pixel judge's pick on the train prompts) generate every
held-out prompt and `--seen` seen prompts x `--samples` noise seeds, scored by the pixel judge (with its
shape gap, which moves while the shape accuracy is still 0), the shipped reference featnet's Fréchet
distance and the start-position spread. Library only: no Prefect,
no MLflow. Prints one JSON line per budget, then the whole report.

Usage: python bench/budget.py --data DS --model transformer [--budgets 1800 3600 5400] [--runs DIR]
                              [--set KEY=VALUE] [--samples 4] [--seen 60] [--json report.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEYS = ("judge_heldout_all3", "judge_heldout_color", "judge_heldout_shape", "judge_heldout_shape_gap",
        "judge_heldout_motion", "judge_seen_all3", "judge_seen_shape_gap", "judge_seen_motion", "fd_heldout",
        "fd_floor_heldout", "spread_heldout", "spread_real_heldout")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="dataset dir (t2v data)")
    ap.add_argument("--model", required=True, help="the family to train")
    ap.add_argument("--budgets", type=int, nargs="+", default=[1800, 3600, 5400],
                    help="step budgets, increasing (default 1800 3600 5400: 1x, 2x, 3x cpu-demo)")
    ap.add_argument("--runs", type=Path, default=ROOT / "data" / "budget-runs", help="the run dir goes under here")
    ap.add_argument("--profile", default="cpu-demo")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--samples", type=int, default=4, help="noise seeds per prompt (default 4)")
    ap.add_argument("--seen", type=int, default=60, help="seen prompts scored beside the held-out ones (default 60)")
    ap.add_argument("--json", type=Path, help="also write the report here")
    a = ap.parse_args()
    if any(b <= 0 for b in a.budgets) or a.budgets != sorted(set(a.budgets)):
        ap.error(f"--budgets must be positive and increasing, got {a.budgets}")
    bad = [kv for kv in a.set if "=" not in kv]
    if bad:
        ap.error(f"--set needs KEY=VALUE, got {bad[0]!r}")
    overrides = dict(kv.split("=", 1) for kv in a.set)

    from registry.evaluation import dataset_vocabulary
    from t2v import config, featnet
    from t2v import evaluate as ev
    from t2v import train as tr
    from t2v.sampler import load_generator

    try:  # bad input fails here, before any work, naming the value
        cfgs = [config.config_for(a.profile, model=a.model, max_steps=b, **overrides) for b in a.budgets]
        *vocabulary, frames, size = dataset_vocabulary(a.data)
        cfg_eval = ev.EvalConfig(samples=a.samples, seen_prompts=a.seen)
        pset = ev.prompt_set(*vocabulary, frames, size, cfg_eval)
        clf = featnet.load(featnet.SHIPPED_DIR / featnet.reference_key(featnet.reference_params(*vocabulary, frames,
                                                                                                  size)))
    except (ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    out = a.runs / (a.model + "".join(f"-{k}={v}" for k, v in sorted(overrides.items())) + f"-seed{cfgs[0].seed}")
    report: dict[str, object] = {"data": str(a.data), "model": a.model, "profile": a.profile, "overrides": overrides,
                                 "samples": a.samples, "prompts": {"heldout": len(pset.heldout), "seen": len(pset.seen)},
                                 "budgets": []}
    train_s = 0.0
    for cfg in cfgs:
        t0 = time.perf_counter()
        result = tr.train(cfg, a.data, out)
        train_s += time.perf_counter() - t0
        m = ev.evaluate(load_generator(result.export_dir).generate, pset, clf, None, cfg_eval).metrics
        row = {"steps": result.step, "train_s": round(train_s, 1), "selected_step": result.selected_step,
               **{k: round(m[k], 4) for k in KEYS}}
        report["budgets"].append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps(report, indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.json.with_name(a.json.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        tmp.replace(a.json)


if __name__ == "__main__":
    main()
