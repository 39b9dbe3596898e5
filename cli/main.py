"""The `t2v` command: one entry point, one subcommand per stage.

Each subcommand is an `add_<name>(subparsers)` function that declares its arguments and sets
`handler`; adding a stage is one more function in COMMANDS. Handlers import Prefect and the flows
lazily, so `t2v vocab` and every `--help` stay fast. Bad input exits with status 2 and one line
on stderr, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

from registry import CHAMPION_URI, REGISTERED_MODEL

EXIT_USAGE = 2  # bad input (argparse uses 2 as well)
EXIT_FAILED = 1  # the work itself failed
MAX_GENERATE_SAMPLES = 1024  # clips of one `t2v generate`: held in memory, then written side by side


class UsageError(ValueError):
    """Bad input found before any work: reported as one line, exit status 2."""



def _model_help() -> str:
    """--model's help: the registered families (plugins included), torch-free."""
    from t2v import models

    try:
        names = models.names()
    except ValueError as e:  # a broken T2V_MODEL_PLUGINS: --help still works, training names the error
        return f"model family (plugins not loaded: {e})"
    return f"model family: {', '.join(names)} (default video; `{models.PLUGIN_ENV}` adds your own)"

def add_vocab(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vocab", help="print the prompt vocabulary and held-out combinations",
                       description="Print the colours, shapes, motions and held-out prompts the model understands.")
    p.add_argument("--json", action="store_true",
                   help='print {"colors", "shapes", "motions", "held_out"} as JSON')
    p.set_defaults(handler=run_vocab)


def run_vocab(args: argparse.Namespace) -> int:
    from t2v import vocab

    data = {"colors": list(vocab.COLORS), "shapes": list(vocab.SHAPES), "motions": vocab.motion_names(),
            "held_out": vocab.held_out_prompts()}
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for name in ("colors", "shapes", "motions"):
        print(f"{name}: {', '.join(data[name])}")
    print(f"held out ({len(data['held_out'])} prompts, evaluation only):")
    for prompt in data["held_out"]:
        print(f"  {prompt}")
    return 0


def add_preview(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preview", help="render a ground-truth clip for a prompt to GIF, MP4 or PNG",
                       description="Render the clip the data stage would render for PROMPT, so a person can look "
                                   "at it. The format follows the extension of -o: .gif, .mp4 or .png (frames "
                                   "side by side). Without a colour in the prompt, the seed picks one.")
    p.add_argument("prompt", help='e.g. "red circle moving up-right"')
    p.add_argument("-o", "--output", required=True, type=Path, help="output file (.gif, .mp4 or .png)")
    p.add_argument("--seed", type=int, default=0, help="random layout seed (default 0)")
    p.add_argument("--frames", type=int, default=16, help="frames T (default 16)")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels, multiple of 8, >= 32 (default 64)")
    p.add_argument("--fps", type=int, default=8, help="playback rate of GIF/MP4 (default 8)")
    p.set_defaults(handler=run_preview)


def run_preview(args: argparse.Namespace) -> int:
    import numpy as np

    from t2v import dataset, media, vocab
    from t2v.render import ClipSpec, render
    from t2v.shards import DataParams, validate_params

    try:
        prompt = vocab.parse_prompt(args.prompt)
        validate_params(DataParams(frames=args.frames, size=args.size, seed=args.seed))
        media.check_media_path(args.output)
        if args.fps < 1:
            raise ValueError(f"fps must be a positive integer, got {args.fps}")
        dataset.check_output_dir(args.output.parent, hint="choose another -o path")
    except ValueError as e:
        raise UsageError(str(e)) from e
    colors = list(vocab.COLORS)
    color = prompt.color or colors[int(np.random.default_rng(args.seed).integers(len(colors)))]
    key = f"preview-{color}-{prompt.shape}-{vocab.slug(prompt.motion)}"
    clip, _ = render(ClipSpec(key, color, prompt.shape, prompt.motion, args.seed, args.frames, args.size))
    path = media.save_clip(args.output, clip, fps=args.fps, label=vocab.canonical_prompt(color, prompt.shape,
                                                                                         prompt.motion))
    held = " (a held-out combination: never in train/val)" if vocab.is_held_out(color, prompt.shape,
                                                                               prompt.motion) else ""
    print(f"wrote {path}: {vocab.canonical_prompt(color, prompt.shape, prompt.motion)}, "
          f"{args.frames} frames of {args.size}x{args.size}, seed {args.seed}{held}")
    return 0


