"""Named recipes: plain dicts of `kd run` option values (argparse destinations) that a preset sets.

Anything given explicitly on the command line still wins. Keys prefixed
``student_`` set the students' side; the rest set the teacher's side, which the
students inherit unless their own option is set.
"""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    # The common ResNet-teacher -> MobileNet-student recipe on CIFAR-10 (read from --data-root;
    # --download fetches it once). SGD + Nesterov, cosine with warm-up, crop-like shifts and flips.
    "resnet-mobilenet-cifar10": {
        "dataset": "cifar10",
        "arch": "resnet18",
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
        "epochs": 30, "batch_size": 128, "schedule": "cosine", "warmup_epochs": 1,
        "augment": "translate,flip",
        "student_arch": "mobilenet_v3_small",
        "student_lr": 0.05, "student_epochs": 30,
        "temperatures": [1.0, 4.0], "alphas": [0.9], "seeds": [0, 1, 2], "group_size": 3,
    },
}
