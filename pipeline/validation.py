"""The rules each config is checked against when it is built: a bad value is refused, naming its field and a
fix, before any data is loaded or any model is built.

Each config's ``__post_init__`` calls its ``check_*`` here. Like :mod:`pipeline.config`, this module reads only
names (:mod:`pipeline.names`, :mod:`pipeline.architectures`), never the registries, so a config is built without
importing torch; the registries check what only they can (an encoding's ``K``, a dataset's files) when a stage
plans its work.
"""
from __future__ import annotations

import math

from pipeline.architectures import check_arch
from pipeline.errors import UserError
from pipeline.names import (AUGMENT_OPS, BATCH_MODES, DEVICES, IMAGEFOLDER, INTERPOLATIONS, MIX_OPS, MODES, OPTIMIZERS,
                            SCHEDULES, SELECTIONS, SOFT_LOSSES, TRAIN_TRANSFORMS, VIEW_POLICIES)

# The configs (pipeline.config) call in here with themselves: their types are not imported, so the two
# modules do not import each other.


def check(cond: bool, field_name: str, problem: str, fix: str) -> None:
    if not cond:
        raise UserError(field_name, problem, fix)


def check_choice(value: str, choices: tuple[str, ...], field_name: str) -> None:
    check(value in choices, field_name, f"unknown value {value!r}", f"choose one of: {', '.join(choices)}")


def is_plain_name(name: str) -> bool:
    """A single folder name: no separator, not empty, not ``.`` or ``..``, no NUL, not hidden."""
    return bool(name) and not any(c in name for c in "/\\\0") and not name.startswith(".")


# --augment ops (drawn per batch on the device) that repeat a --train-transform op (drawn per sample in the workers)
AUGMENT_REPEATS = {"crop": "random-resized-crop", "flip": "hflip"}


def check_augment_overlap(data, augment) -> None:
    """Refuse a crop or flip asked for twice, once per sample (``--train-transform``) and once per batch
    (``--augment``): every image would be cropped or flipped twice over."""
    for op in augment.ops:
        repeated = AUGMENT_REPEATS.get(op)
        check(repeated not in data.train_transform, "augment", f"{op} repeats --train-transform {repeated} "
              "(each image would get both)", f"keep one: drop {op} from --augment, or {repeated} from "
              "--train-transform (drawn per sample in the data loader's workers)")


def check_preprocessing(cfg) -> None:
    check_choice(cfg.interpolation, INTERPOLATIONS, "interpolation")
    check(cfg.resize is None or cfg.resize > 0, "resize", f"must be positive, got {cfg.resize}", "use e.g. 256")
    check(cfg.crop is None or cfg.crop > 0, "crop", f"must be positive, got {cfg.crop}", "use e.g. 224")
    check(cfg.resize is None or cfg.crop is not None, "resize", "needs a crop size",
          "pass --crop S too (the image is resized, then center-cropped to S x S)")
    check(cfg.resize is None or cfg.crop is None or cfg.resize >= cfg.crop, "crop",
          f"{cfg.crop} is larger than the resize {cfg.resize}", "pass --crop <= --resize")
    check((cfg.mean is None) == (cfg.std is None), "mean" if cfg.std is not None else "std",
          "is given without the other", "pass both --mean and --std, one value per channel")
    if cfg.mean is not None and cfg.std is not None:
        check(len(cfg.mean) == len(cfg.std) and len(cfg.mean) in (1, 3), "std",
              f"has {len(cfg.std)} values for {len(cfg.mean)} means", "pass one mean and one std per channel")
        check(all(math.isfinite(v) and v > 0 for v in cfg.std), "std", f"must be > 0, got {list(cfg.std)}",
              "use e.g. 0.229 0.224 0.225")


