"""What a training is, checked before any work: the config, its profiles, and the train request.

Torch-free on purpose: the CLI and the flows check a request (`check_train_request`) and name its run
directory (`run_dir`) without importing torch, Prefect or MLflow. `TrainConfig` is a frozen dataclass;
`config_for(profile, **overrides)` is the only way to make one (strings from the CLI are coerced to
each field's type, bad values named with what is valid). The numbers behind the defaults are in the
README's design note.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from t2v import dataset, models
from t2v.io import module_source, source_hash

CKPT_NAME = "last.pt"  # under <run dir>/checkpoints/, with its metadata beside it as last.json
RUN_RECORD = "mlflow_run.json"  # under the run dir: the MLflow run a training continues
MODEL_CODE = ("t2v.models", "t2v.models.common", "t2v.train", "t2v.checkpoint", "t2v.text", "t2v.sampler",
              "t2v.loader", "t2v.distributed")  # with the family's own module and what they import: what decides the weights
NOT_WEIGHTS = frozenset({"t2v.io"})  # imported by the training code, but it decides how files land (atomic writes, hashes), not what they hold
DEFAULT_EXPERIMENT = "t2v"  # the MLflow experiment a training logs to unless told
SET_BY_PARAMETER = {"model": "--model", "profile": "--profile",  # TrainConfig fields with their own flow/CLI parameter
                    "world_size": "--nproc-per-node and --nnodes"}
MAX_PROCS = 1024  # ranks per node, and nodes: far past any cluster this project would meet, small enough to catch a typo



@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Frames and frame size come from the dataset."""

    model: str = "video"  # the clip-level GAN; "baseline" (the tutorial), "conv3d", "rnn", "transformer": README, "Model families"
    profile: str = "cpu-demo"  # which preset these values came from (logged, not used by the loop)
    max_steps: int = 1800  # training steps: the budget of a run, the same on every machine
    max_seconds: float = 0.0  # wall-clock cap on the loop, off (0) in every profile: a cap makes the step count, and
    # so the model, depend on the machine's speed; a run with one is tagged reproducible=false
    batch_size: int = 32  # clips per step: enough to mix motions, small enough for ~5 steps/s on CPU
    lr_g: float = 1e-3  # the layered generator has few, well-conditioned parameters: a high rate learns in minutes
    lr_d: float = 1e-3  # matched to G (hinge + spectral norm keep D from running away)
    lr_decay: float = 0.0  # fraction of max_steps, at the end, over which both rates fall linearly to 0; off (0) but
    # for video (0.5): it stops a late collapse, so every seed ships a settled step (README)
    betas: tuple[float, float] = (0.5, 0.99)  # low beta1, the usual GAN choice; beta2 0.99 reacts faster than 0.999
    ema_decay: float = 0.99  # short horizon: a 1.5k-step run must still let the EMA move
    ema_start: int = 100  # steps before the EMA starts averaging (it copies G until then)
    r1_weight: float = 1.0  # R1 penalty on the pixel critics' real inputs: without it some seeds collapse into pale spiky
    # shapes (conv3d/rnn: only with stabilize)
    r1_every: int = 4  # lazy R1: pay the double backward once every N steps (~10% of step time)
    aux_weight: float = 1.0  # AC-GAN classification heads (colour, shape, motion): fast prompt following
    mismatch_weight: float = 0.5  # real clip + wrong prompt is a negative for D (matching-aware D)
    pair_weight: float = 0.0  # video: the pair critic (two paths of one motion, PacGAN), off: on the shipped recipe it
    # widened seed 0's start spread to 0.78x real but collapsed seeds 1 and 2 (README, design note)
    spread_weight: float = 0.0  # video: pull the per-axis variance of the start centre over 8 noises of each prompt to
    # the real clips' of its motion (moment matching, no critic); off: it widens the spread to 0.8x real and lowers the
    # FD, but costs motions (README, design note)
    match_weight: float = 0.0  # video (whose family default is 0.02): pull the mean statistics of the centre track
    # (per-axis speed, turning, net travel, range; speed wander, orbit rate, distance from the centre and its range) over
    # 4 noises of each prompt to the real clips' of its motion (moment matching, no critic): with sprite_prior and
    # wall_bounds every quality target held on seeds 0, 1 and 2 on two CPU kinds, at 0.89x the steps per second; its
    # signed travel keeps straight moves going the right way on a third (README, design note)
    convex_weight: float = 3.0  # concavity prior on G's sprite: penalises dents, so contours do not settle as lumpy stars
    color_dropout: float = 0.15  # fraction of training prompts without their colour word ("any colour")
    text_encoder: str = "default"  # the generator's text encoder: the family's own, or "transformer", "bag", "slots"
    # where the family supports it (separates the text encoder's effect from the generator's in the comparison)
    stabilize: bool = False  # conv3d/rnn: hinge loss, spectral norm and R1 (r1_weight) instead of the published BCE
    # recipe (conv3d's critic also reads the text by projection instead of concatenation: README, "Model families");
    # off for conv3d, so its row measures what was published; rnn and transformer train with them on; video and
    # baseline refuse it (a family lists the switches it honours)
    anchor: float = 0.0  # video (whose family default is 0.3): start-anchor spread at init, pre-bound units; 0 = none
    shift: float = 0.0  # video (whose family default is 0.3): per-clip shift of the clip's time along a padded
    # timeline at init, x 8 frames (where in its cycle a clip starts: a bounce's turn, an orbit's phase); 0 = none
    sample_symmetry: bool = False  # video (whose family default is true): the shipped sampler draws each clip as one
    # of its prompt's canvas symmetries (a mirror or quarter turn that maps the motion to itself, as the renderer's
    # clips are distributed): the real start spread and a lower FD, nothing retrained (README, design note)
    sprite_prior: bool = False  # video (whose family default is true): the sprite keeps the vocabulary's contract: its
    # circumradius drawn per clip from the contract's 10-16% of the side off noise dim 4 (which the pose MLP does not see,
    # so cannot undo the draw), the learned contour scaled to circumradius 1, one fill per colour word. Alone it met the
    # Fréchet target on three seeds (30-44 against 54-82) but lost a motion on two (README, design note)
    wall_bounds: bool = False  # video (whose family default is true): the sprite's centre is its pre-bound path itself
    # to 0.95 of the way to the renderer's walls (a circumradius and 1.5 px in from the edge with sprite_prior, else 0.85
    # of the half-side), then squashed into them, instead of 0.85 tanh, which bends every path long before the edge and
    # rounds a bounce's reflection off. Without it, with sprite_prior and the track match, every seed bounced vertically
    # (README, design note)
    z_dim: int = 32  # per-clip latent shared by all frames: start position, speed, phase, size
    text_dim: int = 64  # width of each text code
    width: int = 16  # conv critics' base channels: wider costs CPU time linearly and learned no faster
    frame_samples: int = 2  # frames per clip the frame discriminator judges (at full resolution)
    ckpt_every: int = 250  # a crash costs at most ~1 min of CPU training
    log_every: int = 25  # metrics cadence: cheap, and enough points for a curve
    sample_every: int = 250  # sample-grid cadence (EMA generator on fixed prompts)
    select_every: int = 250  # judge the EMA on every train prompt this often and ship the best (0 = ship the last):
    # a GAN's last step is a draw from its oscillation, and the check picks the good phase
    select_by: str = "mean"  # what selection maximises over the train prompts' clips (ties: the mean, then the later
    # step): "mean" all-three, or "worst_motion", the lowest motion phrase's all-three, as the per-motion target reads
    select_samples: int = 1  # noises per train prompt each selection judges: a motion has 5-14 train prompts, so one
    # noise each moves its accuracy in steps of 7-20%; each noise costs about 2 s a selection on 2 CPU cores
    seed: int = 0  # model init, noise and data order
    world_size: int = 1  # ranks training together (`--nproc-per-node` x `--nnodes`); batch_size is per rank, so the
    # global batch is batch_size * world_size and a resume needs the same world size
    device: str = "auto"  # "auto" = cuda when available, else cpu; or "cpu" / "cuda" / "cuda:N"
    deterministic: bool = False  # CUDA: deterministic kernels only, no TF32, no cuDNN autotuning (slower); CPU already is
    compile: bool = False  # torch.compile the generator/discriminators (CUDA only; slow start, pays off on long runs)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU, where bf16 conv is slower)
    num_workers: int = 0  # DataLoader workers decoding PNGs; 0 = in the training process (on few cores a worker takes a torch thread)
    shuffle_buffer: int = 512  # samples held per worker for shuffling, on top of interleaving every shard
    init_from: str = ""  # warm start: an export dir whose generator/text weights start a fresh run ("" = random init)
    threads: int = 0  # torch intra-op threads on CPU; 0 = one per core left after the loader workers (oversubscribed OpenMP stalls)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able values for logging as params."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def identity(self) -> dict[str, Any]:
        """The fields a checkpoint must agree on to be resumed (run-length, logging and hardware fields may change)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_ONLY_FIELDS}


SELECT_BY = ("mean", "worst_motion")  # what checkpoint selection maximises (TrainConfig.select_by)

# Fields that change how long or where a run goes, not what it learns: resuming may change them.
RUN_ONLY_FIELDS = frozenset({
    "profile", "max_steps", "max_seconds", "ckpt_every", "log_every", "sample_every", "select_every", "device",
    "compile", "amp", "num_workers", "shuffle_buffer", "threads",
})

PROFILES: dict[str, TrainConfig] = {
    # the `make demo` default: a fixed step budget (about 6 minutes on 2 CPU cores)
    "cpu-demo": TrainConfig(profile="cpu-demo", max_steps=1800),
    # one GPU: bigger batches, longer, bf16; still minutes, not hours.
    "gpu": TrainConfig(profile="gpu", max_steps=6000, batch_size=128, num_workers=6, shuffle_buffer=2000,
                       ckpt_every=1000, log_every=50, sample_every=1000, select_every=500, ema_decay=0.995,
                       ema_start=500),
}


def _coerce(name: str, value: Any, typ: Any) -> Any:
    """Accept CLI/flow strings for typed fields ("64" -> 64, "true" -> True, "0.5,0.9" -> (0.5, 0.9))."""
    origin = typing.get_origin(typ)
    if origin is tuple:
        parts = value.split(",") if isinstance(value, str) else list(value)
        elem = typing.get_args(typ)
        if len(parts) != len(elem):
            raise ValueError(f"{name} needs {len(elem)} values, got {value!r}")
        return tuple(_coerce(name, p, t) for p, t in zip(parts, elem))
    if typ is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return bool(value)
    if typ in (int, float):
        try:
            out = typ(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be {typ.__name__}, got {value!r}") from None
        if typ is int and isinstance(value, float) and value != out:
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return out
    if typ is str:
        return str(value)
    return value


def validate(cfg: TrainConfig) -> None:
    """Reject bad values before any work, naming the field and what is valid."""
    models.text_encoder(cfg.model, cfg.text_encoder)  # unknown model or encoder -> ValueError naming the valid ones
    models.check_switches(cfg.model, {"stabilize": cfg.stabilize, "sprite_prior": cfg.sprite_prior,
                                      "wall_bounds": cfg.wall_bounds})
    for name in ("max_steps", "batch_size", "ckpt_every", "log_every", "sample_every", "z_dim", "text_dim",
                 "width", "frame_samples", "r1_every", "world_size", "select_samples"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(cfg, name)!r}")
    for name in ("num_workers", "shuffle_buffer", "threads", "ema_start", "select_every", "seed", "max_seconds",
                 "r1_weight", "aux_weight", "mismatch_weight", "pair_weight", "spread_weight", "match_weight", "anchor", "shift"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)!r}")
    for name in ("lr_g", "lr_d"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(cfg, name)!r}")
    if cfg.sprite_prior and cfg.z_dim < models.SIZE_NOISE_DIM + 1:
        raise ValueError(f"sprite_prior draws the size off noise dim {models.SIZE_NOISE_DIM}: z_dim must be at least "
                         f"{models.SIZE_NOISE_DIM + 1}, got {cfg.z_dim}; or set sprite_prior=false")
    if cfg.select_by not in SELECT_BY:
        raise ValueError(f"unknown select_by {cfg.select_by!r}; valid: {', '.join(SELECT_BY)}")
    if not (0.0 <= cfg.ema_decay < 1.0):
        raise ValueError(f"ema_decay must be in [0, 1), got {cfg.ema_decay!r}")
    if not all(0.0 <= b < 1.0 for b in cfg.betas):
        raise ValueError(f"betas must be in [0, 1), got {cfg.betas!r}")
    if not (0.0 <= cfg.lr_decay <= 1.0):
        raise ValueError(f"lr_decay must be in [0, 1] (a fraction of max_steps), got {cfg.lr_decay!r}")
    if not (0.0 <= cfg.color_dropout <= 1.0):
        raise ValueError(f"color_dropout must be in [0, 1], got {cfg.color_dropout!r}")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ValueError(f"unknown device {cfg.device!r}; valid: auto, cpu, cuda, cuda:N")


AUTO_PROFILE = "auto"  # not a preset: `gpu` where CUDA is available, `cpu-demo` elsewhere (see resolve_profile)


def resolve_profile(profile: str) -> str:
    """`auto` -> `gpu` when this machine has CUDA, else `cpu-demo`; any other name unchanged. Only
    `auto` imports torch, so other requests are still checked without it."""
    if profile != AUTO_PROFILE:
        return profile
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu-demo"


def _check_profile(profile: str) -> str:
    if profile != AUTO_PROFILE and profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}, {AUTO_PROFILE} "
                         f"(gpu where CUDA is available, else cpu-demo)")
    return resolve_profile(profile)


def config_for(profile: str = "cpu-demo", **overrides: Any) -> TrainConfig:
    """The profile's config with `overrides` applied (strings are converted to the field's type).

    A model family's own defaults (the baseline's: the tutorial's batch size and Adam settings) apply
    unless those fields are overridden too.

    Unknown profile or field -> ValueError listing the valid ones; bad values -> ValueError naming the field."""
    profile = _check_profile(profile)
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(overrides) - set(hints))
    if unknown:
        raise ValueError(f"unknown config field(s) {', '.join(unknown)}; valid fields: {', '.join(hints)}")
    values = {k: _coerce(k, v, hints[k]) for k, v in overrides.items() if v is not None}
    values = {**models.family(values.get("model", PROFILES[profile].model)).config_defaults, **values}
    cfg = dataclasses.replace(PROFILES[profile], **values)
    validate(cfg)
    return cfg


EXPORT_WEIGHTS = ("generator.pt", "text_encoder.pt")  # what a warm start reads from an export


def check_export(export_dir: Path) -> None:
    """FileNotFoundError naming `init_from` unless it holds a generator export's weights."""
    for name in EXPORT_WEIGHTS:
        if not (Path(export_dir) / name).is_file():
            raise FileNotFoundError(f"init_from={str(export_dir)!r} is not a generator export: {name} is missing")




