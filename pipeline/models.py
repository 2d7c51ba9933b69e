"""Model registry: small built-ins for small images, plus any torchvision classifier.

``MODELS`` maps a name to a constructor ``(cfg, input_shape, num_classes) ->
nn.Module``. Names not in it are looked up among torchvision's classification
models (``resnet18``, ``mobilenet_v3_small``, ...), built from scratch
(``weights=None``: no network) and adapted to the input channels and size.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from pipeline.config import ModelConfig, check_arch
from pipeline.errors import UserError

InputShape = tuple[int, int, int]  # (C, H, W)


def mlp(cfg: ModelConfig, shape: InputShape, num_classes: int) -> nn.Module:
    c, h, w = shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(c * h * w, cfg.width), nn.ReLU(),
        nn.Linear(cfg.width, cfg.width), nn.ReLU(),
        nn.Linear(cfg.width, num_classes),
    )


def cnn(cfg: ModelConfig, shape: InputShape, num_classes: int) -> nn.Module:
    """Two conv stages (width, 2*width) with BN, then global pooling: works from 8x8 up."""
    c, _, _ = shape
    w = cfg.width

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(c, w), *block(w, w), nn.MaxPool2d(2, ceil_mode=True),
        *block(w, 2 * w), *block(2 * w, 2 * w),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(2 * w, num_classes),
    )


MODELS: dict[str, Callable[[ModelConfig, InputShape, int], nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
}


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name) if parent_name else model, attr, module
    raise ValueError("model has no Conv2d to adapt")


def torchvision_model(name: str, shape: InputShape, num_classes: int) -> nn.Module:
    """A torchvision classifier with fresh weights, its stem adapted to ``shape``."""
    import torchvision

    c, h, w = shape
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    parent, attr, conv = _first_conv(model)
    small = min(h, w) <= 64
    # ImageNet stems downsample 4x before the first block; on 8-32 px inputs that
    # leaves nothing to learn from, so small inputs get a stride-1 3x3 stem (the
    # usual CIFAR adaptation) and lose the stem max-pool.
    if conv.in_channels != c or small:
        kernel, stride, padding = ((3, 3), 1, 1) if small else (conv.kernel_size, conv.stride, conv.padding)
        new = nn.Conv2d(c, conv.out_channels, kernel, stride=stride, padding=padding, bias=conv.bias is not None)
        setattr(parent, attr, new)
    if small and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()
    return model


def build_model(cfg: ModelConfig, shape: InputShape, num_classes: int) -> nn.Module:
    check_arch(cfg.arch)
    if cfg.arch in MODELS:
        return MODELS[cfg.arch](cfg, shape, num_classes)
    return torchvision_model(cfg.arch, shape, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_size_mb(model: nn.Module) -> float:
    """Size of parameters and buffers in MB (what a float32 state dict weighs)."""
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return total / 1e6


# The share of a core the timing thread must get for a latency to be trusted (CPU time over wall time).
BUSY_SHARE = 0.8


@dataclass(frozen=True)
class Latency:
    ms: float  # the fastest timed forward pass, in ms
    busy: bool  # the timing thread got under BUSY_SHARE of a core: other work competed, the figure is unreliable


def measure_latency(model: nn.Module, input_shape: InputShape, runs: int = 30, warmup: int = 5) -> Latency:
    """CPU wall time of one forward pass at batch 1 on one thread: the fastest of ``runs`` timed passes.

    The first ``warmup`` passes are not timed (allocator and kernel selection settle there). torch's intra-op
    threads are pinned to one while timing (restored after): with several, a pass waits for every thread, and
    on a loaded machine one descheduled thread made the same network measure up to 100x slower. The fastest
    pass is the one least disturbed by other work; a median or mean moves with the load. Whether the load still
    got in the way is measured, not guessed: ``busy`` when the timing thread's CPU time was under
    ``BUSY_SHARE`` of the wall time. A model on another device is timed on a CPU copy; the caller's model is
    left where it is, in the mode it was in.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got {runs}, {warmup}")
    on_cpu = all(t.device.type == "cpu" for t in list(model.parameters()) + list(model.buffers()))
    m = model if on_cpu else copy.deepcopy(model).cpu()
    was_training, threads = m.training, torch.get_num_threads()
    m.eval()
    x = torch.rand(1, *input_shape)  # (1, C, H, W)
    times = []
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for i in range(warmup):
                m(x)
            wall, cpu = time.perf_counter(), time.thread_time()
            for i in range(runs):
                start = time.perf_counter()
                m(x)
                times.append(time.perf_counter() - start)
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    finally:
        torch.set_num_threads(threads)
        m.train(was_training)
    return Latency(ms=min(times) * 1e3, busy=cpu < BUSY_SHARE * wall)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device", "cuda was asked for but no GPU is available", "use --device auto or cpu")
    return torch.device(name)
