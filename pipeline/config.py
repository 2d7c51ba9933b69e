"""Typed configuration for both stages.

Every run is described by frozen dataclasses that validate themselves on
construction, so a bad value is refused before any data is loaded or any model
is built. The CLI and the Prefect flows both build these; the library only ever
takes configs, never loose keyword arguments.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields

from pipeline.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("none", "cosine", "step", "onecycle")
SELECTIONS = ("best", "last")
AUGMENT_OPS = ("translate", "flip", "rotate")
ENCODINGS = ("float16", "float32", "topk:K")  # K: classes kept per sample
SOFT_LOSSES = ("kl", "soft_ce", "mse")
DEVICES = ("auto", "cpu", "cuda")
MODES = ("offline", "online")
VIEW_POLICIES = ("uniform", "cycle")
EXPORT_FORMATS = ("torchscript", "onnx")


def _check(cond: bool, field_name: str, problem: str, fix: str) -> None:
    if not cond:
        raise UserError(field_name, problem, fix)


def _check_choice(value: str, choices: tuple[str, ...], field_name: str) -> None:
    _check(value in choices, field_name, f"unknown value {value!r}", f"choose one of: {', '.join(choices)}")


def parse_encoding(encoding: str) -> tuple[str, int | None]:
    """``float16`` | ``float32`` | ``topk:K`` -> (kind, K)."""
    if encoding in ("float16", "float32"):
        return encoding, None
    kind, _, k = encoding.partition(":")
    if kind == "topk" and k.isdigit() and int(k) > 0:
        return "topk", int(k)
    raise UserError("encoding", f"unknown encoding {encoding!r}", "use float16, float32 or topk:K (e.g. topk:20)")


def _num(v: float) -> str:
    """Short form of a number for ids (``2.0`` -> ``2``), exact whenever ``:g`` would round it."""
    short = f"{v:g}"
    return short if float(short) == v else repr(float(v))


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and how it is split.

    ``train_limit`` keeps only the first N training samples of the (seeded)
    split; it exists for quick runs and tests, and is part of the fingerprint.
    """

    name: str = "digits"
    root: str = "data/datasets"
    download: bool = False
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    train_limit: int | None = None
    # Symmetric label noise on the train split only (val and test stay clean, so accuracy is always
    # measured against true labels): each train label becomes a uniformly drawn *other* class with
    # this probability. Seeded by ``noise_seed``, or by ``split_seed`` when that is None.
    label_noise: float = 0.0
    noise_seed: int | None = None

    def __post_init__(self) -> None:
        _check(bool(self.name), "dataset", "is empty", "pass e.g. --dataset digits")
        _check(0.0 < self.val_fraction < 0.5, "val_fraction", f"must be in (0, 0.5), got {self.val_fraction}",
               "use e.g. 0.15")
        _check(0.0 < self.test_fraction < 0.5, "test_fraction", f"must be in (0, 0.5), got {self.test_fraction}",
               "use e.g. 0.15")
        _check(self.train_limit is None or self.train_limit > 0, "train_limit",
               f"must be positive, got {self.train_limit}", "omit it to use the whole split")
        _check(math.isfinite(self.label_noise) and 0.0 <= self.label_noise < 1.0, "label_noise",
               f"must be in [0, 1), got {self.label_noise}", "use e.g. 0.2 (0 for clean labels)")
        _check(self.noise_seed is None or self.noise_seed >= 0, "noise_seed", f"must be >= 0, got {self.noise_seed}",
               "use e.g. 0, or omit it to seed the noise with the split seed")
        # A seed without noise would change the data's hash (and so store names) for identical data.
        _check(self.noise_seed is None or self.label_noise > 0, "noise_seed", "has no effect without label noise",
               "drop --noise-seed, or pass --label-noise RATE")

    @property
    def effective_noise_seed(self) -> int:
        return self.split_seed if self.noise_seed is None else self.noise_seed


