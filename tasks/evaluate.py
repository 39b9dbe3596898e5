"""Prefect tasks of the evaluation stage: the learned metric, one model's evaluation, champion promotion.

The metrics live in `t2v.evaluate`; these wrappers add what a production run needs around them:
- validation of the whole request before any work (`prepare`): dataset, model URI, numbers,
- the featnet classifier trained once per dataset version and config, kept under `<data>/featnet/`,
- one cached evaluation per (model version, dataset manifest, evaluation config, featnet, metric code):
  media written under `<data>/eval/<model>-v<version>/` (a GIF and an MP4 per prompt with its
  samples side by side, a contact sheet of all prompts), logged with all metrics to the version's
  training run in MLflow, a Prefect markdown artifact with the table and the run link,
- promotion: the alias `champion` moves only when the challenger wins on the same prompts and seeds;
  the decision and both scores become tags of the challenger's version.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import mlflow
import numpy as np
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.client.schemas.objects import State, TaskRun
from prefect.tasks import Task

import t2v
from t2v import dataset, diversity, featnet, media, vocab
from t2v import evaluate as ev
from t2v.shards import atomic_dir
from tasks import pyfunc_model, tracking

RESULTS_DIR = ".cache/prefect-results"  # under <data>/eval: the cache lives and dies with the media it describes
EVAL_DIR = "eval"  # under the dataset root
FEATNET_DIR = "featnet"  # under the dataset root
CHAMPION = "champion"
METRIC_PREFIX = "eval/"
TAG_PREFIX = "eval."
CODE_FILES = ("evaluate.py", "judge.py", "featnet.py", "diversity.py", "render.py", "motions.py")  # what decides the numbers
NOT_RETRIED = (ValueError, TypeError, FileNotFoundError)
MODEL_URI_FORMS = "models:/<name>/<version>, models:/<name>/latest or models:/<name>@<alias>"


def metric_code_version() -> str:
    """Hash of the metric, judge, classifier and renderer sources: part of the evaluation cache key."""
    h = hashlib.sha256()
    pkg = Path(t2v.__file__).parent
    for name in CODE_FILES:
        h.update(name.encode() + b"\0" + (pkg / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=tracking.registry_uri(uri))


@dataclass(frozen=True)
class ModelRef:
    """One registered model version and the training run it came from."""

    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def resolve_model(uri: str | None, client: MlflowClient) -> ModelRef:
    """A registry URI to the version it names now (default: the latest version of t2v-generator).

    Raises ValueError naming the URI and the accepted forms, or saying that nothing is registered.
    """
    uri = uri or f"models:/{pyfunc_model.REGISTERED_MODEL}/latest"
    m = re.fullmatch(r"models:/([^/@]+)(?:/([^/@]+)|@([^/@]+))", uri.strip())
    if not m:
        raise ValueError(f"cannot evaluate {uri!r}: give a registered model as {MODEL_URI_FORMS}")
    name, version, alias = m.groups()
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        elif version == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise MlflowException(f"no versions of {name!r}")
            mv = max(versions, key=lambda v: int(v.version))
        else:
            if not version.isdigit():
                raise ValueError(f"cannot evaluate {uri!r}: version {version!r} is not a number; "
                                 f"give {MODEL_URI_FORMS}")
            mv = client.get_model_version(name, version)
    except MlflowException as e:
        raise ValueError(f"no registered model behind {uri!r} in {client.tracking_uri} ({e.message.splitlines()[0]}); "
                         f"train one first (t2v train) or pass another --model") from None
    if not mv.run_id:
        raise ValueError(f"{uri!r} (version {mv.version}) has no training run to log the evaluation to")
    return ModelRef(mv.name, str(mv.version), mv.run_id)


def current_champion(client: MlflowClient, name: str) -> ModelRef | None:
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return ModelRef(mv.name, str(mv.version), mv.run_id)


@dataclass(frozen=True)
class EvalRequest:
    """A validated evaluation: the dataset, the model version, what to ask it."""

    data_dir: Path  # absolute
    manifest_checksum: str
    model: ModelRef
    config: ev.EvalConfig
    prompts: ev.PromptSet
    tracking_uri: str


def dataset_prompts(data_dir: Path, cfg: ev.EvalConfig) -> ev.PromptSet:
    """The evaluation prompts of a dataset: its own colours, shapes and motions, its clip geometry."""
    manifest = dataset.load_manifest(data_dir)
    known = vocab.motion_names()
    missing = sorted(set(manifest["motion"]) - set(known))
    if missing:
        raise ValueError(f"the dataset at {str(data_dir)!r} has motions this process does not know: {missing}; "
                         f"set {vocab.PLUGIN_ENV} to the module(s) that register them")
    geometry = set(zip(manifest["frames"], manifest["height"]))
    if len(geometry) != 1:
        raise ValueError(f"the dataset at {str(data_dir)!r} mixes clip geometries (frames, side): {sorted(geometry)}")
    frames, size = geometry.pop()
    return ev.prompt_set([c for c in vocab.COLORS if c in set(manifest["color"])],
                         [s for s in vocab.SHAPES if s in set(manifest["shape"])],
                         [m for m in known if m in set(manifest["motion"])], int(frames), int(size), cfg)


def prepare(model: str | None = None, data: str | Path = "data", samples: int = ev.EvalConfig.samples,
            seen_prompts: int = ev.EvalConfig.seen_prompts, seed: int = ev.EvalConfig.seed) -> EvalRequest:
    """Every check of an evaluation request, before any clip is generated or anything written.

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
    uri = tracking.tracking_uri()
    ref = resolve_model(model, client_for(uri))
    return EvalRequest(data_dir, dataset.manifest_checksum(data_dir), ref, cfg, prompts, uri)


