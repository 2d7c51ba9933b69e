"""Model registry: where a model comes from, and the small built-ins.

``SOURCES`` maps a source, the prefix of ``--arch``, to a constructor ``(cfg, name, input_shape, num_classes)
-> nn.Module``: ``builtin`` (a bare name: ``MODELS``' ``mlp`` and ``cnn``, or any torchvision classifier
built from scratch and adapted to the input channels and size), ``torchvision:NAME``, ``timm:NAME``,
``py:package.module:function`` and ``file:PATH`` (:mod:`pipeline.model_sources`). :func:`build_model` adds
what every source shares: pretrained weights (``--weights``), a new head for the dataset's classes, and the
model's own normalisation (:mod:`pipeline.preprocessing`). :func:`check_source` checks all of it before any work.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from pipeline import preprocessing
from pipeline.architectures import check_arch, parse_arch
from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.file_hash import sha256_file
from pipeline.model_sources import file_source, py_source, timm_source, torchvision_source
from pipeline.names import BUILTIN_ARCHS, MODEL_SOURCES
from pipeline.preprocessing_spec import Preprocessing
from pipeline.weights import (TIMM_PRETRAINED, WeightsFile, head_outputs, load_into, read_state_dict,
                              replace_head, timm_file, torchvision_file)

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
assert tuple(MODELS) == BUILTIN_ARCHS, "declare the built-in architectures' names in pipeline/names.py"


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


def builtin_source(cfg: ModelConfig, name: str, shape: InputShape, num_classes: int) -> nn.Module:
    if name in MODELS:
        return MODELS[name](cfg, shape, num_classes)
    return torchvision_model(name, shape, num_classes)


SOURCES: dict[str, Callable[[ModelConfig, str, InputShape, int], nn.Module]] = {
    "builtin": builtin_source,
    "torchvision": torchvision_source,
    "timm": timm_source,
    "py": py_source,
    "file": file_source,
}
assert tuple(SOURCES) == MODEL_SOURCES, "declare the model sources' names in pipeline/names.py"


def weights_file(cfg: ModelConfig, *, download: bool = False) -> WeightsFile | None:
    """Where ``cfg.weights`` are on disk (a file, or a library's cache; fetched only with ``download``)."""
    if cfg.weights is None:
        return None
    source, name = parse_arch(cfg.arch)
    if preprocessing.is_weights_file(cfg.weights):
        if not os.path.isfile(cfg.weights):
            raise UserError("weights", f"{cfg.weights!r} does not exist" if not os.path.isdir(cfg.weights)
                            else f"{cfg.weights!r} is a directory", "pass a .safetensors or .pt state dict file")
        return WeightsFile(cfg.weights, cfg.weights)
    if source == "timm":
        if cfg.weights != TIMM_PRETRAINED:
            raise UserError("weights", f"{cfg.weights!r} is neither 'pretrained' nor a weights file",
                            "pass --weights pretrained (timm's hub cache) or a .safetensors/.pt file")
        return timm_file(name, download=download)
    if source == "torchvision":
        return torchvision_file(preprocessing.torchvision_enum(name, cfg.weights, field="weights"), download=download)
    raise UserError("weights", f"{cfg.weights!r} is not a weights file, and {source} models have no named weights",
                    "pass a .safetensors or .pt state dict file")


def input_size(cfg: ModelConfig, shape: InputShape) -> tuple[int, int] | None:
    """The resolution a model is fed at when its own preprocessing crops to another size than the data's (a
    student at its own resolution): its input is resized to it first. None: the data's size."""
    pre = preprocessing.resolve(cfg)
    if pre is None or pre.crop is None or (pre.crop, pre.crop) == tuple(shape[1:]):
        return None
    return pre.crop, pre.crop


def build_model(cfg: ModelConfig, shape: InputShape, num_classes: int, *, pretrained: bool = True,
                outputs: int | None = None, class_map: tuple[int, ...] | None = None) -> nn.Module:
    """The model of ``cfg`` for inputs ``shape`` (C, H, W) and ``num_classes`` classes.

    ``pretrained``: load ``cfg.weights`` (from disk: :func:`check_source` fetched them); False builds the structure
    alone, for a checkpoint to be loaded into. Weights trained for another number of classes get a fresh head
    (fine-tuning). ``outputs``/``class_map``: a model used as it is, with ``outputs`` classes of its own, of which
    ``class_map`` picks the dataset's. The model normalises its input itself, and a model whose preprocessing crops
    to another size than ``shape`` resizes its input first (:mod:`pipeline.preprocessing`).
    """
    check_arch(cfg.arch)
    source, name = parse_arch(cfg.arch)
    size = input_size(cfg, shape)
    built_shape = shape if size is None else (shape[0], *size)
    final = outputs if outputs is not None else num_classes

    def make(k: int) -> nn.Module:
        return SOURCES[source](cfg, name, built_shape, k)

    found = weights_file(cfg) if pretrained and source != "file" else None
    if found is None:
        net = make(final)
    else:
        state = read_state_dict(found.path)
        net = make(final)
        trained_for = head_outputs(net, state) or final
        if trained_for != final:
            net = make(trained_for)
        load_into(net, state, what=cfg.arch, path=found.path)
        if trained_for != final:
            net = replace_head(net, final)
    return preprocessing.attach(net, pre=preprocessing.resolve(cfg), size=size, class_map=class_map)


@dataclass(frozen=True)
class SourcePlan:
    """What a model's options resolved to, checked before any work (a teacher's store records it).

    ``weights``: what named the pretrained weights (an enum, a hub id, a path); ``weights_path`` and
    ``weights_sha256``: the file they were read from. ``outputs`` and ``class_map``: a model used as it is, with
    ``outputs`` classes of its own, of which ``class_map`` (named ``class_map_names`` by the model) are the
    dataset's, in its order.
    """

    source: str
    weights: str | None = None
    weights_path: str | None = None
    weights_sha256: str | None = None
    preprocessing: Preprocessing | None = None
    outputs: int | None = None
    class_map: tuple[int, ...] | None = None
    class_map_names: tuple[str, ...] | None = None


def _probe(net: nn.Module, cfg: ModelConfig, shape: InputShape, outputs: int) -> None:
    """Run ``net`` once on a batch of two blank images: a program exported for other inputs, or a model whose
    output is not (B, classes), fails here in one line rather than in the middle of a run."""
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, *shape))
    except Exception as exc:
        first = ((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:200]
        raise UserError("arch", f"{cfg.arch} does not take this data's inputs, a batch of {tuple(shape)} images "
                        f"({type(exc).__name__}: {first})", "export or build it for that input size, with a "
                        "dynamic batch dimension (torch.export.Dim), or pass --image-size/--crop to match it") from None
    finally:
        net.train(was)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, outputs):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError("arch", f"{cfg.arch} returns {got} for a batch of 2, not (2, {outputs}) logits",
                        "return one row of raw logits per image" if isinstance(out, torch.Tensor) and out.dim() == 2
                        else "return a (B, classes) tensor of raw logits")


