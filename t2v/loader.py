"""Streaming training batches from the manifest's train shards with stock webdataset.

Shards are grouped by motion, so reading them one after another would give batches of one motion.
Every worker therefore opens *all* train shards as endless per-shard streams and interleaves them
at random (`SeededMix`: RandomMix with its own seeded RNG, weighted by shard size), then shuffles in
a buffer, decodes, and batches. One explicit pipeline:

  per shard: ResampledShards([url]) -> tarfile_to_samples      (endless, one stream per shard)
  SeededMix(streams, weights=bytes) -> shuffle(buffer) -> map(contract_sample) -> decode("rgb8")
  -> map(example) -> batched(B)

Only the shards `shards.parquet` lists are read, each checked against its sha256 before the first
batch, and only the contract's members (`clip.png`, `prompt.txt`, `meta.json`) reach a decoder.

Several readers (torchrun ranks x loader workers: K of them, reader c) split every shard by sample,
not by shard: reader c keeps the samples at positions c, c+K, c+2K, ... of each shard (`every_kth`,
before any decoding), so no two readers share a clip, each still sees every motion, and each stream
stays endless, so every rank gets a batch at every step whatever the shard counts. A shard with no
sample at a reader's position is left out of that reader's mix.

Batches carry clips as uint8 (B, 3, T, H, W) (4x less to move between processes and to the GPU
than floats); `to_model` turns them into floats in [-1, 1] on the training device. Only the train
split is ever read: validation and held-out shards are for evaluation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from t2v import dataset, text, vocab

SPLIT = "train"


def train_shards(data_dir: Path, verify: bool = False) -> list[Path]:
    """The train shards the published manifest lists (nothing else under `shards/train`); with
    `verify`, each checked against its sha256 first. A clear error when there are none."""
    return [Path(u) for u in dataset.shard_urls(data_dir, SPLIT, verify=verify)]


@dataclass(frozen=True)
class DatasetInfo:
    frames: int  # T
    size: int  # H = W


def dataset_info(data_dir: Path) -> DatasetInfo:
    """Clip geometry, read from the manifest."""
    return DatasetInfo(*dataset.geometry(data_dir))


class PromptCodes:
    """Token ids and class labels of each prompt, parsed once per prompt: the train split has a few hundred
    distinct prompts and a run reads tens of thousands of clips, and parsing was a quarter of the loader's
    time. One per pipeline, so a vocabulary grown between runs is always read afresh."""

    def __init__(self) -> None:
        self.drop_color: Callable[[str], str] = cache(text.drop_color)
        self.codes: Callable[[str], tuple[torch.Tensor, text.Labels]] = cache(
            lambda prompt: (text.encode([prompt])[0], text.labels(prompt)))  # the ids tensor is shared: collate stacks copies


def _example(sample: dict[str, Any], color_dropout: float, rng: random.Random,
             prompts: PromptCodes) -> dict[str, Any]:
    """Decoded webdataset sample -> clip (3, T, H, W) uint8, prompt, token ids, class labels, and the
    per-frame shape centre (the frame critic looks at a window around it)."""
    meta = sample["meta.json"]
    T = int(meta["frames"])
    img = sample["clip.png"]  # (T*H, W, 3) uint8
    clip = torch.from_numpy(np.array(img.reshape(T, -1, img.shape[1], 3))).permute(3, 0, 1, 2)  # copy: decoder arrays are read-only
    prompt = meta["prompt"]
    if color_dropout and rng.random() < color_dropout:
        prompt = prompts.drop_color(prompt)
    ids, lab = prompts.codes(prompt)
    traj = meta["trajectory"]
    centre = torch.tensor([traj["x"], traj["y"]], dtype=torch.float32).T / meta["width"] * 2.0 - 1.0  # (T, 2)
    return {"__key__": sample["__key__"], "clip": clip, "prompt": prompt, "ids": ids,
            "centre": centre,
            "color": lab.color, "shape": lab.shape, "motion": lab.motion,
            "true_color": list(vocab.COLORS).index(meta["color"])}


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """List of examples -> batch: clips (B, 3, T, H, W) uint8, ids (B, L), labels (B,), prompts, keys."""
    return {
        "clips": torch.stack([e["clip"] for e in examples]),
        "ids": torch.stack([e["ids"] for e in examples]),
        "centre": torch.stack([e["centre"] for e in examples]),  # (B, T, 2) shape centre in canvas units [-1, 1]
        "color": torch.tensor([e["color"] for e in examples]),  # -1 where the prompt's colour was dropped
        "shape": torch.tensor([e["shape"] for e in examples]),
        "motion": torch.tensor([e["motion"] for e in examples]),
        "true_color": torch.tensor([e["true_color"] for e in examples]),
        "prompt": [e["prompt"] for e in examples],
        "key": [e["__key__"] for e in examples],
    }


class SeededMix(IterableDataset):
    """`wds.RandomMix` with its own RNG: stock RandomMix draws from the process-global `random`, which any
    library thread (logging, tracking, a progress bar) may advance, so the data order, and with it the
    trained weights, would depend on timing."""

    def __init__(self, streams: list[wds.DataPipeline], weights: list[float], seed: int) -> None:
        super().__init__()
        self.streams, self.seed = streams, seed
        self.cum = np.cumsum(np.asarray(weights, dtype=np.float64) / float(sum(weights)))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = random.Random(self.seed)
        sources = [iter(s) for s in self.streams]
        while True:
            i = min(int(np.searchsorted(self.cum, rng.random())), len(sources) - 1)
            try:
                yield next(sources[i])
            except StopIteration:
                return


def every_kth(k: int, c: int, count: int) -> Any:
    """A webdataset stage keeping samples c, c+k, c+2k, ... of each pass over one shard of `count`
    samples (the resampled stream repeats the shard: positions restart at every pass)."""
    def keep(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for i, sample in enumerate(src):
            if i % count % k == c:
                yield sample
    return keep


class TrainStream(IterableDataset):
    """Endless batches of mixed motions, shapes and colours; each worker seeds its own pipeline.

    `rank` of `world_size` (torchrun) and the DataLoader worker id choose this reader's slice of every
    shard; with one reader it reads everything."""

    def __init__(self, data_dir: Path, batch_size: int, shuffle_buffer: int = 512, seed: int = 0,
                 color_dropout: float = 0.0, rank: int = 0, world_size: int = 1, num_workers: int = 0) -> None:
        super().__init__()
        self.urls = [str(p) for p in train_shards(data_dir, verify=True)]  # once, before the first batch
        counts = {Path(i.path).name: i.count for i in dataset.load_shards(data_dir) if i.split == SPLIT}
        self.counts = [counts[Path(u).name] for u in self.urls]
        self.weights = [Path(u).stat().st_size for u in self.urls]  # bytes ~ samples: big shards drawn more
        self.batch_size, self.shuffle_buffer, self.seed = batch_size, shuffle_buffer, seed
        self.color_dropout = color_dropout
        self.rank, self.workers = rank, max(1, num_workers)
        self.readers = world_size * self.workers
        if max(self.counts) < self.readers:
            raise ValueError(f"{data_dir}: its largest train shard holds {max(self.counts)} clips, fewer than the "
                             f"{self.readers} readers (world_size {world_size} x {self.workers} loader workers) "
                             f"that split every shard by sample; use fewer ranks or workers, or more clips per combo")

    def pipeline(self, seed: int, reader: int = 0) -> wds.DataPipeline:
        rng = random.Random(seed)
        mine = [i for i, n in enumerate(self.counts) if n > reader]  # shards with a sample at this reader's position
        streams = [
            wds.DataPipeline(wds.ResampledShards([self.urls[i]], seed=seed, deterministic=True), wds.tarfile_to_samples(),
                             *([every_kth(self.readers, reader, self.counts[i])] if self.readers > 1 else []))
            for i in mine
        ]
        return wds.DataPipeline(
            SeededMix(streams, [self.weights[i] if self.readers == 1 else  # bytes of this reader's slice
                                self.weights[i] * len(range(reader, self.counts[i], self.readers)) / self.counts[i]
                                for i in mine], seed + 2),
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng) if self.shuffle_buffer else wds.map(lambda s: s),
            wds.map(dataset.contract_sample),
            wds.decode("rgb8"),
            wds.map(partial(_example, color_dropout=self.color_dropout, rng=random.Random(seed + 1),
                             prompts=PromptCodes())),
            wds.batched(self.batch_size, collation_fn=collate, partial=False),
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        reader = self.rank * self.workers + (info.id if info is not None else 0)
        seed = (self.seed * 1_000_003 + reader * 7919) % 2**31
        return iter(self.pipeline(seed, reader))


def make_loader(data_dir: Path, batch_size: int, *, num_workers: int = 1, shuffle_buffer: int = 512,
                seed: int = 0, color_dropout: float = 0.0, pin_memory: bool = False, rank: int = 0,
                world_size: int = 1) -> DataLoader:
    """Multi-worker DataLoader over `TrainStream` (batching happens in the pipeline)."""
    stream = TrainStream(data_dir, batch_size, shuffle_buffer, seed, color_dropout, rank, world_size, num_workers)
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=4 if num_workers > 0 else None, persistent_workers=False)


def to_model(clips: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, T, H, W) -> float (B, 3, T, H, W) in [-1, 1] on `device` (non-blocking from pinned memory)."""
    x = clips.to(device, non_blocking=True)
    return x.float().div_(127.5).sub_(1.0)