def check_device(name: str) -> None:
    """ValueError when `name` asks for CUDA on a machine without it (imports torch only then)."""
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for but CUDA is not available; use device=auto or cpu")


def generator_spec(cfg: TrainConfig, frames: int, size: int) -> models.GeneratorSpec:
    """The spec a training of `cfg` on clips of (frames, size) builds and exports its generator from."""
    return models.GeneratorSpec(cfg.model, frames, size, cfg.z_dim, cfg.text_dim,
                                text_encoder=models.text_encoder(cfg.model, cfg.text_encoder), anchor=cfg.anchor,
                                shift=cfg.shift, symmetric=cfg.sample_symmetry, sprite_prior=cfg.sprite_prior,
                                wall_bounds=cfg.wall_bounds)


def config_key(cfg: TrainConfig) -> str:
    """Hash of what a checkpoint must agree on to be resumed (run length, logging and hardware aside)."""
    return hashlib.sha256(json.dumps(cfg.identity(), sort_keys=True).encode()).hexdigest()[:16]


def _is_submodule(package: str, name: str) -> bool:
    """Whether `package.name` is a module file (looked up on disk: importing it could pull in torch)."""
    spec = importlib.util.find_spec(package)
    locations = (spec.submodule_search_locations if spec is not None else None) or []
    return any((Path(loc) / f"{name}.py").is_file() or (Path(loc) / name / "__init__.py").is_file() for loc in locations)


