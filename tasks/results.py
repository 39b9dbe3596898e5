"""Persisted task results that never run code when read back: plain JSON records only.

Prefect writes each cached result as a record that names its own serializer, and reads a record
back with whatever serializer it names: a forged record naming `pickle` would run code on the next
cached run, and a mangled one would hand the flow garbage. The cached tasks here return plain,
JSON-able dicts, so they persist with `SERIALIZER` (the json module, no object hooks), and their
cache policy is wrapped in `JsonRecordsOnly`: once the key is computed, and before Prefect looks
for the record, a record under that key that is not a plain JSON record of a dict (pickle, a
truncated or hand-edited file) is moved aside to `<key>.refused`. Prefect then finds no record: a
cache miss, so the task runs again and writes a good record.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.serializers import JSONSerializer

SERIALIZER = JSONSerializer(object_encoder=None, object_decoder=None)  # json.dumps / json.loads, nothing else
REFUSED_SUFFIX = ".refused"  # a record moved aside: kept for a person to look at, never read

log = logging.getLogger(__name__)


class UnsafeResultRecord(ValueError):
    """A persisted result that is not a plain JSON record of a dict: never deserialized."""


def check_record(path: str | Path, content: bytes) -> None:
    """Nothing if `content` is a JSON record of `SERIALIZER` whose result is a JSON object, else UnsafeResultRecord."""
    try:
        doc = json.loads(content)
        serializer = doc["metadata"]["serializer"]
        result = json.loads(doc["result"]) if isinstance(doc.get("result"), str) else None
    except (ValueError, KeyError, TypeError) as e:
        raise UnsafeResultRecord(f"result record {path} is not a JSON record ({type(e).__name__})") from e
    if (not isinstance(serializer, dict) or serializer.get("type") != "json"
            or serializer.get("object_decoder") is not None or serializer.get("jsonlib", "json") != "json"):
        raise UnsafeResultRecord(f"result record {path} names serializer {serializer!r}; only plain JSON is read")
    if not isinstance(result, dict):
        raise UnsafeResultRecord(f"result record {path} holds {type(result).__name__}, not a task's result dict")


def refuse_unsafe(path: Path) -> bool:
    """Move the record at `path` aside if it fails `check_record`; True if it did."""
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        return False
    try:
        check_record(path, content)
        return False
    except UnsafeResultRecord as e:
        os.replace(path, path.with_name(path.name + REFUSED_SUFFIX))
        log.warning("%s: moved aside to %s%s; the task runs again", e, path.name, REFUSED_SUFFIX)
        return True


@dataclass
class JsonRecordsOnly(CachePolicy):
    """`inner`'s cache key; a record stored under it that is not plain JSON becomes a cache miss."""

    inner: CachePolicy = field(default_factory=CachePolicy)

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> Optional[str]:
        key = self.inner.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        storage = getattr(getattr(task_ctx, "result_store", None), "result_storage", None)
        base = getattr(storage, "basepath", None)
        if key and base:
            refuse_unsafe(Path(base).expanduser() / key)
        return key

    def __sub__(self, other: str) -> CachePolicy:
        return JsonRecordsOnly(inner=self.inner - other)


def json_records_only(policy: CachePolicy) -> JsonRecordsOnly:
    return JsonRecordsOnly(inner=policy)
