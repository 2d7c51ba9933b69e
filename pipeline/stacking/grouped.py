"""A stack of plain sequential students run as one wide model, without ``vmap``.

For an ``nn.Sequential`` of common layers (the ``mlp`` and ``cnn`` students) the
S students of a stack are laid side by side along the channel axis: an
activation of the stack is (B, S*C, H, W) or (B, S*F), student-major (student
s owns channels s*C .. s*C + C-1). Every layer then has a native grouped form
that keeps the students apart:

- ``Conv2d``: one convolution with ``groups`` multiplied by S, the weights
  (S, O, I, k, k) viewed as (S*O, I, k, k);
- ``BatchNorm``: one batch norm over S*C channels, each with its own affine
  weights and running statistics (the stack's (S, C) buffers, updated in place);
- ``Linear``: one batched matmul (B, S, I) x (S, O, I) -> (B, S, O);
- pooling, activations and ``Flatten`` act per channel, so they run unchanged;
  ``Dropout`` draws each element's mask independently, hence each student's.

Until its first layer with weights the input is shared by every student and is
not copied. Under ``vmap`` each of these layers instead costs extra copies that
move the student axis in and out, and BatchNorm's affine step runs apart.

On CUDA the convolutions run in channels_last, the layout cuDNN's grouped kernels
want. On a CPU they stay contiguous: channels_last rounds otherwise there, enough
to tip a ReLU past zero within an exactness test's first 50 steps, beyond the 1e-5
that a stack must stay within of separate runs (tests/test_stacking.py).
Other models take the ``vmap`` path of :class:`pipeline.stacking.stack.StackedStudents`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.precision import memory_format

# Layers without weights that act on each channel (or element) alone: they run as they are on a stack.
PER_CHANNEL = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
               nn.Tanh, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def why_not_grouped(model: nn.Module) -> str | None:
    """None if :func:`forward` can run stacks of ``model``, else why not (it then trains under ``vmap``)."""
    if type(model) is not nn.Sequential:
        return f"{type(model).__name__} is not a plain nn.Sequential"
    if model._forward_pre_hooks or model._forward_hooks:  # its own preprocessing (pipeline.preprocessing.attach)
        return "it resizes or normalises its input itself (forward hooks)"
    for name, m in model.named_children():
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                return f"layer {name}: padding {m.padding!r} ({m.padding_mode})"
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not (m.affine and m.track_running_stats and m.momentum is not None):
                return f"layer {name}: BatchNorm without affine weights, running statistics or a momentum"
        elif isinstance(m, nn.Flatten):
            if (m.start_dim, m.end_dim) != (1, -1):
                return f"layer {name}: Flatten({m.start_dim}, {m.end_dim})"
        elif not isinstance(m, (nn.Linear, nn.Dropout) + PER_CHANNEL):
            return f"layer {name}: {type(m).__name__}"
    return None


def forward(model: nn.Sequential, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
            x: torch.Tensor, *, students: int, training: bool) -> torch.Tensor:
    """Every student's logits on the shared batch ``x`` (B, ...): (S, B, K).

    ``params`` and ``buffers`` hold each tensor of ``model`` stacked, (S, *shape); BatchNorm's running
    statistics in ``buffers`` are updated in place when ``training``, as each student's module would.
    """
    S, B = students, x.shape[0]
    h, stacked = x, False  # stacked: h holds the S students side by side along dim 1
    for name, m in model.named_children():
        if isinstance(m, nn.Conv2d):
            w, b = params[f"{name}.weight"], params.get(f"{name}.bias")  # (S, O, I/g, k, k), (S, O)
            h = F.conv2d(h.contiguous(memory_format=memory_format(h.device)), w.reshape(-1, *w.shape[2:]),
                         None if b is None else b.reshape(-1), m.stride, m.padding, m.dilation,
                         m.groups * (S if stacked else 1))  # (B, S*O, H', W')
            stacked = True
        elif isinstance(m, nn.Linear):
            if h.dim() != 2:  # a Linear over the last axis of an image: not a layout this form knows
                raise ValueError(f"layer {name}: Linear on a {h.dim()}-d activation")
            w, b = params[f"{name}.weight"], params.get(f"{name}.bias")  # (S, O, I), (S, O)
            h = torch.einsum("bsi,soi->bso", h.reshape(B, S, -1), w) if stacked else \
                torch.einsum("bi,soi->bso", h, w)  # (B, S, O)
            if b is not None:
                h = h + b
            h, stacked = h.reshape(B, -1), True  # (B, S*O)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not stacked:  # every student normalises the shared input with its own statistics
                h, stacked = torch.cat([h] * S, dim=1), True  # (B, S*C, ...)
            mean, var = buffers[f"{name}.running_mean"], buffers[f"{name}.running_var"]  # (S, C), contiguous
            h = F.batch_norm(h, mean.view(-1), var.view(-1), params[f"{name}.weight"].reshape(-1),
                             params[f"{name}.bias"].reshape(-1), training, m.momentum, m.eps)
            if training:
                buffers[f"{name}.num_batches_tracked"].add_(1)
        elif isinstance(m, nn.Dropout):
            if training and m.p > 0 and not stacked:  # one mask per student, not one shared
                h, stacked = torch.cat([h] * S, dim=1), True
            h = F.dropout(h, m.p, training)
        else:  # Flatten keeps each student's features together (student-major); the rest act per channel
            h = m(h)
    if not stacked:  # a model without weights: every student computes the same
        h = torch.cat([h] * S, dim=1)
    return h.reshape(B, S, -1).transpose(0, 1)  # (S, B, K)
