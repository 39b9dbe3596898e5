"""Prefect tasks of the evaluation stage: the learned metric, one model's evaluation, champion promotion.

The metrics live in `t2v.evaluate`, the request check in `registry.evaluation` and every registry
call in `registry.versions`; these wrappers add caching, retries and Prefect artifacts:
- the featnet classifier trained once per dataset version and config, kept under `<data>/featnet/`,
- one cached evaluation per (model version, dataset manifest, evaluation config, featnet, metric code):
  media written under `<data>/eval/<model>-v<version>/` (a GIF and an MP4 per prompt with its
  samples side by side, a contact sheet of all prompts), logged with all metrics to the version's
  training run in MLflow, a Prefect markdown artifact with the table and the run link,
- promotion: the alias `champion` moves only when the challenger wins on the same prompts and seeds;
  the decision and both scores become tags of the challenger's version.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from prefect.assets import materialize
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.client.schemas.objects import State, TaskRun
from prefect.tasks import Task
from tqdm import tqdm

from registry import tracking, versions
from registry.evaluation import EVAL_DIR, EvalRequest
from tasks import assets, results
from t2v import dataset, diversity, featnet
from t2v import evaluate as ev
from t2v.io import safe_name

RESULTS_DIR = ".cache/prefect-results"  # under <data>/eval: the cache lives and dies with the media it describes
FEATNET_DIR = "featnet"  # under the dataset root
NOT_RETRIED = (ValueError, TypeError, FileNotFoundError)


@task(name="featnet", task_run_name="featnet reference", cache_policy=NO_CACHE, retries=1)
def ensure_featnet(data_dir: str, vocabulary: list[list[str]], frames: int, size: int,
                   config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The reference network of the dataset's vocabulary and geometry (`t2v.featnet.reference_key`):
    the one shipped with the package when it matches, else one trained once on a rendered reference
    set and kept under `<data>/featnet/<key>/` (a file cache: it survives a wiped Prefect database)."""
    logger = get_run_logger()
    cfg = featnet.FeatNetConfig(**(config or {}))
    params = featnet.reference_params(*vocabulary, frames, size)
    key = featnet.reference_key(params, cfg)
    source = "shipped"
    out = featnet.SHIPPED_DIR / key
    if not out.is_dir():
        out, source = Path(data_dir) / FEATNET_DIR / key, "cached"
    try:
        clf = featnet.load(out)
    except FileNotFoundError:
        source = "trained"
        logger.info("training the reference featnet %s (%d epochs, <= %d clips; once per vocabulary)", key,
                    cfg.epochs, cfg.max_train_clips)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".reference-") as tmp:
            clf = featnet.fit_reference(params, Path(tmp) / "data", cfg)
        featnet.save(clf, out)
    logger.info("featnet %s: val all-three %.3f (%s)", key, clf.metrics.get("val_all", float("nan")), source)
    return {"dir": str(out), "key": key, "metrics": clf.metrics, "trained": source == "trained", "source": source}


