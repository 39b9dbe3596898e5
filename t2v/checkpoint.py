"""Checkpoints that resume a training bit for bit: models, optimisers, every RNG state and the best
weights selected so far, in types `torch.load(weights_only=True)` accepts."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from t2v.config import TrainConfig
from t2v.io import atomic_write_bytes

if TYPE_CHECKING:
    from t2v.loader import DatasetInfo
    from t2v.train import Models


def rng_state() -> dict[str, Any]:
    """torch, CUDA, numpy and python RNG states in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, step: int, cfg: TrainConfig, info: DatasetInfo, m: Models,
                    best: dict[str, Any] | None = None) -> None:
    """Everything needed to resume (and the best weights selected so far), written to a temporary name
    and renamed into place; its step, config and geometry also go beside it as JSON, so a request can be
    checked against it without torch (`t2v.config.checkpoint_meta`)."""
    state = {
        "step": step,
        "config": cfg.to_dict(),
        "data": {"frames": info.frames, "size": info.size},
        "spec": m.spec.to_dict(),
        "models": {k: v.state_dict() for k, v in m.modules().items()},
        "optim": {"g": m.opt_g.state_dict(), "d": m.opt_d.state_dict()},
        "rng": rng_state(),
        "best": best or {},
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())
    meta = {"step": step, "config": state["config"], "data": state["data"]}
    atomic_write_bytes(Path(path).with_suffix(".json"), json.dumps(meta, indent=1, sort_keys=True).encode())


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)


def restore(m: Models, ckpt: dict[str, Any], path: Path | str = "the checkpoint") -> None:
    """Load a checkpoint into freshly built models. One written by other model code (a module with other
    shapes, such as the critics' running track statistics) is refused with what to do, before any step."""
    for k, mod in m.modules().items():
        try:
            mod.load_state_dict(ckpt["models"][k])
        except RuntimeError as e:
            first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line or "Missing" in line
                          or "Unexpected" in line), str(e).splitlines()[0])
            raise ValueError(f"{path}: its {k} does not fit this code's model ({first}); it was written by other "
                             f"model code: train into a new out_dir (the default run dir already changes with the "
                             f"code)") from None
    m.opt_g.load_state_dict(ckpt["optim"]["g"])
    m.opt_d.load_state_dict(ckpt["optim"]["d"])
    set_rng_state(ckpt["rng"])


