"""A model's evaluation preprocessing: where it comes from, and the part of it a model applies itself.

The values (:class:`pipeline.preprocessing_spec.Preprocessing`: resize, crop, interpolation, mean, std) come from the
model's source, and explicit options override them:

- a torchvision weights enum (``--weights IMAGENET1K_V1``, or ``--preprocessing IMAGENET1K_V1`` for weights
  from a file): the attributes of its ``transforms()`` (``resize_size``, ``crop_size``, ``interpolation``,
  ``mean``, ``std``);
- a timm model: ``timm.data.resolve_data_config`` of its pretrained config (``input_size``, ``crop_pct``,
  ``interpolation``, ``mean``, ``std``), exactly as timm's ``create_transform`` reads them;
- anything else: nothing (today's behaviour: the data's size, pixels in [0, 1]).

Resize and crop shape the pixels every stage reads (:mod:`pipeline.transforms`, recorded in the store's
transform); mean and std are applied by the model itself, in a forward pre-hook (:func:`attach`), because
teacher views (crops, flips, colour jitter, mixing) are drawn on [0, 1] pixels and only then normalised, and
because students normalise with their own statistics. The same hook resizes a student's input to its own
resolution when it comes at another (val, test, stores without views: one resize; stage 2 replays stored views at
the student's size already, :class:`pipeline.views.ViewReplay`, so the hook finds nothing to resize), and an output
hook picks the dataset's classes out of a pretrained model's (a class map).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from pipeline.architectures import parse_arch
from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.names import INTERPOLATIONS
from pipeline.preprocessing_spec import Preprocessing

NONE = "none"


def torchvision_enum(arch_name: str, enum: str, *, field: str):
    """The torchvision weights enum member ``enum`` (``IMAGENET1K_V1`` or ``ResNet18_Weights.IMAGENET1K_V1``) of
    the model ``arch_name``; refused in one line naming the members that exist."""
    import torchvision

    try:
        members = torchvision.models.get_model_weights(arch_name)
    except (ValueError, KeyError):
        raise UserError(field, f"torchvision has no weights enum for {arch_name!r}",
                        "pass a weights file instead") from None
    name = enum.rsplit(".", 1)[-1]
    if name == "DEFAULT":
        return members.DEFAULT
    if name not in members.__members__:
        raise UserError(field, f"{enum!r} is not a weights enum of torchvision's {arch_name}",
                        f"choose one of: {', '.join(members.__members__)}")
    return members[name]


def _from_torchvision(arch_name: str, enum: str, field: str) -> Preprocessing:
    weights = torchvision_enum(arch_name, enum, field=field)
    t = weights.transforms()
    resize, crop = list(t.resize_size), list(t.crop_size)
    if len(resize) != 1 or len(crop) != 1:
        raise UserError(field, f"{weights} resizes to {resize} and crops {crop}: only a shorter-side resize and a "
                        "square crop are supported", "pass --resize and --crop")
    return Preprocessing(resize=int(resize[0]), crop=int(crop[0]), interpolation=t.interpolation.value,
                         mean=tuple(float(v) for v in t.mean), std=tuple(float(v) for v in t.std),
                         origin=f"torchvision {weights}")


def timm_data_config(name: str) -> dict:
    """timm's ``resolve_data_config`` of the model ``name``'s pretrained config (no model is built)."""
    import timm
    from timm.data import resolve_data_config

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # timm raises RuntimeError for an unknown tag
        cfg = None
    if cfg is None:
        arch, _, _ = name.partition(".")
        cfg = timm.models.get_pretrained_cfg(arch) if timm.is_model(arch) else None
    if cfg is None:
        raise UserError("arch", f"timm has no model {name!r}", "pass a name from timm.list_models()")
    return resolve_data_config({}, pretrained_cfg=cfg.to_dict())


def _from_timm(name: str) -> Preprocessing:
    d = timm_data_config(name)
    if d.get("crop_mode", "center") != "center":
        raise UserError("preprocessing", f"timm's {name} crops in mode {d['crop_mode']!r}; only 'center' is "
                        "supported", "pass --resize, --crop, --mean and --std, or --preprocessing none")
    size = d["input_size"][-2:]
    if size[0] != size[1]:
        raise UserError("preprocessing", f"timm's {name} takes {size[0]}x{size[1]} inputs; only square crops are "
                        "supported", "pass --resize and --crop")
    crop = int(size[0])
    # timm's transforms_imagenet_eval: the shorter side to floor(size / crop_pct), then the center crop.
    return Preprocessing(resize=math.floor(crop / d["crop_pct"]), crop=crop, interpolation=d["interpolation"],
                         mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]),
                         origin=f"timm {name}")


def _checked_interpolation(p: Preprocessing | None, origin: str) -> None:
    if p is not None and p.interpolation not in INTERPOLATIONS:
        raise UserError("interpolation", f"{origin} resizes with {p.interpolation!r}",
                        f"pass --interpolation {' or '.join(INTERPOLATIONS)}")


def source_preprocessing(cfg: ModelConfig) -> Preprocessing | None:
    """The preprocessing the model's source gives, before explicit options; None: none (pixels in [0, 1])."""
    source, name = parse_arch(cfg.arch)
    if cfg.preprocessing is not None and cfg.preprocessing.lower() == NONE:
        return None
    if cfg.preprocessing is not None:  # an enum named explicitly: its architecture's, or torchvision's by name
        if source != "torchvision" and "." not in cfg.preprocessing:
            raise UserError("preprocessing", f"{cfg.preprocessing!r} names no model's weights enum",
                            "pass the qualified enum, e.g. ResNet50_Weights.IMAGENET1K_V2, or none")
        if "." in cfg.preprocessing:
            import torchvision

            try:
                weights = torchvision.models.get_weight(cfg.preprocessing)
            except (ValueError, KeyError, AttributeError):
                raise UserError("preprocessing", f"{cfg.preprocessing!r} is not a torchvision weights enum",
                                "pass e.g. ResNet50_Weights.IMAGENET1K_V2, or none") from None
            t = weights.transforms()
            return Preprocessing(resize=int(t.resize_size[0]), crop=int(t.crop_size[0]),
                                 interpolation=t.interpolation.value, mean=tuple(map(float, t.mean)),
                                 std=tuple(map(float, t.std)), origin=f"torchvision {weights}")
        return _from_torchvision(name, cfg.preprocessing, "preprocessing")
    if source == "timm":
        return _from_timm(name)
    if source == "torchvision" and cfg.weights is not None and not is_weights_file(cfg.weights):
        return _from_torchvision(name, cfg.weights, "weights")
    return None


