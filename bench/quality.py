"""The demo's quality on every prompt, for several training seeds: the README's per-seed and per-motion tables.

Trains the `video` model (library only: no Prefect, no MLflow) with the given profile on one dataset
for each seed, then generates every prompt of the dataset's vocabulary (held-out and seen) x
`--samples` noise seeds, and scores the clips with the pixel judge, the reference featnet's Fréchet
distance and the start-position spread; and, per motion, the start spread of `--spread-samples`
noises of one prompt against as many real clips (4 samples a prompt are too few to say which motions
are narrow). A seed whose run dir already holds a finished run is not trained again (the loop resumes
from its checkpoint, which is the last step: its `train_s` is then the resume's second, not the
training's).

Prints one JSON object; with --readme, rewrites the block between the QUALITY markers.

Usage: python bench/quality.py --data DS [--seeds 0 1 2] [--runs DIR] [--profile cpu-demo] [--set KEY=VALUE]
                               [--spread-samples 64] [--json report.json] [--readme README.md]
       python bench/quality.py --from-json report.json --readme README.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from t2v.evaluate import GenerateFn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BEGIN, END = "<!-- QUALITY:BEGIN -->", "<!-- QUALITY:END -->"


def per_motion(clips, prompts: list[str], held: list[bool]) -> dict[str, dict[str, float]]:
    """Motion accuracy and all-three accuracy of each motion phrase, held-out and seen prompts apart."""
    from t2v import judge, vocab

    judged = judge.judge_many(clips)
    hits: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for j, text, h in zip(judged, prompts, held):
        p = vocab.parse_prompt(text)
        cell = hits[(p.motion, "heldout" if h else "seen")]
        ok_motion = j.motion == p.motion
        ok_all = ok_motion and j.shape == p.shape and j.color is not None and (p.color is None or j.color == p.color)
        cell[0] += ok_motion
        cell[1] += ok_all
        cell[2] += 1
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for (motion, group), (m, a, n) in hits.items():
        out[motion][f"{group}_motion"] = m / n
        out[motion][f"{group}_all3"] = a / n
        out[motion][f"{group}_n"] = n
    return dict(out)


def spread_by_motion(generate: "GenerateFn", vocabulary: tuple[tuple[str, ...], ...], frames: int, size: int, n: int,
                     seed: int = 0) -> dict[str, dict[str, float]]:
    """Start spread of each motion, generated and real, over n samples of one prompt per motion (purple
    square where the vocabulary has them: held out for every motion): the evaluation's per-prompt spread
    rests on 4 samples, too few to say which motions are narrow."""
    from t2v import diversity, vocab
    from t2v.evaluate import render_reference

    colors, shapes, motions = vocabulary
    color = "purple" if "purple" in colors else colors[0]
    out = {}
    for motion in motions:
        fits = [sh for sh in shapes if sh in vocab.motions()[motion].shapes]
        shape = "square" if "square" in fits else fits[0]
        prompts = [vocab.canonical_prompt(color, shape, motion)] * n
        out[motion] = {"generated": diversity.start_spread(generate(prompts, seed)),
                       "real": diversity.start_spread(render_reference(prompts, frames, size, seed)[0])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="dataset dir (t2v data); required unless --from-json")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    ap.add_argument("--runs", type=Path, default=ROOT / "data" / "quality-runs", help="one run dir per seed under here")
    ap.add_argument("--profile", default="cpu-demo")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--samples", type=int, default=4, help="noise seeds per prompt (default 4)")
    ap.add_argument("--spread-samples", type=int, default=64,
                    help="noises of one prompt per motion for the per-motion start spread (default 64)")
    ap.add_argument("--readme", type=Path, help="rewrite this README's QUALITY block")
    ap.add_argument("--json", type=Path, help="also write the report here")
    ap.add_argument("--from-json", type=Path, help="only rewrite --readme from a report written by --json")
    a = ap.parse_args()
    if a.from_json:
        if not a.readme:
            ap.error("--from-json needs --readme")
        write_readme(a.readme, json.loads(a.from_json.read_text()))
        return

    from registry.evaluation import dataset_vocabulary
    from t2v import config, featnet
    from t2v import evaluate as ev
    from t2v import train as tr
    from t2v.sampler import Sampler, load_generator

    if a.data is None:
        ap.error("--data is required")
    if a.spread_samples < 2:
        ap.error(f"--spread-samples needs at least 2 noises (a spread of one start is undefined), got {a.spread_samples}")
    bad = [kv for kv in a.set if "=" not in kv]
    if bad:
        ap.error(f"--set needs KEY=VALUE, got {bad[0]!r}")
    overrides = dict(kv.split("=", 1) for kv in a.set)
    *vocabulary, frames, size = dataset_vocabulary(a.data)
    ref = featnet.reference_params(*vocabulary, frames, size)
    net_dir = featnet.SHIPPED_DIR / featnet.reference_key(ref)
    clf = featnet.load(net_dir)  # the shipped reference network: the default vocabulary only
    cfg_eval = ev.EvalConfig(samples=a.samples, seen_prompts=10 ** 6)  # every seen prompt
    pset = ev.prompt_set(*vocabulary, frames, size, cfg_eval)

    report: dict[str, object] = {"data": str(a.data), "profile": a.profile, "overrides": overrides,
                                 "prompts": {"heldout": len(pset.heldout), "seen": len(pset.seen)},
                                 "samples": a.samples, "spread_samples": a.spread_samples, "seeds": {}}
    for seed in a.seeds:
        cfg = config.config_for(a.profile, model="video", seed=seed, **overrides)
        out = a.runs / f"seed{seed}"
        t0 = time.perf_counter()
        result = tr.train(cfg, a.data, out)
        t_train = time.perf_counter() - t0
        sampler = load_generator(result.export_dir)
        t0 = time.perf_counter()
        e = ev.evaluate(sampler.generate, pset, clf, None, cfg_eval)
        t_eval = time.perf_counter() - t0
        m = e.metrics
        plain = {}
        if sampler.spec.symmetric:  # the generator network alone, for the record: what the sampler's symmetries add
            bare = Sampler(dataclasses.replace(sampler.spec, symmetric=False), sampler.generator, sampler.text_encoder)
            pm = ev.evaluate(bare.generate, pset, clf, None, cfg_eval).metrics
            plain = {f"{k}_unmirrored": pm[k] for k in ("judge_heldout_all3", "fd_heldout", "spread_heldout")}
        report["seeds"][seed] = {
            "train_s": round(t_train, 1), "eval_s": round(t_eval, 1), "steps": result.step,
            "selected_step": result.selected_step,
            **{k: m[k] for k in ("judge_heldout_all3", "judge_seen_all3", "judge_heldout_motion", "judge_seen_motion",
                                 "fd_heldout", "fd_floor_heldout", "fd_seen", "fd_floor_seen",
                                 "spread_heldout", "spread_real_heldout", "spread_seen", "spread_real_seen")},
            **plain,
            "motions": per_motion(e.clips, e.prompts, e.held_out),
            "spread_by_motion": spread_by_motion(sampler.generate, tuple(vocabulary), frames, size,
                                                 a.spread_samples),
        }
        brief = {k: v for k, v in report["seeds"][seed].items() if k not in ("motions", "spread_by_motion")}
        print(json.dumps({seed: brief}), flush=True)
    print(json.dumps(report, indent=1))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=1) + "\n")
    if a.readme:
        write_readme(a.readme, report)


def unmirrored(r: dict) -> str:
    """The table cell for a seed's generator network alone (only where its sampler applies canvas symmetries)."""
    if "fd_heldout_unmirrored" not in r:
        return "-"
    return f"{r['fd_heldout_unmirrored']:.1f} / {r['spread_heldout_unmirrored']:.3f}"


