"""Pretrained weights: where they are on disk, reading them safely, and loading them into a model by name.

Weights come from a local file (``.safetensors``, or a pickled state dict read with ``weights_only=True``, so
a file can never run code) or from a library's own cache: torchvision's (``$TORCH_HOME/hub/checkpoints/<the
enum's file name>``) and the Hugging Face hub cache timm reads (``$HF_HOME``). Nothing is ever downloaded
except under ``--download``; a missing cache entry without it is one line saying so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse

import torch
from torch import nn

from pipeline.errors import UserError

TIMM_PRETRAINED = "pretrained"
FIX_DOWNLOAD = "pass --download once (needs network), or --weights FILE"


@dataclass(frozen=True)
class WeightsFile:
    """A weights file on disk and what named it (``IMAGENET1K_V1``, ``timm/resnet18.a1_in1k``, or its path)."""

    path: str
    name: str


def _first_line(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:200]


def read_state_dict(path: str, *, field: str = "weights") -> dict[str, torch.Tensor]:
    """A state dict from ``path``: safetensors, else ``torch.load(weights_only=True)``. A checkpoint dict holding
    it under ``state_dict`` or ``model`` is unwrapped."""
    if os.path.isdir(path):
        raise UserError(field, f"{path!r} is a directory", "pass a .safetensors or .pt state dict file")
    if not os.path.isfile(path):
        raise UserError(field, f"{path!r} does not exist", "pass a .safetensors or .pt state dict file")
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle of code, a truncated file, not a weights file at all
        raise UserError(field, f"cannot read weights from {path!r} ({_first_line(exc)})",
                        "pass a .safetensors file or a state dict saved with torch.save(model.state_dict())") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(field, f"{path!r} holds no state dict (a dict of tensors)",
                        "save it with torch.save(model.state_dict()) or safetensors")
    return state


def load_into(net: nn.Module, state: dict[str, torch.Tensor], *, what: str, path: str, field: str = "weights") -> None:
    """Load ``state`` into ``net`` strictly; a mismatch is one line naming the first key that does not fit."""
    own = net.state_dict()
    for key, value in own.items():
        if key not in state:
            raise UserError(field, f"{path} does not fit {what}: key {key} is missing from it "
                            f"({sum(k not in state for k in own)} of the model's {len(own)} keys are)",
                            "pass weights saved from this architecture")
        if tuple(state[key].shape) != tuple(value.shape):
            raise UserError(field, f"{path} does not fit {what}: key {key} has shape {tuple(state[key].shape)}, "
                            f"the model's is {tuple(value.shape)}", "pass weights saved from this architecture")
    extra = [k for k in state if k not in own]
    if extra:
        raise UserError(field, f"{path} does not fit {what}: it has key {extra[0]} the model does not "
                        f"({len(extra)} such keys)", "pass weights saved from this architecture")
    net.load_state_dict(state)


def torchvision_file(weights, *, download: bool) -> WeightsFile:
    """The local file of a torchvision weights enum member, in torch hub's cache (downloaded only if allowed)."""
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))
    if not os.path.isfile(path):
        if not download:
            raise UserError("weights", f"{weights} is not in torchvision's cache ({path}) and --download was not "
                            "given", FIX_DOWNLOAD)
        try:
            torch.hub.download_url_to_file(weights.url, path, progress=False)
        except Exception as exc:
            raise UserError("download", f"could not download {weights} ({_first_line(exc)})",
                            "check the network, or copy the file into torchvision's cache yourself") from None
    return WeightsFile(path, str(weights).rsplit(".", 1)[-1])


def timm_file(name: str, *, download: bool) -> WeightsFile:
    """The local file of timm's pretrained weights for ``name`` (``resnet18`` or ``resnet18.a1_in1k``), from the
    Hugging Face hub cache (downloaded only if allowed)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise UserError("weights", f"timm's {name} has no pretrained weights on the hub", "pass --weights FILE")
    from huggingface_hub import try_to_load_from_cache

    names = ("model.safetensors", "pytorch_model.bin")
    for filename in names:
        cached = try_to_load_from_cache(hub_id, filename)
        if isinstance(cached, str) and os.path.isfile(cached):
            return WeightsFile(cached, hub_id)
    if not download:
        raise UserError("weights", f"timm's {name} weights ({hub_id}) are not in the Hugging Face cache and "
                        "--download was not given", FIX_DOWNLOAD)
    from huggingface_hub import hf_hub_download

    try:
        return WeightsFile(hf_hub_download(hub_id, names[0]), hub_id)
    except Exception as exc:
        raise UserError("download", f"could not download {hub_id} ({_first_line(exc)})",
                        "check the network, or pass --weights FILE") from None


def head_name(net: nn.Module) -> str | None:
    """The module name of the classifier head: timm's own record of it, else the last ``nn.Linear``."""
    cfg = getattr(net, "pretrained_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("classifier"), str):
        name = cfg["classifier"]
        try:
            if isinstance(net.get_submodule(name), nn.Linear):
                return name
        except AttributeError:
            pass
    last = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    return last


def replace_head(net: nn.Module, num_classes: int) -> nn.Module:
    """``net`` with a fresh classifier head of ``num_classes`` outputs (fine-tuning on the dataset's classes)."""
    if hasattr(net, "reset_classifier") and hasattr(net, "pretrained_cfg"):  # timm's own API
        net.reset_classifier(num_classes)
        return net
    name = head_name(net)
    if name is None:
        raise UserError("arch", f"{type(net).__name__} has no nn.Linear classifier head to replace",
                        "use a model with a linear head, or --as-is with --model-classes")
    old = net.get_submodule(name)
    parent_name, _, attr = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, attr, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return net


def head_outputs(net: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """How many classes the weights ``state`` were trained for: the out-features of ``net``'s head in it."""
    name = head_name(net)
    tensor = state.get(f"{name}.weight") if name else None
    return int(tensor.shape[0]) if tensor is not None and tensor.dim() == 2 else None
