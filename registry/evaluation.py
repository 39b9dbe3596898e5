"""An evaluation request, checked once before any work: the dataset, the numbers, the model version.

Imports MLflow only once the dataset checks have passed, so `t2v evaluate` with a bad `--data` fails
in a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from t2v import dataset, vocab
from t2v import evaluate as ev

if TYPE_CHECKING:
    from registry import versions

EVAL_DIR = "eval"  # under the dataset root: the evaluation's media and its cached results


@dataclass(frozen=True)
class EvalRequest:
    """A validated evaluation: the dataset, the model version, what to ask it."""

    data_dir: Path  # absolute
    manifest_checksum: str
    model: versions.ModelRef
    config: ev.EvalConfig
    prompts: ev.PromptSet
    tracking_uri: str
    vocabulary: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]  # the dataset's colours, shapes, motions


def dataset_vocabulary(data_dir: Path) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], int, int]:
    """(colours, shapes, motions, frames, side) of a dataset, in vocabulary order."""
    manifest = dataset.load_manifest(data_dir)
    known = vocab.motion_names()
    missing = sorted(set(manifest["motion"]) - set(known))
    if missing:
        raise ValueError(f"the dataset at {str(data_dir)!r} has motions this process does not know: {missing}; "
                         f"set {vocab.PLUGIN_ENV} to the module(s) that register them")
    frames, size = dataset.geometry(data_dir)
    return (tuple(c for c in vocab.COLORS if c in set(manifest["color"])),
            tuple(s for s in vocab.SHAPES if s in set(manifest["shape"])),
            tuple(m for m in known if m in set(manifest["motion"])), int(frames), int(size))


def dataset_prompts(data_dir: Path, cfg: ev.EvalConfig) -> ev.PromptSet:
    """The evaluation prompts of a dataset: its own colours, shapes and motions, its clip geometry."""
    return ev.prompt_set(*dataset_vocabulary(data_dir), cfg)


def check_eval_request(model: str | None = None, data: str | Path = "data", samples: int = ev.EvalConfig.samples,
                       seen_prompts: int = ev.EvalConfig.seen_prompts, seed: int = ev.EvalConfig.seed) -> EvalRequest:
    """Every check of an evaluation request, before any clip is generated or anything written; the CLI
    and the eval-stage flow both call it. The dataset is checked before MLflow is even imported.

    Raises FileNotFoundError for a dataset dir without a manifest and ValueError naming any other bad
    value (numbers, model URI, a model that is not registered) and what is valid.
    """
    cfg = ev.EvalConfig(samples=samples, seen_prompts=seen_prompts, seed=seed)
    cfg.validate()
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    data_dir = Path(data).expanduser().absolute()
    if not (data_dir / dataset.MANIFEST).is_file():
        raise FileNotFoundError(f"no dataset at {str(data_dir)!r}: {dataset.MANIFEST} is missing; build one first "
                                f"with `t2v data --out {data} --clips-per-combo N`")
    prompts = dataset_prompts(data_dir, cfg)
    dataset.check_output_dir(data_dir / EVAL_DIR, hint="the evaluation writes its media there")
    from registry import tracking, versions

    uri = tracking.tracking_uri()
    ref = versions.resolve_model(model, versions.client_for(uri))
    colors, shapes, motions, _, _ = dataset_vocabulary(data_dir)
    return EvalRequest(data_dir, dataset.manifest_checksum(data_dir), ref, cfg, prompts, uri, (colors, shapes, motions))