def check_data(cfg) -> None:
    check(bool(cfg.name), "dataset", "is empty", "pass e.g. --dataset digits")
    check(cfg.name.strip() != IMAGEFOLDER, "dataset", "imagefolder: names no folder",
          "pass --dataset imagefolder:PATH, PATH holding one sub-folder per class")
    check(cfg.image_size is None or cfg.image_size > 0, "image_size",
          f"must be positive, got {cfg.image_size}", "use e.g. 224, or omit it for native resolution")
    for op in cfg.train_transform:
        check_choice(op, TRAIN_TRANSFORMS, "train_transform")
    check(0.0 < cfg.val_fraction < 0.5, "val_fraction", f"must be in (0, 0.5), got {cfg.val_fraction}",
          "use e.g. 0.15")
    check(0.0 < cfg.test_fraction < 0.5, "test_fraction", f"must be in (0, 0.5), got {cfg.test_fraction}",
          "use e.g. 0.15")
    check(cfg.split_seed >= 0, "split_seed", f"must be >= 0, got {cfg.split_seed}", "use e.g. 0")
    check(cfg.train_limit is None or cfg.train_limit > 0, "train_limit",
          f"must be positive, got {cfg.train_limit}", "omit it to use the whole split")
    check(math.isfinite(cfg.label_noise) and 0.0 <= cfg.label_noise < 1.0, "label_noise",
          f"must be in [0, 1), got {cfg.label_noise}", "use e.g. 0.2 (0 for clean labels)")
    check(cfg.noise_seed is None or cfg.noise_seed >= 0, "noise_seed", f"must be >= 0, got {cfg.noise_seed}",
          "use e.g. 0, or omit it to seed the noise with the split seed")
    # A seed without noise would change the data's hash (and so store names) for identical data.
    check(cfg.noise_seed is None or cfg.label_noise > 0, "noise_seed", "has no effect without label noise",
          "drop --noise-seed, or pass --label-noise RATE")
    check_labels(cfg)
    crop = cfg.model_preprocessing.crop if cfg.model_preprocessing is not None else None
    check(cfg.image_size is None or crop is None or cfg.image_size == crop, "image_size",
          f"{cfg.image_size} contradicts the teacher's preprocessing, which crops {crop} x {crop} "
          f"({cfg.model_preprocessing.origin if cfg.model_preprocessing else ''})",
          f"drop --image-size, or pass --image-size {crop}")


def check_labels(cfg) -> None:
    """The unlabelled-data options (what only the data can tell, such as a labelled count below the number of
    classes, is checked by pipeline.data.labels when the dataset is opened)."""
    f = cfg.labelled_fraction
    check(f is None or (math.isfinite(f) and 0.0 < f <= 1.0), "labelled_fraction", f"must be in (0, 1], got {f}",
          "use e.g. 0.1, or 1 for every train row labelled")
    check(cfg.labelled_per_class is None or cfg.labelled_per_class > 0, "labelled_per_class",
          f"must be at least 1, got {cfg.labelled_per_class}", "use e.g. 5: each class needs a labelled sample")
    check(f is None or cfg.labelled_per_class is None, "labelled_fraction", "and --labelled-per-class both choose "
          "the labelled rows", "pass one of them")
    t = cfg.transfer_fraction
    check(math.isfinite(t) and 0.0 <= t <= 1.0, "transfer_fraction", f"must be in [0, 1], got {t}",
          "use e.g. 0.5, 1 for every unlabelled row, or 0 for none")
    check(cfg.unlabelled is None or bool(cfg.unlabelled.strip()), "unlabelled", "is empty",
          "pass a folder of images, or a dataset name such as mnist")
    check(cfg.unlabelled is None or cfg.unlabelled.strip() != IMAGEFOLDER, "unlabelled", "imagefolder: names no "
          "folder", "pass --unlabelled PATH (a folder of images)")


def check_model(cfg) -> None:
    check(cfg.width > 0, "width", f"must be positive, got {cfg.width}", "use e.g. 32")
    check_arch(cfg.arch)  # here, so that a typo fails before any work
    if cfg.interpolation is not None:
        check_choice(cfg.interpolation, INTERPOLATIONS, "interpolation")
    check(cfg.preprocessing is None or bool(cfg.preprocessing), "preprocessing", "is empty",
          "pass a weights enum name such as IMAGENET1K_V1, or none")
    for name in ("weights", "model_classes"):
        check(getattr(cfg, name) is None or bool(getattr(cfg, name)), name, "is empty", f"omit --{name}")


