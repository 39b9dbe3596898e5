"""What `make up` costs while nothing uses it: resident memory and CPU of each service's process tree.

Starts the stack (temporary state and data dirs, free ports, the Prefect UI on), lets it settle for
--settle seconds, then measures CPU time over --window seconds and the resident memory at the end;
stops it. `MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true` in the environment measures MLflow with its job
consumers, which the stack turns off.

Usage: python bench/stack_idle.py [--settle 20] [--window 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployments import stack  # noqa: E402


def _tree(pid: int) -> list[psutil.Process]:
    p = psutil.Process(pid)
    return [p, *p.children(recursive=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settle", type=float, default=20.0)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cfg = stack.StackConfig(state=Path(d) / "state", data=Path(d) / "data", prefect_port=stack.free_port(),
                                mlflow_port=stack.free_port())
        t0 = time.monotonic()
        pids = stack.up(cfg)
        up_s = time.monotonic() - t0
        try:
            time.sleep(args.settle)
            trees = {name: _tree(pid) for name, pid in pids.items()}
            before = {name: sum(sum(p.cpu_times()[:2]) for p in procs) for name, procs in trees.items()}
            time.sleep(args.window)
            out = {}
            for name, procs in trees.items():
                alive = [p for p in procs if p.is_running()]
                out[name] = {"processes": len(alive),
                             "rss_mb": round(sum(p.memory_info().rss for p in alive) / 2**20, 1),
                             "cpu_percent_of_one_core": round(100 * (sum(sum(p.cpu_times()[:2]) for p in alive)
                                                                     - before[name]) / args.window, 2)}
        finally:
            stack.down(cfg)
    total = {"processes": sum(v["processes"] for v in out.values()),
             "rss_mb": round(sum(v["rss_mb"] for v in out.values()), 1),
             "cpu_percent_of_one_core": round(sum(v["cpu_percent_of_one_core"] for v in out.values()), 2)}
    result = {"up_seconds": round(up_s, 1), "window_s": args.window, "services": out, "total": total,
              "cpu_cores": psutil.cpu_count()}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