def _t2v_imports(name: str) -> list[str]:
    """The t2v modules a module's source imports, read from the file (nothing is imported)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(module_source(name).read_bytes())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "t2v":  # from t2v import judge, vocab
                found |= {f"t2v.{a.name}" for a in node.names}
            elif node.module.startswith("t2v."):  # from t2v.models import GeneratorSpec, pixel: the submodules too
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names if _is_submodule(node.module, a.name)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("t2v.")}
    return sorted(found)


def training_modules(model: str) -> tuple[str, ...]:
    """Every module whose source decides a training's weights, in a fixed order: the shared loop, model,
    checkpoint, text, sampler and loader code, the family's module (and those it names as its code), and
    every t2v module they import, transitively: the judge that picks the shipped step, the sampler's
    symmetry table in `featnet`, the vocabulary, the shard reading. No family imports another, so
    editing one family retrains only that family."""
    fam = models.family(model)
    todo, out = [*MODEL_CODE, fam.module, *fam.code], []
    while todo:
        name = todo.pop(0)
        if name not in out and name not in NOT_WEIGHTS:
            out.append(name)
            todo += _t2v_imports(name)
    return tuple(out)


def model_code_version(model: str) -> str:
    """Hash of the sources of `training_modules(model)`: part of the training cache key, so a new judge,
    sampler or family module trains afresh instead of reusing weights another code state picked."""
    return source_hash(*training_modules(model))


def from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """A config back from `TrainConfig.to_dict()` (JSON lists back to tuples); it was checked when made."""
    return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def run_dir(root: str | os.PathLike[str], cfg: TrainConfig, manifest_checksum: str) -> Path:
    """`<root>/runs/<model>-<profile>-<manifest checksum>-<config+code key>`: one training dir per
    (dataset version, config, model code). A grown dataset, a changed config or new model code trains
    afresh; the same ones resume (run-length fields aside)."""
    key = hashlib.sha256(f"{config_key(cfg)}|{model_code_version(cfg.model)}".encode()).hexdigest()[:8]
    return Path(root).expanduser().absolute() / "runs" / f"{cfg.model}-{cfg.profile}-{manifest_checksum[:12]}-{key}"


def checkpoint_meta(path: Path) -> dict[str, Any]:
    """{"step", "config", "data"} of a checkpoint, from the JSON written beside it (torch-free); a
    checkpoint from before the sidecar existed is opened with torch instead."""
    side = Path(path).with_suffix(".json")
    if side.is_file():
        return json.loads(side.read_text())
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {"step": int(ckpt["step"]), "config": ckpt["config"], "data": ckpt["data"]}


def check_resumable(meta: Mapping[str, Any], cfg: TrainConfig, frames: int, size: int, path: Path) -> None:
    """A checkpoint resumes only a run of the same config (run-length/logging/hardware fields aside) and clip geometry.

    A field the checkpoint's config lacks was added since it was written: it counts as its default, so an
    upgrade that adds an option (off by default) does not orphan the runs already on disk."""
    defaults = TrainConfig().identity()
    saved = {**defaults, **{k: v for k, v in meta["config"].items() if k not in RUN_ONLY_FIELDS}}
    diff = {k: (saved.get(k), v) for k, v in cfg.identity().items() if saved.get(k) != v}
    if meta["data"] != {"frames": frames, "size": size}:
        diff["data"] = (meta["data"], {"frames": frames, "size": size})
    if diff:
        what = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{path} belongs to a run with a different config ({what}); resume with the same "
                         f"config, or train into a new out_dir")


def read_run_record(out_dir: str | os.PathLike[str]) -> dict[str, str] | None:
    """The MLflow run a previous attempt of this training recorded in its run dir, if any."""
    path = Path(out_dir) / RUN_RECORD
    if not path.exists():
        return None
    return json.loads(path.read_text())


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 logs, checkpoints, selects, exports; the others only train."""
        return self.rank == 0