def add_data(sub: argparse._SubParsersAction) -> None:
    from t2v.shards import DataParams

    d = DataParams()
    p = sub.add_parser("data", help="render the dataset into verified WebDataset shards (Prefect flow data-stage)",
                       description="Run the data-stage flow: render clips in parallel into shards under --out, "
                                   "verify them and publish manifest.parquet. Cached per shard: a rerun renders "
                                   "only what changed; adding --motions to an existing dataset grows it. Uses "
                                   "PREFECT_API_URL when set, otherwise a temporary local Prefect server.")
    p.add_argument("--out", default="data", help="dataset directory (default: data)")
    p.add_argument("--clips-per-combo", type=int, required=True,
                   help="train clips per seen (colour, shape, motion) combination")
    p.add_argument("--val-per-combo", type=int, default=d.val_per_combo,
                   help=f"val clips per seen combination and clips per held-out one (default {d.val_per_combo})")
    p.add_argument("--motions", nargs="+", metavar="MOTION", help='motion phrases (default: all), e.g. "moving up"')
    p.add_argument("--shapes", nargs="+", metavar="SHAPE", help="shapes (default: all)")
    p.add_argument("--colors", nargs="+", metavar="COLOR", help="colours (default: all)")
    p.add_argument("--frames", type=int, default=d.frames, help=f"frames per clip (default {d.frames})")
    p.add_argument("--size", type=int, default=d.size, help=f"frame side, multiple of 8, >= 32 (default {d.size})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"dataset seed (default {d.seed})")
    p.add_argument("--shard-size", type=int, default=d.shard_size, help=f"clips per shard (default {d.shard_size})")
    p.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    p.add_argument("--dask-address", metavar="tcp://HOST:PORT",
                   help="render on the workers of this running Dask cluster instead of local processes (they "
                        "must see --out at the same path; README, 'The data stage on a Dask cluster')")
    p.add_argument("--force", action="store_true",
                   help="rebuild an existing dataset at --out even if it was made with different parameters")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_data)


