"""Prefect tasks of the training stage: one cached, retried, MLflow-logged training, and the warm start.

The loop lives in `t2v.train` and the request check in `t2v.config`; these wrappers add what a
production run needs around them:
- a cache key of (dataset manifest checksum, full training config, model code version, output dir,
  MLflow store), never of arrays, with results persisted under the output dir,
- retries that resume from the last checkpoint (`t2v.train.train` resumes a matching checkpoint),
  continuing the same MLflow run (its id is recorded in the output dir),
- one MLflow run per training (`registry.tracking`): config as params, losses and clips/s, system
  metrics, sample grids, the Prefect flow-run id and dataset/code versions as tags; at the end the
  EMA generator registered as a new version of `t2v-generator` (`registry.versions`),
- a Prefect progress artifact during training and a summary artifact with the MLflow link at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import mlflow
from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from prefect.assets import materialize
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.client.schemas.objects import State, TaskRun
from prefect.tasks import Task

from registry import tracking, versions
from tasks import assets, results
from t2v import config as t2v_config
from t2v import dataset, distributed
from t2v import train as t2v_train

RESULTS_DIR = ".cache/prefect-results"  # under the output dir: the cache lives and dies with the checkpoint
NOT_RETRIED = (ValueError, TypeError, FileNotFoundError,  # bad input or a mismatched out dir: a retry fails again
               tracking.TrainingInProgressError, tracking.TrackingUnreachableError)


def _retryable(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry crashes and transient failures (they resume from the checkpoint), never bad input."""
    return not isinstance(state.data, NOT_RETRIED)


class _RunLogger:
    """The TrainHooks of one training: `registry.tracking.RunHooks` (metrics, sample grids and
    checkpoints to MLflow) plus Prefect's progress artifact, a log line per checkpoint and a bar.

    Per-step metrics go to MLflow and to `<run dir>/train.log`, not to the terminal, where the
    progress bar and the Prefect artifact show how far training got."""

    def __init__(self, run_id: str, client: mlflow.MlflowClient, max_steps: int, progress: bool,
                 reached: dict[str, int | None], log_file: Path) -> None:
        from tqdm import tqdm

        self.run = tracking.RunHooks(client, run_id, log_file, reached)
        self.max_steps = max_steps
        self.logger = get_run_logger()
        self.artifact = create_progress_artifact(0.0, description=f"training: 0 / {max_steps} steps")
        self.bar = tqdm(total=max_steps, desc="train", unit="step", disable=not progress, file=sys.stderr)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.on_metrics(step, metrics)
        if "loss_d" not in metrics:  # a checkpoint-selection score: no progress to report
            return
        pct = min(100.0, 100.0 * step / self.max_steps)
        update_progress_artifact(self.artifact, pct, description=(
            f"training: {step} / {self.max_steps} steps, loss_d {metrics.get('loss_d', float('nan')):.3f}, "
            f"loss_g {metrics.get('loss_g', float('nan')):.3f}, {metrics.get('clips_per_s', 0.0):.1f} clips/s"))
        self.bar.n = step
        self.bar.set_postfix(loss_d=f"{metrics.get('loss_d', 0.0):.3f}", loss_g=f"{metrics.get('loss_g', 0.0):.3f}")
        self.bar.refresh()

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.run.on_checkpoint(step, path)
        self.logger.info("checkpoint at step %d: %s", step, path)

    def hooks(self) -> t2v_train.TrainHooks:
        return t2v_train.TrainHooks(on_metrics=self.on_metrics, on_sample=self.run.on_sample,
                                    on_checkpoint=self.on_checkpoint)

    def done(self, step: int) -> None:
        update_progress_artifact(self.artifact, 100.0, description=f"training done at step {step}")


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


@materialize("mlflow://t2v-generator", name="train", task_run_name="train {config[model]} ({config[profile]})",
      cache_policy=results.json_records_only((INPUTS - "data_dir" - "progress" - "launch") + TASK_SOURCE),
      persist_result=True, result_serializer=results.SERIALIZER,
      retries=2, retry_delay_seconds=2, retry_condition_fn=_retryable)
