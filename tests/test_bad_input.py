"""Bad input to the data stage fails before any work, names the bad value and the valid choices,
and leaves nothing behind: through the flow and through the `t2v data` command."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

# (case id, flow overrides, CLI args replacing the defaults, fragments the message must contain)
CASES: list[tuple[str, dict[str, Any], list[str], list[str]]] = [
    ("unknown-motion", {"motions": ["moving sideways"]}, ["--motions", "moving sideways"],
     ["'moving sideways'", "moving up", "spinning counter-clockwise"]),
    ("unknown-shape", {"shapes": ["hexagon"]}, ["--shapes", "hexagon"], ["'hexagon'", "circle, square, triangle"]),
    ("unknown-colour", {"colors": ["pink"]}, ["--colors", "pink"], ["'pink'", "red, green, blue, yellow, purple"]),
    ("zero-clips", {"clips_per_combo": 0}, ["--clips-per-combo", "0"], ["clips_per_combo", "positive integer", "0"]),
    ("negative-val", {"val_per_combo": -1}, ["--val-per-combo", "-1"], ["val_per_combo", "positive integer", "-1"]),
    ("zero-shard-size", {"shard_size": 0}, ["--shard-size", "0"], ["shard_size", "positive integer", "0"]),
    ("size-not-multiple-of-8", {"size": 36}, ["--size", "36"], ["36", "multiple of 8", "at least 32"]),
    ("size-below-32", {"size": 24}, ["--size", "24"], ["24", "multiple of 8", "at least 32"]),
    ("zero-workers", {"workers": 0}, ["--workers", "0"], ["workers", "positive integer", "0"]),
    ("negative-seed", {"seed": -1}, ["--seed", "-1"], ["seed must be an integer from 0 to 4294967295", "-1"]),
    ("huge-clip-count", {"clips_per_combo": 100_000_000}, ["--clips-per-combo", "100000000"],
     ["clips_per_combo must be at most 500,000", "100,000,000"]),
    ("over-the-clip-limit", {"clips_per_combo": 300_000, "colors": ["red", "blue"]},
     ["--clips-per-combo", "300000", "--colors", "red", "blue"],
     ["600,002 clips, over the limit of 500,000", "GB of shards", "clips_per_combo (now 300,000)"]),
    ("huge-frame", {"size": 20832}, ["--size", "20832"], ["size must be at most 256, got 20832"]),
    ("too-many-frames", {"frames": 500}, ["--frames", "500"], ["frames must be at most 64, got 500"]),
    ("malformed-dask-address", {"dask_address": "127.0.0.1:8786"}, ["--dask-address", "127.0.0.1:8786"],
     ["dask_address must look like tcp://HOST:PORT", "'127.0.0.1:8786'"]),
]
GOOD: dict[str, Any] = dict(motions=["moving up"], colors=["red"], shapes=["circle"], clips_per_combo=1,
                            val_per_combo=1, frames=8, size=32, shard_size=4, workers=1)


def cli_args(out: Path, replace: list[str]) -> list[str]:
    args = {"--out": [str(out)], "--motions": ["moving up"], "--colors": ["red"], "--shapes": ["circle"],
            "--clips-per-combo": ["1"], "--val-per-combo": ["1"], "--frames": ["8"], "--size": ["32"],
            "--shard-size": ["4"], "--workers": ["1"]}
    flag = None
    for a in replace:
        if a.startswith("--"):
            flag, args[a] = a, []
        else:
            args[flag].append(a)
    return ["data", *(x for flag, values in args.items() for x in (flag, *values))]


def unwritable_out(tmp_path: Path) -> Path:
    """A dir that cannot be created even by root: its parent is a regular file."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output's parent dir should be")
    return blocker / "data"


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.mark.parametrize("case,over,_args,fragments", CASES, ids=[c[0] for c in CASES])
def test_flow_rejects_bad_input_before_any_work(prefect_api: str, tmp_path: Path, case: str, over: dict[str, Any],
                                                _args: list[str], fragments: list[str]) -> None:
    from flows.data import data_stage

    out = tmp_path / "data"
    with pytest.raises(ValueError) as err:
        data_stage(out=str(out), **{**GOOD, **over})
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))
    assert listing(tmp_path) == []


def test_flow_rejects_unwritable_output_dir(prefect_api: str, tmp_path: Path) -> None:
    from flows.data import data_stage

    out = unwritable_out(tmp_path)
    with pytest.raises(ValueError, match="is a file, not a directory") as err:
        data_stage(out=str(out), **GOOD)
    assert str(out) in str(err.value)
    assert str(out.parent) in str(err.value)
    assert listing(tmp_path) == ["not-a-dir"]


def test_flow_rejects_motion_invisible_on_chosen_shapes(prefect_api: str, tmp_path: Path) -> None:
    from flows.data import data_stage

    with pytest.raises(ValueError, match=r"'spinning clockwise' is only visible on square, triangle"):
        data_stage(out=str(tmp_path / "data"), **{**GOOD, "motions": ["spinning clockwise"]})
    assert listing(tmp_path) == []


@pytest.mark.parametrize("case,_over,args,fragments", CASES, ids=[c[0] for c in CASES])
def test_cli_rejects_bad_input_with_exit_2(t2v_cli: Callable, tmp_path: Path, case: str, _over: dict[str, Any],
                                           args: list[str], fragments: list[str]) -> None:
    r = t2v_cli(*cli_args(tmp_path / "data", args), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("t2v data: error:"), r.stderr
    for fragment in fragments:
        assert fragment in r.stderr, (fragment, r.stderr)
    assert listing(tmp_path) == []


def test_cli_rejects_unwritable_output_dir(t2v_cli: Callable, tmp_path: Path) -> None:
    out = unwritable_out(tmp_path)
    r = t2v_cli(*cli_args(out, []), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert str(out) in r.stderr
    assert "is a file, not a directory" in r.stderr
    assert listing(tmp_path) == ["not-a-dir"]


def test_cli_rejects_a_non_integer_count(t2v_cli: Callable, tmp_path: Path) -> None:
    r = t2v_cli(*cli_args(tmp_path / "data", ["--clips-per-combo", "many"]), cwd=tmp_path)
    assert r.returncode == 2
    assert "--clips-per-combo" in r.stderr
    assert "'many'" in r.stderr
    assert listing(tmp_path) == []