def run_data(args: argparse.Namespace) -> int:
    from t2v import dataset, vocab
    from t2v.io import check_unlocked
    from t2v.shards import DataParams

    d = DataParams()
    params = DataParams(
        colors=tuple(args.colors) if args.colors else d.colors,
        shapes=tuple(args.shapes) if args.shapes else d.shapes,
        motions=tuple(args.motions or ()), clips_per_combo=args.clips_per_combo, val_per_combo=args.val_per_combo,
        frames=args.frames, size=args.size, seed=args.seed, shard_size=args.shard_size,
    )
    try:  # the flow validates again; doing it here first keeps bad input fast and free of Prefect
        if args.workers < 1:
            raise ValueError(f"workers must be a positive integer, got {args.workers}")
        dataset.validate_request(params, args.out, force=args.force)
        if args.dask_address:
            dataset.check_dask_address(args.dask_address)
    except ValueError as e:
        raise UsageError(str(e)) from e
    check_unlocked(Path(args.out) / dataset.LOCK, f"dataset {Path(args.out).resolve()}")  # before Prefect starts

    _quiet_console()
    from flows.data import data_stage

    summary = data_stage(
        out=args.out, motions=args.motions, shapes=args.shapes, colors=args.colors,
        clips_per_combo=args.clips_per_combo, val_per_combo=args.val_per_combo, frames=args.frames,
        size=args.size, seed=args.seed, shard_size=args.shard_size, workers=args.workers, force=args.force,
        progress=not args.no_progress, dask_address=args.dask_address,
    )
    print(f"dataset: {summary['root']}")
    print(f"manifest: {summary['manifest']}  (checksum {summary['checksum'][:16]})")
    print(f"clips: {summary['clips']} in {len(summary['rendered']) + len(summary['cached'])} shards: "
          f"{len(summary['rendered'])} rendered, {len(summary['cached'])} cached")
    if summary["kept_motions"]:
        print(f"kept motions already in the dataset: {', '.join(summary['kept_motions'])}")
    width = max(len(m) for m in summary["counts"])
    print(f"{'motion':<{width}}  {'train':>6} {'val':>6} {'heldout':>7}")
    for motion in vocab.motion_names():
        if motion in summary["counts"]:
            c = summary["counts"][motion]
            print(f"{motion:<{width}}  {c['train']:>6} {c['val']:>6} {c['heldout']:>7}")
    return 0


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a dataset, log it to MLflow and register it (flow train-stage)",
                       description="Run the train-stage flow on the dataset at --data: train (or resume) into --out, "
                                   "log the run to MLflow (MLFLOW_TRACKING_URI, else data/mlflow.db in the checkout) "
                                   "and register the EMA generator as a new version of t2v-generator. Cached: a "
                                   "rerun with the same dataset, config and code is instant. Uses PREFECT_API_URL "
                                   "when set, otherwise a temporary local Prefect server.")
    p.add_argument("--data", required=True, help="dataset directory holding manifest.parquet (from `t2v data`)")
    p.add_argument("--model", default="video", help=_model_help())
    p.add_argument("--profile", default="cpu-demo", help="cpu-demo (default), gpu, or auto (gpu where CUDA is available)")
    p.add_argument("--max-steps", type=int, help="training steps (default: the profile's)")
    p.add_argument("--out", help="run directory (default: DATA/runs/MODEL-PROFILE-MANIFEST-KEY, one per dataset "
                                 "version, config and model code); holds checkpoints, resumed from")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any training config field, e.g. --set batch_size=64 --set lr_g=5e-4 (repeatable)")
    p.add_argument("--experiment", default="t2v", help="MLflow experiment (default t2v)")
    p.add_argument("--force", action="store_true", help="run the training task even on a cache hit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = p.add_argument_group("data-parallel training (torchrun: gloo on CPU, NCCL on CUDA; --set batch_size is per rank)")
    d.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="training ranks on this machine (one per GPU; default 1: no torchrun)")
    d.add_argument("--nnodes", type=int, default=1, metavar="M", help="machines training together (default 1)")
    d.add_argument("--node-rank", type=int, default=0, metavar="K",
                   help="this machine's rank among --nnodes: 0 runs the flow and logs to MLflow; 1..M-1 start "
                        "only their ranks (same --data path, shared by every node)")
    d.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="node 0's address and a free port, the same on every node")
    p.set_defaults(handler=run_train)


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`key=value` strings to a dict; the flow converts values to each field's type."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _train_ranks_here(req: object, args: argparse.Namespace, launched: bool) -> int:
    """The ranks of a node that is not node 0 (or, under a user's own torchrun, a rank that is not 0):
    no flow, no MLflow; they train with node 0's rank 0, which logs and registers."""
    import subprocess

    from cli import rank

    cfg_json = json.dumps(req.config.to_dict())  # type: ignore[attr-defined]
    rank_args = ["--data", str(req.data_dir), "--out", str(req.out_dir), "--config", cfg_json]  # type: ignore[attr-defined]
    if launched:  # already a torchrun rank
        return rank.main(rank_args)
    from t2v.distributed import launch_command

    cmd = launch_command(["cli.rank", *rank_args], args.nproc_per_node, args.nnodes, args.node_rank,
                         args.rdzv_endpoint, python=sys.executable)
    print(f"node {args.node_rank} of {args.nnodes}: starting {args.nproc_per_node} ranks, rendezvous at "
          f"{args.rdzv_endpoint}; node 0 logs the run", file=sys.stderr)
    rc = subprocess.run(cmd).returncode
    return 0 if rc == 0 else EXIT_FAILED


