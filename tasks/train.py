"""Prefect task of the training stage: one cached, retried, MLflow-logged training.

The loop lives in `t2v.train`; this module adds what a production run needs around it:
- validation of the whole request before any work (`prepare`),
- a cache key of (dataset manifest checksum, full training config, model code version, output dir,
  MLflow store), never of arrays, with results persisted under the output dir,
- retries that resume from the last checkpoint (`t2v.train.train` resumes a matching checkpoint),
  continuing the same MLflow run (its id is recorded in the output dir),
- one MLflow run per training: config as params, losses and clips/s, system metrics, sample grids,
  the Prefect flow-run id and dataset/code versions as tags; at the end the EMA generator logged as a
  pyfunc model and registered as a new version of `t2v-generator`,
- a Prefect progress artifact during training and a summary artifact with the MLflow link at the end.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.client.schemas.objects import State, TaskRun
from prefect.tasks import Task

import t2v
from t2v import dataset
from t2v import train as t2v_train
from t2v.loader import dataset_info
from t2v.shards import atomic_dir
from tasks import pyfunc_model, tracking

RESULTS_DIR = ".cache/prefect-results"  # under the output dir: the cache lives and dies with the checkpoint
CODE_FILES = ("models.py", "train.py", "text.py", "sampler.py", "loader.py")  # what decides the trained weights
SET_BY_PARAMETER = ("model", "profile")  # TrainConfig fields that have their own flow/CLI parameter
NOT_RETRIED = (ValueError, TypeError, FileNotFoundError,  # bad input or a mismatched out dir: a retry fails again
               tracking.TrainingInProgressError, tracking.TrackingUnreachableError)


def model_code_version() -> str:
    """Hash of the model, loop, text, sampler and loader sources: part of the training cache key."""
    h = hashlib.sha256()
    pkg = Path(t2v.__file__).parent
    for name in CODE_FILES:
        h.update(name.encode() + b"\0" + (pkg / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def config_key(cfg: t2v_train.TrainConfig) -> str:
    """Hash of what a checkpoint must agree on to be resumed (run length, logging and hardware aside)."""
    return hashlib.sha256(json.dumps(cfg.identity(), sort_keys=True).encode()).hexdigest()[:16]


def default_out(data: str | Path, model: str, profile: str) -> Path:
    """`<data>/runs/<model>-<profile>`: beside the dataset it was trained on."""
    return Path(data) / "runs" / f"{model}-{profile}"


@dataclass(frozen=True)
class TrainRequest:
    """A validated training request: everything the task needs, nothing computed from arrays."""

    data_dir: Path  # absolute
    out_dir: Path  # absolute
    config: t2v_train.TrainConfig
    manifest_checksum: str
    frames: int  # clip geometry of the dataset (T)
    size: int  # H = W


def prepare(data: str | Path, model: str = "video", profile: str = "cpu-demo", max_steps: int | None = None,
            out: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
            experiment: str = tracking.DEFAULT_EXPERIMENT) -> TrainRequest:
    """Every check of a training request, before any directory, MLflow run or Prefect task exists.

    Raises ValueError / FileNotFoundError naming the bad value and the valid choices: a dataset dir
    without `manifest.parquet`, an unknown model, profile or config field, a bad value, a device that
    is not there, an `init_from` that is not an export, an empty experiment name, or an output dir
    whose checkpoint belongs to another config or dataset.
    """
    overrides = dict(overrides or {})
    if not isinstance(experiment, str) or not experiment.strip():
        raise ValueError(f"experiment must be a non-empty MLflow experiment name, got {experiment!r}")
    data_dir = Path(data).expanduser().absolute()
    manifest = data_dir / dataset.MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"no dataset at {str(data_dir)!r}: {str(manifest)!r} does not exist; build one "
                                f"first with `t2v data --out {data} --clips-per-combo N`")
    if model not in t2v_train.MODELS:
        raise ValueError(f"unknown model {model!r}; valid models: {', '.join(t2v_train.MODELS)}")
    if profile not in t2v_train.PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {', '.join(t2v_train.PROFILES)}")
    clash = [k for k in SET_BY_PARAMETER if k in overrides]
    if clash:
        raise ValueError(f"set {', '.join(clash)} with its own parameter (--{clash[0]}), not as an override")
    if max_steps is not None:
        if "max_steps" in overrides and str(overrides["max_steps"]) != str(max_steps):
            raise ValueError(f"max_steps given twice: {max_steps} and override {overrides['max_steps']!r}")
        overrides["max_steps"] = max_steps
    cfg = t2v_train.config_for(profile, model=model, **overrides)  # unknown fields / bad values -> ValueError
    t2v_train.resolve_device(cfg.device)  # device=cuda without CUDA -> ValueError
    if cfg.init_from:
        t2v_train.check_export(Path(cfg.init_from))
    info = dataset_info(data_dir)  # no train shards -> FileNotFoundError naming the dir
    checksum = dataset.manifest_checksum(data_dir)
    out_dir = dataset.check_output_dir(out if out is not None else default_out(data_dir, model, profile))
    ckpt = out_dir / "checkpoints" / t2v_train.CKPT_NAME
    if ckpt.is_file():
        record = tracking.read_run_record(out_dir) or {}
        trained_on = record.get("manifest_checksum")
        if trained_on and trained_on != checksum:
            raise ValueError(f"{str(out_dir)!r} holds a training on another version of the dataset (manifest "
                             f"{trained_on[:12]}, now {checksum[:12]}); train into a new --out")
        saved = t2v_train.load_checkpoint(ckpt, t2v_train.resolve_device("cpu"))
        t2v_train.check_resumable(saved, cfg, info, ckpt)
    return TrainRequest(data_dir, out_dir, cfg, checksum, info.frames, info.size)


def _retryable(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry crashes and transient failures (they resume from the checkpoint), never bad input."""
    return not isinstance(state.data, NOT_RETRIED)


