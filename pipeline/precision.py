"""How a model runs inference on a device: mixed precision and memory format for the teacher pass.

On CUDA the teacher runs under autocast (bfloat16 where the GPU supports it, else
float16) with channels_last weights and inputs; its logits are cast to float32
before anything else sees them. On the CPU nothing changes: float32, contiguous.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn


def autocast_dtype(device: torch.device, *,
                   bf16_supported: Callable[[], bool] | None = None) -> torch.dtype | None:
    """The autocast dtype of the teacher pass on ``device``: None (float32) off CUDA."""
    if device.type != "cuda":
        return None
    supported = bf16_supported if bf16_supported is not None else torch.cuda.is_bf16_supported
    return torch.bfloat16 if supported() else torch.float16


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (what cuDNN's fast convolutions want), contiguous elsewhere."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def prepare(model: nn.Module, device: torch.device, *, fast: bool) -> nn.Module:
    """``model`` in eval mode on ``device``; with ``fast``, in the device's preferred memory format."""
    model = model.to(device).eval()
    return model.to(memory_format=memory_format(device)) if fast else model


@contextlib.contextmanager
def inference(device: torch.device, *, fast: bool) -> Iterator[None]:
    """No grad, plus autocast when ``fast`` and the device has a faster dtype."""
    dtype = autocast_dtype(device) if fast else None
    with torch.inference_mode(), (torch.autocast(device.type, dtype=dtype) if dtype is not None
                                  else contextlib.nullcontext()):
        yield


def to_input(x: torch.Tensor, device: torch.device, *, fast: bool) -> torch.Tensor:
    """A batch (B, C, H, W) on ``device``, copied without blocking from pinned memory."""
    nb = device.type == "cuda"
    if fast and x.dim() == 4:
        return x.to(device, non_blocking=nb, memory_format=memory_format(device))
    return x.to(device, non_blocking=nb)