def run_train(args: argparse.Namespace) -> int:
    from t2v.config import check_launch, check_train_request, world_from_env

    overrides = parse_overrides(args.overrides)
    try:  # under `torchrun ... -m cli train` this process is rank RANK of WORLD_SIZE
        env = world_from_env()
    except ValueError as e:
        raise UsageError(f"{e} (torchrun sets them)") from e
    env_rank, env_world = env.rank, env.world_size
    launched = env_world > 1
    try:  # the flow checks again (it is also a deployment's entry); here first keeps bad input fast and torch-free
        world_size = env_world if launched else check_launch(args.nproc_per_node, args.nnodes, args.node_rank,
                                                             args.rdzv_endpoint)
        req = check_train_request(args.data, args.model, args.profile, args.max_steps, args.out, overrides,
                                  args.experiment, world_size)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e
    if (args.node_rank > 0 and not launched) or env_rank > 0:
        return _train_ranks_here(req, args, launched)

    _quiet_console()
    from flows.train import train_stage

    launch = ({"nproc_per_node": env_world} if launched else
              {"nproc_per_node": args.nproc_per_node, "nnodes": args.nnodes, "rdzv_endpoint": args.rdzv_endpoint})
    r = train_stage(data=args.data, model=args.model, profile=args.profile, max_steps=args.max_steps,
                    out=args.out, overrides=overrides, force=args.force or launched, experiment=args.experiment,
                    progress=not args.no_progress, **launch)
    resumed = f", resumed from step {r['resumed_from']}" if r["resumed_from"] is not None else ""
    print(f"trained {r['model']} ({r['profile']}): step {r['step']}{resumed}{' (cached)' if r['cached'] else ''}")
    print(f"checkpoint: {r['checkpoint']}")
    print(f"MLflow run: {r['run_id']}  ({r['run_link']})")
    print(f"registered: {r['registered_model']} version {r['model_version']}")
    print(f"model URI: {r['model_uri']}")
    return 0


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="judge a registered model on held-out and seen prompts; promote the champion "
                                        "(flow eval-stage)",
                       description="Run the eval-stage flow: generate every held-out prompt of the dataset at --data "
                                   "and a fixed sample of seen ones with fixed seeds, score them (pixel judge, learned "
                                   "featnet metric and Fréchet distance, diversity), write a GIF and an MP4 per prompt "
                                   "and a contact sheet under DATA/eval/, log everything to the model's training run "
                                   "in MLflow, and move the alias `champion` of t2v-generator to the model if it beats "
                                   "the current champion on the same prompts and seeds. Cached per model version.")
    p.add_argument("--model", help="registered model URI (default: the latest version of t2v-generator), e.g. "
                                   f"models:/{REGISTERED_MODEL}/3 or {CHAMPION_URI}")
    p.add_argument("--data", default="data", help="dataset directory holding manifest.parquet (default: data)")
    p.add_argument("--samples", type=int, default=4, help="clips per prompt (default 4)")
    p.add_argument("--seen-prompts", type=int, default=24, help="seen prompts sampled (default 24)")
    p.add_argument("--seed", type=int, default=0, help="generation seed, shared by the champion (default 0)")
    p.add_argument("--force", action="store_true", help="evaluate again even on a cache hit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from registry.evaluation import check_eval_request

    try:  # the flow checks again; here first keeps bad input fast and free of Prefect runs
        req = check_eval_request(args.model, args.data, args.samples, args.seen_prompts, args.seed)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e

    _quiet_console()
    from flows.evaluate import eval_stage

    r = eval_stage(model=req.model.uri, data=str(req.data_dir), samples=args.samples,
                   seen_prompts=args.seen_prompts, seed=args.seed, force=args.force, progress=not args.no_progress)
    m = r["metrics"]
    print(f"evaluated {r['uri']}{' (cached)' if r['cached'] else ''}: "
          f"{int(m['n_prompts_heldout'])} held-out and {int(m['n_prompts_seen'])} seen prompts x {int(m['samples'])}")
    print(f"{'metric':<28} {'seen':>8} {'held-out':>9}")
    for label, key in (("pixel judge all-three", "judge_{}_all3"), ("pixel judge motion", "judge_{}_motion"),
                       ("featnet all-three", "featnet_{}_all3"), ("Fréchet distance", "fd_{}"),
                       ("  real-vs-real floor", "fd_floor_{}"), ("start spread", "spread_{}")):
        print(f"{label:<28} {m[key.format('seen')]:>8.3f} {m[key.format('heldout')]:>9.3f}")
    print(f"decision: {'promoted' if r['promoted'] else 'not promoted'} ({r['reason']}); "
          f"champion: version {r['champion_version']}")
    print(f"media: {r['out_dir']}")
    print(f"MLflow run: {r['run_link']}")
    return 0


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate clips for a prompt with a registered model, to GIF, MP4 or PNG",
                       description="Generate --samples clips for PROMPT with a registered generator and write them "
                                   "to -o: .gif or .mp4 (the samples side by side) or .png (a contact sheet, one row "
                                   "per sample). The prompt is checked before the model is loaded.")
    p.add_argument("prompt", help='e.g. "red circle moving up-right"')
    p.add_argument("-o", "--output", required=True, type=Path, help="output file (.gif, .mp4 or .png)")
    p.add_argument("--model", default=CHAMPION_URI, help=f"registered model URI (default: {CHAMPION_URI})")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--samples", type=int, default=1, help=f"clips to generate (default 1, at most {MAX_GENERATE_SAMPLES})")
    p.add_argument("--fps", type=int, default=8, help="playback rate of GIF/MP4 (default 8)")
    p.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from t2v import dataset, media, vocab

    try:
        prompt = vocab.parse_prompt(args.prompt)
        media.check_media_path(args.output)
        for name in ("samples", "fps"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
        if args.samples > MAX_GENERATE_SAMPLES:  # all clips are held in memory, then written side by side
            raise ValueError(f"--samples must be at most {MAX_GENERATE_SAMPLES}, got {args.samples} "
                             f"({args.samples * 16 * 64 * 64 * 3 / 2**30:.1f} GiB at 16 frames of 64x64)")
        if args.seed < 0:
            raise ValueError(f"--seed must be a non-negative integer, got {args.seed}")
        dataset.check_output_dir(args.output.parent, hint="choose another -o path")
    except ValueError as e:
        raise UsageError(str(e)) from e

    from registry import tracking, versions
    from t2v.evaluate import tile

    uri = tracking.tracking_uri()
    try:
        ref = versions.resolve_model(args.model, versions.client_for(uri))
    except ValueError as e:
        raise UsageError(str(e)) from e
    text = prompt.text
    clips = versions.load_registered(ref.uri, uri)([text] * args.samples, args.seed)  # (N, T, H, W, 3) uint8
    if args.output.suffix.lower() == ".png":
        path = media.write_contact_sheet(args.output, [(f"{text} #{i}", c) for i, c in enumerate(clips)])
    else:
        path = media.save_clip(args.output, tile(clips), fps=args.fps)
    print(f"wrote {path}: {args.samples} x {clips.shape[1]} frames of {clips.shape[2]}x{clips.shape[3]} for "
          f"{text!r} from {args.model} (version {ref.version}), seed {args.seed}")
    return 0


def add_lineage(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lineage", help="print where a registered model came from: run, flow run, dataset, code",
                       description="Print the chain behind a registered version, read back from the stores: "
                                   "registry version -> MLflow run -> Prefect flow run -> dataset (manifest checksum, "
                                   "motions) -> code version. The flow run's details need PREFECT_API_URL.")
    p.add_argument("model", nargs="?", default=CHAMPION_URI, help=f"registered model URI (default: {CHAMPION_URI})")
    p.set_defaults(handler=run_lineage)


def _flow_run_line(flow_run_id: str) -> str:
    """The Prefect flow run as its API describes it, or why it cannot say."""
    if not flow_run_id:
        return "none recorded"
    if not os.environ.get("PREFECT_API_URL"):
        return f"{flow_run_id} (set PREFECT_API_URL to read its flow, name and state)"
    try:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            fr = client.read_flow_run(flow_run_id)
            flow = client.read_flow(fr.flow_id)
            parent = ""
            if fr.parent_task_run_id:
                parent_run = client.read_flow_run(client.read_task_run(fr.parent_task_run_id).flow_run_id)
                parent = f", inside {client.read_flow(parent_run.flow_id).name} flow run {parent_run.id} ({parent_run.name})"
        return f"{fr.id} ({flow.name}/{fr.name}, {fr.state.name if fr.state else 'no state'}{parent})"
    except Exception as e:  # an unreachable API, or a run it no longer has
        return f"{flow_run_id} (not readable from {os.environ['PREFECT_API_URL']}: {type(e).__name__}: {e})"


def run_lineage(args: argparse.Namespace) -> int:
    from registry import tracking, versions

    uri = tracking.tracking_uri()
    try:
        lin = versions.lineage(args.model, versions.client_for(uri))
    except ValueError as e:
        raise UsageError(str(e)) from e
    aliases = f" (aliases: {', '.join(lin['aliases'])})" if lin["aliases"] else ""
    print(f"{lin['uri']} -> {lin['name']} version {lin['version']}{aliases}")
    print(f"  MLflow run:       {lin['run_id']} ({lin['run_name']}, {lin['run_status']}) {lin['run_link']}")
    print(f"  Prefect flow run: {_flow_run_line(lin['flow_run_id'])}")
    print(f"  dataset:          manifest checksum {lin['manifest_checksum']}")
    for d in lin["datasets"]:
        print(f"    {d['context'] or 'input'}: {d['name']} from {d['source']}, profile {d['profile']}")
    print(f"  code version:     {lin['code_version']} (model {lin['tags'].get('model', '?')}, "
          f"profile {lin['tags'].get('profile', '?')}, step {lin['tags'].get('step', '?')}, seed {lin['seed']})")
    return 0


def add_pipeline(sub: argparse._SubParsersAction) -> None:
    from t2v.shards import DataParams

    d = DataParams()
    for name, helptext in (("pipeline", "run the full pipeline: data -> train -> evaluate/promote (flow full-pipeline)"),
                           ("demo", "the full pipeline on embedded defaults (what `make demo` runs), then a summary")):
        p = sub.add_parser(name, help=helptext,
                           description="Run the full-pipeline flow: render (or grow) the dataset at --out, train "
                                       "--model with --profile on it, evaluate the new version and promote it to "
                                       "`champion` if it beats the current one. Every stage is cached: a rerun with "
                                       "nothing changed renders and trains nothing. Uses PREFECT_API_URL and "
                                       "MLFLOW_TRACKING_URI when set, else an embedded Prefect server and "
                                       "data/mlflow.db.")
        p.add_argument("--out", default="data", help="dataset and run directory (default: data)")
        p.add_argument("--clips-per-combo", type=int, default=d.clips_per_combo,
                       help=f"train clips per seen combination (default {d.clips_per_combo})")
        p.add_argument("--motions", nargs="+", metavar="MOTION", help="motion phrases (default: all)")
        p.add_argument("--model", default="video", help=_model_help())
        p.add_argument("--profile", default="cpu-demo", help="cpu-demo (default), gpu, or auto (gpu where CUDA is available)")
        p.add_argument("--max-steps", type=int, help="training steps (default: the profile's)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a training config field (repeatable)")
        p.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
        p.add_argument("--dask-address", metavar="tcp://HOST:PORT",
                       help="render on this running Dask cluster's workers instead of local processes")
        p.add_argument("--eval-samples", type=int, default=4, help="clips per evaluated prompt (default 4)")
        p.add_argument("--warm-start", action="store_true", help="initialise from the champion's weights")
        p.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                       help="training ranks on this machine (torchrun; one per GPU; default 1)")
        for stage in ("data", "train", "eval"):
            p.add_argument(f"--force-{stage}", action="store_true", help=f"re-run the {stage} stage even if cached")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.set_defaults(handler=run_pipeline)


