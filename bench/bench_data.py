"""Data-stage benchmark: our render+shard write path and read path against the tutorial's baseline.

Everything is measured in one run on this machine, side by side, and printed as JSON:
- write: clips/s and frames/s per core for 1 and 2 worker processes, allocated bytes per clip;
- baseline: the tutorial's data code reimplemented faithfully (one folder per clip, one PNG per
  frame via cv2.imwrite, PIL drawing per frame, its eager `img.rotate` calls, with the later fix
  that draws the circle), one process;
- read: clips/s per core decoded from the shards into batched uint8 tensors by a multi-worker
  DataLoader over stock webdataset;
- startup: the fixed cost of the whole `t2v data` command on a one-clip dataset.

Usage: python bench/bench_data.py [--clips 3000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from t2v import vocab  # noqa: E402
from t2v.shards import DataParams, plan, write_shard  # noqa: E402

BASELINE_PROMPTS = [  # the tutorial's 18 (prompt, direction) pairs
    ("circle moving down", "down"), ("circle moving left", "left"), ("circle moving right", "right"),
    ("circle moving diagonally up-right", "diagonal_up_right"),
    ("circle moving diagonally down-left", "diagonal_down_left"),
    ("circle moving diagonally up-left", "diagonal_up_left"),
    ("circle moving diagonally down-right", "diagonal_down_right"),
    ("circle rotating clockwise", "rotate_clockwise"),
    ("circle rotating counter-clockwise", "rotate_counter_clockwise"),
    ("circle shrinking", "shrink"), ("circle expanding", "expand"),
    ("circle bouncing vertically", "bounce_vertical"), ("circle bouncing horizontally", "bounce_horizontal"),
    ("circle zigzagging vertically", "zigzag_vertical"), ("circle zigzagging horizontally", "zigzag_horizontal"),
    ("circle moving up-left", "up_left"), ("circle moving down-right", "down_right"),
    ("circle moving down-left", "down_left"),
]


def _baseline_frame(size: tuple[int, int], frame_num: int, direction: str) -> np.ndarray:
    """The tutorial's create_image_with_moving_shape, with the later fix that draws the circle."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, color=(255, 255, 255))
    draw = ImageDraw.Draw(img)
    cx, cy = size[0] // 2, size[1] // 2
    position = (cx, cy)
    direction_map = {  # built eagerly every frame, rotations included, as in the tutorial
        "down": (0, frame_num * 5 % size[1]), "left": (-frame_num * 5 % size[0], 0),
        "right": (frame_num * 5 % size[0], 0),
        "diagonal_up_right": (frame_num * 5 % size[0], -frame_num * 5 % size[1]),
        "diagonal_down_left": (-frame_num * 5 % size[0], frame_num * 5 % size[1]),
        "diagonal_up_left": (-frame_num * 5 % size[0], -frame_num * 5 % size[1]),
        "diagonal_down_right": (frame_num * 5 % size[0], frame_num * 5 % size[1]),
        "rotate_clockwise": img.rotate(frame_num * 10 % 360, center=(cx, cy), fillcolor=(255, 255, 255)),
        "rotate_counter_clockwise": img.rotate(-frame_num * 10 % 360, center=(cx, cy), fillcolor=(255, 255, 255)),
        "bounce_vertical": (0, cy - abs(frame_num * 5 % size[1] - cy)),
        "bounce_horizontal": (cx - abs(frame_num * 5 % size[0] - cx), 0),
        "zigzag_vertical": (0, cy - frame_num * 5 % size[1]) if frame_num % 2 == 0 else (0, cy + frame_num * 5 % size[1]),
        "zigzag_horizontal": (cx - frame_num * 5 % size[0], cy) if frame_num % 2 == 0 else (cx + frame_num * 5 % size[0], cy),
        "up_right": (frame_num * 5 % size[0], -frame_num * 5 % size[1]),
        "up_left": (-frame_num * 5 % size[0], -frame_num * 5 % size[1]),
        "down_right": (frame_num * 5 % size[0], frame_num * 5 % size[1]),
        "down_left": (-frame_num * 5 % size[0], frame_num * 5 % size[1]),
    }
    if direction in direction_map:
        if isinstance(direction_map[direction], tuple):
            position = tuple(np.add(position, direction_map[direction]))
        else:
            img = direction_map[direction]
            draw = ImageDraw.Draw(img)
    x, y = position[0] % size[0], position[1] % size[1]
    draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=(0, 0, 255))  # the fix: diameter 10
    return np.array(img)


