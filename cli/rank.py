"""One torchrun rank of a training (started by `t2v train --nproc-per-node N`, never by hand).

    python -m torch.distributed.run --nproc-per-node N ... -m cli.rank --data D --out O --config JSON
        [--run-id ID --tracking-uri URI] [--progress]

Every rank joins the process group and runs `t2v.train.train` on its slice of the shards. Rank 0
logs to the MLflow run `--run-id` (opened by the train task, which registers the version once the
ranks are done) and leaves the result in `<out>/train-result.json` for the task. On another node
(`t2v train --nnodes M --node-rank K`) the ranks run without `--run-id`: only global rank 0 logs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from t2v import config as t2v_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cli.rank", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--out", required=True, help="run directory (shared by every rank; rank 0 writes it)")
    p.add_argument("--config", required=True, help="the TrainConfig as JSON (TrainConfig.to_dict())")
    p.add_argument("--run-id", help="the MLflow run rank 0 logs to (none: no logging)")
    p.add_argument("--tracking-uri", help="the MLflow store of --run-id")
    p.add_argument("--progress", action="store_true", help="rank 0 draws a progress bar on stderr")
    return p


def _hooks(args: argparse.Namespace, cfg: t2v_config.TrainConfig, out: Path) -> tuple[Any, list[Any]]:
    """Rank 0's TrainHooks (MLflow, train.log, a bar) and what to close after training."""
    from tqdm import tqdm

    from registry import tracking
    from t2v.train import TrainHooks

    closers: list[Any] = []
    if not args.run_id:
        return TrainHooks(), closers
    client = tracking.configure(uri=args.tracking_uri).client()
    run = tracking.RunHooks(client, args.run_id, out / "train.log")
    if tracking.system_metrics_available():  # the parent's monitor is off: this is the process that trains
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(args.run_id)
        monitor.start()
        closers.append(monitor.finish)
    bar = tqdm(total=cfg.max_steps, desc=f"train x{cfg.world_size}", unit="step", disable=not args.progress,
               file=sys.stderr)
    closers.append(bar.close)

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        run.on_metrics(step, metrics)
        bar.n = step
        bar.refresh()

    return TrainHooks(on_metrics=on_metrics, on_sample=run.on_sample, on_checkpoint=run.on_checkpoint), closers


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = t2v_config.from_dict(json.loads(args.config))
    out = Path(args.out)

    from t2v import distributed
    from t2v import train as t2v_train

    world = distributed.init(cfg.world_size, t2v_train.resolve_device(cfg.device, distributed.world_from_env().local_rank))
    closers: list[Any] = []
    try:
        hooks, closers = _hooks(args, cfg, out) if world.main else (None, [])
        result = t2v_train.train(cfg, Path(args.data), out, hooks)
        if world.main:
            t2v_train.save_result(result, out)
    finally:
        for close in reversed(closers):
            close()
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
