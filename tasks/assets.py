"""The pipeline's Prefect assets: the dataset, the registered model and its evaluations.

The data stage materializes the dataset, the train task the registered model (depending on the
dataset), the evaluation the model's evaluations (depending on the model), so the Prefect UI's
asset graph reads dataset -> model -> evaluation. Each materialization carries what identifies it
(checksums, the version, the held-out figure) as metadata. A cached task run materializes nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from prefect.assets import Asset, AssetProperties
from prefect.context import AssetContext
from prefect.types.names import MAX_ASSET_KEY_LENGTH, RESTRICTED_ASSET_CHARACTERS

from t2v import dataset


def _key(scheme: str, path: str) -> str:
    """`scheme://path` with the characters Prefect refuses in keys replaced; long keys end in a hash."""
    clean = "".join("_" if c in RESTRICTED_ASSET_CHARACTERS else c for c in path)
    key = f"{scheme}://{clean}"
    if len(key) > MAX_ASSET_KEY_LENGTH:
        key = key[:MAX_ASSET_KEY_LENGTH - 17] + "-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return key


def dataset_asset(root: str | Path) -> Asset:
    manifest = Path(root).expanduser().resolve() / dataset.MANIFEST
    return Asset(key=_key("file", str(manifest)), properties=AssetProperties(
        name=f"t2v dataset {Path(root).name}", url=manifest.as_uri(),
        description="Rendered clips in WebDataset shards, listed with their sha256 by this manifest."))


def _store(tracking_uri: str) -> str:
    """The tracking store as a key path: host:port of a server, `sqlite/<file>` of a SQLite store."""
    parts = urlsplit(tracking_uri)
    return parts.netloc + parts.path if parts.netloc else f"{parts.scheme or 'file'}{parts.path}"


def model_asset(tracking_uri: str, registered_model: str) -> Asset:
    return Asset(key=_key("mlflow", f"{_store(tracking_uri)}/models/{registered_model}"), properties=AssetProperties(
        name=f"MLflow model {registered_model}",
        description="Registered text-to-video generator; each materialization is a new version."))


def evaluation_asset(tracking_uri: str, registered_model: str) -> Asset:
    return Asset(key=_key("mlflow", f"{_store(tracking_uri)}/models/{registered_model}/evaluations"),
                 properties=AssetProperties(
                     name=f"evaluations of {registered_model}",
                     description="Held-out and seen-prompt scores of a version, and the champion decision."))


def record(metadata: Mapping[str, Any]) -> None:
    """Attach `metadata` to what the running task materializes (nothing outside a materializing task)."""
    ctx = AssetContext.get()
    if ctx is None:
        return
    for asset in ctx.downstream_assets:
        ctx.add_asset_metadata(asset.key, dict(metadata))