def write_readme(path: Path, report: dict) -> None:
    seeds = report["seeds"]
    cmd = (f"python bench/quality.py --data DS --seeds {' '.join(map(str, seeds))}"
           + "".join(f" --set {k}={v}" for k, v in report["overrides"].items()))
    lines = [BEGIN, f"Made by `{cmd}` (profile `{report['profile']}`, every prompt of the vocabulary: "
             f"{report['prompts']['heldout']} held-out and {report['prompts']['seen']} seen, x {report['samples']} "
             "noise seeds; pixel judge; Fréchet distance in the shipped reference featnet; DS is the demo's "
             "dataset, `t2v data --out DS --clips-per-combo 40`).", "",
             "| training seed | held-out all-three | seen all-three | FD held-out (floor) | FD seen (floor) "
             "| start spread held-out (real) | FD / spread held-out, no canvas symmetries | selected step | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s, r in seeds.items():
        lines.append(f"| {s} | {r['judge_heldout_all3']:.1%} | {r['judge_seen_all3']:.1%} | {r['fd_heldout']:.1f} "
                     f"({r['fd_floor_heldout']:.1f}) | {r['fd_seen']:.1f} ({r['fd_floor_seen']:.1f}) | "
                     f"{r['spread_heldout']:.3f} ({r['spread_real_heldout']:.3f}) | {unmirrored(r)} | {r['selected_step']} | "
                     f"{r['train_s']:.0f} |")
    motions = list(next(iter(seeds.values()))["motions"])
    lines += ["", "Motion accuracy per motion phrase (held-out / seen prompts), per training seed:", "",
              "| motion | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for mo in motions:
        cells = []
        for r in seeds.values():
            c = r["motions"].get(mo, {})
            held = f"{c['heldout_motion']:.0%}" if "heldout_motion" in c else "-"
            seen = f"{c['seen_motion']:.0%}" if "seen_motion" in c else "-"
            cells.append(f"{held} / {seen}")
        lines.append(f"| {mo} | " + " | ".join(cells) + " |")
    spreads = {s: r["spread_by_motion"] for s, r in seeds.items() if "spread_by_motion" in r}
    if spreads:
        first = next(iter(spreads.values()))
        lines += ["", f"Start spread per motion, {report.get('spread_samples', 64)} noises of one prompt each (purple "
                  "square where the vocabulary has them), generated per training seed and real (fraction of the frame "
                  "side):", "", "| motion | " + " | ".join(f"seed {s}" for s in spreads) + " | real |",
                  "|---|" + "---|" * (len(spreads) + 1)]
        for mo in first:
            cells = [f"{sp[mo]['generated']:.3f}" for sp in spreads.values()]
            lines.append(f"| {mo} | " + " | ".join(cells) + f" | {first[mo]['real']:.3f} |")
    lines.append(END)
    text = path.read_text()
    block = "\n".join(lines)
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)


if __name__ == "__main__":
    main()