def run_pipeline(args: argparse.Namespace) -> int:
    from t2v import dataset
    from t2v.shards import DataParams

    overrides = parse_overrides(args.overrides)
    try:
        if args.workers < 1:
            raise ValueError(f"workers must be a positive integer, got {args.workers}")
        dataset.validate_request(DataParams(motions=tuple(args.motions or ()), clips_per_combo=args.clips_per_combo),
                                 args.out)
        if args.dask_address:
            dataset.check_dask_address(args.dask_address)
        from t2v.config import check_launch, check_train_config

        world_size = check_launch(args.nproc_per_node)
        check_train_config(args.model, args.profile, args.max_steps, overrides, world_size)  # the dataset does not exist yet
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e

    _quiet_console()
    from flows.pipeline import full_pipeline
    from registry import tracking

    r = full_pipeline(out=args.out, motions=args.motions, clips_per_combo=args.clips_per_combo,
                      workers=args.workers, dask_address=args.dask_address, model=args.model, profile=args.profile,
                      max_steps=args.max_steps,
                      train_overrides=overrides, warm_start=args.warm_start, eval_samples=args.eval_samples,
                      force_data=args.force_data, force_train=args.force_train, force_eval=args.force_eval,
                      progress=not args.no_progress, nproc_per_node=args.nproc_per_node)
    data, tr, ev = r["data"], r["train"], r["evaluate"]
    m = ev["metrics"]
    print()
    print(f"dataset:   {data['clips']} clips at {data['root']} ({len(data['rendered'])} shards rendered, "
          f"{len(data['cached'])} cached)")
    print(f"trained:   {tr['model_uri']} ({tr['model']}, {tr['profile']}, step {tr['step']}"
          f"{', cached' if tr['cached'] else ''})")
    print(f"evaluated: held-out all-three {m['judge_heldout_all3']:.1%}, seen {m['judge_seen_all3']:.1%} "
          f"(pixel judge); {'promoted' if ev['promoted'] else 'not promoted'}: {ev['reason']}")
    champion = ev["champion_version"]
    print(f"champion:  t2v-generator version {champion}"
          + (f", held-out all-three {m['judge_heldout_all3']:.1%}" if str(champion) == str(tr['model_version']) else ""))
    out_dir = Path(ev["out_dir"])
    gifs = sorted(out_dir.glob("**/*.gif"))
    print(f"GIFs:      {len(gifs)} in {out_dir} (contact sheet: {out_dir / 'contact_sheet.png'})")
    for g in gifs[:6]:
        print(f"           {g}")
    print(f"MLflow UI: {tracking.ui_command(tracking.configure())}  then open {ev['run_link']}")
    return 0


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (add_vocab, add_preview, add_data, add_train,
                                                                      add_evaluate, add_generate, add_lineage,
                                                                      add_pipeline)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2v", description="Text-to-video pipeline on synthetic clips: "
                                     "data -> training -> evaluation -> registry.")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback when a command fails")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show Prefect's and MLflow's INFO records on the terminal (every task run, shard and "
                             "checkpoint); by default it shows progress bars, one line per stage, retries and warnings")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