def check_optim(cfg) -> None:
    check_choice(cfg.name, OPTIMIZERS, "optimizer")
    check_choice(cfg.schedule, SCHEDULES, "schedule")
    check_choice(cfg.select, SELECTIONS, "select")
    check(math.isfinite(cfg.lr) and cfg.lr > 0, "lr", f"must be > 0, got {cfg.lr}", "use e.g. 1e-3")
    check(0.0 <= cfg.momentum < 1.0, "momentum", f"must be in [0, 1), got {cfg.momentum}", "use e.g. 0.9")
    check(cfg.weight_decay >= 0, "weight_decay", f"must be >= 0, got {cfg.weight_decay}", "use e.g. 5e-4")
    check(cfg.epochs > 0, "epochs", f"must be positive, got {cfg.epochs}", "use e.g. 20")
    check(cfg.batch_size > 0, "batch_size", f"must be positive, got {cfg.batch_size}", "use e.g. 64")
    # torch's SGD is the only one of our optimizers with Nesterov momentum, and it needs momentum.
    check(not cfg.nesterov or cfg.name == "sgd", "nesterov", f"needs the sgd optimizer, got {cfg.name!r}",
          "pass --optimizer sgd, or drop --nesterov")
    check(not cfg.nesterov or cfg.momentum > 0, "nesterov", "needs momentum > 0, got 0",
          "pass e.g. --momentum 0.9")
    check(cfg.step_size > 0, "step_size", f"must be a positive number of epochs, got {cfg.step_size}",
          "use e.g. 10")
    check(math.isfinite(cfg.gamma) and 0.0 < cfg.gamma <= 1.0, "gamma", f"must be in (0, 1], got {cfg.gamma}",
          "use e.g. 0.1")
    check(cfg.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {cfg.warmup_epochs}",
          "pass --warmup-epochs 0 for no warm-up")
    # The hint depends on --epochs: a single epoch leaves no room for any warm-up.
    check(cfg.warmup_epochs < cfg.epochs, "warmup_epochs",
          f"must be less than --epochs ({cfg.epochs}), got {cfg.warmup_epochs}",
          "pass --warmup-epochs 0: one epoch leaves no room for a warm-up, or more --epochs" if cfg.epochs == 1
          else f"pass --warmup-epochs {cfg.epochs - 1} or fewer, or more --epochs")
    check(cfg.schedule != "step" or cfg.warmup_epochs < cfg.step_size, "warmup_epochs",
          f"warm-up ({cfg.warmup_epochs} epochs) must end before the first decay (epoch {cfg.step_size})",
          "shorten the warm-up or raise --step-size")
    check(cfg.clip_grad_norm is None or (math.isfinite(cfg.clip_grad_norm) and cfg.clip_grad_norm > 0),
          "clip_grad_norm", f"must be > 0, got {cfg.clip_grad_norm}", "use e.g. 1.0, or omit it for no clipping")
    check(cfg.patience is None or cfg.patience > 0, "patience", f"must be a positive number of epochs, got "
          f"{cfg.patience}", "use e.g. 5, or omit it to train every epoch")
    check(cfg.backbone_lr is None or (math.isfinite(cfg.backbone_lr) and cfg.backbone_lr > 0),
          "backbone_lr", f"must be > 0, got {cfg.backbone_lr}", "use e.g. 1e-3, or omit it to use --lr")
    check(cfg.freeze_epochs is None or 0 <= cfg.freeze_epochs < cfg.epochs, "freeze_epochs",
          f"must be in [0, epochs={cfg.epochs}), got {cfg.freeze_epochs}",
          "use e.g. 1, and leave epochs to train the whole model")


def check_augment(cfg) -> None:
    for op in cfg.ops:
        check_choice(op, AUGMENT_OPS, "augment")
    check(cfg.translate >= 0, "translate", f"must be >= 0, got {cfg.translate}", "use e.g. 1")
    check(len(cfg.crop_scale) == 2 and 0.0 < cfg.crop_scale[0] <= cfg.crop_scale[1] <= 1.0, "crop_scale",
          f"must be two numbers 0 < min <= max <= 1, got {list(cfg.crop_scale)}", "use e.g. 0.08 1")
    check(len(cfg.crop_ratio) == 2 and all(math.isfinite(r) for r in cfg.crop_ratio)
          and 0.0 < cfg.crop_ratio[0] <= cfg.crop_ratio[1], "crop_ratio",
          f"must be two numbers 0 < min <= max, got {list(cfg.crop_ratio)}", "use e.g. 0.75 1.333")
    check(math.isfinite(cfg.jitter) and 0.0 <= cfg.jitter < 1.0, "jitter",
          f"must be in [0, 1), got {cfg.jitter}", "use e.g. 0.4")


def check_mix(cfg) -> None:
    for op in cfg.ops:
        check_choice(op, MIX_OPS, "view_mix")
    check(len(set(cfg.ops)) == len(cfg.ops), "view_mix", "has duplicates", "list each mix op once")
    check(math.isfinite(cfg.prob) and 0.0 < cfg.prob <= 1.0, "mix_prob", f"must be in (0, 1], got "
          f"{cfg.prob}", "use e.g. 0.5")
    for name in ("mixup_alpha", "cutmix_alpha"):
        value = getattr(cfg, name)
        check(math.isfinite(value) and value > 0, name, f"must be > 0, got {value}", "use e.g. 1.0")