def world_from_env(environ: dict[str, str] | None = None) -> World:
    """The torchrun variables of this process (a plain process is rank 0 of 1); torch-free, so the CLI
    reads them before importing torch. ValueError naming them when one is not an integer."""
    env = os.environ if environ is None else environ
    try:
        return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
    except ValueError as e:
        raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {e}") from e


def check_launch(nproc_per_node: int = 1, nnodes: int = 1, node_rank: int = 0,
                 rdzv_endpoint: str | None = None) -> int:
    """The world size of a torchrun launch request, or ValueError naming the bad value."""
    for name, v in (("nproc_per_node", nproc_per_node), ("nnodes", nnodes)):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_PROCS:
            raise ValueError(f"{name} must be an integer from 1 to {MAX_PROCS}, got {v!r}")
    if not isinstance(node_rank, int) or isinstance(node_rank, bool) or not 0 <= node_rank < nnodes:
        raise ValueError(f"node_rank must be an integer from 0 to nnodes-1 = {nnodes - 1}, got {node_rank!r}")
    if nnodes > 1 and not rdzv_endpoint:
        raise ValueError(f"nnodes={nnodes} needs rdzv_endpoint HOST:PORT: node 0's address, the same on every node")
    if rdzv_endpoint:
        host, sep, port = str(rdzv_endpoint).rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"rdzv_endpoint must be HOST:PORT, got {rdzv_endpoint!r}")
    return nproc_per_node * nnodes