class _RunLogger:
    """The TrainHooks of one training: metrics, sample grids and checkpoints to MLflow and Prefect."""

    def __init__(self, run_id: str, client: mlflow.MlflowClient, max_steps: int, progress: bool,
                 reached: dict[str, int | None]) -> None:
        from tqdm import tqdm

        self.run_id, self.client, self.max_steps = run_id, client, max_steps
        self.reached = reached  # {"step", "checkpoint"}: where training got, for the unreachable-store message
        self.logger = get_run_logger()
        self.artifact = create_progress_artifact(0.0, description=f"training: 0 / {max_steps} steps")
        self.bar = tqdm(total=max_steps, desc="train", unit="step", disable=not progress, file=sys.stderr)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.reached["step"] = step
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, run_id=self.run_id)
        self.logger.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if "loss_d" not in metrics:  # a checkpoint-selection score: no progress to report
            return
        pct = min(100.0, 100.0 * step / self.max_steps)
        update_progress_artifact(self.artifact, pct, description=(
            f"training: {step} / {self.max_steps} steps, loss_d {metrics.get('loss_d', float('nan')):.3f}, "
            f"loss_g {metrics.get('loss_g', float('nan')):.3f}, {metrics.get('clips_per_s', 0.0):.1f} clips/s"))
        self.bar.n = step
        self.bar.set_postfix(loss_d=f"{metrics.get('loss_d', 0.0):.3f}", loss_g=f"{metrics.get('loss_g', 0.0):.3f}")
        self.bar.refresh()

    def on_sample(self, step: int, grid: np.ndarray) -> None:
        mlflow.log_image(np.ascontiguousarray(grid, dtype=np.uint8), key="samples", step=step, synchronous=True)

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.reached["checkpoint"] = step
        self.client.set_tag(self.run_id, tracking.CHECKPOINT_TAG, str(step))
        self.logger.info("checkpoint at step %d: %s", step, path)

    def hooks(self) -> t2v_train.TrainHooks:
        return t2v_train.TrainHooks(on_metrics=self.on_metrics, on_sample=self.on_sample,
                                    on_checkpoint=self.on_checkpoint)

    def done(self, step: int) -> None:
        update_progress_artifact(self.artifact, 100.0, description=f"training done at step {step}")


def _existing_version(client: mlflow.MlflowClient, name: str, run_id: str, step: int) -> Any | None:
    """The version this run already registered for this step (a retry after registering registers nothing new)."""
    for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        if v.tags.get("step") == str(step):
            return v
    return None


def _register(t: tracking.Tracking, run_id: str, result: t2v_train.TrainResult, cfg: t2v_train.TrainConfig,
              frames: int, size: int, registered_model: str, tags: Mapping[str, str]) -> tuple[str, str]:
    """Log the shipped generator as a pyfunc model and register it; returns (version, logged model URI)."""
    client = t.client()
    found = _existing_version(client, registered_model, run_id, result.step)
    if found is not None:
        return str(found.version), str(found.source)
    info = pyfunc_model.log_generator(result.export_dir, frames, size, registered_model,
                                      metadata={"step": result.step, **tags})
    version = str(info.registered_model_version)
    for k, v in {**tags, "step": str(result.step)}.items():
        client.set_model_version_tag(registered_model, version, k, v)
    client.set_registered_model_alias(registered_model, f"{cfg.model}-latest", version)
    return version, info.model_uri