def run_baseline(out: Path, clips: int, frames: int = 10) -> dict:
    import cv2

    random.seed(0)
    t0 = time.perf_counter()
    for i in range(clips):
        prompt, direction = random.choice(BASELINE_PROMPTS)
        video_dir = out / f"video_{i}"
        os.makedirs(video_dir, exist_ok=True)
        with open(video_dir / "prompt.txt", "w") as f:
            f.write(prompt)
        for frame_num in range(frames):
            cv2.imwrite(str(video_dir / f"frame_{frame_num}.png"), _baseline_frame((64, 64), frame_num, direction))
    dt = time.perf_counter() - t0
    return {"clips": clips, "frames_per_clip": frames, "seconds": dt, "clips_per_s_per_core": clips / dt,
            "frames_per_s_per_core": clips * frames / dt, "bytes_per_clip": allocated_bytes(out) / clips}


def allocated_bytes(root: Path) -> int:
    """Disk blocks actually allocated (files and directories), as `du` counts them."""
    total = os.lstat(root).st_blocks * 512
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
    return total


def run_ours(out: Path, params: DataParams, workers: int) -> dict:
    shards = plan(params)
    clips = sum(len(s.clips) for s in shards)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(write_shard, [out] * len(shards), shards, chunksize=1))
    dt = time.perf_counter() - t0
    return {"workers": workers, "clips": clips, "frames_per_clip": params.frames, "seconds": dt,
            "clips_per_s_per_core": clips / dt / workers,
            "frames_per_s_per_core": clips * params.frames / dt / workers,
            "bytes_per_clip": allocated_bytes(out / "shards") / clips}


def run_read(root: Path, workers: int, batch: int = 64) -> dict:
    import torch
    import webdataset as wds

    urls = sorted(str(p) for p in (root / "shards" / "train").glob("*.tar.gz"))

    def to_array(sample: dict) -> np.ndarray:
        m = sample["meta.json"]
        return sample["clip.png"].reshape(m["frames"], m["height"], m["width"], 3)

    ds = (wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker)
          .decode("rgb8").map(to_array).batched(batch, collation_fn=lambda xs: torch.from_numpy(np.stack(xs))))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=False)
    t0 = time.perf_counter()
    n = 0
    for b in loader:
        assert b.dtype == torch.uint8 and b.ndim == 5  # (B, T, H, W, 3)
        n += b.shape[0]
    dt = time.perf_counter() - t0
    return {"workers": workers, "clips": n, "seconds": dt, "clips_per_s_per_core": n / dt / workers}


def run_startup(tmp: Path) -> dict:
    """Wall time of the whole `t2v data` command on a one-clip dataset: its fixed cost."""
    cmd = [sys.executable, "-m", "cli", "data", "--out", str(tmp / "startup"), "--clips-per-combo", "1",
           "--val-per-combo", "1", "--motions", "moving up", "--shapes", "circle", "--colors", "red", "--workers", "1"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr[-400:]}
    return {"seconds": dt, "command": " ".join(cmd[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=3000, help="baseline clips (ours renders about 2x that)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--no-startup", action="store_true", help="skip the `t2v data` start-up measurement")
    args = ap.parse_args()

    n_combos = len([c for c in vocab.combinations() if not vocab.is_held_out(*c)])
    params = DataParams(clips_per_combo=max(1, round(2 * args.clips / n_combos)), val_per_combo=1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        base = run_baseline(tmp / "baseline", args.clips)
        ours1 = run_ours(tmp / "ours1", params, 1)
        ours2 = run_ours(tmp / "ours2", params, 2)
        read1 = run_read(tmp / "ours1", 1)
        read2 = run_read(tmp / "ours1", 2)
        startup = None if args.no_startup else run_startup(tmp)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "baseline_write": base,
        "write_1_worker": ours1,
        "write_2_workers": ours2,
        "read_1_worker": read1,
        "read_2_workers": read2,
        "startup_t2v_data": startup,
        "ratios": {
            "frames_per_s_per_core_vs_baseline": ours1["frames_per_s_per_core"] / base["frames_per_s_per_core"],
            "write_scaling_1_to_2_workers": ours2["clips"] / ours2["seconds"] / (ours1["clips"] / ours1["seconds"]),
            "bytes_per_clip_vs_baseline": ours1["bytes_per_clip"] / base["bytes_per_clip"],
            "read_scaling_1_to_2_workers": read2["clips_per_s_per_core"] * 2 / read1["clips_per_s_per_core"],
        },
        "targets": {"frames_per_s_per_core_vs_baseline": ">= 2", "write_scaling_1_to_2_workers": ">= 1.8",
                    "bytes_per_clip_vs_baseline": "<= 0.05", "read_clips_per_s_per_core": ">= 2000",
                    "startup_seconds": "< 15"},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
