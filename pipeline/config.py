"""Typed configuration for both stages: the one schema of every option.

Every run is described by frozen dataclasses that validate themselves on
construction, so a bad value is refused before any data is loaded or any model
is built. The CLI and the Prefect flows both build these; the library only ever
takes configs, never loose keyword arguments.

Each field is declared with :func:`option`, which carries its help text, its
choices and how it reads on a command line; ``flows/options.py`` generates the
``kd`` options from these fields, so an option is added here and nowhere else.
The defaults of the two stages are the named constructors :func:`teacher_model`,
:func:`teacher_optim`, :func:`student_model` and :func:`student_optim`.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, TypeVar

from pipeline.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("none", "cosine", "step", "onecycle")
SELECTIONS = ("best", "last")
AUGMENT_OPS = ("translate", "flip", "rotate", "crop", "jitter")
MIX_OPS = ("mixup", "cutmix")  # teacher views only: a sample mixed with a stored partner from its own split
SOFT_LOSSES = ("kl", "soft_ce", "mse")
# Soft losses that ignore the temperature (pipeline.losses.mse_loss matches raw logits): trained once per
# (alpha, seed), not once per temperature, and their config_id carries no T (a test keeps this in step with
# pipeline/losses.py).
TEMPERATURE_FREE_LOSSES = ("mse",)
DEVICES = ("auto", "cpu", "cuda")
MODES = ("offline", "online")
VIEW_POLICIES = ("uniform", "cycle")
BATCH_MODES = ("auto", "on", "off")  # how a group of students trains (pipeline.student_group.fit_group's `batched`)
TRAIN_TRANSFORMS = ("random-resized-crop", "hflip")  # the keys of pipeline.transforms.TRAIN_OPS (a test keeps them equal)
EXPORT_FORMATS = ("torchscript", "onnx", "safetensors")
BUILTIN_ARCHS = ("mlp", "cnn")  # the keys of pipeline.models.MODELS (a test keeps the two equal)
# Where a model comes from, named as the prefix of --arch (`timm:resnet18`); a bare name is a built-in (mlp, cnn)
# or a torchvision classifier built from scratch and adapted to the input (the keys of pipeline.models.SOURCES).
MODEL_SOURCES = ("builtin", "torchvision", "timm", "py", "file")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")  # PIL's resampling filters, as torchvision names them

C = TypeVar("C")

STORAGE_OPTIONS_HELP = 'JSON object passed to fsspec for URL stores, e.g. \'{"anon": false}\''


def option(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None, help: str,
           choices: tuple[str, ...] | None = None, flag: str | None = None, metavar: str | None = None,
           default_text: str | None = None, separator: str | None = None, prefix: str = "", inherit: bool = True,
           cli: bool = True) -> Any:
    """A config field with what the command line needs to know about it (kept in ``field.metadata``).

    ``help``: the option's help text; for a nested config, the title of its option group.
    ``choices``: the values allowed (the same tuple the field is validated against).
    ``flag``: the option's name when it is not the field's (``name`` -> ``dataset``), without ``--``.
    ``metavar``: the placeholder shown in ``--help``. ``default_text``: how the default reads in ``--help``
    where the value alone would not say it (e.g. ``None`` meaning "the split seed").
    ``separator``: a tuple given as one argument joined by it (``--augment translate,flip``); otherwise
    tuples take several arguments (``--temperatures 1 2 4``).
    ``prefix``: for a nested config, put in front of each of its flags (``view-`` -> ``--view-augment``).
    ``inherit=False``: in ``kd run`` the students keep their own default for this field instead of
    following the teacher's value (model size, lr, epochs).
    ``cli=False``: not a command-line option (set by the flows themselves).
    """
    metadata = {"help": help, "choices": choices, "flag": flag, "metavar": metavar, "default_text": default_text,
                "separator": separator, "prefix": prefix, "inherit": inherit, "cli": cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _check(cond: bool, field_name: str, problem: str, fix: str) -> None:
    if not cond:
        raise UserError(field_name, problem, fix)


# --augment ops (drawn per batch on the device) that repeat a --train-transform op (drawn per sample in the workers)
AUGMENT_REPEATS = {"crop": "random-resized-crop", "flip": "hflip"}


def check_augment_overlap(data: "DataConfig", augment: "AugmentConfig") -> None:
    """Refuse a crop or flip asked for twice, once per sample (``--train-transform``) and once per batch
    (``--augment``): every image would be cropped or flipped twice over."""
    for op in augment.ops:
        repeated = AUGMENT_REPEATS.get(op)
        _check(repeated not in data.train_transform, "augment", f"{op} repeats --train-transform {repeated} "
               "(each image would get both)", f"keep one: drop {op} from --augment, or {repeated} from "
               "--train-transform (drawn per sample in the data loader's workers)")


def _check_choice(value: str, choices: tuple[str, ...], field_name: str) -> None:
    _check(value in choices, field_name, f"unknown value {value!r}", f"choose one of: {', '.join(choices)}")


def _torchvision_archs() -> list[str]:
    # Imported here, not at the top: torchvision takes seconds to import, and `kd --help` or
    # `kd inspect` never build a model.
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def parse_arch(arch: str) -> tuple[str, str]:
    """``--arch`` -> (source, name): ``cnn`` -> ("builtin", "cnn"), ``timm:resnet18`` -> ("timm", "resnet18"),
    ``py:pkg.mod:fn`` -> ("py", "pkg.mod:fn"), ``file:PATH`` -> ("file", PATH)."""
    source, sep, name = arch.partition(":")
    if not sep:
        return "builtin", arch
    if source not in MODEL_SOURCES or source == "builtin":
        raise UserError("arch", f"unknown model source {source!r} in {arch!r}",
                        "use a built-in name, or torchvision:NAME, timm:NAME, py:package.module:function or file:PATH")
    if not name:
        raise UserError("arch", f"{arch!r} names no model", f"pass e.g. {source}:{_SOURCE_EXAMPLES[source]}")
    return source, name


_SOURCE_EXAMPLES = {"torchvision": "resnet18", "timm": "resnet18", "py": "my_models.nets:make_net",
                    "file": "teacher.pt2"}


def check_arch(name: str) -> None:
    """Refuse an architecture that is neither built in nor a torchvision classifier, suggesting near misses.

    Names with a source prefix are checked for their form only here (configs are also rebuilt from a store's
    record, where a factory or a file need not exist); :func:`pipeline.models.check_source` checks the rest
    before any work.
    """
    source, bare = parse_arch(name)
    if source == "torchvision":
        if bare not in _torchvision_archs():
            close = difflib.get_close_matches(bare, _torchvision_archs(), n=3)
            raise UserError("arch", f"unknown torchvision model {bare!r}",
                            f"did you mean {', '.join('torchvision:' + c for c in close)}?" if close
                            else "pass a name from torchvision.models.list_models()")
        return
    if source == "py":
        module, sep, fn = bare.rpartition(":")
        if not sep or not module or not fn.isidentifier():
            raise UserError("arch", f"{name!r} is not py:package.module:function",
                            "pass e.g. py:my_models.nets:make_net (a function returning an nn.Module)")
        return
    if source != "builtin":
        return
    if name in BUILTIN_ARCHS or name in _torchvision_archs():
        return
    close = difflib.get_close_matches(name, list(BUILTIN_ARCHS) + _torchvision_archs(), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"use {', '.join(BUILTIN_ARCHS)} or a torchvision model name"
    raise UserError("arch", f"unknown architecture {name!r}", hint)


def _num(v: float) -> str:
    """Short form of a number for ids (``2.0`` -> ``2``), exact whenever ``:g`` would round it."""
    short = f"{v:g}"
    return short if float(short) == v else repr(float(v))


@dataclass(frozen=True)
class Preprocessing:
    """A model's evaluation preprocessing, as plain values: resize the shorter side to ``resize`` with
    ``interpolation`` (PIL's filter, as torchvision and timm apply it), center-crop ``crop`` x ``crop``, scale to
    [0, 1], then ``(x - mean) / std`` per channel. ``None`` leaves a step out (no resize or crop: the data's
    --image-size or native resolution; no mean/std: no normalisation). ``origin`` says where the values came from
    (a weights enum, timm's pretrained config, options)."""

    resize: int | None = None
    crop: int | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    origin: str = "options"

    def __post_init__(self) -> None:
        _check_choice(self.interpolation, INTERPOLATIONS, "interpolation")
        _check(self.resize is None or self.resize > 0, "resize", f"must be positive, got {self.resize}", "use e.g. 256")
        _check(self.crop is None or self.crop > 0, "crop", f"must be positive, got {self.crop}", "use e.g. 224")
        _check(self.resize is None or self.crop is not None, "resize", "needs a crop size",
               "pass --crop S too (the image is resized, then center-cropped to S x S)")
        _check(self.resize is None or self.crop is None or self.resize >= self.crop, "crop",
               f"{self.crop} is larger than the resize {self.resize}", "pass --crop <= --resize")
        _check((self.mean is None) == (self.std is None), "mean" if self.std is not None else "std",
               "is given without the other", "pass both --mean and --std, one value per channel")
        if self.mean is not None and self.std is not None:
            _check(len(self.mean) == len(self.std) and len(self.mean) in (1, 3), "std",
                   f"has {len(self.std)} values for {len(self.mean)} means", "pass one mean and one std per channel")
            _check(all(math.isfinite(v) and v > 0 for v in self.std), "std", f"must be > 0, got {list(self.std)}",
                   "use e.g. 0.229 0.224 0.225")

    @property
    def geometry(self) -> bool:
        """Whether it resizes or crops (else the data's own size applies)."""
        return self.crop is not None

    @property
    def normalizes(self) -> bool:
        return self.mean is not None

    def record(self) -> dict:
        """As the store records it (part of the transform and its hash)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and how it is split.

    ``train_limit`` keeps only the first N training samples of the (seeded)
    split; it exists for quick runs and tests, and is part of the fingerprint.
    """

    name: str = option("digits", flag="dataset",
                       help="digits | mnist | fashion-mnist | cifar10 | cifar100 | imagefolder:PATH")
    root: str = option("data/datasets", flag="data-root",
                       help="the folder holding torchvision's dataset folders (MNIST/, FashionMNIST/, "
                            "cifar-10-batches-py/, cifar-100-python/); ROOT/<dataset>/ works too")
    download: bool = option(False, help="allow downloading the dataset (network)")
    val_fraction: float = option(0.15, help="share of the (training) samples held out for validation")
    test_fraction: float = option(0.15, help="share of the samples held out for testing, where the dataset has "
                                             "no test split of its own")
    split_seed: int = option(0, help="seed of the stratified split")
    train_limit: int | None = option(None, metavar="N", help="keep only the first N training samples",
                                     default_text="all of them")
    # Symmetric label noise on the train split only (val and test stay clean, so accuracy is always
    # measured against true labels): each train label becomes a uniformly drawn *other* class with
    # this probability. Seeded by ``noise_seed``, or by ``split_seed`` when that is None.
    label_noise: float = option(0.0, metavar="RATE", help="flip each train label to a random other class with this "
                                                          "probability (val/test stay clean)")
    noise_seed: int | None = option(None, help="seed of the label noise", default_text="the split seed")
    image_size: int | None = option(None, metavar="S", help="resize (shorter side) and center-crop every image to "
                                                          "S x S for evaluation and the teacher",
                                    default_text="native resolution")
    train_transform: tuple[str, ...] = option((), separator=",", choices=TRAIN_TRANSFORMS, metavar="OPS",
                                              help="per-sample training augmentation, drawn in the data loader's "
                                                   "workers")
    # Off in every store written before the option existed (their data_config lacks it: see
    # pipeline.store.meta.Provenance.data_cfg), so those are still read and reproduced exactly.
    exif_orientation: bool = option(True, help="image folders: turn each photo upright by its EXIF orientation "
                                               "tag, as photo viewers show it, before any resize or crop")
    # The teacher's evaluation preprocessing (its resize, crop and interpolation shape the pixels every stage
    # reads; its mean and std are applied by the model itself). Resolved from the teacher's model options by
    # `kd teacher`, recorded with the store's data, and so rebuilt by stage 2 from the store alone.
    model_preprocessing: Preprocessing | None = option(None, cli=False, help="the teacher's evaluation "
                                                       "preprocessing (from --arch, --weights, --preprocessing…)")

    def __post_init__(self) -> None:
        _check(bool(self.name), "dataset", "is empty", "pass e.g. --dataset digits")
        _check(self.name.strip() != "imagefolder:", "dataset", "imagefolder: names no folder",
               "pass --dataset imagefolder:PATH, PATH holding one sub-folder per class")
        _check(self.image_size is None or self.image_size > 0, "image_size",
               f"must be positive, got {self.image_size}", "use e.g. 224, or omit it for native resolution")
        for op in self.train_transform:
            _check_choice(op, TRAIN_TRANSFORMS, "train_transform")
        _check(0.0 < self.val_fraction < 0.5, "val_fraction", f"must be in (0, 0.5), got {self.val_fraction}",
               "use e.g. 0.15")
        _check(0.0 < self.test_fraction < 0.5, "test_fraction", f"must be in (0, 0.5), got {self.test_fraction}",
               "use e.g. 0.15")
        _check(self.split_seed >= 0, "split_seed", f"must be >= 0, got {self.split_seed}", "use e.g. 0")
        _check(self.train_limit is None or self.train_limit > 0, "train_limit",
               f"must be positive, got {self.train_limit}", "omit it to use the whole split")
        _check(math.isfinite(self.label_noise) and 0.0 <= self.label_noise < 1.0, "label_noise",
               f"must be in [0, 1), got {self.label_noise}", "use e.g. 0.2 (0 for clean labels)")
        _check(self.noise_seed is None or self.noise_seed >= 0, "noise_seed", f"must be >= 0, got {self.noise_seed}",
               "use e.g. 0, or omit it to seed the noise with the split seed")
        # A seed without noise would change the data's hash (and so store names) for identical data.
        _check(self.noise_seed is None or self.label_noise > 0, "noise_seed", "has no effect without label noise",
               "drop --noise-seed, or pass --label-noise RATE")
        crop = self.model_preprocessing.crop if self.model_preprocessing is not None else None
        _check(self.image_size is None or crop is None or self.image_size == crop, "image_size",
               f"{self.image_size} contradicts the teacher's preprocessing, which crops {crop} x {crop} "
               f"({self.model_preprocessing.origin if self.model_preprocessing else ''})",
               f"drop --image-size, or pass --image-size {crop}")

    @property
    def effective_noise_seed(self) -> int:
        return self.split_seed if self.noise_seed is None else self.noise_seed

    @property
    def applies_exif(self) -> bool:
        """Whether images are turned upright by their EXIF orientation: image folders only (the other datasets'
        images carry no EXIF)."""
        return self.exif_orientation and self.name.startswith("imagefolder:")

    def key(self) -> dict:
        """The config as a provenance key hashes it. Fields added after the key was first defined are left
        out while they change nothing the key's first definition did not cover (at their defaults, or for
        EXIF orientation, off or without effect), so the stores of an unchanged dataset keep their keys (and
        names), and an image folder read upright gets stores of its own."""
        later = {"image_size": None, "train_transform": (), "model_preprocessing": None}
        out = {k: v for k, v in asdict(self).items() if k not in later or v != later[k]}
        if not self.applies_exif:
            del out["exif_orientation"]
        return out

    def snapshot(self) -> dict:
        """The config as a report records it (run identities): every field, EXIF orientation only where it
        applies, so reports written before the option compare equal."""
        out = asdict(self)
        if not self.applies_exif:
            del out["exif_orientation"]
        return out


@dataclass(frozen=True)
class ModelConfig:
    """A model from one of the sources of the model registry (``pipeline.models.SOURCES``), named by ``arch``.

    ``width`` sizes the built-ins. ``weights`` (a torchvision weights enum name, ``pretrained`` for timm's hub
    cache, or a .safetensors / .pt state dict file) and the preprocessing fields exist for the sources that take
    them; every field after ``width`` is left out of provenance keys and run names at its default.
    """

    arch: str = option("cnn", inherit=False,
                       help="mlp | cnn | a torchvision classifier built from scratch (resnet18…) | torchvision:NAME | "
                            "timm:NAME | py:package.module:function | file:PATH (.pt2 torch.export program or "
                            "TorchScript)")
    width: int = option(32, inherit=False, help="width of the built-in mlp/cnn")
    weights: str | None = option(None, inherit=False, metavar="ENUM|pretrained|FILE",
                                 help="pretrained weights: a torchvision weights enum (IMAGENET1K_V1), 'pretrained' "
                                      "(timm: its hub cache), or a .safetensors/.pt state dict file",
                                 default_text="none: random initialisation")
    preprocessing: str | None = option(None, inherit=False, metavar="ENUM|none",
                                       help="the model's evaluation preprocessing: a torchvision weights enum whose "
                                            "transforms() to use, or 'none'",
                                       default_text="the source's: the --weights enum, timm's pretrained config")
    resize: int | None = option(None, inherit=False, metavar="R", help="preprocessing: resize the shorter side to R "
                                "(overrides the source's)")
    crop: int | None = option(None, inherit=False, metavar="S", help="preprocessing: center-crop S x S (overrides "
                              "the source's; students: the resolution they train at)")
    interpolation: str | None = option(None, inherit=False, choices=INTERPOLATIONS,
                                       help="preprocessing: the resize's interpolation (overrides the source's)")
    mean: tuple[float, ...] | None = option(None, inherit=False, metavar="M",
                                            help="preprocessing: per-channel mean (overrides the source's)")
    std: tuple[float, ...] | None = option(None, inherit=False, metavar="S",
                                           help="preprocessing: per-channel std (overrides the source's)")
    model_classes: str | None = option(None, inherit=False, metavar="FILE|A,B,…",
                                       help="the model's class names in output order: a text file (one per line) or "
                                            "a comma-separated list", default_text="the --weights enum's categories")

    def __post_init__(self) -> None:
        _check(self.width > 0, "width", f"must be positive, got {self.width}", "use e.g. 32")
        check_arch(self.arch)  # here, so that a typo fails before any work
        if self.interpolation is not None:
            _check_choice(self.interpolation, INTERPOLATIONS, "interpolation")
        _check(self.preprocessing is None or bool(self.preprocessing), "preprocessing", "is empty",
               "pass a weights enum name such as IMAGENET1K_V1, or none")
        for name in ("weights", "model_classes"):
            _check(getattr(self, name) is None or bool(getattr(self, name)), name, "is empty", f"omit --{name}")

    @property
    def source(self) -> str:
        return parse_arch(self.arch)[0]

    @property
    def slug(self) -> str:
        """The model as it reads in store and report names: the arch, with anything not plain replaced."""
        if self.source == "builtin":
            return self.arch
        source, name = parse_arch(self.arch)
        if source == "file":
            name = name.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        elif source == "py":
            name = name.rsplit(":", 1)[-1]
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{source}-{name}").strip("_.")

    def key(self) -> dict:
        """The config as provenance keys and run names hash it: fields added after ``arch`` and ``width`` are
        left out at their defaults, so the stores and runs of unchanged configs keep their keys and names."""
        return {k: v for k, v in asdict(self).items() if k in ("arch", "width") or v is not None}


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, schedule and length of training.

    Schedules advance once per optimizer step. ``warmup_epochs`` adds a linear warm-up in front of
    ``none``, ``cosine`` and ``step``; for ``onecycle`` it sets the length of OneCycle's own rising
    phase instead (0: torch's default, 30% of training). ``step`` multiplies the lr by ``gamma``
    every ``step_size`` epochs, counted from the start of training.
    """

    name: str = option("adam", flag="optimizer", choices=OPTIMIZERS, help="optimizer")
    lr: float = option(3e-3, inherit=False, help="learning rate")
    momentum: float = option(0.9, help="momentum (sgd, rmsprop)")
    weight_decay: float = option(0.0, help="weight decay")
    epochs: int = option(30, inherit=False, help="epochs of training")
    batch_size: int = option(64, help="samples per batch")
    schedule: str = option("cosine", choices=SCHEDULES, help="lr schedule, stepped every optimizer step")
    select: str = option("best", choices=SELECTIONS,
                         help="checkpoint kept: best on the validation split, or the last epoch")
    nesterov: bool = option(False, help="Nesterov momentum (sgd only)")
    step_size: int = option(10, help="step schedule: epochs between decays")
    gamma: float = option(0.1, help="step schedule: lr factor at each decay")
    warmup_epochs: int = option(0, help="linear lr warm-up (onecycle: length of its rising phase; 0: 30%)")
    clip_grad_norm: float | None = option(None, metavar="NORM",
                                          help="clip the gradients' global L2 norm to this ('off': no clipping)")
    patience: int | None = option(None, metavar="EPOCHS", help="early stopping: epochs without a better val "
                                                               "accuracy ('off': never stop)")
    # Fine-tuning a pretrained model (--weights): its backbone (everything but the classifier head) may learn
    # more slowly than the head, and be frozen for the first epochs while the new head settles.
    backbone_lr: float | None = option(None, inherit=False, metavar="LR",
                                       help="fine-tuning: learning rate of the pretrained backbone (the head "
                                            "keeps --lr)", default_text="--lr")
    freeze_epochs: int | None = option(None, inherit=False, metavar="N",
                                       help="fine-tuning: epochs at the start that train the head alone",
                                       default_text="0")

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
        _check(self.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {self.warmup_epochs}",
               "pass --warmup-epochs 0 for no warm-up")
        # The hint depends on --epochs: a single epoch leaves no room for any warm-up.
        _check(self.warmup_epochs < self.epochs, "warmup_epochs",
               f"must be less than --epochs ({self.epochs}), got {self.warmup_epochs}",
               "pass --warmup-epochs 0: one epoch leaves no room for a warm-up, or more --epochs" if self.epochs == 1
               else f"pass --warmup-epochs {self.epochs - 1} or fewer, or more --epochs")
        _check(self.schedule != "step" or self.warmup_epochs < self.step_size, "warmup_epochs",
               f"warm-up ({self.warmup_epochs} epochs) must end before the first decay (epoch {self.step_size})",
               "shorten the warm-up or raise --step-size")
        _check(self.clip_grad_norm is None or (math.isfinite(self.clip_grad_norm) and self.clip_grad_norm > 0),
               "clip_grad_norm", f"must be > 0, got {self.clip_grad_norm}", "use e.g. 1.0, or omit it for no clipping")
        _check(self.patience is None or self.patience > 0, "patience", f"must be a positive number of epochs, got "
               f"{self.patience}", "use e.g. 5, or omit it to train every epoch")
        _check(self.backbone_lr is None or (math.isfinite(self.backbone_lr) and self.backbone_lr > 0),
               "backbone_lr", f"must be > 0, got {self.backbone_lr}", "use e.g. 1e-3, or omit it to use --lr")
        _check(self.freeze_epochs is None or 0 <= self.freeze_epochs < self.epochs, "freeze_epochs",
               f"must be in [0, epochs={self.epochs}), got {self.freeze_epochs}",
               "use e.g. 1, and leave epochs to train the whole model")

    def key(self) -> dict:
        """As provenance keys and run names hash it: the fine-tuning fields are left out while unset."""
        return {k: v for k, v in asdict(self).items() if k not in ("backbone_lr", "freeze_epochs") or v is not None}


@dataclass(frozen=True)
class AugmentConfig:
    """Per-sample augmentation (training, or the teacher's views). Empty ``ops`` means none.

    ``crop`` is torchvision's RandomResizedCrop (a box of ``crop_scale`` of the area and ``crop_ratio``
    aspect, resized back to the input size); ``jitter`` scales brightness, contrast and saturation by
    factors drawn from [1 - jitter, 1 + jitter] (saturation leaves one-channel images as they are).
    """

    ops: tuple[str, ...] = option((), flag="augment", separator=",", choices=AUGMENT_OPS, metavar="OPS",
                                  help="augmentation ops")
    translate: int = option(1, help="translate: largest shift, in pixels")
    rotate_degrees: float = option(10.0, help="rotate: largest angle, in degrees")
    crop_scale: tuple[float, ...] = option((0.08, 1.0), metavar="S", default_text="0.08 1",
                                           help="crop: range of the box's share of the image area (min max)")
    crop_ratio: tuple[float, ...] = option((0.75, 4 / 3), metavar="R", default_text="0.75 1.333",
                                           help="crop: range of the box's aspect ratio, width/height (min max)")
    jitter: float = option(0.4, help="jitter: largest relative change of brightness, contrast and saturation")

    def __post_init__(self) -> None:
        for op in self.ops:
            _check_choice(op, AUGMENT_OPS, "augment")
        _check(self.translate >= 0, "translate", f"must be >= 0, got {self.translate}", "use e.g. 1")
        _check(len(self.crop_scale) == 2 and 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0, "crop_scale",
               f"must be two numbers 0 < min <= max <= 1, got {list(self.crop_scale)}", "use e.g. 0.08 1")
        _check(len(self.crop_ratio) == 2 and all(math.isfinite(r) for r in self.crop_ratio)
               and 0.0 < self.crop_ratio[0] <= self.crop_ratio[1], "crop_ratio",
               f"must be two numbers 0 < min <= max, got {list(self.crop_ratio)}", "use e.g. 0.75 1.333")
        _check(math.isfinite(self.jitter) and 0.0 <= self.jitter < 1.0, "jitter",
               f"must be in [0, 1), got {self.jitter}", "use e.g. 0.4")


@dataclass(frozen=True)
class MixConfig:
    """Mixed teacher views: MixUp or CutMix of a sample with a partner drawn from the same split.

    Each view after the clean one is mixed with probability ``prob``, by one of ``ops`` drawn
    uniformly; its mixing weight λ (the sample's share) comes from Beta(α, α) with the op's α.
    For CutMix the partner's box covers 1 - λ of the image and λ is then set to the exact share
    the box leaves.
    """

    ops: tuple[str, ...] = option((), flag="mix", separator=",", choices=MIX_OPS, metavar="OPS",
                                  help="mix ops of the teacher's views (each needs partners of other classes)")
    prob: float = option(0.5, flag="mix-prob", help="chance that a view (after the clean one) is mixed")
    mixup_alpha: float = option(1.0, help="mixup: α of the Beta(α, α) that λ is drawn from")
    cutmix_alpha: float = option(1.0, help="cutmix: α of the Beta(α, α) that λ is drawn from")

    def __post_init__(self) -> None:
        for op in self.ops:
            _check_choice(op, MIX_OPS, "view_mix")
        _check(len(set(self.ops)) == len(self.ops), "view_mix", "has duplicates", "list each mix op once")
        _check(math.isfinite(self.prob) and 0.0 < self.prob <= 1.0, "mix_prob", f"must be in (0, 1], got "
               f"{self.prob}", "use e.g. 0.5")
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            _check(math.isfinite(value) and value > 0, name, f"must be > 0, got {value}", "use e.g. 1.0")


def teacher_model() -> ModelConfig:
    """The teacher's default architecture (`kd teacher`, `kd run`, `make serve`, prefect.yaml)."""
    return ModelConfig(arch="cnn", width=32)


def teacher_optim() -> OptimConfig:
    """The teacher's default optimisation."""
    return OptimConfig(epochs=20)


def student_model() -> ModelConfig:
    """The students' default architecture (`kd distill`, `kd run`, `make serve`, prefect.yaml)."""
    return ModelConfig(arch="cnn", width=8)


def student_optim() -> OptimConfig:
    """The students' default optimisation. In `kd run` only the fields marked ``inherit=False`` keep these
    values; the others follow the teacher's options, so they must equal the teacher's defaults (a test checks)."""
    return OptimConfig(epochs=30)


@dataclass(frozen=True)
class TeacherConfig:
    """Stage 1: train (or load) the teacher and write its logits to a store."""

    data: DataConfig = option(factory=DataConfig, help="data")
    model: ModelConfig = option(factory=teacher_model, help="model")
    optim: OptimConfig = option(factory=teacher_optim, help="optimisation")
    augment: AugmentConfig = option(factory=AugmentConfig, help="augmentation")
    seed: int = option(0, help="seed of the teacher's training (initialisation, batch order, augmentation) and "
                              "of its stored views")
    checkpoint: str | None = option(None, metavar="FILE", help="load this teacher instead of training one")
    as_is: bool = option(False, help="use the pretrained teacher (--weights, a py: factory, a file: model) as it is, "
                                     "without training: its classes (--model-classes, or the weights' categories) "
                                     "must name every class of the dataset")
    parent_store: str | None = option(None, cli=False,  # set by born-again KD, one generation to the next
                                      help="the store whose student this teacher is (its lineage)")
    store_root: str = option("data/stores", help="where stores are written: a path or any fsspec URL")
    checkpoint_root: str = option("data/checkpoints", help="where teacher checkpoints are written")
    workers: int = option(0, help="DataLoader worker processes reading and decoding images for the teacher's "
                                  "training, evaluation and logits pass (0: in this process)")
    encoding: str = option("float16", help="how logits are stored: float16 | float32 | topk:K (the K largest per "
                                           "sample; pipeline/store/codec.py)")
    device: str = option("auto", choices=DEVICES, help="where models train")
    storage_options: dict | None = option(None, metavar="JSON", help=STORAGE_OPTIONS_HELP)
    chunk_rows: int | None = option(None, help="samples per compressed chunk",
                                    default_text="a power of two holding about 1 MB of logits")
    shard_chunks: int = option(16, help="chunks per shard file (the unit of resumable and concurrent writes)")
    writers: int = option(1, help="tasks that split the teacher pass into shard-aligned parts, each writing "
                                  "whole shards (with --runner dask: processes)")
    views: int = option(1, help="teacher views stored per sample: view 0 clean, the others replayable "
                                "augmentations")
    view_augment: AugmentConfig = option(factory=lambda: AugmentConfig(ops=("translate", "rotate")), prefix="view-",
                                         help="teacher views (--views > 1): the augmentation they draw from")
    view_mix: MixConfig = option(factory=MixConfig, prefix="view-",
                                 help="teacher views (--views > 1): mixed with a partner from the same split")

    def __post_init__(self) -> None:
        # The encoding's name is checked by its own registry (pipeline/store/codec.py), first thing in the
        # teacher's plan: this module stays a leaf of the import graph.
        _check_choice(self.device, DEVICES, "device")
        _check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}", "use e.g. 0")
        _check(bool(self.store_root), "store_root", "is empty", "pass a folder or URL, e.g. data/stores")
        _check(bool(self.checkpoint_root), "checkpoint_root", "is empty", "pass a folder, e.g. data/checkpoints")
        _check(self.chunk_rows is None or self.chunk_rows > 0, "chunk_rows", f"must be positive, got {self.chunk_rows}",
               "use e.g. 2048, or omit it for about 1 MB per chunk")
        _check(self.shard_chunks > 0, "shard_chunks", f"must be positive, got {self.shard_chunks}", "use e.g. 16")
        _check(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}", "use 0 or e.g. 4")
        _check(self.writers > 0, "writers", f"must be positive, got {self.writers}", "use 1, or one per worker")
        _check(self.views >= 1, "views", f"must be >= 1, got {self.views}", "use 1 (clean only) or e.g. 4")
        _check(self.views == 1 or bool(self.view_augment.ops) or bool(self.view_mix.ops), "view_augment",
               "is empty, so every view is clean", "pass e.g. --view-augment translate,rotate")
        _check(self.views > 1 or not self.view_mix.ops, "view_mix", "mixes teacher views, but --views is 1 "
               "(view 0 is always the clean image)", "pass e.g. --views 8, or drop --view-mix")
        check_augment_overlap(self.data, self.augment)


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
    def uses_temperature(self) -> bool:
        """Whether T shapes this student's targets (not for the baseline, nor for logit matching)."""
        return not self.is_baseline and self.loss not in TEMPERATURE_FREE_LOSSES

    @property
    def config_id(self) -> str:
        """Identifies the configuration across seeds; every hyperparameter is in it."""
        lr = "" if self.lr is None else f"-lr{_num(self.lr)}"
        if self.is_baseline:
            return f"baseline{lr}"
        beta = "" if self.beta is None else f"-b{_num(self.beta)}"
        temperature = f"-T{_num(self.temperature)}" if self.uses_temperature else ""
        return f"{self.loss}{temperature}-a{_num(self.alpha)}{beta}{lr}"

    @property
    def run_id(self) -> str:
        return f"{self.config_id}-s{self.seed}"


@dataclass(frozen=True)
class DistillConfig:
    """Stage 2: train a grid of students from a stored set of teacher logits.

    ``data`` of ``None`` means "the dataset the store was written from"; the
    store's fingerprints are checked against it either way.
    """

    store: str = option(help="store path or URL printed by `kd teacher`")
    data: DataConfig | None = option(None, help="data", default_text="the dataset the store was written from")
    model: ModelConfig = option(factory=student_model, help="model")
    optim: OptimConfig = option(factory=student_optim, help="optimisation")
    augment: AugmentConfig = option(factory=AugmentConfig, help="augmentation")
    temperatures: tuple[float, ...] = option((1.0, 2.0, 4.0, 8.0), help="temperatures of the soft term")
    alphas: tuple[float, ...] = option((0.9,), help="weight of the soft term; the hard term gets 1 - alpha unless "
                                                    "--beta is given")
    losses: tuple[str, ...] = option(("kl",), choices=SOFT_LOSSES,
                                     help="soft losses (the label-only baseline is always trained)")
    beta: float | None = option(None, help="independent weight of the hard-label term", default_text="1 - alpha")
    seeds: tuple[int, ...] = option((0,), help="student seeds: every configuration is trained once per seed")
    lrs: tuple[float, ...] = option((), help="an lr sweep: every configuration is trained once per lr",
                                    default_text="the optimisation lr alone")
    report_root: str = option("data/reports", help="where report folders are written")
    run_name: str | None = option(None, help="report folder name", default_text="from the store and the students")
    device: str = option("auto", choices=DEVICES, help="where models train")
    group_size: int = option(8, help="students per Prefect task (one seed's at most); a group shares one pass over "
                                     "the data and, where --batch allows, trains as one batched model")
    batch: str = option("auto", choices=BATCH_MODES,
                        help="auto: train a group as one batched model where it vectorises and pays (always on a "
                             "GPU; small students on a CPU); on: wherever it vectorises; off: the per-student loop")
    cache_mb: float = option(1024.0, help="hold decoded logits in memory up to this size (MB); stream beyond it")
    storage_options: dict | None = option(None, metavar="JSON", help=STORAGE_OPTIONS_HELP)
    mode: str = option("offline", choices=MODES, help="offline: soft targets from the store; online: rerun the "
                                                      "teacher every step (the reference offline KD is measured "
                                                      "against)")
    workers: int = option(0, help="DataLoader worker processes decoding store chunks and images (0: a background "
                                  "thread for the chunks, images in this process)")
    view_policy: str = option("uniform", choices=VIEW_POLICIES,
                              help="stores with teacher views: which view each sample trains on per epoch")
    verify_views: int = option(0, help="rerun the teacher on this many replayed samples first (0: skip)")

    def __post_init__(self) -> None:
        _check(bool(self.store), "store", "is empty", "pass --store PATH_OR_URL")
        _check_choice(self.mode, MODES, "mode")
        _check(self.workers >= 0, "workers", f"must be >= 0, got {self.workers}", "use 0 or e.g. 2")
        _check_choice(self.view_policy, VIEW_POLICIES, "view_policy")
        _check(self.verify_views >= 0, "verify_views", f"must be >= 0, got {self.verify_views}", "use 0 or e.g. 32")
        _check(self.group_size > 0, "group_size", f"must be positive, got {self.group_size}",
               "use 1 for a Prefect task per student, more to share one data pass")
        _check_choice(self.batch, BATCH_MODES, "batch")
        _check(self.cache_mb >= 0, "cache_mb", f"must be >= 0, got {self.cache_mb}", "use e.g. 1024")
        _check(len(self.temperatures) > 0, "temperatures", "is empty", "pass e.g. --temperatures 1 2 4 8")
        _check(len(self.alphas) > 0, "alphas", "is empty", "pass e.g. --alphas 0.9")
        _check(len(self.losses) > 0, "losses", "is empty", "pass e.g. --losses kl")
        _check(len(self.seeds) > 0, "seeds", "is empty", "pass e.g. --seeds 0 1 2")
        # Checked here too, not only per student: a loss that ignores T never builds a student with it.
        bad_t = next((t for t in self.temperatures if not (math.isfinite(t) and t > 0)), None)
        _check(bad_t is None, "temperature", f"must be > 0, got {bad_t}", "use e.g. 4")
        bad_seed = next((s for s in self.seeds if s < 0), None)
        _check(bad_seed is None, "seeds", f"must be >= 0, got {bad_seed}", "use e.g. --seeds 0 1 2")
        _check(bool(self.report_root), "report_root", "is empty", "pass a folder, e.g. data/reports")
        _check(self.run_name is None or is_plain_name(self.run_name), "run_name",
               f"{self.run_name!r} is not a plain folder name", "pass a name without slashes, e.g. --run-name sweep1")
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
                    # A loss that ignores T is trained once: one student per T would be the same run repeated.
                    for t in (1.0,) if loss in TEMPERATURE_FREE_LOSSES else self.temperatures:
                        for a in self.alphas:
                            specs.append(StudentSpec(loss=loss, temperature=float(t), alpha=float(a),
                                                     beta=self.beta, seed=seed, lr=lr))
        return specs


def is_plain_name(name: str) -> bool:
    """A single folder name: no separator, not empty, not ``.`` or ``..``, no NUL, not hidden."""
    return bool(name) and not any(c in name for c in "/\\\0") and not name.startswith(".")


def config_hash(*parts: object) -> str:
    """A short, stable hash of dataclasses / JSON-able values (for names and provenance)."""
    payload = json.dumps([to_dict(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def to_dict(obj: object) -> object:
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)  # type: ignore[arg-type]
    return obj


def from_dict(cls: type[C], data: dict) -> C:
    """Rebuild a (nested) config dataclass from :func:`to_dict` output, e.g. store attributes.

    Keys that are not fields are ignored and missing fields take their defaults, so partial dicts
    (prefect.yaml's parameters, presets, stores written before a field existed) read back too.
    """
    types = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        sub = config_class(types[f.name])
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)  # type: ignore[call-arg]


def config_class(annotation: Any) -> type | None:
    """The config dataclass a field holds (``DataConfig | None`` -> ``DataConfig``), or None for a plain value."""
    for t in typing.get_args(annotation) or (annotation,):
        if dataclasses.is_dataclass(t):
            return t  # type: ignore[return-value]
    return None
