"""The model sources beyond the built-ins: torchvision, timm, a user's factory, a whole model in one file.

Each source is a constructor ``(cfg, name, shape, num_classes) -> nn.Module`` returning a fresh model with
``num_classes`` outputs (random weights; :func:`pipeline.models.build_model` loads pretrained weights into it
and replaces its head when fine-tuning). ``name`` is ``--arch`` without its ``source:`` prefix.

- ``torchvision:NAME``: ``torchvision.models.get_model(NAME, weights=None, num_classes=K)``, exactly as
  torchvision builds it (no stem adaptation, unlike a bare ``resnet18``), so its weights enums fit.
- ``timm:NAME``: ``timm.create_model(NAME, pretrained=False, num_classes=K, in_chans=C)``.
- ``py:package.module:function``: the user's factory, called as ``function(num_classes=K)``; it must return an
  ``nn.Module`` whose forward takes (B, C, H, W) float32 images and returns (B, K) raw logits. The package is
  imported from the working directory or ``PYTHONPATH``.
- ``file:PATH``: a whole model, weights included: a ``torch.export`` program (``.pt2``, saved with
  ``torch.export.save``) or TorchScript (any other suffix, saved with ``torch.jit.save``). It is used as it was
  exported (never trained here) and needs no code of its own.
"""
from __future__ import annotations

import importlib
import os
import sys

import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import UserError

InputShape = tuple[int, int, int]  # (C, H, W)


def _first_line(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:200]


def torchvision_source(cfg: ModelConfig, name: str, shape: InputShape, num_classes: int) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def timm_source(cfg: ModelConfig, name: str, shape: InputShape, num_classes: int) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=shape[0])
    except RuntimeError as exc:  # an unknown model or tag
        raise UserError("arch", f"timm cannot build {name!r} ({_first_line(exc)})",
                        "pass a name from timm.list_models()") from None


def factory(name: str):
    """The user's factory function named ``package.module:function``, imported; refused in one line if missing."""
    module_name, _, fn_name = name.rpartition(":")
    if os.getcwd() not in sys.path:  # as `python -m` would: a package beside the command is found
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # not found, or it fails to import
        raise UserError("arch", f"cannot import the factory's module {module_name!r} ({type(exc).__name__}: "
                        f"{_first_line(exc)})", "make the package importable (working directory or PYTHONPATH)") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UserError("arch", f"module {module_name!r} has no function {fn_name!r}",
                        f"define def {fn_name}(num_classes: int) -> torch.nn.Module in it")
    return fn


def py_source(cfg: ModelConfig, name: str, shape: InputShape, num_classes: int) -> nn.Module:
    fn = factory(name)
    try:
        net = fn(num_classes=num_classes)
    except Exception as exc:
        raise UserError("arch", f"the factory py:{name} failed ({type(exc).__name__}: {_first_line(exc)})",
                        "it is called as function(num_classes=K)") from None
    if not isinstance(net, nn.Module):
        raise UserError("arch", f"the factory py:{name} returned {type(net).__name__}, not a torch.nn.Module",
                        "return the model itself (an nn.Module)")
    return net


class Program(nn.Module):
    """A model loaded whole from a file, called as it was exported. ``train()``/``eval()`` leave the program as it
    is: an exported program fixed its mode (BatchNorm statistics, dropout) when it was exported."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def train(self, mode: bool = True) -> "Program":
        self.training = mode
        return self


def file_source(cfg: ModelConfig, name: str, shape: InputShape, num_classes: int) -> nn.Module:
    path = name
    if not os.path.isfile(path):
        raise UserError("arch", f"model file {path!r} does not exist" if not os.path.isdir(path)
                        else f"{path!r} is a directory", "pass file:PATH to a .pt2 program or a TorchScript file")
    try:
        if path.lower().endswith(".pt2"):
            inner = torch.export.load(path).module()
        else:
            inner = torch.jit.load(path, map_location="cpu")
    except Exception as exc:
        kind = "a torch.export program (.pt2)" if path.lower().endswith(".pt2") else "TorchScript"
        raise UserError("arch", f"cannot load {path!r} as {kind} ({_first_line(exc)})",
                        "save it with torch.export.save (.pt2) or torch.jit.save") from None
    return Program(inner)