def _summary_markdown(r: Mapping[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(r["metrics"].items()))
    resumed = f" (resumed from step {r['resumed_from']})" if r["resumed_from"] is not None else ""
    return (f"# Training: {r['model']} / {r['profile']}\n\n"
            f"- MLflow run: [{r['run_id']}]({r['run_link']}) (browse with `{r['mlflow_ui']}`)\n"
            f"- Registered model: `{r['model_uri']}` (alias `{r['model']}-latest`)\n"
            f"- Steps: {r['step']}{resumed}\n"
            f"- Checkpoint: `{r['checkpoint']}`\n"
            f"- Dataset manifest: `{r['manifest_checksum'][:16]}`, model code: `{r['code_version']}`\n\n"
            f"| metric (last logged) | value |\n|---|---|\n{rows}\n")


@task(name="train", task_run_name="train {config[model]} ({config[profile]})",
      cache_policy=(INPUTS - "data_dir" - "progress") + TASK_SOURCE, persist_result=True,
      retries=2, retry_delay_seconds=2, retry_condition_fn=_retryable)
def train_model(data_dir: str, out_dir: str, config: dict[str, Any], manifest_checksum: str, code_version: str,
                tracking_uri: str, experiment: str = tracking.DEFAULT_EXPERIMENT,
                registered_model: str = pyfunc_model.REGISTERED_MODEL, progress: bool = False) -> dict[str, Any]:
    """Train (or resume) into `out_dir`, log it to MLflow and register the EMA generator.

    `data_dir` is left out of the cache key (the manifest checksum names the data); `progress` only
    draws a terminal bar. Returns ids, paths and final metrics, never arrays.
    """
    from prefect.runtime import flow_run, task_run

    logger = get_run_logger()
    cfg = t2v_train.config_for(config["profile"], **{k: v for k, v in config.items() if k != "profile"})
    out = Path(out_dir)
    reached: dict[str, int | None] = {"step": None, "checkpoint": None}
    try:
        t = tracking.configure(experiment, tracking_uri)
        info = dataset_info(Path(data_dir))
        key = config_key(cfg)
        has_ckpt = (out / "checkpoints" / t2v_train.CKPT_NAME).is_file()
        for killed in tracking.mark_orphans_killed(t):
            logger.warning("MLflow run %s was left RUNNING by a training process that is gone: marked KILLED", killed)
        run_id = tracking.resumable_run_id(t, out, key, has_ckpt)
        tracking.claim_run(t, run_id)
        tags = {"model": cfg.model, "profile": cfg.profile, "dataset.manifest_checksum": manifest_checksum,
                "code_version": code_version}
        run_tags = {**tags, "prefect.flow_run_id": str(flow_run.id), "prefect.task_run_id": str(task_run.id),
                    "data_dir": str(data_dir), "out_dir": str(out), tracking.OWNER_TAG: tracking.owner_id()}
        system_metrics = tracking.system_metrics_available()
        if not system_metrics:
            logger.warning("psutil is not installed: MLflow system metrics are off for this run")

        with mlflow.start_run(run_id=run_id, experiment_id=t.experiment_id, run_name=f"{cfg.model}-{cfg.profile}",
                              tags=run_tags, log_system_metrics=system_metrics) as run:
            run_id = run.info.run_id
            tracking.write_run_record(out, {"run_id": run_id, "tracking_uri": t.tracking_uri,
                                            "experiment_id": t.experiment_id, "training_key": key,
                                            "manifest_checksum": manifest_checksum})
            changed = tracking.log_params_once(t.client(), run_id, {
                **tracking.flatten_params(cfg.to_dict()), "data.frames": str(info.frames), "data.size": str(info.size)})
            logger.info("MLflow run %s (%s)%s", run_id, tracking.run_link(t, run_id),
                        f"; changed on resume: {changed}" if changed else "")

            hooks = _RunLogger(run_id, t.client(), cfg.max_steps, progress, reached)
            try:
                result = t2v_train.train(cfg, Path(data_dir), out, hooks.hooks())
            finally:
                hooks.bar.close()
            hooks.done(result.step)
            if result.resumed_from is not None:
                mlflow.set_tag("resumed_from_step", str(result.resumed_from))
            if result.selected_step is not None:  # which EMA weights were exported, and their train-prompt score
                mlflow.set_tags({"selected_step": str(result.selected_step),
                                 "selected_train_all3": f"{result.selected_score:.4f}"})
            version, logged_uri = _register(t, run_id, result, cfg, info.frames, info.size, registered_model, tags)
            # a resume with nothing left to train logs no metrics: report the run's last ones instead
            metrics = result.metrics or {k: v for k, v in t.client().get_run(run_id).data.metrics.items()
                                         if not k.startswith("system/")}
    except Exception as e:
        if not tracking.unreachable(e):
            raise
        kept = (f"checkpoint at step {reached['checkpoint']} kept" if reached["checkpoint"] is not None
                else "no checkpoint written yet")
        where = (f"training stopped at step {reached['step']}, {kept}" if reached["step"] is not None
                 else "training had not started")
        raise tracking.TrackingUnreachableError(
            f"MLflow at {tracking_uri} is unreachable; {where} in {out}; rerun the same command to resume") from e

    summary = {
        "run_id": run_id, "experiment_id": t.experiment_id, "run_link": tracking.run_link(t, run_id),
        "registered_model": registered_model, "model_version": version,
        "model_uri": f"models:/{registered_model}/{version}", "logged_model_uri": logged_uri,
        "checkpoint": str(result.checkpoint), "export_dir": str(result.export_dir), "step": result.step,
        "resumed_from": result.resumed_from, "selected_step": result.selected_step, "metrics": {k: float(v) for k, v in metrics.items()},
        "model": cfg.model, "profile": cfg.profile, "manifest_checksum": manifest_checksum,
        "code_version": code_version, "tracking_uri": t.tracking_uri, "mlflow_ui": tracking.ui_command(t),
    }
    create_markdown_artifact(_summary_markdown(summary), key=f"train-{cfg.model}",
                             description=f"training of {cfg.model} ({cfg.profile}): MLflow run and registered version")
    logger.info("registered %s version %s (%s)", registered_model, version, summary["model_uri"])
    return summary


def train_inputs(req: TrainRequest, experiment: str = tracking.DEFAULT_EXPERIMENT,
                 registered_model: str = pyfunc_model.REGISTERED_MODEL, progress: bool = False) -> dict[str, Any]:
    """Parameters of `train_model` for a request: its cache key is everything but the data path and the bar."""
    return {"data_dir": str(req.data_dir), "out_dir": str(req.out_dir), "config": req.config.to_dict(),
            "manifest_checksum": req.manifest_checksum, "code_version": model_code_version(),
            "tracking_uri": tracking.tracking_uri(), "experiment": experiment,
            "registered_model": registered_model, "progress": progress}


def train_task(out_dir: str | Path, refresh: bool = False) -> Task:
    """`train_model` with its results kept under the output dir; `refresh` retrains even on a cache hit."""
    return train_model.with_options(result_storage=Path(out_dir) / RESULTS_DIR, refresh_cache=refresh)


def cached_result_usable(result: Mapping[str, Any]) -> bool:
    """A cache hit is only good while its checkpoint and its registered version still exist."""
    if not Path(result["checkpoint"]).is_file():
        return False
    uri = result["tracking_uri"]
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=tracking.registry_uri(uri))
    try:
        client.get_model_version(result["registered_model"], result["model_version"])
    except MlflowException:
        return False
    return True