def check_source(cfg: ModelConfig, *, shape: InputShape, num_classes: int, class_names: list[str] | None = None,
                 as_is: bool = False, download: bool = False) -> SourcePlan:
    """Everything about a model that can fail on user input, before any work, and what it resolved to: the factory
    or file, the weights (fetched into the library's cache only with ``download``) and that they fit the
    architecture, the preprocessing, and, for a model used ``as_is``, its classes matched to ``class_names``.
    The model is built and run once on blank images."""
    from pipeline import class_map as classes

    check_arch(cfg.arch)
    source, name = parse_arch(cfg.arch)
    if source == "file" and cfg.weights is not None:
        raise UserError("weights", f"{cfg.arch} holds its own weights", "drop --weights")
    if source == "torchvision" and shape[0] != 3:
        raise UserError("arch", f"{cfg.arch} takes 3-channel images; this data has {shape[0]}",
                        f"use the bare name {name} (adapted to any input), or RGB data")
    pre = preprocessing.resolve(cfg)
    if pre is not None and pre.mean is not None and len(pre.mean) not in (1, shape[0]):
        raise UserError("mean", f"has {len(pre.mean)} values for {shape[0]}-channel images",
                        "pass one mean and one std per channel")
    found = weights_file(cfg, download=download)
    if source == "py":
        from pipeline.model_sources import factory

        factory(name)
    plan = SourcePlan(source=source, weights=found.name if found else None, weights_path=found.path if found else None,
                      weights_sha256=sha256_file(found.path) if found else None, preprocessing=pre)
    outputs, mapping = None, None
    if as_is:
        names = classes.model_names(cfg)
        if names is None:
            raise UserError("model_classes", f"the class names of {cfg.arch} are not known, so its outputs cannot "
                            "be matched to the dataset's classes", "pass --model-classes FILE (one name per line, "
                            "in output order)")
        outputs, mapping = len(names), classes.class_map(list(class_names or []), names)
        if found is not None:
            state = read_state_dict(found.path)
            trained_for = head_outputs(SOURCES[source](cfg, name, shape, outputs), state)
            if trained_for is not None and trained_for != outputs:
                raise UserError("model_classes", f"the weights {found.name} have {trained_for} outputs, the model's "
                                f"class names {outputs}", "pass --model-classes naming each output once")
        plan = SourcePlan(**{**plan.__dict__, "outputs": outputs, "class_map": mapping,
                             "class_map_names": tuple(names[i][0] for i in mapping)})
    if source != "builtin" or found is not None:
        _probe(build_model(cfg, shape, num_classes, outputs=outputs), cfg, shape, outputs or num_classes)
    return plan


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
