"""Evaluation metrics that are pure functions of logits and labels (no model, no data loading)."""
from __future__ import annotations

import torch

ECE_BINS = 15


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-1 prediction at T = 1 (Guo et al., 2017).

    ``logits`` (N, C), ``labels`` (N,). Each sample's confidence is its largest softmax probability;
    samples fall into ``bins`` equal-width bins over (0, 1], bin b holding (b/bins, (b+1)/bins].
    ECE = sum over bins of (samples in the bin / N) * |accuracy in the bin - mean confidence in the bin|;
    empty bins add nothing. 0 means confidence matches accuracy in every bin.
    """
    if logits.shape[0] == 0:
        return float("nan")
    probs = torch.softmax(logits.double(), dim=1)  # (N, C); double: bin edges are not blurred by rounding
    conf, pred = probs.max(dim=1)  # (N,), (N,)
    correct = (pred == labels).double()  # (N,)
    inner_edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)[1:-1]  # (bins - 1,)
    # right=False: edge[i-1] < conf <= edge[i] -> bin i, so each bin is closed on the right.
    which = torch.bucketize(conf, inner_edges, right=False)  # (N,) in [0, bins)
    conf_sum = torch.bincount(which, weights=conf, minlength=bins)  # (bins,)
    correct_sum = torch.bincount(which, weights=correct, minlength=bins)  # (bins,)
    # |acc_b - conf_b| * n_b / N == |correct_sum_b - conf_sum_b| / N, and empty bins give 0.
    return float((correct_sum - conf_sum).abs().sum() / logits.shape[0])