def is_weights_file(weights: str) -> bool:
    """Whether ``--weights`` names a file (by its suffix) rather than an enum or ``pretrained``."""
    return weights.lower().endswith((".safetensors", ".pt", ".pth", ".bin"))


def resolve(cfg: ModelConfig) -> Preprocessing | None:
    """The model's evaluation preprocessing: its source's, with every explicit option overriding it."""
    if needs_preprocessing(cfg):
        raise UserError("preprocessing", f"the weights {cfg.weights} say nothing of the preprocessing {cfg.arch} was "
                        "trained with", "pass --preprocessing ENUM (e.g. IMAGENET1K_V1: that enum's transforms), "
                        "--mean/--std (and --resize/--crop), or --preprocessing none")
    base = source_preprocessing(cfg)
    _checked_interpolation(base, base.origin if base else "")
    given = {k: getattr(cfg, k) for k in ("resize", "crop", "interpolation", "mean", "std")
             if getattr(cfg, k) is not None}
    if not given:
        return base
    values = dataclasses.asdict(base) if base is not None else {}
    values.update(given)
    if "crop" in given and "resize" not in given and base is None:
        values["resize"] = given["crop"]  # --crop alone: resize the shorter side to it, as --image-size does
    origin = f"{base.origin}, overridden by options" if base is not None else "options"
    return Preprocessing(**{**values, "origin": origin})


def needs_preprocessing(cfg: ModelConfig) -> bool:
    """A weights file for torchvision gives no preprocessing of its own: it must be stated (an enum's, options, or
    none), since a pretrained model fed other pixels than it was trained on gives wrong logits, silently."""
    source, _ = parse_arch(cfg.arch)
    return (source == "torchvision" and cfg.weights is not None and is_weights_file(cfg.weights)
            and cfg.preprocessing is None and cfg.mean is None)


# ------------------------------------------------------------------------------------------ the model's part


class InputHook:
    """A forward pre-hook: the input resized to ``size`` (a student's own resolution), then normalised.

    ``(x - mean) / std`` in the input's dtype, as torchvision's ``normalize`` computes it. A plain object (not
    a closure), so a model carrying it can be deep-copied, traced and exported.
    """

    def __init__(self, *, size: tuple[int, int] | None, mean: tuple[float, ...] | None,
                 std: tuple[float, ...] | None) -> None:
        self.size, self.mean, self.std = size, mean, std

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            from torchvision.transforms.v2 import functional as F

            x = F.resize(x, list(self.size), antialias=True)
        if self.mean is not None and self.std is not None:
            shape = (1, -1, 1, 1) if x.dim() == 4 else (-1, 1, 1)
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
            x = (x - mean) / std
        return (x, *rest)


class SelectOutputs:
    """A forward hook: the dataset's classes picked out of the model's outputs (a class map), (B, K) -> (B, C)."""

    def __init__(self, index: tuple[int, ...]) -> None:
        self.index = tuple(index)

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return out[..., list(self.index)]


def attach(net: nn.Module, *, pre: Preprocessing | None, size: tuple[int, int] | None = None,
           class_map: tuple[int, ...] | None = None) -> nn.Module:
    """``net`` with its normalisation (``pre``'s mean and std), an input resize to ``size`` and a class map, as
    hooks: its parameters and state dict are untouched, so its checkpoints stay the source library's."""
    mean = pre.mean if pre is not None else None
    std = pre.std if pre is not None else None
    if size is not None or mean is not None:
        net.register_forward_pre_hook(InputHook(size=size, mean=mean, std=std))
    if class_map is not None:
        net.register_forward_hook(SelectOutputs(class_map))
    return net


def has_hooks(net: nn.Module) -> bool:
    return bool(net._forward_pre_hooks or net._forward_hooks)
