"""tools/uv_args.py: pip's package sources as `uv pip install` flags, so `make install`'s uv finds what
pip would (the local CPU torch wheel rather than a CUDA build from PyPI)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "uv_args.py"


def load() -> object:
    spec = importlib.util.spec_from_file_location("uv_args", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pip_settings_become_uv_flags_once_each_with_pips_index_rule() -> None:
    config = "\n".join([
        ":env:.find-links='/opt/wheels'",
        ":env:.index-url='https://mirror.example/simple'",
        ":env:.default-timeout='180'",  # not a package source: left out
        "global.constraint='/etc/pip/cap.txt'",
        "global.extra-index-url='file:///opt/a/simple file:///opt/b/simple'",
        "global.find-links='/opt/wheels /srv/more wheels'",
        "global.index-url='https://ignored.example/simple'",  # PIP_INDEX_URL wins over the config files
    ])
    assert load().uv_args(config) == [
        "--index-strategy", "unsafe-best-match",
        "--index-url", "https://mirror.example/simple",
        "--find-links", "/opt/wheels", "--find-links", "/srv/more", "--find-links", "wheels",
        "--constraint", "/etc/pip/cap.txt",
        "--extra-index-url", "file:///opt/a/simple", "--extra-index-url", "file:///opt/b/simple",
    ]
    assert load().uv_args("") == ["--index-strategy", "unsafe-best-match"]


def test_reads_the_configuration_pip_itself_reports(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nfind-links = /srv/t2v-wheels\nextra-index-url = file:///srv/t2v-index/simple\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={**env, "PIP_CONFIG_FILE": str(conf)})
    assert proc.returncode == 0, proc.stderr
    flags = proc.stdout.split()
    assert flags[:2] == ["--index-strategy", "unsafe-best-match"]
    pairs = list(zip(flags[2::2], flags[3::2]))
    assert ("--find-links", "/srv/t2v-wheels") in pairs
    assert ("--extra-index-url", "file:///srv/t2v-index/simple") in pairs
