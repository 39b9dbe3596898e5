"""A small 3D-CNN trained on real clips: a learned judge and the feature space of a clip-level FVD.

No pretrained video network can be downloaded, so we train our own on the train shards: two small
3D-conv streams (the whole frame, coarse; a full-resolution window that follows the shape) and one
head each for motion, shape and colour. Its accuracy on generated clips is a second opinion next to
the pixel judge, and the Fréchet distance between penultimate features of generated and real clips
(a clip-level FVD) says how real the samples look as a distribution. The distance is only comparable
at a fixed sample count, and only meaningful next to its floor: the value between two disjoint real sets.

Reads shards with the stock webdataset reader; never imports prefect or mlflow.
"""

from __future__ import annotations

import io
import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from t2v import vocab
from t2v.io import atomic_write_bytes, source_hash

if TYPE_CHECKING:
    from t2v.shards import DataParams

HEADS = ("motion", "shape", "color")
WEIGHTS_FILE = "featnet.pt"
META_FILE = "featnet.json"


@dataclass(frozen=True)
class FeatNetConfig:
    """Architecture and training schedule. Defaults: ~98% all-three on real val clips and on real held-out
    clips, ~90 s of training on one core (bench/bench_featnet.py)."""

    coarse: int = 16  # side of the whole-frame stream: enough to see where the shape is and how it travels
    crop: float = 0.4  # side of the shape-following window as a fraction of the frame (26 px at 64): the largest shape fits, unscaled
    width: int = 16  # channels of each stream's first block, doubled per block
    feat_dim: int = 64  # D of features(): small enough that a few hundred clips estimate its covariance
    epochs: int = 6  # passes over the train clips; augmentation makes each pass a new set of clips
    batch_size: int = 64  # per step
    lr: float = 3e-3  # AdamW peak of the one-cycle schedule
    weight_decay: float = 1e-4  # light: the data are clean and plentiful
    max_train_clips: int = 6000  # clips read for training (~28 per seen combination): more buys < 1% accuracy for 40% more time
    seed: int = 0  # initialisation, augmentation, shuffling and subsampling
    threads: int = 1  # torch threads: one is robust when other work shares the CPU (see torch_threads)

    def crop_side(self, frame_size: int) -> int:
        return max(4, int(round(self.crop * frame_size)))


@dataclass(frozen=True)
class Labels:
    """Class names of each head, in index order, fixed at training time and saved with the weights."""

    motion: tuple[str, ...]
    shape: tuple[str, ...]
    color: tuple[str, ...]

    @classmethod
    def current(cls) -> "Labels":
        return cls(tuple(vocab.motion_names()), tuple(vocab.SHAPES), tuple(vocab.COLORS))

    def index(self, head: str, names: list[str]) -> np.ndarray:
        classes = getattr(self, head)
        vocab.check_choices(head, sorted(set(names)), classes)
        lookup = {c: i for i, c in enumerate(classes)}
        return np.asarray([lookup[n] for n in names], np.int64)


# ----------------------------------------------------------------------------- inputs

@dataclass
class Inputs:
    """What the network sees of each clip: the whole frame, coarse, and a full-resolution window that follows the shape."""

    coarse: np.ndarray  # (N, T, G, G, 3) uint8
    crop: np.ndarray  # (N, T, C, C, 3) uint8

    def __len__(self) -> int:
        return len(self.coarse)

    def take(self, idx: np.ndarray | slice) -> "Inputs":
        return Inputs(self.coarse[idx], self.crop[idx])

    @staticmethod
    def cat(parts: list["Inputs"]) -> "Inputs":
        return Inputs(np.concatenate([p.coarse for p in parts]), np.concatenate([p.crop for p in parts]))


@dataclass
class ClipSet:
    """Prepared clips of one split with their labels, as read from shards."""

    inputs: Inputs
    motion: list[str]
    shape: list[str]
    color: list[str]
    keys: list[str]
    frames: int  # T
    frame_size: int  # H = W before preparation

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, idx: np.ndarray) -> "ClipSet":
        pick = [int(i) for i in idx]
        return ClipSet(self.inputs.take(idx), [self.motion[i] for i in pick], [self.shape[i] for i in pick],
                       [self.color[i] for i in pick], [self.keys[i] for i in pick], self.frames, self.frame_size)


