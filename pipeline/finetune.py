"""Fine-tuning a pretrained model: its classifier head at the optimiser's lr, the pretrained backbone (every
other parameter) at ``--backbone-lr``, and the backbone frozen for the first ``--freeze-epochs`` epochs while
the head settles. The head is the one :func:`pipeline.weights.head_name` finds (timm's record of it, else the
last ``nn.Linear``): a fresh one when the weights have another number of classes than the dataset, the pretrained
one kept when they have as many (:func:`pipeline.models.build_model`).
"""
from __future__ import annotations

from torch import nn

from pipeline.config import OptimConfig
from pipeline.errors import UserError
from pipeline.weights import head_name


def applies(optim: OptimConfig) -> bool:
    """Whether the optimisation asks for anything of fine-tuning."""
    return optim.backbone_lr is not None or bool(optim.freeze_epochs)


def _split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(head parameters, backbone parameters)."""
    name = head_name(model)
    if name is None:
        raise UserError("backbone_lr", f"{type(model).__name__} has no nn.Linear classifier head to tell from its "
                        "backbone", "drop --backbone-lr and --freeze-epochs")
    head = {id(p) for p in model.get_submodule(name).parameters()}
    params = [p for p in model.parameters()]
    return [p for p in params if id(p) in head], [p for p in params if id(p) not in head]


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """The optimiser's parameter groups: the head at ``optim.lr``, the backbone at ``optim.backbone_lr``."""
    head, backbone = _split(model)
    lr = optim.backbone_lr if optim.backbone_lr is not None else optim.lr
    return [{"params": head, "lr": optim.lr}, {"params": backbone, "lr": lr}]


def freeze_backbone(model: nn.Module, optim: OptimConfig, epoch: int) -> None:
    """At the start of ``epoch``: the backbone trains only from epoch ``optim.freeze_epochs`` on. A frozen parameter
    gets no gradient, so no optimiser step moves it (nor its momentum or weight decay)."""
    if not optim.freeze_epochs:
        return
    _, backbone = _split(model)
    for p in backbone:
        p.requires_grad_(epoch >= optim.freeze_epochs)
