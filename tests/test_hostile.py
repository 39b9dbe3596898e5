"""The holes a hostile user found (issue 14), each reproduced as it was reported."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from t2v import dataset

DATA_ARGS = ["--clips-per-combo", "1", "--val-per-combo", "1", "--motions", "moving up", "--colors", "red",
             "--shapes", "circle", "--workers", "1", "--no-progress"]


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- 1. data loss

def test_data_into_a_foreign_directory_is_refused_and_deletes_nothing(t2v_cli: Callable, tmp_path: Path) -> None:
    d = tmp_path / "d"
    for rel in ("shards/train/my-archive.tar.gz", "shards/backup/old.tar.gz", "shards/backup/.keep.tmp"):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text("p\n")
    before = files(d)
    proc = t2v_cli("data", "--out", str(d), *DATA_ARGS)
    assert proc.returncode == 2, proc.stderr
    assert f"{str(d)!r} exists and is not a t2v dataset (it holds 3 files); choose an empty or new --out" in proc.stderr
    assert files(d) == before


@pytest.mark.parametrize("name", [dataset.DATASET_JSON, dataset.SHARDS_TABLE])
def test_a_dataset_with_an_unreadable_table_is_refused_not_repaired(tmp_path: Path, name: str) -> None:
    (tmp_path / dataset.MARKER).write_text("{}")
    (tmp_path / dataset.DATASET_JSON).write_text('{"format": 1, "params": {}}')
    (tmp_path / name).write_bytes(b"\x00 not what it claims to be")
    (tmp_path / "shards" / "train").mkdir(parents=True)
    (tmp_path / "shards" / "train" / "moving-up-0000.tar.gz").write_bytes(b"keep me")
    before = files(tmp_path)
    from t2v.shards import DataParams

    with pytest.raises(dataset.NotADatasetError, match=rf"is not a t2v dataset \({name} is unreadable"):
        dataset.validate_request(DataParams(motions=("moving up",), clips_per_combo=1), tmp_path)
    assert files(tmp_path) == before


def test_empty_and_marked_directories_are_accepted(tmp_path: Path) -> None:
    from t2v.shards import DataParams

    params = DataParams(motions=("moving up",), clips_per_combo=1)
    assert dataset.validate_request(params, tmp_path / "new").root == tmp_path / "new"
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert dataset.validate_request(params, tmp_path / "empty").root == tmp_path / "empty"
    (tmp_path / "empty" / "notes.txt").write_text("mine")
    with pytest.raises(dataset.NotADatasetError, match="holds 1 file\\)"):
        dataset.validate_request(params, tmp_path / "empty")
    dataset.claim(tmp_path / "empty")
    assert dataset.validate_request(params, tmp_path / "empty").root == tmp_path / "empty"
    assert (tmp_path / "empty" / "notes.txt").read_text() == "mine"