@task(name="champion-export", cache_policy=NO_CACHE, persist_result=False)
def champion_export(out_root: str, registered_model: str = pyfunc_model.REGISTERED_MODEL) -> str | None:
    """The champion's generator export, downloaded once to `<out_root>/runs/warm-start/v<N>`, for a
    warm start (`init_from`); None when there is no champion yet."""
    t = tracking.configure()
    client = t.client()
    try:
        version = client.get_model_version_by_alias(registered_model, "champion").version
    except MlflowException:
        get_run_logger().info("no champion of %s yet: training from scratch", registered_model)
        return None
    dest = Path(out_root).absolute() / "runs" / "warm-start" / f"v{version}"
    if not (dest / "generator.pt").is_file():
        with tempfile.TemporaryDirectory() as dl, atomic_dir(dest) as tmp:
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{registered_model}/{version}", dst_path=dl, tracking_uri=t.tracking_uri))
            found = sorted((local / "artifacts").rglob("generator.pt"))  # MLflow names the folder after the export dir
            if not found:
                raise FileNotFoundError(f"{registered_model} version {version} holds no generator export")
            shutil.copytree(found[0].parent, tmp, dirs_exist_ok=True)
    get_run_logger().info("warm start from %s version %s (%s)", registered_model, version, dest)
    return str(dest)