@dataclass(frozen=True)
class ModelConfig:
    """An architecture from the model registry. ``width`` sizes the built-ins."""

    arch: str = "cnn"
    width: int = 32

    def __post_init__(self) -> None:
        _check(self.width > 0, "width", f"must be positive, got {self.width}", "use e.g. 32")
        # Names are checked against the registry here so a typo fails before any work.
        from pipeline.models import check_arch

        check_arch(self.arch)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, schedule and length of training.

    Schedules advance once per optimizer step. ``warmup_epochs`` adds a linear warm-up in front of
    ``none``, ``cosine`` and ``step``; for ``onecycle`` it sets the length of OneCycle's own rising
    phase instead (0: torch's default, 30% of training). ``step`` multiplies the lr by ``gamma``
    every ``step_size`` epochs, counted from the start of training.
    """

    name: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 30
    batch_size: int = 64
    schedule: str = "cosine"
    select: str = "best"  # checkpoint kept: best on the validation split, or the last epoch
    nesterov: bool = False  # sgd only
    step_size: int = 10  # epochs between decays of the "step" schedule
    gamma: float = 0.1  # lr factor at each decay of the "step" schedule
    warmup_epochs: int = 0
    clip_grad_norm: float | None = None  # max global L2 norm of the gradients; None: no clipping
    patience: int | None = None  # stop after this many epochs without a better val accuracy; None: never

    def __post_init__(self) -> None:
        _check_choice(self.name, OPTIMIZERS, "optimizer")
        _check_choice(self.schedule, SCHEDULES, "schedule")
        _check_choice(self.select, SELECTIONS, "select")
        _check(math.isfinite(self.lr) and self.lr > 0, "lr", f"must be > 0, got {self.lr}", "use e.g. 1e-3")
        _check(0.0 <= self.momentum < 1.0, "momentum", f"must be in [0, 1), got {self.momentum}", "use e.g. 0.9")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}", "use e.g. 5e-4")
        _check(self.epochs > 0, "epochs", f"must be positive, got {self.epochs}", "use e.g. 20")
        _check(self.batch_size > 0, "batch_size", f"must be positive, got {self.batch_size}", "use e.g. 64")
        # torch's SGD is the only one of our optimizers with Nesterov momentum, and it needs momentum.
        _check(not self.nesterov or self.name == "sgd", "nesterov", f"needs the sgd optimizer, got {self.name!r}",
               "pass --optimizer sgd, or drop --nesterov")
        _check(not self.nesterov or self.momentum > 0, "nesterov", "needs momentum > 0, got 0",
               "pass e.g. --momentum 0.9")
        _check(self.step_size > 0, "step_size", f"must be a positive number of epochs, got {self.step_size}",
               "use e.g. 10")
        _check(math.isfinite(self.gamma) and 0.0 < self.gamma <= 1.0, "gamma", f"must be in (0, 1], got {self.gamma}",
               "use e.g. 0.1")
        _check(0 <= self.warmup_epochs < self.epochs, "warmup_epochs",
               f"must be in [0, epochs={self.epochs}), got {self.warmup_epochs}",
               "use e.g. 1, and leave epochs after the warm-up")
        _check(self.schedule != "step" or self.warmup_epochs < self.step_size, "warmup_epochs",
               f"warm-up ({self.warmup_epochs} epochs) must end before the first decay (epoch {self.step_size})",
               "shorten the warm-up or raise --step-size")
        _check(self.clip_grad_norm is None or (math.isfinite(self.clip_grad_norm) and self.clip_grad_norm > 0),
               "clip_grad_norm", f"must be > 0, got {self.clip_grad_norm}", "use e.g. 1.0, or omit it for no clipping")
        _check(self.patience is None or self.patience > 0, "patience", f"must be a positive number of epochs, got "
               f"{self.patience}", "use e.g. 5, or omit it to train every epoch")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation. Empty ``ops`` means none."""

    ops: tuple[str, ...] = ()
    translate: int = 1
    rotate_degrees: float = 10.0

    def __post_init__(self) -> None:
        for op in self.ops:
            _check_choice(op, AUGMENT_OPS, "augment")
        _check(self.translate >= 0, "translate", f"must be >= 0, got {self.translate}", "use e.g. 1")


@dataclass(frozen=True)
class TeacherConfig:
    """Stage 1: train (or load) the teacher and write its logits to a store."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(arch="cnn", width=32))
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    checkpoint: str | None = None
    parent_store: str | None = None  # born-again KD: the store whose student this teacher is (its lineage)
    store_root: str = "data/stores"
    checkpoint_root: str = "data/checkpoints"
    encoding: str = "float16"
    device: str = "auto"
    storage_options: dict | None = None  # passed to fsspec for URL store roots (s3://, gs://, ...)
    chunk_rows: int | None = None  # samples per compressed chunk; None: about 1 MB of decoded logits
    shard_chunks: int = 16  # chunks per shard (one file/object; the unit of concurrent and resumable writes)
    writers: int = 1  # tasks (processes, machines) that split the teacher pass, each writing whole shards
    views: int = 1  # teacher views stored per sample: view 0 is the clean image, 1..K-1 replayable augmentations
    view_augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(ops=("translate", "rotate")))

    def __post_init__(self) -> None:
        parse_encoding(self.encoding)
        _check_choice(self.device, DEVICES, "device")
        _check(self.chunk_rows is None or self.chunk_rows > 0, "chunk_rows", f"must be positive, got {self.chunk_rows}",
               "use e.g. 2048, or omit it for about 1 MB per chunk")
        _check(self.shard_chunks > 0, "shard_chunks", f"must be positive, got {self.shard_chunks}", "use e.g. 16")
        _check(self.writers > 0, "writers", f"must be positive, got {self.writers}", "use 1, or one per worker")
        _check(self.views >= 1, "views", f"must be >= 1, got {self.views}", "use 1 (clean only) or e.g. 4")
        _check(self.views == 1 or bool(self.view_augment.ops), "view_augment", "is empty, so every view is clean",
               "pass e.g. --view-augment translate,rotate")


@dataclass(frozen=True)
class StudentSpec:
    """One point of the distillation grid (one student, one seed).

    ``loss`` is ``hard`` for the label-only baseline. ``beta`` of ``None``
    means the hard-label weight is ``1 - alpha``.
    """

    loss: str
    temperature: float
    alpha: float
    beta: float | None
    seed: int
    lr: float | None = None  # overrides the optimizer's lr for this student (an lr sweep)

    def __post_init__(self) -> None:
        _check_choice(self.loss, SOFT_LOSSES + ("hard",), "loss")
        _check(math.isfinite(self.temperature) and self.temperature > 0, "temperature",
               f"must be > 0, got {self.temperature}", "use e.g. 4")
        _check(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}", "use e.g. 0.9")
        _check(self.beta is None or (math.isfinite(self.beta) and self.beta >= 0), "beta",
               f"must be >= 0, got {self.beta}", "omit it to use 1 - alpha")
        _check(self.lr is None or (math.isfinite(self.lr) and self.lr > 0), "lr", f"must be > 0, got {self.lr}",
               "use e.g. 1e-3")

    @property
    def is_baseline(self) -> bool:
        return self.loss == "hard"

    @property
    def config_id(self) -> str:
        """Identifies the configuration across seeds; every hyperparameter is in it."""
        lr = "" if self.lr is None else f"-lr{_num(self.lr)}"
        if self.is_baseline:
            return f"baseline{lr}"
        beta = "" if self.beta is None else f"-b{_num(self.beta)}"
        return f"{self.loss}-T{_num(self.temperature)}-a{_num(self.alpha)}{beta}{lr}"

    @property
    def run_id(self) -> str:
        return f"{self.config_id}-s{self.seed}"


@dataclass(frozen=True)
class DistillConfig:
    """Stage 2: train a grid of students from a stored set of teacher logits.

    ``data`` of ``None`` means "the dataset the store was written from"; the
    store's fingerprints are checked against it either way.
    """

    store: str
    data: DataConfig | None = None
    model: ModelConfig = field(default_factory=lambda: ModelConfig(arch="cnn", width=4))
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    temperatures: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    alphas: tuple[float, ...] = (0.9,)
    losses: tuple[str, ...] = ("kl",)
    beta: float | None = None
    seeds: tuple[int, ...] = (0,)
    lrs: tuple[float, ...] = ()  # empty: every student uses optim.lr
    report_root: str = "data/reports"
    run_name: str | None = None
    device: str = "auto"
    group_size: int = 1
    cache_mb: float = 1024.0
    storage_options: dict | None = None
    mode: str = "offline"  # "online" reruns the teacher every step: the reference for exactness and benchmarks
    workers: int = 0  # DataLoader worker processes decoding chunks (0: a background thread in-process)
    view_policy: str = "uniform"  # stores with teacher views: the view each sample trains on per epoch
    verify_views: int = 0  # rerun the teacher on this many replayed samples before training (0: skip)

    def __post_init__(self) -> None:
        _check(bool(self.store), "store", "is empty", "pass --store PATH_OR_URL")
        _check_choice(self.mode, MODES, "mode")
        _check(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}", "use 0 or e.g. 2")
        _check_choice(self.view_policy, VIEW_POLICIES, "view_policy")
        _check(self.verify_views >= 0, "verify_views", f"must be >= 0, got {self.verify_views}", "use 0 or e.g. 32")
        _check(self.group_size > 0, "group_size", f"must be positive, got {self.group_size}",
               "use 1 for a Prefect task per student, more to share one data pass")
        _check(self.cache_mb >= 0, "cache_mb", f"must be >= 0, got {self.cache_mb}", "use e.g. 1024")
        _check(len(self.temperatures) > 0, "temperatures", "is empty", "pass e.g. --temperatures 1 2 4 8")
        _check(len(self.alphas) > 0, "alphas", "is empty", "pass e.g. --alphas 0.9")
        _check(len(self.losses) > 0, "losses", "is empty", "pass e.g. --losses kl")
        _check(len(self.seeds) > 0, "seeds", "is empty", "pass e.g. --seeds 0 1 2")
        # Duplicates would give two runs the same run_id (same checkpoint file, merged leaderboard rows).
        for name in ("seeds", "temperatures", "alphas", "losses", "lrs"):
            values = getattr(self, name)
            _check(len(set(values)) == len(values), name, "has duplicates", f"list each value of {name} once")
        _check("hard" not in self.losses, "losses", "'hard' is the label-only baseline, always trained",
               f"list only soft losses: {', '.join(SOFT_LOSSES)}")
        _check_choice(self.device, DEVICES, "device")
        # Building the grid validates every T, alpha, beta and loss name now.
        self.students()

    def students(self) -> list[StudentSpec]:
        """The label-only baseline plus every (loss, T, alpha) point, for every seed."""
        specs: list[StudentSpec] = []
        for lr in self.lrs or (None,):
            lr = None if lr is None else float(lr)
            for seed in self.seeds:
                specs.append(StudentSpec(loss="hard", temperature=1.0, alpha=0.0, beta=None, seed=seed, lr=lr))
                for loss in self.losses:
                    for t in self.temperatures:
                        for a in self.alphas:
                            specs.append(StudentSpec(loss=loss, temperature=float(t), alpha=float(a),
                                                     beta=self.beta, seed=seed, lr=lr))
        return specs


def config_hash(*parts: object) -> str:
    """A short, stable hash of dataclasses / JSON-able values (for names and provenance)."""
    payload = json.dumps([to_dict(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def to_dict(obj: object) -> object:
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)  # type: ignore[arg-type]
    return obj


def from_dict(cls: type, data: dict) -> object:
    """Rebuild a (nested) config dataclass from :func:`to_dict` output, e.g. store attributes."""
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        sub = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "augment": AugmentConfig,
               "view_augment": AugmentConfig}.get(f.name)
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)
