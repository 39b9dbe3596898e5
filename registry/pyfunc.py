"""The shipped generator as an MLflow pyfunc model, and logging + registering it.

Contract: `mlflow.pyfunc.load_model(uri).predict(prompts, params={"seed": 0})`, where `prompts` is a
list of strings or a DataFrame with a `prompt` column, returns uint8 clips (N, T, H, W, 3). A version
holds the sampler's export directory (weights as plain tensors) and names this module as its
`loader_module`: loading it imports `registry.pyfunc` from the installed package and reads the
weights with `weights_only=True`, so nothing from the store is unpickled or executed. Serving needs
the project installed and nothing from the checkout or its `data/`.

The input schema is one unnamed string column: MLflow then accepts both a plain list of prompts and
a DataFrame (a named `prompt` column would reject lists). `GeneratorModel` is the cloudpickled
wrapper of versions registered before the loader module; it stays so that those still load with
`mlflow.pyfunc.load_model`, but the pipeline itself reads them through their weights only
(`registry.versions.load_registered`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from registry import REGISTERED_MODEL, tracking

ARTIFACT_KEY = "generator"  # the export directory inside the artifacts of a cloudpickled (older) version
LOADER_MODULE = __name__  # what a version's MLmodel names as its loader: this module, from the installed package
MODEL_NAME = "generator"  # the logged model's name within its run
INPUT_EXAMPLE = ["red circle moving up-right"]  # shown by `mlflow models serve` and the registry page
DEVICE_ENV = "T2V_DEVICE"  # serving device override ("cpu", "cuda", "cuda:1"); default: cuda when available


def prompts_of(model_input: Any) -> list[str]:
    """Prompts from what pyfunc hands over: a DataFrame (`prompt` column, else its only column), a
    Series, an array or a list of strings."""
    if isinstance(model_input, pd.DataFrame):
        if "prompt" in model_input.columns:
            col = model_input["prompt"]
        elif model_input.shape[1] == 1:
            col = model_input.iloc[:, 0]
        else:
            raise ValueError(f"expected a 'prompt' column, got columns {list(model_input.columns)}")
        return [str(p) for p in col.tolist()]
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, (pd.Series, np.ndarray, list, tuple)):
        return [str(p) for p in np.asarray(model_input, dtype=object).reshape(-1).tolist()]
    raise TypeError(f"prompts must be a list of strings or a DataFrame with a 'prompt' column, "
                    f"got {type(model_input).__name__}")


class GeneratorPyfunc:
    """What `mlflow.pyfunc.load_model` wraps for a version of this pipeline (built by `_load_pyfunc`)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """Clips for the prompts, deterministic per `seed`. # (N, T, H, W, 3) uint8

        The signature makes pyfunc hand over a DataFrame whether the caller passed a list or a frame."""
        seed = int((params or {}).get("seed", 0))
        return self.sampler.generate(prompts_of(model_input), seed=seed)


def serving_device() -> str:
    import torch

    return os.environ.get(DEVICE_ENV) or ("cuda" if torch.cuda.is_available() else "cpu")


def _load_pyfunc(data_path: str) -> GeneratorPyfunc:
    """MLflow's loader-module entry point: `data_path` is the version's copy of the export directory."""
    from t2v.sampler import load_generator

    return GeneratorPyfunc(load_generator(Path(data_path), serving_device()))


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """The cloudpickled wrapper of versions registered before `LOADER_MODULE`; never logged any more."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from t2v.sampler import load_generator

        self.sampler = load_generator(Path(context.artifacts[ARTIFACT_KEY]), serving_device())

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> np.ndarray:
        return GeneratorPyfunc(self.sampler).predict(model_input, params)


def signature(frames: int, size: int) -> ModelSignature:
    """Prompts in, (N, T, H, W, 3) uint8 out, `seed` (int, default 0) as a param."""
    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, frames, size, size, 3))]),
        params=ParamSchema([ParamSpec("seed", "long", 0)]),
    )


def _pin(dist: str) -> str:
    """`dist==version` as installed here (local build tags such as +cpu dropped); bare name when absent."""
    version = tracking.installed_version(dist)
    return f"{dist}=={version}" if version else dist


def requirements() -> list[str]:
    """Serving requirements, stated rather than inferred (inference loads the model in a subprocess)."""
    return [_pin(d) for d in ("t2v-pipeline", "mlflow", "torch", "numpy", "pandas")]


def log_generator(export_dir: Path, frames: int, size: int, registered_model: str | None = REGISTERED_MODEL,
                  metadata: dict[str, Any] | None = None) -> ModelInfo:
    """Log `export_dir` (a `t2v.sampler` export) as a pyfunc model in the active run and, when
    `registered_model` is given, register it as a new version of that model. The model is the export
    copied as data plus the name of this module: no pickle."""
    return mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        loader_module=LOADER_MODULE,
        data_path=str(export_dir),
        signature=signature(frames, size),
        input_example=INPUT_EXAMPLE,
        pip_requirements=requirements(),
        registered_model_name=registered_model,
        metadata=metadata,
    )