def check_train_config(model: str = "video", profile: str = "cpu-demo", max_steps: int | None = None,
                       overrides: Mapping[str, Any] | None = None, world_size: int = 1) -> TrainConfig:
    """The config a training request names, or ValueError naming the bad model, profile, field or value."""
    overrides = dict(overrides or {})
    models.family(model)  # unknown model -> ValueError naming the valid ones
    profile = _check_profile(profile)
    clash = [k for k in SET_BY_PARAMETER if k in overrides]
    if clash:
        raise ValueError(f"set {clash[0]} with {SET_BY_PARAMETER[clash[0]]}, not as an override")
    if max_steps is not None:
        if "max_steps" in overrides and str(overrides["max_steps"]) != str(max_steps):
            raise ValueError(f"max_steps given twice: {max_steps} and override {overrides['max_steps']!r}")
        overrides["max_steps"] = max_steps
    cfg = config_for(profile, model=model, world_size=world_size, **overrides)
    check_device(cfg.device)
    if cfg.init_from:
        check_export(Path(cfg.init_from))
    return cfg


@dataclass(frozen=True)
class TrainRequest:
    """A checked training request: everything the task needs, nothing computed from arrays."""

    data_dir: Path  # absolute
    out_dir: Path  # absolute
    config: TrainConfig
    manifest_checksum: str
    frames: int  # clip geometry of the dataset (T)
    size: int  # H = W
    experiment: str