def _retryable(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry crashes and transient failures (a busy store, a killed worker), never bad input or a model
    whose clips do not fit the dataset: a retry would fail the same way."""
    return not isinstance(state.data, NOT_RETRIED)


@materialize("mlflow://t2v-generator/evaluations", name="evaluate-model",
             task_run_name="evaluate {model[name]} v{model[version]}",
      cache_policy=results.json_records_only((INPUTS - "data_dir" - "progress") + TASK_SOURCE), persist_result=True,
      result_serializer=results.SERIALIZER, retries=1, retry_delay_seconds=2,
      retry_condition_fn=_retryable)
def evaluate_model(model: dict[str, str], data_dir: str, manifest_checksum: str, config: dict[str, Any],
                   prompts: dict[str, Any], featnet_dir: str, featnet_key: str, code_version: str,
                   tracking_uri: str, progress: bool = False) -> dict[str, Any]:
    """Generate, score and publish one model version; returns its metrics, media paths and run link.
    `progress` draws a terminal bar of its phases and is not part of the cache key.

    Cached on the version (and its run), the manifest checksum, the evaluation config and prompts, the
    featnet key and the metric code: champion and challenger are evaluated once per setting, and a
    cached champion is compared on exactly the prompts and seeds the challenger saw.
    """
    logger = get_run_logger()
    ref = versions.ModelRef(**model)
    cfg = ev.EvalConfig(**config)
    pset = ev.PromptSet(tuple(prompts["heldout"]), tuple(prompts["seen"]), prompts["frames"], prompts["size"])
    client = versions.client_for(tracking_uri)
    generate = versions.load_registered(ref.uri, tracking_uri)
    clf = featnet.load(featnet_dir)
    with tqdm(total=len(ev.EVAL_PHASES) + 2, desc=f"evaluate v{ref.version}", unit="phase", file=sys.stderr,
              disable=not progress) as bar:
        bar.set_postfix_str("training bank")  # several seconds of reading train shards: on the bar too
        bank = diversity.train_bank(data_dir)
        start = time.perf_counter()

        def on_phase(name: str) -> None:  # a phase starts: the one before it is done
            bar.set_postfix_str(name)
            bar.update(1)

        evaluation = ev.evaluate(generate, pset, clf, bank, cfg, on_phase)
        metrics = {**evaluation.metrics, "seconds": time.perf_counter() - start}
        out_dir = Path(data_dir) / EVAL_DIR / f"{safe_name(ref.name)}-v{ref.version}"
        on_phase("media")
        files = ev.write_media(out_dir, ev.Evaluation(metrics, evaluation.prompts, evaluation.held_out,
                                                      evaluation.clips))
        bar.update(1)
    versions.log_evaluation(client, ref, metrics, out_dir, {
        "key": f"{manifest_checksum[:12]}-{featnet_key}-{code_version}", "samples": str(cfg.samples),
        "seed": str(cfg.seed), ev.PRIMARY: f"{metrics[ev.PRIMARY]:.6g}", ev.TIEBREAK: f"{metrics[ev.TIEBREAK]:.6g}"})
    tracking.log_dataset(client, ref.run_id, str(Path(data_dir) / dataset.MANIFEST), manifest_checksum,
                         {"prompts": {"heldout": len(pset.heldout), "seen": len(pset.seen)}, "samples": cfg.samples,
                          "seed": cfg.seed}, "evaluation", part="heldout")
    link = versions.run_link(client, tracking_uri, ref.run_id)
    create_markdown_artifact(
        f"# Evaluation of `{ref.uri}`\n\n- MLflow run: [{ref.run_id}]({link})\n"
        f"- Prompts: {len(pset.heldout)} held out, {len(pset.seen)} seen; {cfg.samples} samples each, seed {cfg.seed}\n"
        f"- Media: `{out_dir}` (and the run's `eval/` artifacts)\n\n{ev.metrics_table({ref.uri: metrics})}\n",
        key=safe_name(f"eval-{ref.name}-v{ref.version}"), description=f"evaluation of {ref.uri}")
    assets.record({"version": ref.version, "model_uri": ref.uri, "manifest_checksum": manifest_checksum,
                   **{k: float(metrics[k]) for k in ("judge_heldout_all3", "featnet_heldout_all3", "fd_heldout")}})
    logger.info("%s: held-out all-three %.3f (pixel judge), featnet %.3f, FD %.4g (floor %.4g)", ref.uri,
                metrics["judge_heldout_all3"], metrics["featnet_heldout_all3"], metrics["fd_heldout"],
                metrics["fd_floor_heldout"])
    return {"model": model, "uri": ref.uri, "metrics": metrics, "out_dir": str(out_dir),
            "files": {k: [str(out_dir / f) for f in v] for k, v in files.items()}, "run_link": link,
            "tracking_uri": tracking_uri}


def evaluate_inputs(req: EvalRequest, ref: versions.ModelRef, net: Mapping[str, Any],
                    progress: bool = False) -> dict[str, Any]:
    """Parameters of `evaluate_model`: the same prompts, config and featnet for every model compared."""
    return {"model": asdict(ref), "data_dir": str(req.data_dir), "manifest_checksum": req.manifest_checksum,
            "config": asdict(req.config),
            "prompts": {"heldout": list(req.prompts.heldout), "seen": list(req.prompts.seen),
                        "frames": req.prompts.frames, "size": req.prompts.size},
            "featnet_dir": net["dir"], "featnet_key": net["key"], "code_version": ev.code_version(),
            "tracking_uri": req.tracking_uri, "progress": progress}


def evaluate_task(data_dir: str | Path, inputs: Mapping[str, Any], refresh: bool = False) -> Task:
    """`evaluate_model` with its results kept under `<data>/eval`, materializing the Prefect asset of the
    model's evaluations from the model's (`inputs`: the call's arguments); `refresh` evaluates again on
    a cache hit."""
    name, uri = inputs["model"]["name"], inputs["tracking_uri"]
    return evaluate_model.with_options(result_storage=Path(data_dir) / EVAL_DIR / RESULTS_DIR, refresh_cache=refresh,
                                       assets=[assets.evaluation_asset(uri, name)],
                                       asset_deps=[assets.model_asset(uri, name)])


def cached_result_usable(result: Mapping[str, Any]) -> bool:
    """A cache hit is only good while its media and its model version still exist."""
    if not all(Path(p).is_file() for fs in result["files"].values() for p in fs):
        return False
    try:
        versions.client_for(result["tracking_uri"]).get_model_version(result["model"]["name"], result["model"]["version"])
    except MlflowException:
        return False
    return True


# ----------------------------------------------------------------------------- promotion


@task(name="promote", cache_policy=NO_CACHE)
def promote(challenger: dict[str, Any], champion: dict[str, Any] | None, tracking_uri: str,
            champion_error: str | None = None) -> dict[str, Any]:
    """Move the `champion` alias to the challenger if it wins (t2v.evaluate.decide) and record why.

    The challenger's version gets tags eval.decision, eval.reason and both models' scores. With no
    champion the challenger becomes the first one; a champion that could not be evaluated on this
    dataset (`champion_error`) cannot defend its title.
    """
    logger = get_run_logger()
    client = versions.client_for(tracking_uri)
    ch = versions.ModelRef(**challenger["model"])
    if champion is not None and champion["model"]["version"] == ch.version:
        decision = ev.Decision(False, "already the champion")
    elif champion_error is not None:
        decision = ev.Decision(True, f"the champion cannot be evaluated on this dataset: {champion_error}")
    else:
        decision = ev.decide(challenger["metrics"], champion["metrics"] if champion else None)
    tags = {"decision": "promoted" if decision.promote else "not promoted", "reason": decision.reason,
            f"score.{ev.PRIMARY}": f"{challenger['metrics'][ev.PRIMARY]:.6g}",
            f"score.{ev.TIEBREAK}": f"{challenger['metrics'][ev.TIEBREAK]:.6g}"}
    if champion is not None:
        tags.update({"champion_version": champion["model"]["version"],
                     f"champion.{ev.PRIMARY}": f"{champion['metrics'][ev.PRIMARY]:.6g}",
                     f"champion.{ev.TIEBREAK}": f"{champion['metrics'][ev.TIEBREAK]:.6g}"})
    versions.set_champion(client, ch, decision.promote, tags)
    previous = champion["model"]["version"] if champion is not None else None
    now = ch.version if decision.promote or previous is None else previous
    versions.describe_evaluation(client, ch, challenger["metrics"], tags["decision"], decision.reason, now)
    rows = {f"v{ch.version} (challenger)": challenger["metrics"]}
    if champion is not None and previous != ch.version:
        rows[f"v{previous} (champion)"] = champion["metrics"]
    create_markdown_artifact(
        f"# Champion decision for `{ch.name}`\n\n- Challenger: `{ch.uri}` ([MLflow run]({challenger['run_link']}))\n"
        f"- Champion before: {f'version {previous}' if previous else 'none'}; after: version {now}\n"
        f"- Decision: **{tags['decision']}**: {decision.reason}\n\n{ev.metrics_table(rows)}\n",
        key=safe_name(f"eval-decision-{ch.name}"), description=f"champion decision for {ch.uri}")
    logger.info("%s: %s (%s); champion is version %s", ch.uri, tags["decision"], decision.reason, now)
    return {"promoted": decision.promote, "reason": decision.reason, "champion_version": now,
            "previous_champion": previous}
