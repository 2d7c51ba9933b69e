"""Distillation losses: pure functions of tensors.

Conventions, shared by every function here:
- ``student`` and ``teacher`` are raw logits of shape (B, C); ``labels`` is (B,).
- Every loss is reduced to a scalar by averaging over the batch ("batchmean"):
  a sum over classes, a mean over samples. MSE is the exception: it averages
  over samples *and* classes, as ``F.mse_loss`` does.
- Soft losses computed at temperature T are multiplied by T^2 so their
  gradients keep the same scale as the hard-label term when T changes
  (Hinton et al., 2015, section 2).
- Inference and evaluation always use T = 1; temperature only enters training.
- A label of :data:`~pipeline.names.NO_LABEL` (-1) marks an unlabelled row (a transfer-set sample): it has a
  soft target but no hard one. Its hard term is an exact 0, and it still counts in the batch size B, so every
  row contributes its own loss and a batch's loss does not depend on how its rows are labelled.
- ``weights`` (B,), where a soft loss takes them, weight each row's term: (1/B) * sum_b w_b * loss_b.
  Without them every row weighs 1, computed as before (a batchmean over all elements).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from pipeline import names
from pipeline.errors import UserError
from pipeline.names import NO_LABEL


def kl_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(p_T || q_T), batchmean.

    p_T = softmax(teacher / T), q_T = softmax(student / T);
    loss = T^2 * (1/B) * sum_b sum_c p_T[b,c] * (log p_T[b,c] - log q_T[b,c]).
    """
    log_q = F.log_softmax(student / temperature, dim=-1)  # (B, C)
    log_p = F.log_softmax(teacher / temperature, dim=-1)  # (B, C)
    # F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) written out: the same elementwise
    # exp(t) * (t - i) and sum, bit for bit (value and gradient, on a CPU), but vmap has a batching rule for
    # each of these ops and none for kl_div, which it would run student by student (pipeline.stacking).
    terms = log_p.exp() * (log_p - log_q)  # (B, C)
    if weights is not None:
        return (weights * terms.sum(dim=-1)).sum() / student.shape[0] * temperature**2
    return terms.sum() / student.shape[0] * temperature**2


def soft_ce_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * H(p_T, q_T), batchmean: the cross-entropy against the teacher's soft targets.

    loss = -T^2 * (1/B) * sum_b sum_c p_T[b,c] * log q_T[b,c]. It equals
    :func:`kl_loss` plus T^2 times the teacher's entropy, which has no gradient
    with respect to the student, so both train the same way but report
    different values.
    """
    log_q = F.log_softmax(student / temperature, dim=-1)  # (B, C)
    p = F.softmax(teacher / temperature, dim=-1)  # (B, C)
    rows = (p * log_q).sum(dim=-1)  # (B,)
    if weights is not None:
        return -(weights * rows).sum() / student.shape[0] * temperature**2
    return -rows.mean() * temperature**2


def mse_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between raw logits: (1/(B*C)) * sum_b sum_c (s - t)^2.

    Temperature does not enter (the large-T limit of KL is logit matching;
    Kim et al., 2021); the argument is accepted so all soft losses share a signature.
    """
    del temperature
    if weights is not None:  # (1/(B*C)) * sum_b w_b * sum_c (s - t)^2
        return (weights * (student - teacher).pow(2).sum(dim=-1)).sum() / student.numel()
    return F.mse_loss(student, teacher, reduction="mean")


