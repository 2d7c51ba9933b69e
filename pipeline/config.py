"""Typed configuration for both stages: the one schema of every option.

Every run is described by frozen dataclasses that validate themselves on construction
(:mod:`pipeline.validation`), so a bad value is refused before any data is loaded or any model is built. The
CLI and the Prefect flows both build these; the library only ever takes configs, never loose keyword arguments.

Each field is declared with :func:`~pipeline.fields.option`, which carries its help text, its choices and how it
reads on a command line; ``flows/options.py`` generates the ``kd`` options from these fields, so an option is
added here and nowhere else. The defaults of the two stages are the named constructors :func:`teacher_model`,
:func:`teacher_optim`, :func:`student_model` and :func:`student_optim`.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.architectures import parse_arch
from pipeline.config_keys import data_key, data_snapshot, model_key, model_slug, optim_key
from pipeline.fields import STORAGE_OPTIONS_HELP, option
from pipeline.grid import StudentSpec, student_grid
from pipeline.names import (AUGMENT_OPS, BATCH_MODES, BUILTIN_ARCHS, DATASETS, DEVICES, ENCODING_SPELLINGS, IMAGEFOLDER,
                            INTERPOLATIONS, MIX_OPS, MODES, OPTIMIZERS, SCHEDULES, SELECTIONS, SOFT_LOSSES,
                            TRAIN_TRANSFORMS, VIEW_POLICIES)
from pipeline.preprocessing_spec import Preprocessing
from pipeline.validation import (check_augment, check_data, check_distill, check_mix, check_model, check_optim,
                                 check_teacher)


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and how it is split.

    ``train_limit`` keeps only the first N training samples of the (seeded)
    split; it exists for quick runs and tests, and is part of the fingerprint.
    """

    name: str = option("digits", flag="dataset", help=" | ".join((*DATASETS, f"{IMAGEFOLDER}PATH")))
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
    # Unlabelled data (pipeline.data.labels): rows of the train split whose label the students never see. Either
    # samples that have no label at all (--unlabelled, appended to train; the teacher trains on the labelled rows
    # alone), or the train rows outside a seeded, stratified labelled subset (--labelled-fraction/-per-class; the
    # teacher still trains on every true label: Hinton's transfer-set setting, a teacher trained on more labels
    # than its label-starved students).
    labelled_fraction: float | None = option(None, metavar="F",
                                             help="students keep the labels of a seeded, stratified share F of the "
                                                  "train rows (floor(F * n) per class, at least 1); the others are "
                                                  "unlabelled for them (the teacher still trains on every label)",
                                             default_text="every train row labelled")
    labelled_per_class: int | None = option(None, metavar="K",
                                            help="students keep the labels of K seeded train rows per class; the "
                                                 "others are unlabelled for them (the teacher still trains on "
                                                 "every label)", default_text="every train row labelled")
    unlabelled: str | None = option(None, metavar="SOURCE",
                                    help="unlabelled samples appended to train: a folder of images (PATH or "
                                         "imagefolder:PATH, read recursively) or a dataset name whose labels are "
                                         "ignored; the teacher trains on the labelled rows and scores every row",
                                    default_text="none")
    transfer_fraction: float = option(1.0, metavar="F", help="students keep a seeded share F of the unlabelled "
                                                              "train rows (the transfer set); the others are left out")

    def __post_init__(self) -> None:
        check_data(self)

    @property
    def effective_noise_seed(self) -> int:
        return self.split_seed if self.noise_seed is None else self.noise_seed

    @property
    def applies_exif(self) -> bool:
        """Whether images are turned upright by their EXIF orientation: image folders only (the other datasets'
        images carry no EXIF)."""
        return self.exif_orientation and self.name.startswith(IMAGEFOLDER)

    def key(self) -> dict:
        """The config as a provenance key hashes it (:func:`pipeline.config_keys.data_key`)."""
        return data_key(self)

    def snapshot(self) -> dict:
        """The config as a report records it (:func:`pipeline.config_keys.data_snapshot`)."""
        return data_snapshot(self)


@dataclass(frozen=True)
class ModelConfig:
    """A model from one of the sources of the model registry (``pipeline.models.SOURCES``), named by ``arch``.

    ``width`` sizes the built-ins. ``weights`` (a torchvision weights enum name, ``pretrained`` for timm's hub
    cache, or a .safetensors / .pt state dict file) and the preprocessing fields exist for the sources that take
    them; every field after ``width`` is left out of provenance keys and run names at its default.
    """

    arch: str = option("cnn", inherit=False,
                       help=f"{' | '.join(BUILTIN_ARCHS)} | a torchvision classifier built from scratch (resnet18…) "
                            "| torchvision:NAME | timm:NAME | py:package.module:function | file:PATH (.pt2 "
                            "torch.export program or TorchScript)")
    width: int = option(32, inherit=False, help=f"width of the built-in {'/'.join(BUILTIN_ARCHS)}")
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
        check_model(self)

    @property
    def source(self) -> str:
        return parse_arch(self.arch)[0]

    @property
    def slug(self) -> str:
        """The model as it reads in store and report names (:func:`pipeline.config_keys.model_slug`)."""
        return model_slug(self)

    def key(self) -> dict:
        """The config as provenance keys and run names hash it (:func:`pipeline.config_keys.model_key`)."""
        return model_key(self)


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
        check_optim(self)

    def key(self) -> dict:
        """As provenance keys and run names hash it (:func:`pipeline.config_keys.optim_key`)."""
        return optim_key(self)


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
        check_augment(self)


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
        check_mix(self)


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
    encoding: str = option("float16", help=f"how logits are stored: {' | '.join(ENCODING_SPELLINGS)} (the K largest "
                                           "per sample; pipeline/store/codec.py)")
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
        check_teacher(self)


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
    unlabelled_weight: float = option(1.0, metavar="W", help="weight of an unlabelled train row's soft term "
                                                              "relative to a labelled row's (the students' mix of "
                                                              "the two)")

    def __post_init__(self) -> None:
        check_distill(self)

    def students(self, baselines: tuple[str, ...] = ("views",)) -> list[StudentSpec]:
        """The label-only baselines plus every (loss, T, alpha) point, for every seed. ``baselines``: what the
        store's views call for (:func:`pipeline.grid.store_baselines`); one baseline for a store without views."""
        return student_grid(losses=self.losses, temperatures=self.temperatures, alphas=self.alphas, beta=self.beta,
                            seeds=self.seeds, lrs=self.lrs, baselines=baselines)