def train_model(data_dir: str, out_dir: str, config: dict[str, Any], manifest_checksum: str, code_version: str,
                tracking_uri: str, experiment: str = tracking.DEFAULT_EXPERIMENT,
                registered_model: str = versions.REGISTERED_MODEL, progress: bool = False,
                launch: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (or resume) into `out_dir`, log it to MLflow and register the EMA generator.

    `data_dir` is left out of the cache key (the manifest checksum names the data); `progress` only
    draws a terminal bar; `launch` ({nproc_per_node, nnodes, rdzv_endpoint}) says how the config's
    `world_size` ranks start (the world size itself is in the key). Returns ids, paths and final
    metrics, never arrays.
    """
    from prefect.runtime import flow_run, task_run

    logger = get_run_logger()
    cfg = t2v_config.from_dict(config)
    out = Path(out_dir)
    reached: dict[str, int | None] = {"step": None, "checkpoint": None}
    try:
        t = tracking.configure(experiment, tracking_uri)
        frames, size = dataset.geometry(data_dir)
        key = t2v_config.config_key(cfg)
        has_ckpt = (out / "checkpoints" / t2v_config.CKPT_NAME).is_file()
        for killed in tracking.mark_orphans_killed(t):
            logger.warning("MLflow run %s was left RUNNING by a training process that is gone: marked KILLED", killed)
        run_id = tracking.resumable_run_id(t, out, key, has_ckpt)
        tracking.claim_run(t, run_id)
        tags = {"model": cfg.model, "profile": cfg.profile, "dataset.manifest_checksum": manifest_checksum,
                "code_version": code_version}
        run_tags = {**tags, "prefect.flow_run_id": str(flow_run.id), "prefect.task_run_id": str(task_run.id),
                    "data_dir": str(data_dir), "out_dir": str(out), tracking.OWNER_TAG: tracking.owner_id(),
                    **tracking.reproducibility_tags(cfg.max_seconds)}
        if cfg.max_seconds > 0:
            logger.warning("max_seconds=%g caps this run by wall clock: its step count (and model) depends on this "
                           "machine's speed; the run is tagged reproducible=false", cfg.max_seconds)
        in_world = distributed.world_from_env().world_size == cfg.world_size > 1  # this process is a torchrun rank 0
        spawn = cfg.world_size > 1 and not in_world  # the ranks run in child processes: rank 0 monitors the system
        system_metrics = tracking.system_metrics_available()
        if not system_metrics:
            logger.warning("psutil is not installed: MLflow system metrics are off for this run")

        with mlflow.start_run(run_id=run_id, experiment_id=t.experiment_id, run_name=f"{cfg.model}-{cfg.profile}",
                              tags=run_tags, log_system_metrics=system_metrics and not spawn) as run:
            run_id = run.info.run_id
            tracking.write_run_record(out, {"run_id": run_id, "tracking_uri": t.tracking_uri,
                                            "experiment_id": t.experiment_id, "training_key": key,
                                            "manifest_checksum": manifest_checksum})
            changed = tracking.log_params_once(t.client(), run_id, {
                **tracking.flatten_params(cfg.to_dict()), "data.frames": str(frames), "data.size": str(size),
                "global_batch": str(cfg.batch_size * cfg.world_size)})
            profile = dataset.summary_profile(data_dir)  # the run page's dataset input, and the version's description
            tracking.log_dataset(t.client(), run_id, str(Path(data_dir) / dataset.MANIFEST), manifest_checksum,
                                 profile, "training")
            logger.info("MLflow run %s (%s)%s", run_id, tracking.run_link(t, run_id),
                        f"; changed on resume: {changed}" if changed else "")

            if spawn:
                result = _train_ranks(cfg, Path(data_dir), out, run_id, t.tracking_uri, launch or {}, progress)
            else:
                hooks = _RunLogger(run_id, t.client(), cfg.max_steps, progress, reached, out / "train.log")
                world = (distributed.init(cfg.world_size, t2v_train.resolve_device(cfg.device, distributed.world_from_env().local_rank))
                         if in_world else None)
                try:
                    result = t2v_train.train(cfg, Path(data_dir), out, hooks.hooks())
                finally:
                    hooks.bar.close()
                    if world is not None:
                        distributed.shutdown()
                hooks.done(result.step)
            if result.resumed_from is not None:
                mlflow.set_tag("resumed_from_step", str(result.resumed_from))
            if result.selected_step is not None:  # which EMA weights were exported, and their train-prompt score
                by = "all3" if cfg.select_by == "mean" else cfg.select_by
                mlflow.set_tags({"selected_step": str(result.selected_step),
                                 f"selected_train_{by}": f"{result.selected_score:.4f}"})
            description = versions.describe_training({
                "model": cfg.model, "profile": cfg.profile, "step": result.step, "seed": cfg.seed,
                "world_size": cfg.world_size, "global_batch": cfg.batch_size * cfg.world_size,
                "manifest_checksum": manifest_checksum, "clips": profile["clips"]["train"],
                "motions": profile["motions"], "code_version": code_version, "run_id": run_id,
                "run_link": tracking.run_link(t, run_id), "flow_run_id": str(flow_run.id),
                "flow_run_link": _ui_link(flow_run.ui_url)})
            version, logged_uri = versions.register_generator(
                t, run_id, result.export_dir, result.step, cfg.model, frames, size, registered_model,
                {**tags, "prefect.flow_run_id": str(flow_run.id)}, description)
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
    assets.record({"version": version, "model_uri": summary["model_uri"], "run_id": run_id, "model": cfg.model,
                   "step": result.step, "manifest_checksum": manifest_checksum, "code_version": code_version})
    create_markdown_artifact(_summary_markdown(summary), key=f"train-{cfg.model}",
                             description=f"training of {cfg.model} ({cfg.profile}): MLflow run and registered version")
    logger.info("registered %s version %s (%s)", registered_model, version, summary["model_uri"])
    return summary


class RanksFailedError(RuntimeError):
    """A torchrun rank failed: the others were stopped; the checkpoint holds what was trained (a retry resumes)."""


def _train_ranks(cfg: t2v_config.TrainConfig, data_dir: Path, out: Path, run_id: str, tracking_uri: str,
                 launch: Mapping[str, Any], progress: bool) -> t2v_train.TrainResult:
    """Train with `cfg.world_size` ranks started by torchrun (`cli.rank`); rank 0 logs to `run_id`.
    Their output goes to the terminal and the Prefect log stays short."""
    args = ["cli.rank", "--data", str(data_dir), "--out", str(out), "--config", json.dumps(cfg.to_dict()),
            "--run-id", run_id, "--tracking-uri", tracking_uri, *(["--progress"] if progress else [])]
    nproc = int(launch.get("nproc_per_node", cfg.world_size))
    cmd = distributed.launch_command(args, nproc, int(launch.get("nnodes", 1)), 0, launch.get("rdzv_endpoint"),
                                     python=sys.executable)
    (out / t2v_train.RESULT_NAME).unlink(missing_ok=True)
    get_run_logger().info("starting %d ranks (%d on this node): %s", cfg.world_size, nproc, " ".join(cmd[:6]))
    rc = subprocess.run(cmd).returncode
    if rc != 0 or not (out / t2v_train.RESULT_NAME).is_file():
        raise RanksFailedError(f"torchrun exited with status {rc}: a rank failed and the others were stopped (their "
                               f"output is above); the last checkpoint in {out} is kept, and a rerun resumes from it")
    return t2v_train.load_result(out)


def _ui_link(url: str | None) -> str | None:
    """A Prefect UI link, or None where there is no UI to link to (the temporary server: "None/flow-runs/...")."""
    return url if url and url.startswith(("http://", "https://")) else None


def train_inputs(req: t2v_config.TrainRequest, registered_model: str = versions.REGISTERED_MODEL,
                 progress: bool = False, launch: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Parameters of `train_model` for a request: its cache key is everything but the data path and the bar."""
    return {"data_dir": str(req.data_dir), "out_dir": str(req.out_dir), "config": req.config.to_dict(),
            "manifest_checksum": req.manifest_checksum, "code_version": t2v_config.model_code_version(req.config.model),
            "tracking_uri": tracking.tracking_uri(), "experiment": req.experiment,
            "registered_model": registered_model, "progress": progress, "launch": dict(launch or {})}


def train_task(out_dir: str | Path, inputs: Mapping[str, Any], refresh: bool = False) -> Task:
    """`train_model` with its results kept under the output dir, materializing the registered model's
    Prefect asset from the dataset's (`inputs`: the call's arguments); `refresh` retrains even on a
    cache hit."""
    return train_model.with_options(
        result_storage=Path(out_dir) / RESULTS_DIR, refresh_cache=refresh,
        assets=[assets.model_asset(inputs["tracking_uri"], inputs.get("registered_model", versions.REGISTERED_MODEL))],
        asset_deps=[assets.dataset_asset(inputs["data_dir"])])


def cached_result_usable(result: Mapping[str, Any]) -> bool:
    """A cache hit is only good while its checkpoint and its registered version still exist."""
    if not Path(result["checkpoint"]).is_file():
        return False
    try:
        versions.client_for(result["tracking_uri"]).get_model_version(result["registered_model"],
                                                                     result["model_version"])
    except MlflowException:
        return False
    return True


@task(name="champion-export", cache_policy=NO_CACHE, persist_result=False)
def champion_export(out_root: str, registered_model: str = versions.REGISTERED_MODEL) -> str | None:
    """The champion's generator export, downloaded once to `<out_root>/runs/warm-start/v<N>`, for a
    warm start (`init_from`); None when there is no champion yet."""
    client = tracking.configure().client()
    champion = versions.current_champion(client, registered_model)
    if champion is None:
        get_run_logger().info("no champion of %s yet: training from scratch", registered_model)
        return None
    dest = versions.download_export(client, registered_model, champion.version,
                                    Path(out_root).absolute() / "runs" / "warm-start" / f"v{champion.version}")
    get_run_logger().info("warm start from %s version %s (%s)", registered_model, champion.version, dest)
    return str(dest)