def hard_loss(student: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the true labels at T = 1, mean over the batch: (1/B) * sum_b CE(s_b, y_b).

    Unlabelled rows (``NO_LABEL``) add 0 and still count in B.
    """
    return F.cross_entropy(student, labels, ignore_index=NO_LABEL, reduction="sum") / student.shape[0]


def mixed_hard_loss(student: torch.Tensor, labels: torch.Tensor, partner_labels: torch.Tensor,
                    lam: torch.Tensor) -> torch.Tensor:
    """The hard term of a mixed image (MixUp/CutMix): λ-weighted cross-entropy, mean over the batch.

    loss = (1/B) * sum_b [lam_b * CE(s_b, y_b) + (1 - lam_b) * CE(s_b, y'_b)], with ``partner_labels`` y'
    (B,) and ``lam`` (B,) the sample's own share of the image. λ = 1 is the plain hard term. The share of an
    unlabelled sample or partner (``NO_LABEL``) has no hard term: a mix of two unlabelled samples adds 0.
    """
    own = F.cross_entropy(student, labels, ignore_index=NO_LABEL, reduction="none")  # (B,)
    partner = F.cross_entropy(student, partner_labels, ignore_index=NO_LABEL, reduction="none")  # (B,)
    return (lam * own + (1.0 - lam) * partner).sum() / student.shape[0]


def hard_term_weight(loss: str, alpha: float, beta: float | None) -> float:
    """The weight of the hard-label term: 1 for the label-only baseline (``loss="hard"``), else ``beta`` when
    given (Hinton's independent alpha/beta form), else ``1 - alpha``."""
    if loss == "hard":
        return 1.0
    return (1.0 - alpha) if beta is None else beta


SoftLoss = Callable[..., torch.Tensor]  # (student (B, C), teacher (B, C), T, weights (B,) or None) -> ()


def unlabelled_weights(labels: torch.Tensor, unlabelled_weight: float) -> torch.Tensor | None:
    """(B,) soft-term weights: ``unlabelled_weight`` on unlabelled rows, 1 on labelled ones; None (every row 1,
    the plain batchmean) when the weight is 1."""
    if unlabelled_weight == 1.0:
        return None
    return torch.where(labels == NO_LABEL, unlabelled_weight, 1.0).to(dtype=torch.float32)

SOFT_LOSSES: dict[str, SoftLoss] = {
    "kl": kl_loss,
    "soft_ce": soft_ce_loss,
    "mse": mse_loss,
}
assert tuple(SOFT_LOSSES) == names.SOFT_LOSSES, "declare the soft losses' names in pipeline/names.py"


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor | None,
    labels: torch.Tensor,
    loss: str,
    temperature: float,
    alpha: float,
    beta: float | None = None,
    mix: tuple[torch.Tensor, torch.Tensor] | None = None,
    unlabelled_weight: float = 1.0,
) -> torch.Tensor:
    """The combined objective: alpha * soft + w_hard * hard.

    ``w_hard`` is :func:`hard_term_weight`. ``alpha`` weights the soft term. ``loss="hard"`` is the
    label-only baseline and ignores ``teacher``, ``alpha`` and ``beta``.
    ``mix`` (partner labels (B,), λ (B,)) makes the hard term :func:`mixed_hard_loss`, for mixed images.
    ``unlabelled_weight`` weights the soft term of unlabelled rows (``NO_LABEL``), which have no hard term.
    """
    def hard() -> torch.Tensor:
        return hard_loss(student, labels) if mix is None else mixed_hard_loss(student, labels, *mix)

    if loss == "hard":
        return hard()
    if loss not in SOFT_LOSSES:
        raise UserError("loss", f"unknown loss {loss!r}", f"choose one of: {', '.join(SOFT_LOSSES)}, hard")
    assert teacher is not None, "soft losses need teacher logits"
    w_hard = hard_term_weight(loss, alpha, beta)
    total = alpha * SOFT_LOSSES[loss](student, teacher, temperature, unlabelled_weights(labels, unlabelled_weight))
    if w_hard:
        total = total + w_hard * hard()
    return total


def weighted_distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor | None,
    labels: torch.Tensor,
    mix: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    temperature: torch.Tensor,
    soft_weights: dict[str, torch.Tensor],
    hard_weight: torch.Tensor,
    unlabelled_weight: float = 1.0,
) -> torch.Tensor:
    """:func:`distillation_loss` with the loss choice, T and weights as tensors: one call serves any student.

    ``soft_weights`` maps each soft loss in use to its weight: alpha for a student trained with
    that loss, 0 for the others; ``hard_weight`` is each student's :func:`hard_term_weight`. Under
    ``torch.func.vmap`` every argument but the shared ``teacher``, ``labels``, ``mix`` and
    ``unlabelled_weight`` carries one value per student, so students with different losses train in
    one call. ``mix`` (partner labels (B,), λ (B,)) makes the hard term :func:`mixed_hard_loss`, and
    ``unlabelled_weight`` weights the soft term of unlabelled rows, as in :func:`distillation_loss`.
    A zero weight adds an exact 0 (for finite terms), so the value and gradients equal
    :func:`distillation_loss`'s.
    """
    hard = hard_loss(student, labels) if mix is None else mixed_hard_loss(student, labels, *mix)
    total = hard_weight * hard
    if soft_weights:
        assert teacher is not None, "soft losses need teacher logits"
    soft = None
    rows = unlabelled_weights(labels, unlabelled_weight)  # (B,) or None
    for name, weight in soft_weights.items():
        term = weight * SOFT_LOSSES[name](student, teacher, temperature, rows)
        soft = term if soft is None else soft + term
    return total if soft is None else soft + total