def check_teacher(cfg) -> None:
    # The encoding's name is checked by its own registry (pipeline/store/codec.py), first thing in the
    # teacher's plan: the configs stay a leaf of the import graph.
    check_choice(cfg.device, DEVICES, "device")
    check(cfg.seed >= 0, "seed", f"must be >= 0, got {cfg.seed}", "use e.g. 0")
    check(bool(cfg.store_root), "store_root", "is empty", "pass a folder or URL, e.g. data/stores")
    check(bool(cfg.checkpoint_root), "checkpoint_root", "is empty", "pass a folder, e.g. data/checkpoints")
    check(cfg.chunk_rows is None or cfg.chunk_rows > 0, "chunk_rows", f"must be positive, got {cfg.chunk_rows}",
          "use e.g. 2048, or omit it for about 1 MB per chunk")
    check(cfg.shard_chunks > 0, "shard_chunks", f"must be positive, got {cfg.shard_chunks}", "use e.g. 16")
    check(cfg.workers >= 0, "workers", f"must be >= 0, got {cfg.workers}", "use 0 or e.g. 4")
    check(cfg.writers > 0, "writers", f"must be positive, got {cfg.writers}", "use 1, or one per worker")
    check(cfg.views >= 1, "views", f"must be >= 1, got {cfg.views}", "use 1 (clean only) or e.g. 4")
    check(cfg.views == 1 or bool(cfg.view_augment.ops) or bool(cfg.view_mix.ops), "view_augment",
          "is empty, so every view is clean", "pass e.g. --view-augment translate,rotate")
    check(cfg.views > 1 or not cfg.view_mix.ops, "view_mix", "mixes teacher views, but --views is 1 "
          "(view 0 is always the clean image)", "pass e.g. --views 8, or drop --view-mix")
    check_augment_overlap(cfg.data, cfg.augment)


def check_distill(cfg) -> None:
    check(bool(cfg.store), "store", "is empty", "pass --store PATH_OR_URL")
    check_choice(cfg.mode, MODES, "mode")
    check(cfg.workers >= 0, "workers", f"must be >= 0, got {cfg.workers}", "use 0 or e.g. 2")
    check_choice(cfg.view_policy, VIEW_POLICIES, "view_policy")
    check(math.isfinite(cfg.unlabelled_weight) and cfg.unlabelled_weight >= 0, "unlabelled_weight",
          f"must be >= 0, got {cfg.unlabelled_weight}", "use e.g. 1, or 0 to leave unlabelled rows out of the loss")
    check(cfg.verify_views >= 0, "verify_views", f"must be >= 0, got {cfg.verify_views}", "use 0 or e.g. 32")
    check(cfg.group_size > 0, "group_size", f"must be positive, got {cfg.group_size}",
          "use 1 for a Prefect task per student, more to share one data pass")
    check_choice(cfg.batch, BATCH_MODES, "batch")
    check(cfg.cache_mb >= 0, "cache_mb", f"must be >= 0, got {cfg.cache_mb}", "use e.g. 1024")
    check(len(cfg.temperatures) > 0, "temperatures", "is empty", "pass e.g. --temperatures 1 2 4 8")
    check(len(cfg.alphas) > 0, "alphas", "is empty", "pass e.g. --alphas 0.9")
    check(len(cfg.losses) > 0, "losses", "is empty", "pass e.g. --losses kl")
    check(len(cfg.seeds) > 0, "seeds", "is empty", "pass e.g. --seeds 0 1 2")
    # Checked here too, not only per student: a loss that ignores T never builds a student with it.
    bad_t = next((t for t in cfg.temperatures if not (math.isfinite(t) and t > 0)), None)
    check(bad_t is None, "temperature", f"must be > 0, got {bad_t}", "use e.g. 4")
    bad_seed = next((s for s in cfg.seeds if s < 0), None)
    check(bad_seed is None, "seeds", f"must be >= 0, got {bad_seed}", "use e.g. --seeds 0 1 2")
    check(bool(cfg.report_root), "report_root", "is empty", "pass a folder, e.g. data/reports")
    check(cfg.run_name is None or is_plain_name(cfg.run_name), "run_name",
          f"{cfg.run_name!r} is not a plain folder name", "pass a name without slashes, e.g. --run-name sweep1")
    # Duplicates would give two runs the same run_id (same checkpoint file, merged leaderboard rows).
    for name in ("seeds", "temperatures", "alphas", "losses", "lrs"):
        values = getattr(cfg, name)
        check(len(set(values)) == len(values), name, "has duplicates", f"list each value of {name} once")
    check("hard" not in cfg.losses, "losses", "'hard' is the label-only baseline, always trained",
          f"list only soft losses: {', '.join(SOFT_LOSSES)}")
    check_choice(cfg.device, DEVICES, "device")
    # Building the grid validates every T, alpha, beta and loss name now.
    cfg.students()
