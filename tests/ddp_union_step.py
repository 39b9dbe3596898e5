"""A torchrun script for tests/test_ddp.py: one real training step of a family on two gloo ranks,
each on its half of a fixed batch; rank 0 saves the weights after the step.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_union_step.py DATA OUT.pt MODEL
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def main(data: str, out: str, model: str) -> None:
    from tests.test_ddp import union_batch, union_config, build_and_step
    from t2v import distributed

    cfg = union_config(model, world_size=2)
    world = distributed.init(cfg.world_size, torch.device("cpu"))
    try:
        batch = union_batch(Path(data), cfg.batch_size * world.world_size)
        lo, hi = world.rank * cfg.batch_size, (world.rank + 1) * cfg.batch_size
        mine = {k: v[lo:hi] for k, v in batch.items()}
        state = build_and_step(cfg, Path(data), mine)
        if world.main:
            torch.save(state, out)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