def check_train_request(data: str | os.PathLike[str], model: str = "video", profile: str = "cpu-demo",
                        max_steps: int | None = None, out: str | os.PathLike[str] | None = None,
                        overrides: Mapping[str, Any] | None = None,
                        experiment: str = DEFAULT_EXPERIMENT, world_size: int = 1) -> TrainRequest:
    """Every check of a training request, before any directory, MLflow run or Prefect task exists; the
    CLI and the train-stage flow both call it. Torch-free unless a GPU or an old checkpoint must be looked at.

    Raises ValueError / FileNotFoundError naming the bad value and the valid choices: a dataset dir
    without `manifest.parquet`, an unknown model, profile or config field, a bad value, a device that
    is not there, an `init_from` that is not an export, an empty experiment name, or an output dir
    whose checkpoint belongs to another config or dataset.
    """
    if not isinstance(experiment, str) or not experiment.strip():
        raise ValueError(f"experiment must be a non-empty MLflow experiment name, got {experiment!r}")
    data_dir = Path(data).expanduser().absolute()
    manifest = data_dir / dataset.MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"no dataset at {str(data_dir)!r}: {str(manifest)!r} does not exist; build one "
                                f"first with `t2v data --out {data} --clips-per-combo N`")
    cfg = check_train_config(model, profile, max_steps, overrides, world_size)
    frames, size = dataset.geometry(data_dir)
    dataset.shard_urls(data_dir, "train", verify=False)  # no train shards -> FileNotFoundError naming the dir
    checksum = dataset.manifest_checksum(data_dir)
    out_dir = dataset.check_output_dir(out if out is not None else run_dir(data_dir, cfg, checksum))
    ckpt = out_dir / "checkpoints" / CKPT_NAME
    if ckpt.is_file():
        trained_on = (read_run_record(out_dir) or {}).get("manifest_checksum")
        if trained_on and trained_on != checksum:
            raise ValueError(f"{str(out_dir)!r} holds a training on another version of the dataset (manifest "
                             f"{trained_on[:12]}, now {checksum[:12]}); train into a new --out")
        check_resumable(checkpoint_meta(ckpt), cfg, frames, size, ckpt)
    return TrainRequest(data_dir, out_dir, cfg, checksum, frames, size, experiment)
