"""Every closed set of names, declared once: the registries' keys and the other options' choices. The configs
validate against them, ``kd --help`` lists them, the tests parametrize over them, and each registry module checks
its own table's keys against them when it is imported.

This module imports nothing, so the configs and the command line read the names without importing torch; the
registries themselves (the losses, the models, the transforms...) live in the modules that build those things.
"""
from __future__ import annotations

# pipeline.losses.SOFT_LOSSES; "hard", the label-only baseline, is no soft loss.
SOFT_LOSSES = ("kl", "soft_ce", "mse")
# Soft losses that ignore the temperature (pipeline.losses.mse_loss matches raw logits): trained once per
# (alpha, seed), not once per temperature, and their config_id carries no T.
TEMPERATURE_FREE_LOSSES = ("mse",)

# pipeline.models.MODELS: the architectures built in.
BUILTIN_ARCHS = ("mlp", "cnn")
# pipeline.models.SOURCES: where a model comes from, named as the prefix of --arch (`timm:resnet18`); a bare name
# is a built-in (mlp, cnn) or a torchvision classifier built from scratch and adapted to the input.
MODEL_SOURCES = ("builtin", "torchvision", "timm", "py", "file")

# pipeline.transforms.TRAIN_OPS: the per-sample training augmentation, applied in this order.
TRAIN_TRANSFORMS = ("random-resized-crop", "hflip")

# pipeline.store.codec.ENCODINGS: how logits are stored; topk takes its K after a colon.
ENCODINGS = ("float16", "float32", "topk")
ENCODING_SPELLINGS = ("float16", "float32", "topk:K")  # how --help lists them

# pipeline.data.DATASETS: the datasets known by name; any folder of class sub-folders is read as IMAGEFOLDER + PATH.
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")
IMAGEFOLDER = "imagefolder:"

# pipeline.precision.PRECISIONS: the precisions a teacher pass can compute in, as a store records them.
PRECISIONS = ("float32", "bfloat16", "float16")

# The label of a sample that has none (a transfer-set row): the teacher scores it, students learn its soft target
# alone (pipeline.losses), and nothing ever trains on it as a class.
NO_LABEL = -1

# The splits of a dataset and of a store, in the order they are written.
SPLITS = ("train", "val", "test")

# The choices of the options that name no registry of their own.
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("none", "cosine", "step", "onecycle")
SELECTIONS = ("best", "last")
AUGMENT_OPS = ("translate", "flip", "rotate", "crop", "jitter")
MIX_OPS = ("mixup", "cutmix")  # teacher views only: a sample mixed with a stored partner from its own split
DEVICES = ("auto", "cpu", "cuda")
MODES = ("offline", "online")
VIEW_POLICIES = ("uniform", "cycle")
BATCH_MODES = ("auto", "on", "off")  # how a group of students trains (pipeline.student_group.fit_group's `batched`)
EXPORT_FORMATS = ("torchscript", "onnx", "safetensors")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")  # PIL's resampling filters, as torchvision names them