SPAWNING = ("data", "train", "evaluate", "pipeline", "demo")  # commands that start servers or worker processes
PREFECT_DEFAULTS = {  # the project's Prefect settings, whoever starts the command (a user's own env wins)
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no network here, and no telemetry errors in the output
    "PREFECT_SERVER_TELEMETRY_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # the default 20 s fails on a busy laptop
}
CONSOLE_LEVEL = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"  # Prefect's terminal handler (its run logs keep INFO)
QUIET = {  # without --verbose: progress bars, stage lines, retries and warnings; per-task INFO stays in the logs
    CONSOLE_LEVEL: "WARNING",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # MLflow's INFO notices (creating tables, system metrics on/off)
}


def _quiet_console() -> None:
    """Before a flow runs in this process: on a quiet console, show the stages' summary lines (and say
    that a temporary Prefect server is starting, the ~10 s before the first bar)."""
    if os.environ.get(CONSOLE_LEVEL, "").upper() not in ("WARNING", "ERROR", "CRITICAL"):
        return
    from tasks.console import show_stage_lines

    show_stage_lines()
    if not os.environ.get("PREFECT_API_URL"):
        print("starting a temporary Prefect server (set PREFECT_API_URL to use a running one)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Console entry point `t2v`: returns the exit status (0 ok, 1 failed run, 2 bad input)."""
    args = build_parser().parse_args(argv)
    if args.command in SPAWNING:
        for key, value in {**PREFECT_DEFAULTS, **({} if args.verbose else QUIET)}.items():
            os.environ.setdefault(key, value)
        from cli import watchdog

        watchdog.start()  # a SIGKILL of this command takes its Prefect server and workers with it
    try:
        return args.handler(args)
    except UsageError as e:
        print(f"t2v {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # a failed run: one line here, the details are in the Prefect logs above
        if args.traceback:
            raise
        print(f"t2v {args.command}: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
