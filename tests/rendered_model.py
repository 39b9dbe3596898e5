"""A pyfunc loader module for the promotion tests: real clips for the prompts (`frozen`: their first
frame held), deterministic per seed. Its data directory holds `model.json` ({frozen, frames, size})."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


class RenderedModel:
    def __init__(self, frozen: bool, frames: int, size: int) -> None:
        self.frozen, self.frames, self.size = frozen, frames, size

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        from registry.pyfunc import prompts_of
        from t2v.evaluate import render_reference

        seed = int((params or {}).get("seed", 0))
        clips = render_reference(prompts_of(model_input), self.frames, self.size, 500 + seed)[0]
        return np.repeat(clips[:, :1], self.frames, axis=1) if self.frozen else clips


def _load_pyfunc(data_path: str) -> RenderedModel:
    return RenderedModel(**json.loads((Path(data_path) / "model.json").read_text()))
