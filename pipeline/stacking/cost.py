"""Whether a stack pays on a CPU: a student's forward FLOPs per sample against a bound."""
from __future__ import annotations

import copy

import torch
from torch import nn

# On a CPU a stacked step runs the same arithmetic on grouped kernels, which are slower than the plain
# ones: batching pays only while per-operation overhead dominates, i.e. for small students (docs/history.md
# has the measurements). A GPU batches whatever vectorises.
CPU_MAX_FLOPS = 1e6  # forward FLOPs per sample of one student


def flops_per_sample(model: nn.Module, input_shape: tuple[int, int, int]) -> float:
    """Forward FLOPs (matmuls and convolutions) of ``model`` on one sample, counted on a copy in eval mode."""
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).cpu().eval()  # eval: the count must not touch running statistics
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        probe(torch.zeros(1, *input_shape))
    return float(counter.get_total_flops())


def cpu_reason_not_to_batch(model: nn.Module, input_shape: tuple[int, int, int]) -> str | None:
    """Why one-by-one training beats a stack of ``model`` on a CPU, or None if batching pays there."""
    flops = flops_per_sample(model, input_shape)
    if flops <= CPU_MAX_FLOPS:
        return None
    return (f"{flops / 1e6:.1f} MFLOP per sample is compute-bound on a CPU, where grouped kernels are slower "
            f"(batching pays up to {CPU_MAX_FLOPS / 1e6:g})")
