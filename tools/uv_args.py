"""Print `uv pip install` flags that give uv the package sources pip is configured with here.

uv reads no pip configuration, so on a machine whose index, local wheel directory or constraints
live in pip's config files or PIP_* variables (`pip config list`), a bare `uv pip install` would
look elsewhere (for torch: a CUDA build of several GB from PyPI instead of the local CPU wheel).
This maps pip's settings onto uv's flags: index-url, extra-index-url, find-links and constraint,
plus pip's rule of taking the best match across all indexes (all that is printed where pip has no
configuration). Standard library only.

Usage: python tools/uv_args.py   (run by the venv's Python, as `make install` does)
"""

from __future__ import annotations

import ast
import subprocess
import sys

FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraint"}


def uv_args(config: str) -> list[str]:
    """`pip config list` output -> uv flags, each value once, in the order pip lists them."""
    seen: dict[str, list[str]] = {}
    env_index, file_index = [], []  # pip takes one index-url: PIP_INDEX_URL over the config files, else the last file's
    for line in config.splitlines():
        key, sep, raw = line.partition("=")
        name = key.rpartition(".")[2]
        if not sep or name not in FLAGS:
            continue
        values = str(ast.literal_eval(raw)).split()
        if name == "index-url":
            if key.startswith(":env:"):
                env_index = values[-1:]
            else:
                file_index = values[-1:]
            continue
        for value in values:
            if value not in seen.setdefault(name, []):
                seen[name].append(value)
    if env_index or file_index:
        seen = {"index-url": env_index or file_index, **seen}
    args = [arg for name, values in seen.items() for value in values for arg in (FLAGS[name], value)]
    return ["--index-strategy", "unsafe-best-match", *args]


def main() -> int:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True)
    print(" ".join(uv_args(out.stdout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
