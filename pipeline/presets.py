"""Named recipes for `kd run --preset`: partial configs, in the shape of prefect.yaml's parameters.

``teacher`` holds :class:`~pipeline.config.TeacherConfig` fields and ``distill``
:class:`~pipeline.config.DistillConfig` fields; `kd run` turns them into its
options' defaults, so anything given explicitly on the command line still wins.
As with the options, the students' model and optimisation fields that a preset
leaves out follow the teacher's, except those with their own default (the
model, ``lr`` and ``epochs``).
"""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    # The common ResNet-teacher -> MobileNet-student recipe on CIFAR-10 (read from --data-root;
    # --download fetches it once). SGD + Nesterov, cosine with warm-up, crop-like shifts and flips.
    "resnet-mobilenet-cifar10": {
        "teacher": {
            "data": {"name": "cifar10"},
            "model": {"arch": "resnet18"},
            "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                      "epochs": 30, "batch_size": 128, "schedule": "cosine", "warmup_epochs": 1},
            "augment": {"ops": ("translate", "flip")},
        },
        "distill": {
            "model": {"arch": "mobilenet_v3_small"},
            "optim": {"lr": 0.05, "epochs": 30},
            "temperatures": (1.0, 4.0), "alphas": (0.9,), "seeds": (0, 1, 2), "group_size": 3,
        },
    },
    # The same recipe on your own photos: an image folder (one sub-folder per class; pass
    # --dataset imagefolder:PATH) at 160 px, RandomResizedCrop + flips drawn per sample in 4 DataLoader
    # workers, evaluation and the teacher's logits on the resized, center-cropped image.
    "resnet-mobilenet-imagefolder": {
        "teacher": {
            "data": {"name": "imagefolder:data/images", "image_size": 160,
                     "train_transform": ("random-resized-crop", "hflip")},
            "model": {"arch": "resnet18"},
            "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4,
                      "epochs": 30, "batch_size": 64, "schedule": "cosine", "warmup_epochs": 1},
            "workers": 4,
        },
        "distill": {
            "model": {"arch": "mobilenet_v3_small"},
            "optim": {"lr": 0.05, "epochs": 30},
            "temperatures": (1.0, 4.0), "alphas": (0.9,), "seeds": (0, 1, 2), "group_size": 3,
        },
    },
}
