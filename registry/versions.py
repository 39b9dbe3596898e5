"""Registered generator versions: naming one by URI, loading it, registering a new one, the `champion`.

Every MLflow registry call of the pipeline is here, so the alias, the tags a version carries and the
URI forms have one home.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import mlflow
import numpy as np
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from registry import CHAMPION, REGISTERED_MODEL, pyfunc, tracking
from t2v.evaluate import GenerateFn
from t2v.io import atomic_dir

MODEL_URI_FORMS = "models:/<name>/<version>, models:/<name>/latest or models:/<name>@<alias>"
EVAL_ARTIFACTS = "eval"  # where an evaluation's media go in the training run's artifacts
METRIC_PREFIX = "eval/"  # evaluation metrics on the training run
TAG_PREFIX = "eval."  # evaluation tags on the version


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
    uri = uri or f"models:/{REGISTERED_MODEL}/latest"
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


def runs_only_installed_code(flavor: Mapping[str, Any]) -> bool:
    """Whether loading a pyfunc flavour executes nothing from the store: its loader is an installed
    module outside MLflow (MLflow's own loaders unpickle: cloudpickled wrappers, models-from-code
    files, pickled estimators) and it names no code directories to put on `sys.path`."""
    loader = str(flavor.get("loader_module") or "")
    return bool(loader) and not loader.startswith("mlflow.") and not flavor.get("code")


def load_registered(uri: str, tracking_uri: str | None = None) -> GenerateFn:
    """A registered generator as `generate(prompts, seed) -> uint8 clips`.

    A version whose loading runs only installed code (this pipeline's versions name `registry.pyfunc`)
    loads through its pyfunc flavour, the contract users get. Any other version, such as one registered
    before the loader module with a cloudpickled wrapper, or a forged one, is read through its export's
    weights alone: its pickle is never loaded, its code never imported."""
    mlflow.set_tracking_uri(tracking_uri or tracking.tracking_uri())
    if runs_only_installed_code(mlflow.models.get_model_info(uri).flavors.get("python_function", {})):
        model = mlflow.pyfunc.load_model(uri)

        def generate(prompts: list[str], seed: int) -> np.ndarray:
            return np.asarray(model.predict(list(prompts), params={"seed": int(seed)}))

        return generate
    from t2v.sampler import load_generator

    with tempfile.TemporaryDirectory() as dl:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dl))
        sampler = load_generator(_export_in(local, uri), pyfunc.serving_device())
    return lambda prompts, seed: sampler.generate(list(prompts), seed=int(seed))


def _export_in(local: Path, what: str) -> Path:
    """The `t2v.sampler` export inside a downloaded model (MLflow names its folder after the export dir)."""
    found = sorted(p.parent for p in local.rglob("generator.pt") if p.is_file() and not p.is_symlink())
    if not found:
        raise FileNotFoundError(f"{what} holds no generator export (no generator.pt)")
    return found[0]


def _existing_version(client: mlflow.MlflowClient, name: str, run_id: str, step: int) -> Any | None:
    """The version this run already registered for this step (a retry after registering registers nothing new)."""
    for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
        if v.tags.get("step") == str(step):
            return v
    return None


MODEL_DESCRIPTION = """Text-to-video generators trained by t2v-pipeline on synthetic clips.

Each version is a pyfunc model: prompts in, uint8 clips (N, T, H, W, 3) out, deterministic per seed.

```python
import mlflow
model = mlflow.pyfunc.load_model("models:/t2v-generator@champion")
clips = model.predict(["red circle moving up-right"], params={"seed": 0})
```

The `champion` alias names the version that won the last evaluation; `<family>-latest` the newest
of each model family. A version's description says what trained it, on which dataset, and how it
scored."""
EVAL_HEADING = "## Evaluation"  # the section `describe_evaluation` writes (replaced on re-evaluation)


def describe_training(facts: Mapping[str, Any]) -> str:
    """A version's description for a person: what was trained, on what, from where (links)."""
    f = facts
    return "\n".join([
        f"**{f['model']}** generator, profile `{f['profile']}`: {f['step']} steps, seed {f['seed']}, "
        f"{f['world_size']} rank(s), global batch {f['global_batch']}.",
        "",
        f"- Dataset: manifest checksum `{f['manifest_checksum'][:16]}`, {f['clips']} training clips of "
        f"{len(f['motions'])} motions ({', '.join(f['motions'])})",
        f"- Code version: `{f['code_version']}`",
        f"- MLflow run: [{f['run_id']}]({f['run_link']})",
        f"- Prefect flow run: [{f['flow_run_id']}]({f['flow_run_link']})" if f.get("flow_run_link")
        else f"- Prefect flow run: `{f['flow_run_id']}`",
    ])


def describe_evaluation(client: MlflowClient, ref: ModelRef, metrics: Mapping[str, float], decision: str,
                        reason: str, champion_after: str) -> None:
    """Write (or rewrite) the version description's evaluation section: the held-out figures and
    the champion decision."""
    mv = client.get_model_version(ref.name, ref.version)
    head = (mv.description or "").split(f"\n\n{EVAL_HEADING}")[0]
    fig = {k: metrics.get(k, float("nan")) for k in ("judge_heldout_all3", "featnet_heldout_all3", "fd_heldout")}
    body = "\n".join([
        EVAL_HEADING, "",
        f"- Held-out prompts, all three attributes right: {fig['judge_heldout_all3']:.3f} (pixel judge), "
        f"{fig['featnet_heldout_all3']:.3f} (featnet); Fréchet distance {fig['fd_heldout']:.4g}",
        f"- Champion decision: **{decision}** ({reason}); champion is now version {champion_after}",
    ])
    client.update_model_version(ref.name, ref.version, description=f"{head}\n\n{body}" if head else body)


def register_generator(t: tracking.Tracking, run_id: str, export_dir: Path, step: int, model: str,
                       frames: int, size: int, registered_model: str, tags: Mapping[str, str],
                       description: str = "") -> tuple[str, str]:
    """Log the shipped generator as a pyfunc model and register it, with `description` on the version
    and `MODEL_DESCRIPTION` on a registered model that has none; returns (version, logged model URI)."""
    client = t.client()
    found = _existing_version(client, registered_model, run_id, step)
    if found is not None:
        return str(found.version), str(found.source)
    info = pyfunc.log_generator(export_dir, frames, size, registered_model,
                                metadata={"step": step, **tags})
    version = str(info.registered_model_version)
    if description:
        client.update_model_version(registered_model, version, description=description)
    if not client.get_registered_model(registered_model).description:
        client.update_registered_model(registered_model, description=MODEL_DESCRIPTION)
    for k, v in {**tags, "step": str(step)}.items():
        client.set_model_version_tag(registered_model, version, k, v)
    client.set_registered_model_alias(registered_model, f"{model}-latest", version)
    return version, info.model_uri


def log_evaluation(client: MlflowClient, ref: ModelRef, metrics: Mapping[str, float], out_dir: Path,
                   tags: Mapping[str, str]) -> None:
    """All finite metrics (prefixed eval/) and the media directory on the version's training run, and
    `tags` (prefixed eval.) on the version."""
    run_id = ref.run_id
    now = int(time.time() * 1000)
    items = [Metric(f"{METRIC_PREFIX}{k}", float(v), now, 0) for k, v in sorted(metrics.items()) if np.isfinite(v)]
    for i in range(0, len(items), 1000):  # log_batch takes at most 1000 metrics per call
        client.log_batch(run_id, metrics=items[i:i + 1000])
    client.log_artifacts(run_id, str(out_dir), artifact_path=EVAL_ARTIFACTS)
    for k, v in tags.items():
        client.set_model_version_tag(ref.name, ref.version, f"{TAG_PREFIX}{k}", v)


def run_link(client: MlflowClient, uri: str, run_id: str) -> str:
    """The MLflow UI page of a run, found by its id alone."""
    exp = client.get_run(run_id).info.experiment_id
    return tracking.run_link(tracking.Tracking(uri, tracking.registry_uri(uri), exp, ""), run_id)




def set_champion(client: MlflowClient, ref: ModelRef, promote: bool, tags: Mapping[str, str]) -> None:
    """Record a champion decision on the challenger's version (tags prefixed eval.) and, when it won,
    move the alias to it."""
    for k, v in tags.items():
        client.set_model_version_tag(ref.name, ref.version, f"{TAG_PREFIX}{k}", v)
    if promote:
        client.set_registered_model_alias(ref.name, CHAMPION, ref.version)


def download_export(client: MlflowClient, name: str, version: str, dest: Path) -> Path:
    """A version's generator export (`t2v.sampler` files), downloaded once into `dest`, atomically."""
    if not (dest / "generator.pt").is_file():
        with tempfile.TemporaryDirectory() as dl, atomic_dir(dest) as tmp:
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=dl, tracking_uri=client.tracking_uri))
            shutil.copytree(_export_in(local, f"{name} version {version}"), tmp, dirs_exist_ok=True)
    return dest


