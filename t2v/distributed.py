"""Data-parallel training across processes (torchrun): who this rank is, gradient averaging, noise slices.

One process per rank, started by `torch.distributed.run` (torchrun's elastic agent), which sets
`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT`. Every rank builds the same
models from the same seed; after each backward, the optimiser's step pre-hook averages the gradients
over the ranks (one coalesced all-reduce per optimiser step, what DistributedDataParallel does), so
the replicas never drift apart, for every family and without touching its step.

Each rank draws the *global* batch's noise from the same seeded generator and keeps its own rows
(`randn`, `randint`), so a step on N ranks of B clips sees the noise one process would draw for
the N*B clips of their union: with the same data, N ranks train the model one process trains on the
union batch (to float summation order), and the RNG states stay equal on every rank, so rank 0's
checkpoint resumes all of them. What does not decompose over ranks: BatchNorm statistics (per rank,
as with DDP without SyncBatchNorm) and terms that pair clips within a batch (the wrong-prompt
negatives, the pair critic), which pair within each rank's batch. (The spread term's real start
statistics are summed over the ranks, so they are the global batch's.)
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist

from t2v.config import World, world_from_env  # torch-free, so the CLI reads them too

TIMEOUT = datetime.timedelta(minutes=10)  # a collective waiting longer fails: longer than rank 0's own work
# (selection, samples, a checkpoint) between two steps, short enough that a lost peer ends the run


def current() -> World:
    """The initialised process group's rank and size (rank 0 of 1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), world_from_env().local_rank)
    return World()


def init(world_size: int, device: torch.device) -> World:
    """Join the torchrun world `world_size` promises (gloo on CPU, NCCL on CUDA); the process group
    is left to `shutdown`. A plain process with `world_size` 1 joins nothing."""
    env = world_from_env()
    if world_size == 1 and env.world_size == 1:
        return World()
    if env.world_size != world_size or "MASTER_ADDR" not in os.environ:
        raise ValueError(f"world_size={world_size} needs {world_size} processes started by torchrun "
                         f"(`t2v train --nproc-per-node N [--nnodes M]`, N*M = {world_size}); this process "
                         f"has WORLD_SIZE={env.world_size}")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_rows(draw: Callable[[int], torch.Tensor], b: int) -> torch.Tensor:
    """`draw(b)` on one rank; on N ranks, this rank's b rows of `draw(N * b)`: the global batch's draw."""
    w = current()
    if w.world_size == 1:
        return draw(b)
    return draw(w.world_size * b)[w.rank * b:(w.rank + 1) * b]


def randn(b: int, *shape: int, device: torch.device | str | None = None) -> torch.Tensor:
    """`torch.randn(b, *shape)`, rank by rank a slice of the global batch's draw (`rank_rows`)."""
    return rank_rows(lambda n: torch.randn(n, *shape, device=device), b)


def randint(high: int, b: int, *shape: int, device: torch.device | str | None = None) -> torch.Tensor:
    """`torch.randint(0, high, (b, *shape))`, sliced like `randn`."""
    return rank_rows(lambda n: torch.randint(0, high, (n, *shape), device=device), b)


def average_gradients(optimizers: Sequence[torch.optim.Optimizer]) -> list[Any]:
    """Before every `step()` of these optimisers, replace each gradient by its mean over the ranks.
    Returns the hook handles (nothing is registered on one rank)."""
    if current().world_size == 1:
        return []

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(dist.get_world_size())
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    return [opt.register_step_pre_hook(hook) for opt in optimizers]


@torch.no_grad()
def broadcast_modules(modules: Sequence[torch.nn.Module]) -> None:
    """Make every rank's parameters and buffers rank 0's (they should already agree: same seed, same checkpoint)."""
    if current().world_size == 1:
        return
    for module in modules:
        for t in module.state_dict().values():
            if t.is_floating_point() or t.dtype in (torch.int64, torch.int32, torch.long):
                dist.broadcast(t, src=0)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each metric over the ranks (every rank must call it at the same step)."""
    if current().world_size == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over the ranks, in place (itself on one rank); every rank must call it at the same step."""
    if current().world_size > 1:
        dist.all_reduce(t)
    return t


def barrier() -> None:
    if current().world_size > 1:
        dist.barrier()


def launch_command(module_args: Sequence[str], nproc_per_node: int, nnodes: int = 1, node_rank: int = 0,
                   rdzv_endpoint: str | None = None, python: str = "python") -> list[str]:
    """The `torch.distributed.run` command line that starts `nproc_per_node` ranks of `-m module_args`
    on this node: standalone on one machine; on several, a static rendezvous at `rdzv_endpoint`
    (node 0's HOST:PORT), where `node_rank` fixes the global ranks, so global rank 0 (the one that
    logs) is on node 0, whose train task opened the MLflow run."""
    cmd = [python, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}", "--max-restarts=0"]
    if nnodes == 1 and not rdzv_endpoint:
        cmd.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise ValueError(f"nnodes={nnodes} needs rdzv_endpoint HOST:PORT (node 0's address, the same on every node)")
        host, _, port = rdzv_endpoint.rpartition(":")
        cmd += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--master-addr={host}", f"--master-port={port}"]
    return cmd + ["-m", *module_args]