def _check_clips(clips: np.ndarray) -> np.ndarray:
    clips = np.asarray(clips)
    if clips.ndim != 5 or clips.shape[-1] != 3 or clips.shape[2] != clips.shape[3]:
        raise ValueError(f"clips must be square (N, T, H, W, 3), got shape {clips.shape}")
    return np.ascontiguousarray(clips, dtype=np.uint8)


def downsample(clips: np.ndarray, size: int) -> np.ndarray:
    """Area-average each frame to size x size (integer factor), keeping uint8. # (N, T, H, W, 3) -> (N, T, S, S, 3)"""
    clips = _check_clips(clips)
    n, t, h, w, _ = clips.shape
    if h == size:
        return clips
    if h % size:
        raise ValueError(f"frame side {h} is not a multiple of the featnet's coarse side {size}")
    x = torch.from_numpy(clips).reshape(n * t, h, w, 3).permute(0, 3, 1, 2)
    x = F.avg_pool2d(x.float(), h // size) + 0.5  # (N*T, 3, S, S)
    return x.to(torch.uint8).permute(0, 2, 3, 1).reshape(n, t, size, size, 3).numpy()


def ink_centres(clips: np.ndarray) -> np.ndarray:
    """Per-frame centre of the non-white pixels (x, y in pixels; the frame centre when a frame is blank). # (N, T, 2)"""
    x = torch.from_numpy(_check_clips(clips))
    side = x.shape[2]
    ink = (255 - x.amin(dim=-1)).float()  # (N, T, H, W)
    grid = torch.arange(side, dtype=torch.float32) + 0.5  # pixel centres
    total = ink.sum(dim=(2, 3))  # (N, T)
    cx = (ink.sum(dim=2) @ grid) / total.clamp_min(1e-6)
    cy = (ink.sum(dim=3) @ grid) / total.clamp_min(1e-6)
    centres = torch.stack([cx, cy], dim=-1).masked_fill((total <= 0)[..., None], side / 2)
    return centres.numpy().astype(np.float64)


def follow_crop(clips: np.ndarray, side: int) -> np.ndarray:
    """A side x side window around each frame's ink centre, kept inside the frame. # (N, T, H, W, 3) -> (N, T, C, C, 3)"""
    clips = _check_clips(clips)
    n, t, h, w, _ = clips.shape
    side = min(side, h)
    c = ink_centres(clips)  # (N, T, 2)
    x0 = np.clip(np.round(c[..., 0] - side / 2), 0, w - side).astype(np.int64)  # (N, T)
    y0 = np.clip(np.round(c[..., 1] - side / 2), 0, h - side).astype(np.int64)
    out = np.empty((n, t, side, side, 3), np.uint8)
    for i in range(n):  # slicing beats fancy indexing ~5x here: each window is a few row copies
        for j in range(t):
            out[i, j] = clips[i, j, y0[i, j]:y0[i, j] + side, x0[i, j]:x0[i, j] + side]
    return out


def input_views(clips: np.ndarray, cfg: FeatNetConfig) -> Inputs:
    """Both views of each clip. Both are per-frame operations, so reordering frames commutes with them."""
    clips = _check_clips(clips)
    return Inputs(downsample(clips, cfg.coarse), follow_crop(clips, cfg.crop_side(clips.shape[2])))


def iter_split(root: Path | str, split: str, limit: int | None = None, seed: int = 0,
               chunk: int = 256) -> Iterator[tuple[np.ndarray, list[dict]]]:
    """Chunks of (clips (n, T, H, W, 3) uint8, their meta.json dicts) of one split, via stock webdataset.

    With `limit`, a random subset (seeded) over all shards, chosen from the keys before any image is
    decoded; shards are grouped by motion, so the first `limit` samples would miss motions. Chunks keep
    memory bounded: a caller reduces each chunk before the next is decoded.
    """
    import webdataset as wds

    from t2v import dataset

    urls = dataset.shard_urls(root, split)  # the manifest's shards, sha256-checked
    keep: set[str] | None = None
    if limit is not None:
        keys = sorted(s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False))
        if limit < len(keys):
            keep = {keys[i] for i in np.random.default_rng(seed).choice(len(keys), limit, replace=False)}
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).map(dataset.contract_sample)
    if keep is not None:
        ds = ds.select(lambda s: s["__key__"] in keep)
    clips, metas = [], []
    for s in ds.decode("rgb8"):
        meta = s["meta.json"]
        clips.append(s["clip.png"].reshape(meta["frames"], meta["height"], meta["width"], 3))  # (T, H, W, 3)
        metas.append({**meta, "key": s["__key__"]})
        if len(clips) == chunk:
            yield np.stack(clips), metas
            clips, metas = [], []
    if clips:
        yield np.stack(clips), metas


