"""Learned-metric benchmark: train the featnet classifier on a dataset's train shards and report how
well it reads real clips and how its Fréchet distance separates real from corrupted clips.

Printed as JSON:
- time: seconds to read the shards and to train (default FeatNetConfig: one torch thread);
- accuracy: per head and all-three on the val split (seen combinations) and the heldout split
  (combinations never in train shards);
- frechet: at a fixed sample count n (two disjoint sets of freshly rendered real clips for the
  same prompts): real vs real (the floor), and real vs frame-shuffled, reversed and frozen clips.

Usage: python bench/bench_featnet.py [--data DIR] [--n 368] [--json out.json]
Without --data, the default dataset (DataParams()) is rendered into a temporary directory first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from t2v import dataset, featnet, vocab  # noqa: E402
from t2v.evaluate import render_reference  # noqa: E402
from t2v.shards import DataParams  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="dataset root with shards/{train,val,heldout} (default: render one)")
    ap.add_argument("--n", type=int, default=368, help="clips per set for the Fréchet distances (default 368)")
    ap.add_argument("--json", type=Path, help="also write the JSON here")
    args = ap.parse_args()

    tmp = None
    root = args.data
    if root is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-featnet-"))
        root = tmp
        dataset.write_dataset(root, DataParams())
    try:
        cfg = featnet.FeatNetConfig()
        t0 = time.perf_counter()
        train = featnet.read_split(root, "train", cfg, limit=cfg.max_train_clips)
        val = featnet.read_split(root, "val", cfg)
        held = featnet.read_split(root, "heldout", cfg)
        read_s = time.perf_counter() - t0
        clf = featnet.train(train, cfg, val)
        out = {
            "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "time": {"read_s": round(read_s, 1), "train_s": clf.metrics["train_seconds"], "train_clips": len(train)},
            "accuracy": {"val": featnet.evaluate_on(clf, val), "heldout": featnet.evaluate_on(clf, held)},
        }
        # two disjoint real sets for the same prompts: every held-out prompt and seen ones, cycled to n clips
        prompts = vocab.held_out_prompts() + [vocab.canonical_prompt(*c) for c in vocab.combinations()
                                              if not vocab.is_held_out(*c)]
        texts = [prompts[i % len(prompts)] for i in range(args.n)]
        a = render_reference(texts, train.frames, train.frame_size, 101)[0]
        b = render_reference(texts, train.frames, train.frame_size, 202)[0]
        fa = clf.features(a)
        out["frechet"] = {
            "n": args.n,
            "real_vs_real": featnet.frechet_distance(fa, clf.features(b)),
            "real_vs_shuffled": featnet.frechet_distance(fa, clf.features(featnet.shuffle_frames(b))),
            "real_vs_reversed": featnet.frechet_distance(fa, clf.features(np.ascontiguousarray(b[:, ::-1]))),
            "real_vs_frozen": featnet.frechet_distance(fa, clf.features(np.repeat(b[:, :1], b.shape[1], axis=1))),
            "identical": featnet.frechet_distance(fa, fa),
        }
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
