"""How a model runs inference on a device: mixed precision and memory format for the teacher pass.

On CUDA the teacher runs under autocast (bfloat16 where the GPU supports it, else
float16) with channels_last weights and inputs; its logits are cast to float32
before anything else sees them. On the CPU nothing changes: float32, contiguous.
The precision a pass computed in is named by :func:`precision_name` (the store
records it as ``teacher.precision``, and `--verify-views` sizes its tolerance by it).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from pipeline import names

# The precisions a pass can compute in, by the name a store records, with their significant bits (mantissa + 1).
PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
SIGNIFICANT_BITS = {"float32": 24, "float16": 11, "bfloat16": 8}
assert tuple(PRECISIONS) == names.PRECISIONS and set(SIGNIFICANT_BITS) == set(PRECISIONS), \
    "declare the precisions' names in pipeline/names.py"


def autocast_dtype(device: torch.device, *,
                   bf16_supported: Callable[[], bool] | None = None) -> torch.dtype | None:
    """The autocast dtype of the teacher pass on ``device``: None (float32) off CUDA."""
    if device.type != "cuda":
        return None
    supported = bf16_supported if bf16_supported is not None else torch.cuda.is_bf16_supported
    return torch.bfloat16 if supported() else torch.float16


def compute_dtype(device: torch.device, *, fast: bool, precision: str | None = None) -> torch.dtype | None:
    """The autocast dtype of a pass on ``device`` (None: float32): the device's choice when ``fast``, none otherwise.

    ``precision`` ("float32", "bfloat16" or "float16") overrides the device's choice for a ``fast`` pass; only
    tests set it (a bfloat16 teacher pass on the CPU). Production passes leave it None.
    """
    if not fast:
        return None
    if precision is None:
        return autocast_dtype(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    """The name a store records for logits computed under autocast ``dtype`` (None: float32)."""
    return next(name for name, d in PRECISIONS.items() if d == dtype)


def widest(a: str, b: str) -> str:
    """The less precise of two recorded precisions (fewer significant bits): what logits mixing both need."""
    return a if SIGNIFICANT_BITS[a] <= SIGNIFICANT_BITS[b] else b


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (what cuDNN's fast convolutions want), contiguous elsewhere."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def prepare(model: nn.Module, device: torch.device, *, fast: bool) -> nn.Module:
    """``model`` in eval mode on ``device``; with ``fast``, in the device's preferred memory format."""
    model = model.to(device).eval()
    return model.to(memory_format=memory_format(device)) if fast else model


@contextlib.contextmanager
def inference(device: torch.device, *, fast: bool, precision: str | None = None) -> Iterator[None]:
    """No grad, plus autocast when ``fast`` and the device has a faster dtype (``precision``: see compute_dtype)."""
    dtype = compute_dtype(device, fast=fast, precision=precision)
    with torch.inference_mode(), (torch.autocast(device.type, dtype=dtype) if dtype is not None
                                  else contextlib.nullcontext()):
        yield


def to_input(x: torch.Tensor, device: torch.device, *, fast: bool) -> torch.Tensor:
    """A batch (B, C, H, W) on ``device``, copied without blocking from pinned memory."""
    nb = device.type == "cuda"
    if fast and x.dim() == 4:
        return x.to(device, non_blocking=nb, memory_format=memory_format(device))
    return x.to(device, non_blocking=nb)