def read_split(root: Path | str, split: str, cfg: FeatNetConfig, limit: int | None = None) -> ClipSet:
    """Clips of one split, prepared for the network (see iter_split; `limit` sampled with cfg.seed)."""
    parts, metas = [], []
    for clips, m in iter_split(root, split, limit, cfg.seed):
        parts.append(input_views(clips, cfg))
        metas += m
    if not metas:
        raise ValueError(f"no clips in the {split} shards under {root}")
    geometry = {(m["frames"], m["height"]) for m in metas}
    if len(geometry) != 1:
        raise ValueError(f"{split} shards under {root} mix clip geometries (frames, side): {sorted(geometry)}")
    frames, side = geometry.pop()
    return ClipSet(Inputs.cat(parts), [m["motion"] for m in metas], [m["shape"] for m in metas],
                   [m["color"] for m in metas], [m["key"] for m in metas], frames, side)


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 clips -> 'ink' in [0, 1], 0 on the white background. # (N, T, S, S, 3) -> (N, 3, T, S, S)"""
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 4, 1, 2, 3).float()
    return (1.0 - t / 255.0).contiguous()


# ----------------------------------------------------------------------------- model

def _block(cin: int, cout: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class FeatNet(nn.Module):
    """Two 3D-conv streams -> D features -> motion, shape, colour logits.

    `where` sees the whole frame coarsely and keeps a 4x4 grid at the end, because an orbit's direction
    depends on where on screen the shape moves; `what` sees the full-resolution window that follows the
    shape, where corners, turning and growth are visible.
    """

    def __init__(self, cfg: FeatNetConfig, labels: Labels):
        super().__init__()
        w = cfg.width
        self.where = nn.Sequential(
            _block(3, w, (2, 1, 1)),  # (B, w, T/2, G, G)
            _block(w, 2 * w, (1, 2, 2)),  # (B, 2w, T/2, G/2, G/2)
            _block(2 * w, 4 * w, (2, 2, 2)),  # (B, 4w, T/4, G/4, G/4)
            nn.AdaptiveAvgPool3d((2, 4, 4)),  # (B, 4w, 2, 4, 4)
            nn.Flatten(),  # (B, 128w)
        )
        self.what = nn.Sequential(
            _block(3, w, (2, 2, 2)),  # (B, w, T/2, C/2, C/2)
            _block(w, 2 * w, (1, 2, 2)),  # (B, 2w, T/2, C/4, C/4)
            _block(2 * w, 4 * w, (2, 2, 2)),  # (B, 4w, T/4, C/8, C/8)
            nn.AdaptiveAvgPool3d((2, 2, 2)),  # (B, 4w, 2, 2, 2)
            nn.Flatten(),  # (B, 32w)
        )
        self.fc = nn.Sequential(nn.Linear(160 * w, cfg.feat_dim), nn.ReLU(inplace=True))  # (B, D)
        self.heads = nn.ModuleDict({h: nn.Linear(cfg.feat_dim, len(getattr(labels, h))) for h in HEADS})

    def features(self, coarse: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.where(coarse), self.what(crop)], dim=1))  # (B, D)

    def forward(self, coarse: torch.Tensor, crop: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(coarse, crop)
        return {h: head(f) for h, head in self.heads.items()}  # {head: (B, classes)}


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with n intra-op threads, then restore. With other processes on the cores, OpenMP spin-waiting
    made two threads ~8x slower than one on this small net (measured: 1.07 vs 0.13 s per step)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Classifier:
    """A trained FeatNet with what it needs to be used on new clips: config, labels, clip geometry."""

    net: FeatNet
    cfg: FeatNetConfig
    labels: Labels
    frames: int  # T it was trained on
    frame_size: int  # H = W of the clips it was trained on
    metrics: dict

    def input_views(self, clips: np.ndarray) -> Inputs:
        clips = np.asarray(clips)
        if clips.ndim != 5 or clips.shape[1:] != (self.frames, self.frame_size, self.frame_size, 3):
            raise ValueError(f"featnet expects clips (N, {self.frames}, {self.frame_size}, {self.frame_size}, 3) "
                             f"like its training data, got {clips.shape}")
        return input_views(clips, self.cfg)

    @torch.no_grad()
    def run(self, inputs: Inputs, batch: int = 256) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Features (N, D) and per-head class indices {head: (N,)} of prepared inputs."""
        self.net.eval()
        feats, idx = [], {h: [] for h in HEADS}
        with torch_threads(self.cfg.threads):
            for i in range(0, len(inputs), batch):
                part = inputs.take(slice(i, i + batch))
                f = self.net.features(to_tensor(part.coarse), to_tensor(part.crop))  # (B, D)
                feats.append(f.numpy().astype(np.float64))
                for h in HEADS:
                    idx[h].append(self.net.heads[h](f).argmax(1).numpy())
        if not feats:
            return np.zeros((0, self.cfg.feat_dim)), {h: np.zeros(0, np.int64) for h in HEADS}
        return np.concatenate(feats), {h: np.concatenate(v) for h, v in idx.items()}

    def names(self, idx: dict[str, np.ndarray]) -> list[dict[str, str]]:
        classes = {h: getattr(self.labels, h) for h in HEADS}
        return [{h: classes[h][int(idx[h][i])] for h in HEADS} for i in range(len(idx["motion"]))]

    def features(self, clips: np.ndarray) -> np.ndarray:
        """Penultimate activations: the space of the Fréchet distance. # (N, T, H, W, 3) uint8 -> (N, D) float64"""
        return self.run(self.input_views(clips))[0]

    def predict(self, clips: np.ndarray) -> list[dict[str, str]]:
        """Per clip {"motion", "shape", "color"} as the classifier reads it."""
        return self.names(self.run(self.input_views(clips))[1])

    def features_and_predictions(self, clips: np.ndarray) -> tuple[np.ndarray, list[dict[str, str]]]:
        """Both in one pass: what evaluation needs of every generated clip."""
        feats, idx = self.run(self.input_views(clips))
        return feats, self.names(idx)


def accuracy(pred: list[dict[str, str]], motion: list[str], shape: list[str], color: list[str | None]) -> dict[str, float]:
    """Per-head and all-three accuracy; a None colour (prompt without one) accepts any colour."""
    if not pred:
        return {"motion": math.nan, "shape": math.nan, "color": math.nan, "all": math.nan}
    m = np.array([p["motion"] == t for p, t in zip(pred, motion)])
    s = np.array([p["shape"] == t for p, t in zip(pred, shape)])
    c = np.array([t is None or p["color"] == t for p, t in zip(pred, color)])
    return {"motion": float(m.mean()), "shape": float(s.mean()), "color": float(c.mean()), "all": float((m & s & c).mean())}


# ----------------------------------------------------------------------------- training

_CW = {"clockwise": "counter-clockwise", "counter-clockwise": "clockwise"}
# How each symmetry of the square canvas, and playing a clip backwards, renames the words of a motion phrase.
_SYMMETRIES: dict[str, dict[str, str]] = {
    "transpose": {"up": "left", "left": "up", "down": "right", "right": "down",
                  "vertically": "horizontally", "horizontally": "vertically", **_CW},
    "hflip": {"left": "right", "right": "left", **_CW},
    "vflip": {"up": "down", "down": "up", **_CW},
    "reverse": {"up": "down", "down": "up", "left": "right", "right": "left",
                "shrinking": "expanding", "expanding": "shrinking", **_CW},
}


def _rename(phrase: str, swaps: dict[str, str]) -> str:
    out = []
    for word in phrase.split():
        if word in swaps or "-" not in word:
            out.append(swaps.get(word, word))
            continue
        parts = [swaps.get(p, p) for p in word.split("-")]  # a diagonal: vertical part first, as in "up-right"
        out.append("-".join(sorted(parts, key=lambda p: p not in ("up", "down"))))
    return " ".join(out)


def symmetry_table(labels: Labels) -> np.ndarray:
    """Motion index after each of 16 symmetries (bit 0 transpose, 1 hflip, 2 vflip, 3 reverse); -1 where unknown.

    Only built-in motions are mapped: a plugin's phrase says nothing about how it transforms. # (16, motions)
    """
    reg = vocab.motions()
    builtin = {m for m, spec in reg.items() if spec.fn.__module__ == "t2v.motions"}
    index = {m: i for i, m in enumerate(labels.motion)}
    table = np.full((16, len(labels.motion)), -1, np.int64)
    for i, m in enumerate(labels.motion):
        for g in range(16):
            name = m
            for bit, swaps in enumerate(_SYMMETRIES.values()):
                if g >> bit & 1:
                    name = _rename(name, swaps)
            if g == 0 or (m in builtin and name in builtin and name in index):
                table[g, i] = index[name]
    return table


def apply_symmetry(x: np.ndarray, g: int) -> np.ndarray:
    """One clip (or prepared view) under symmetry g, bits as in symmetry_table. # (T, S, S, 3)"""
    if g & 1:
        x = x.swapaxes(1, 2)
    if g & 2:
        x = x[:, :, ::-1]
    if g & 4:
        x = x[:, ::-1]
    if g & 8:
        x = x[::-1]
    return x


def recolor(x: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Repaint pixels rendered in palette colour `src` as `dst`: every pixel is white blended towards the
    fill, and the blend weight is read off the fill's strongest channel. # (..., 3) uint8"""
    c_src, c_dst = np.asarray(vocab.COLORS[src], np.float32), np.asarray(vocab.COLORS[dst], np.float32)
    j = int(np.argmax(255.0 - c_src))
    k = np.clip((255.0 - x[..., j:j + 1].astype(np.float32)) / (255.0 - c_src[j]), 0.0, 1.0)
    return (255.0 + k * (c_dst - 255.0) + 0.5).astype(np.uint8)


def augment(batch: Inputs, y: dict[str, np.ndarray], labels: Labels, table: np.ndarray,
            rng: np.random.Generator) -> tuple[Inputs, dict[str, np.ndarray]]:
    """A random canvas symmetry and palette colour per clip, labels renamed to match.

    Held-out combinations (a circle moving up-right, a purple square) never occur in train clips, but
    they are mirror images and repaints of ones that do. Without this the heads learn shortcuts such as
    "purple, so not a square" and score ~53% all-three on real held-out clips instead of ~98%.
    """
    coarse, crop = [], []
    y = {h: v.copy() for h, v in y.items()}
    for i in range(len(batch)):
        g = int(rng.choice(np.flatnonzero(table[:, y["motion"][i]] >= 0)))
        y["motion"][i] = table[g, y["motion"][i]]
        a, b = apply_symmetry(batch.coarse[i], g), apply_symmetry(batch.crop[i], g)
        dst = int(rng.integers(len(labels.color)))
        if dst != y["color"][i]:
            a, b = (recolor(v, labels.color[y["color"][i]], labels.color[dst]) for v in (a, b))
            y["color"][i] = dst
        coarse.append(a)
        crop.append(b)
    return Inputs(np.stack(coarse), np.stack(crop)), y


def train(data: ClipSet, cfg: FeatNetConfig = FeatNetConfig(), val: ClipSet | None = None) -> Classifier:
    """Fit the three heads on prepared real clips; records val accuracy in `metrics` when `val` is given."""
    if len(data) == 0:
        raise ValueError("no training clips")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    labels = Labels.current()
    net = FeatNet(cfg, labels).train()
    y = {h: labels.index(h, getattr(data, h)) for h in HEADS}
    table = symmetry_table(labels)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    start, losses = time.perf_counter(), []
    with torch_threads(cfg.threads):
        for _ in range(cfg.epochs):
            order = rng.permutation(len(data))
            for k in range(steps_per_epoch):
                idx = order[k * cfg.batch_size:(k + 1) * cfg.batch_size]
                batch, target = augment(data.inputs.take(idx), {h: v[idx] for h, v in y.items()}, labels, table, rng)
                out = net(to_tensor(batch.coarse), to_tensor(batch.crop))
                loss = sum(F.cross_entropy(out[h], torch.from_numpy(target[h])) for h in HEADS)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
    clf = Classifier(net.eval(), cfg, labels, data.frames, data.frame_size,
                     {"train_seconds": round(time.perf_counter() - start, 1), "train_clips": len(data),
                      "final_loss": float(np.mean(losses[-steps_per_epoch:]))})
    if val is not None and len(val):
        clf.metrics.update({f"val_{k}": v for k, v in evaluate_on(clf, val).items()})
    return clf


def evaluate_on(clf: Classifier, data: ClipSet) -> dict[str, float]:
    """Accuracy of the classifier on a prepared, labelled split."""
    if (data.frames, data.frame_size) != (clf.frames, clf.frame_size):
        raise ValueError(f"clips are {data.frames} frames of {data.frame_size} px, the featnet was trained on "
                         f"{clf.frames} frames of {clf.frame_size} px")
    return accuracy(clf.names(clf.run(data.inputs)[1]), data.motion, data.shape, data.color)


def fit_from_shards(root: Path | str, cfg: FeatNetConfig = FeatNetConfig()) -> Classifier:
    """Train on a rendered dataset's train clips (at most cfg.max_train_clips) and score it on its val clips."""
    data = read_split(root, "train", cfg, limit=cfg.max_train_clips)
    return train(data, cfg, read_split(root, "val", cfg))


# ----------------------------------------------------------------------------- the reference network
# Like FVD's fixed I3D, the network the distance is measured in does not follow the dataset: it is
# trained on a reference set rendered from the vocabulary itself, so it changes only when the
# vocabulary (colours, shapes, motions and their code), the clip geometry or this module does.

REFERENCE_TRAIN_PER_COMBO = 28  # train clips per seen combination: ~6k for the full vocabulary (cfg.max_train_clips)
REFERENCE_VAL_PER_COMBO = 2  # val clips per seen combination, for the accuracy recorded with the weights
REFERENCE_SEED = 20_251_201  # its own seed: the reference shares no clip with a dataset of seed 0, 1, 2, ...
SHIPPED_DIR = Path(__file__).parent / "reference" / "featnet"  # weights committed for the default vocabulary


def reference_params(colors: Sequence[str], shapes: Sequence[str], motions: Sequence[str], frames: int,
                     size: int) -> DataParams:
    """The reference set of a vocabulary and clip geometry."""
    from t2v.shards import DataParams

    return DataParams(colors=tuple(colors), shapes=tuple(shapes), motions=tuple(motions),
                      clips_per_combo=REFERENCE_TRAIN_PER_COMBO, val_per_combo=REFERENCE_VAL_PER_COMBO,
                      frames=frames, size=size, seed=REFERENCE_SEED)


def reference_key(params: DataParams, cfg: FeatNetConfig = FeatNetConfig()) -> str:
    """Names the reference network: its vocabulary (with every motion's code), geometry, config and the
    code of this module, the renderer and the shard format."""
    reg = vocab.motions()
    body = json.dumps([asdict(params), {m: reg[m].spec_hash for m in params.motions}, asdict(cfg),
                       asdict(Labels.current())], sort_keys=True)
    return source_hash(__name__, "t2v.render", "t2v.shards", body.encode())


def fit_reference(params: DataParams, workdir: Path | str, cfg: FeatNetConfig = FeatNetConfig()) -> Classifier:
    """Render the reference set under `workdir` and train the network on it."""
    from t2v import dataset

    dataset.write_dataset(Path(workdir), params)
    return fit_from_shards(workdir, cfg)


def default_reference() -> DataParams:
    """The vocabulary `make demo` evaluates: every built-in colour, shape and motion at 16 x 64 x 64."""
    from t2v.shards import DataParams

    d = DataParams()
    return reference_params(d.colors, d.shapes, vocab.motion_names(), d.frames, d.size)


def ship_reference(cfg: FeatNetConfig = FeatNetConfig()) -> Path:
    """Train the default reference network and write it under SHIPPED_DIR, replacing older ones (what
    `make reference` runs after the vocabulary, the renderer or this module changed)."""
    import shutil
    import tempfile

    params = default_reference()
    with tempfile.TemporaryDirectory() as tmp:
        clf = fit_reference(params, Path(tmp) / "reference", cfg)
    out = save(clf, SHIPPED_DIR / reference_key(params, cfg))
    for old in SHIPPED_DIR.iterdir():
        if old != out:
            shutil.rmtree(old)
    return out


def save(clf: Classifier, directory: Path | str) -> Path:
    """Weights as a state_dict (loadable with weights_only=True) and a JSON of everything else, both atomic."""
    directory = Path(directory)
    buf = io.BytesIO()
    torch.save(clf.net.state_dict(), buf)
    meta = {"config": asdict(clf.cfg), "labels": asdict(clf.labels), "frames": clf.frames,
            "frame_size": clf.frame_size, "metrics": clf.metrics}
    atomic_write_bytes(directory / WEIGHTS_FILE, buf.getvalue())
    atomic_write_bytes(directory / META_FILE, json.dumps(meta, indent=1).encode())
    return directory


def load(directory: Path | str) -> Classifier:
    """A classifier saved by `save`; the weights are read with weights_only=True (no pickled code)."""
    directory = Path(directory)
    if not (directory / META_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"no featnet under {directory} (expected {META_FILE} and {WEIGHTS_FILE})")
    meta = json.loads((directory / META_FILE).read_text())
    cfg = FeatNetConfig(**meta["config"])
    labels = Labels(**{k: tuple(v) for k, v in meta["labels"].items()})
    net = FeatNet(cfg, labels)
    net.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return Classifier(net.eval(), cfg, labels, int(meta["frames"]), int(meta["frame_size"]), meta["metrics"])


# ----------------------------------------------------------------------------- Fréchet distance

def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID/FVD formula).

    ||mu_a - mu_b||^2 + tr(Ca) + tr(Cb) - 2 tr((Ca^1/2 Cb Ca^1/2)^1/2), with both square roots taken by
    symmetric eigendecomposition and round-off negative eigenvalues clipped: always real and finite,
    0 for identical sets, no scipy.linalg.sqrtm complex parts to discard.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 samples per set, got {len(a)} and {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("feature sets contain NaN or infinite values")
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(ca)
    sqrt_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = sqrt_a @ cb @ sqrt_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    d = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2.0 * cross)
    return max(d, 0.0)


def fixed_sample(feats: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Exactly n rows, drawn without replacement with a fixed seed. The distance is biased by the sample
    count, so both sides of every comparison use the same n."""
    feats = np.asarray(feats)
    if len(feats) < n:
        raise ValueError(f"the Fréchet distance is taken at {n} samples per set, got only {len(feats)}")
    if len(feats) == n:
        return feats
    return feats[np.sort(np.random.default_rng(seed).choice(len(feats), n, replace=False))]


def frechet_at(feats_a: np.ndarray, feats_b: np.ndarray, n: int, seed: int = 0) -> float:
    """Fréchet distance at a fixed sample count n per set."""
    return frechet_distance(fixed_sample(feats_a, n, seed), fixed_sample(feats_b, n, seed + 1))


def shuffle_frames(clips: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each clip's frames in a random order: the same pictures, the motion destroyed. # (N, T, H, W, 3)"""
    rng = np.random.default_rng(seed)
    return np.stack([c[rng.permutation(len(c))] for c in np.asarray(clips)])


def sanity(clf: Classifier, real_a: np.ndarray, real_b: np.ndarray, n: int, seed: int = 0) -> dict[str, float]:
    """The distance's floor, FD(real, real') over two disjoint real sets, next to FD(real, frame-shuffled real'),
    which a useful metric puts far higher."""
    fa, fb = clf.features(real_a), clf.features(real_b)
    fs = clf.features(shuffle_frames(real_b, seed))
    return {"fd_real_real": frechet_at(fa, fb, n, seed), "fd_real_shuffled": frechet_at(fa, fs, n, seed)}