# ----------------------------------------------------------------------------- featnet


def featnet_key(manifest_checksum: str, cfg: featnet.FeatNetConfig) -> str:
    """Names one trained classifier: the dataset version, its config and the classifier's code."""
    src = Path(featnet.__file__).read_bytes()
    body = json.dumps([manifest_checksum, asdict(cfg)], sort_keys=True).encode() + src
    return hashlib.sha256(body).hexdigest()[:16]


@task(name="featnet", task_run_name="featnet {manifest_checksum:.12}", cache_policy=NO_CACHE, retries=1)
def ensure_featnet(data_dir: str, manifest_checksum: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dataset's learned-metric classifier: trained on its train split once, then read from
    `<data>/featnet/<key>/` (a file cache: it survives a wiped Prefect database)."""
    logger = get_run_logger()
    cfg = featnet.FeatNetConfig(**(config or {}))
    key = featnet_key(manifest_checksum, cfg)
    out = Path(data_dir) / FEATNET_DIR / key
    try:
        clf = featnet.load(out)
        trained = False
    except FileNotFoundError:
        logger.info("training the featnet classifier on %s (%d epochs, <= %d clips)", data_dir, cfg.epochs,
                    cfg.max_train_clips)
        clf = featnet.fit_from_shards(data_dir, cfg)
        featnet.save(clf, out)
        trained = True
    logger.info("featnet %s: val all-three %.3f (%s)", key, clf.metrics.get("val_all", float("nan")),
                "trained" if trained else "cached")
    return {"dir": str(out), "key": key, "metrics": clf.metrics, "trained": trained}


# ----------------------------------------------------------------------------- one model


def load_generator(uri: str, tracking_uri: str | None = None) -> ev.GenerateFn:
    """A registered generator as `generate(prompts, seed) -> uint8 clips`, through its pyfunc flavour."""
    mlflow.set_tracking_uri(tracking_uri or tracking.tracking_uri())
    model = mlflow.pyfunc.load_model(uri)

    def generate(prompts: list[str], seed: int) -> np.ndarray:
        return np.asarray(model.predict(list(prompts), params={"seed": int(seed)}))

    return generate


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def write_media(out_dir: Path, evaluation: ev.Evaluation, fps: int = 8) -> dict[str, list[str]]:
    """A GIF and an MP4 per prompt (its samples side by side), a contact sheet (one row per prompt,
    first sample, one column per frame) and metrics.json, published as a whole directory at once."""
    order = list(dict.fromkeys(evaluation.prompts))
    held = dict(zip(evaluation.prompts, evaluation.held_out))
    files: dict[str, list[str]] = {"gif": [], "mp4": [], "png": []}
    with atomic_dir(Path(out_dir)) as tmp:
        rows = []
        for p in order:
            idx = [i for i, q in enumerate(evaluation.prompts) if q == p]
            strip = ev.tile(evaluation.clips[idx])
            name = f"{'heldout' if held[p] else 'seen'}-{_slug(p)}"
            media.write_gif(tmp / "clips" / f"{name}.gif", strip, fps=fps)
            media.write_mp4(tmp / "clips" / f"{name}.mp4", strip, fps=fps)
            files["gif"].append(f"clips/{name}.gif")
            files["mp4"].append(f"clips/{name}.mp4")
            rows.append((f"{p}{' (held out)' if held[p] else ''}", evaluation.clips[idx[0]]))
        media.write_contact_sheet(tmp / "contact_sheet.png", rows)
        files["png"].append("contact_sheet.png")
        (tmp / "metrics.json").write_text(json.dumps(evaluation.metrics, indent=1, sort_keys=True))
    return files


def _log_to_run(client: MlflowClient, run_id: str, metrics: Mapping[str, float], out_dir: Path) -> None:
    """All finite metrics (prefixed eval/) and the media directory, on the version's training run."""
    now = int(time.time() * 1000)
    items = [Metric(f"{METRIC_PREFIX}{k}", float(v), now, 0) for k, v in sorted(metrics.items()) if np.isfinite(v)]
    for i in range(0, len(items), 1000):  # log_batch takes at most 1000 metrics per call
        client.log_batch(run_id, metrics=items[i:i + 1000])
    client.log_artifacts(run_id, str(out_dir), artifact_path=EVAL_DIR)


def _run_link(client: MlflowClient, uri: str, run_id: str) -> str:
    exp = client.get_run(run_id).info.experiment_id
    return tracking.run_link(tracking.Tracking(uri, tracking.registry_uri(uri), exp, ""), run_id)


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def _retryable(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry crashes and transient failures (a busy store, a killed worker), never bad input or a model
    whose clips do not fit the dataset: a retry would fail the same way."""
    return not isinstance(state.data, NOT_RETRIED)


@task(name="evaluate-model", task_run_name="evaluate {model[name]} v{model[version]}",
      cache_policy=(INPUTS - "data_dir") + TASK_SOURCE, persist_result=True, retries=1, retry_delay_seconds=2,
      retry_condition_fn=_retryable)
def evaluate_model(model: dict[str, str], data_dir: str, manifest_checksum: str, config: dict[str, Any],
                   prompts: dict[str, Any], featnet_dir: str, featnet_key: str, code_version: str,
                   tracking_uri: str) -> dict[str, Any]:
    """Generate, score and publish one model version; returns its metrics, media paths and run link.

    Cached on the version (and its run), the manifest checksum, the evaluation config and prompts, the
    featnet key and the metric code: champion and challenger are evaluated once per setting, and a
    cached champion is compared on exactly the prompts and seeds the challenger saw.
    """
    logger = get_run_logger()
    ref = ModelRef(**model)
    cfg = ev.EvalConfig(**config)
    pset = ev.PromptSet(tuple(prompts["heldout"]), tuple(prompts["seen"]), prompts["frames"], prompts["size"])
    client = client_for(tracking_uri)
    generate = load_generator(ref.uri, tracking_uri)
    clf = featnet.load(featnet_dir)
    bank = diversity.train_bank(data_dir)
    start = time.perf_counter()
    evaluation = ev.evaluate(generate, pset, clf, bank, cfg)
    metrics = {**evaluation.metrics, "seconds": time.perf_counter() - start}
    out_dir = Path(data_dir) / EVAL_DIR / f"{_slug(ref.name)}-v{ref.version}"
    files = write_media(out_dir, ev.Evaluation(metrics, evaluation.prompts, evaluation.held_out, evaluation.clips))
    _log_to_run(client, ref.run_id, metrics, out_dir)
    for k, v in {"key": f"{manifest_checksum[:12]}-{featnet_key}-{code_version}", "samples": str(cfg.samples),
                 "seed": str(cfg.seed), ev.PRIMARY: f"{metrics[ev.PRIMARY]:.6g}",
                 ev.TIEBREAK: f"{metrics[ev.TIEBREAK]:.6g}"}.items():
        client.set_model_version_tag(ref.name, ref.version, f"{TAG_PREFIX}{k}", v)
    link = _run_link(client, tracking_uri, ref.run_id)
    create_markdown_artifact(
        f"# Evaluation of `{ref.uri}`\n\n- MLflow run: [{ref.run_id}]({link})\n"
        f"- Prompts: {len(pset.heldout)} held out, {len(pset.seen)} seen; {cfg.samples} samples each, seed {cfg.seed}\n"
        f"- Media: `{out_dir}` (and the run's `eval/` artifacts)\n\n{ev.metrics_table({ref.uri: metrics})}\n",
        key=artifact_key(f"eval-{ref.name}-v{ref.version}"), description=f"evaluation of {ref.uri}")
    logger.info("%s: held-out all-three %.3f (pixel judge), featnet %.3f, FD %.4g (floor %.4g)", ref.uri,
                metrics["judge_heldout_all3"], metrics["featnet_heldout_all3"], metrics["fd_heldout"],
                metrics["fd_floor_heldout"])
    return {"model": model, "uri": ref.uri, "metrics": metrics, "out_dir": str(out_dir),
            "files": {k: [str(out_dir / f) for f in v] for k, v in files.items()}, "run_link": link,
            "tracking_uri": tracking_uri}


def evaluate_inputs(req: EvalRequest, ref: ModelRef, net: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters of `evaluate_model`: the same prompts, config and featnet for every model compared."""
    return {"model": asdict(ref), "data_dir": str(req.data_dir), "manifest_checksum": req.manifest_checksum,
            "config": asdict(req.config),
            "prompts": {"heldout": list(req.prompts.heldout), "seen": list(req.prompts.seen),
                        "frames": req.prompts.frames, "size": req.prompts.size},
            "featnet_dir": net["dir"], "featnet_key": net["key"], "code_version": metric_code_version(),
            "tracking_uri": req.tracking_uri}


def evaluate_task(data_dir: str | Path, refresh: bool = False) -> Task:
    """`evaluate_model` with its results kept under `<data>/eval`; `refresh` evaluates again on a cache hit."""
    return evaluate_model.with_options(result_storage=Path(data_dir) / EVAL_DIR / RESULTS_DIR, refresh_cache=refresh)


def cached_result_usable(result: Mapping[str, Any]) -> bool:
    """A cache hit is only good while its media and its model version still exist."""
    if not all(Path(p).is_file() for fs in result["files"].values() for p in fs):
        return False
    try:
        client_for(result["tracking_uri"]).get_model_version(result["model"]["name"], result["model"]["version"])
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
    client = client_for(tracking_uri)
    ch = ModelRef(**challenger["model"])
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
    for k, v in tags.items():
        client.set_model_version_tag(ch.name, ch.version, f"{TAG_PREFIX}{k}", v)
    previous = champion["model"]["version"] if champion is not None else None
    if decision.promote:
        client.set_registered_model_alias(ch.name, CHAMPION, ch.version)
    now = ch.version if decision.promote or previous is None else previous
    rows = {f"v{ch.version} (challenger)": challenger["metrics"]}
    if champion is not None and previous != ch.version:
        rows[f"v{previous} (champion)"] = champion["metrics"]
    create_markdown_artifact(
        f"# Champion decision for `{ch.name}`\n\n- Challenger: `{ch.uri}` ([MLflow run]({challenger['run_link']}))\n"
        f"- Champion before: {f'version {previous}' if previous else 'none'}; after: version {now}\n"
        f"- Decision: **{tags['decision']}**: {decision.reason}\n\n{ev.metrics_table(rows)}\n",
        key=artifact_key(f"eval-decision-{ch.name}"), description=f"champion decision for {ch.uri}")
    logger.info("%s: %s (%s); champion is version %s", ch.uri, tags["decision"], decision.reason, now)
    return {"promoted": decision.promote, "reason": decision.reason, "champion_version": now,
            "previous_champion": previous}
