"""Named recipes for `kd run --preset`: partial configs, in the shape of prefect.yaml's parameters.

``teacher`` holds :class:`~pipeline.config.TeacherConfig` fields and ``distill``
:class:`~pipeline.config.DistillConfig` fields; `kd run` turns them into its
options' defaults, so anything given explicitly on the command line still wins.
As with the options, the students' model and optimisation fields that a preset
leaves out follow the teacher's, except those with their own default (the
model, ``lr`` and ``epochs``).
"""
from __future__ import annotations

from pipeline.config import TeacherConfig
from pipeline.errors import UserError

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
    # --dataset imagefolder:PATH) at 160 px, read by 4 DataLoader workers. The teacher trains on
    # RandomResizedCrop + flips drawn per sample, then scores 8 views per image: the clean view 0 (resized,
    # center-cropped) and 7 RandomResizedCrop boxes with flips, drawn per (store seed, sample id, view) and
    # stored. The students train on those views, replayed exactly, so their crops always carry the
    # teacher's logits for those very pixels (no stale targets; see "Teacher views").
    "resnet-mobilenet-imagefolder": {
        "teacher": {
            "data": {"name": "imagefolder:data/images", "image_size": 160,
                     "train_transform": ("random-resized-crop", "hflip")},
            "views": 8,
            "view_augment": {"ops": ("crop", "flip")},
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
    # The common real recipe: a pretrained ResNet-50 (torchvision's IMAGENET1K_V2 weights, read from torchvision's
    # cache; --download fetches them once) fine-tuned on your image folder at 224 px with its own preprocessing
    # (resize 232, center crop 224, ImageNet mean/std): a new head for your classes, the backbone frozen for the
    # first epoch and then trained at a tenth of the head's lr. It stores 8 views per image (the clean view and 7
    # RandomResizedCrop boxes with flips); pretrained MobileNetV3-Large students (IMAGENET1K_V1, their own
    # normalisation) are distilled on those views at T in {1, 4}, 3 seeds.
    "finetune": {
        "teacher": {
            "data": {"name": "imagefolder:data/images", "train_transform": ("random-resized-crop", "hflip")},
            "model": {"arch": "torchvision:resnet50", "weights": "IMAGENET1K_V2"},
            "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4,
                      "epochs": 10, "batch_size": 32, "schedule": "cosine", "backbone_lr": 0.001,
                      "freeze_epochs": 1},
            "views": 8,
            "view_augment": {"ops": ("crop", "flip")},
            "workers": 4,
        },
        "distill": {
            "model": {"arch": "torchvision:mobilenet_v3_large", "weights": "IMAGENET1K_V1"},
            "optim": {"lr": 0.01, "epochs": 20},
            "temperatures": (1.0, 4.0), "alphas": (0.9,), "seeds": (0, 1, 2), "group_size": 3,
        },
    },
    # A patient, consistent teacher (Beyer et al., CVPR 2022) from stored, reinforced views (Faghri et al.,
    # ICCV 2023): many augmented views per sample, every one after the clean view 0 mixed with a partner
    # (MixUp or CutMix), each replayed exactly so the student always sees the pixels the teacher scored;
    # pure distillation (α = 1) at T = 2 over a long cosine schedule. Mixing every view and T = 2 are what
    # the fidelity study's screening chose on val (docs/studies.md, "Fidelity study"), over half the views mixed,
    # MixUp alone, 64 views, and T = 1 or 4 (128 views at T = 4 tied on val; the smaller store was kept).
    # No dataset or architecture: it applies to any.
    "patient": {
        "teacher": {
            "views": 32,
            "view_augment": {"ops": ("crop", "flip", "jitter"), "crop_scale": (0.35, 1.0)},
            "view_mix": {"ops": ("mixup", "cutmix"), "prob": 1.0},
        },
        "distill": {
            "losses": ("kl",), "temperatures": (2.0,), "alphas": (1.0,),
            "optim": {"epochs": 300, "schedule": "cosine"},
        },
    },
}

# Recipes that only make sense with enough stored views: `kd run --preset NAME --views K` below this is refused.
MIN_VIEWS: dict[str, int] = {"patient": 16}


def check_preset(name: str, teacher: TeacherConfig) -> None:
    """Refuse settings a recipe cannot work with (given explicitly over its defaults), before any work."""
    need = MIN_VIEWS.get(name)
    if need is not None and teacher.views < need:
        raise UserError("views", f"the {name} recipe needs at least {need} teacher views per sample, got "
                        f"{teacher.views}", f"pass --views {need} or more (the recipe's default is "
                        f"{PRESETS[name]['teacher']['views']}), or drop --preset {name}")