def lineage(uri: str, client: MlflowClient) -> dict[str, Any]:
    """Where a registered version came from, read back from the MLflow store alone: the version,
    its training run, the Prefect flow run that ran it, the dataset inputs and the code version."""
    ref = resolve_model(uri, client)
    mv = client.get_model_version(ref.name, ref.version)
    run = client.get_run(ref.run_id)
    inputs = []
    for di in (run.inputs.dataset_inputs if run.inputs else []):
        tags = {t.key: t.value for t in di.tags}
        try:
            source = json.loads(di.dataset.source).get("uri", di.dataset.source)
        except (ValueError, AttributeError):
            source = di.dataset.source
        inputs.append({"name": di.dataset.name, "digest": di.dataset.digest, "source": source,
                       "profile": di.dataset.profile, "context": tags.get(tracking.DATASET_CONTEXT_TAG, ""),
                       "manifest_checksum": tags.get("manifest_checksum", "")})
    aliases = sorted(getattr(mv, "aliases", []) or [])
    return {"uri": uri, "name": ref.name, "version": ref.version, "aliases": aliases, "tags": dict(mv.tags),
            "run_id": ref.run_id, "run_name": run.info.run_name, "run_status": run.info.status,
            "run_link": run_link(client, client.tracking_uri, ref.run_id),
            # the version's own tags first: a resumed run's tags name its latest flow run, not this version's
            "flow_run_id": mv.tags.get("prefect.flow_run_id") or run.data.tags.get("prefect.flow_run_id", ""),
            "manifest_checksum": mv.tags.get("dataset.manifest_checksum") or run.data.tags.get("dataset.manifest_checksum", ""),
            "code_version": mv.tags.get("code_version") or run.data.tags.get("code_version", ""),
            "seed": run.data.params.get("seed", ""),
            "datasets": inputs}
