"""pipeline.losses against values computed by hand (plain math, no torch.nn.functional)."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.errors import UserError
from pipeline.losses import (
    SOFT_LOSSES,
    distillation_loss,
    hard_loss,
    kl_loss,
    mse_loss,
    soft_ce_loss,
)

# B = 2 samples, C = 3 classes, written out.
STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]]
LABELS = [1, 2]


def t(rows, grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64, requires_grad=grad)


def labels() -> torch.Tensor:
    return torch.tensor(LABELS, dtype=torch.int64)


# --- reference implementations in plain python -------------------------------------------------


def softmax(row: list[float], temp: float = 1.0) -> list[float]:
    exps = [math.exp(v / temp) for v in row]
    z = sum(exps)
    return [e / z for e in exps]


def kl_row(s: list[float], tch: list[float], temp: float) -> float:
    """KL(p_T || q_T) for one sample, not scaled by T^2."""
    p, q = softmax(tch, temp), softmax(s, temp)
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def ce_row(s: list[float], tch: list[float], temp: float) -> float:
    p, q = softmax(tch, temp), softmax(s, temp)
    return -sum(pi * math.log(qi) for pi, qi in zip(p, q))


def entropy_row(tch: list[float], temp: float) -> float:
    p = softmax(tch, temp)
    return -sum(pi * math.log(pi) for pi in p)


def hand_kl(student, teacher, temp: float) -> float:
    return temp**2 * sum(kl_row(s, tc, temp) for s, tc in zip(student, teacher)) / len(student)


def hand_soft_ce(student, teacher, temp: float) -> float:
    return temp**2 * sum(ce_row(s, tc, temp) for s, tc in zip(student, teacher)) / len(student)


def hand_mse(student, teacher) -> float:
    n = len(student) * len(student[0])
    return sum((a - b) ** 2 for rs, rt in zip(student, teacher) for a, b in zip(rs, rt)) / n


def hand_ce(student, lab) -> float:
    return sum(-math.log(softmax(s)[y]) for s, y in zip(student, lab)) / len(student)


# --- kl ------------------------------------------------------------------------------------------


def test_reference_numbers_are_sane():
    # A hand check of the hand check: softmax([0, 0, 0]) is uniform, KL of equal rows is 0.
    assert softmax([0.0, 0.0, 0.0]) == pytest.approx([1 / 3] * 3)
    assert kl_row([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 1.0) == pytest.approx(0.0, abs=1e-15)
    # First sample, T=1, written out once fully.
    p = [math.exp(2) / (math.exp(2) + 1 + math.e), 1 / (math.exp(2) + 1 + math.e), math.e / (math.exp(2) + 1 + math.e)]
    zq = math.e + math.exp(2) + math.exp(0.5)
    q = [math.e / zq, math.exp(2) / zq, math.exp(0.5) / zq]
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert kl_row(STUDENT[0], TEACHER[0], 1.0) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0, 0.5])
def test_kl_matches_hand_computation(temp):
    got = kl_loss(t(STUDENT), t(TEACHER), temp)
    assert got.shape == ()
    assert got.item() == pytest.approx(hand_kl(STUDENT, TEACHER, temp), rel=1e-10)


def test_kl_t2_is_four_times_unscaled_kl():
    unscaled = sum(kl_row(s, tc, 2.0) for s, tc in zip(STUDENT, TEACHER)) / 2
    got = kl_loss(t(STUDENT), t(TEACHER), 2.0).item()
    assert got == pytest.approx(4.0 * unscaled, rel=1e-10)
    assert got != pytest.approx(unscaled, rel=1e-3)


def test_kl_is_batchmean_not_elementwise_mean_or_sum():
    per_row = [kl_row(s, tc, 1.0) for s, tc in zip(STUDENT, TEACHER)]
    got = kl_loss(t(STUDENT), t(TEACHER), 1.0).item()
    assert got == pytest.approx(sum(per_row) / 2, rel=1e-10)  # sum over classes, mean over samples
    assert got != pytest.approx(sum(per_row), rel=1e-3)  # not a sum over the batch
    assert got != pytest.approx(sum(per_row) / 6, rel=1e-3)  # not a mean over B*C elements
    # And the batch value is the mean of the one-sample values.
    singles = [kl_loss(t([s]), t([tc]), 1.0).item() for s, tc in zip(STUDENT, TEACHER)]
    assert got == pytest.approx(sum(singles) / 2, rel=1e-10)


def test_kl_zero_for_identical_logits_and_positive_otherwise():
    assert kl_loss(t(TEACHER), t(TEACHER), 3.0).item() == pytest.approx(0.0, abs=1e-12)
    assert kl_loss(t(STUDENT), t(TEACHER), 3.0).item() > 0
    # Softmax is shift-invariant per row, so is the loss.
    shifted = [[v + 7.0 for v in row] for row in STUDENT]
    assert kl_loss(t(shifted), t(TEACHER), 2.0).item() == pytest.approx(hand_kl(STUDENT, TEACHER, 2.0), rel=1e-10)


def test_kl_float32_matches_hand():
    got = kl_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), 2.0)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(hand_kl(STUDENT, TEACHER, 2.0), rel=1e-5)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_kl_gradient_is_zero_when_student_equals_teacher(temp):
    s = t(TEACHER, grad=True)
    kl_loss(s, t(TEACHER), temp).backward()
    assert s.grad is not None
    assert torch.allclose(s.grad, torch.zeros_like(s.grad), atol=1e-12)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_kl_gradient_matches_hand(temp):
    # d/ds_c [T^2 * KL(p_T || softmax(s/T))] = T^2 * (q_c - p_c) / T = T * (q_c - p_c), then / B.
    s = t(STUDENT, grad=True)
    kl_loss(s, t(TEACHER), temp).backward()
    expected = []
    for rs, rt in zip(STUDENT, TEACHER):
        p, q = softmax(rt, temp), softmax(rs, temp)
        expected.append([temp * (qi - pi) / len(STUDENT) for pi, qi in zip(p, q)])
    assert torch.allclose(s.grad, t(expected), rtol=1e-10, atol=1e-12)
    assert s.grad.abs().max().item() > 1e-3


# --- soft cross-entropy --------------------------------------------------------------------------


@pytest.mark.parametrize("temp", [1.0, 2.0, 5.0])
def test_soft_ce_matches_hand(temp):
    got = soft_ce_loss(t(STUDENT), t(TEACHER), temp).item()
    assert got == pytest.approx(hand_soft_ce(STUDENT, TEACHER, temp), rel=1e-10)


@pytest.mark.parametrize("temp", [1.0, 2.0, 5.0])
def test_soft_ce_equals_kl_plus_t2_teacher_entropy(temp):
    entropy = sum(entropy_row(tc, temp) for tc in TEACHER) / len(TEACHER)
    assert entropy > 0
    soft = soft_ce_loss(t(STUDENT), t(TEACHER), temp).item()
    kl = kl_loss(t(STUDENT), t(TEACHER), temp).item()
    assert soft == pytest.approx(kl + temp**2 * entropy, rel=1e-10)
    assert soft == pytest.approx(hand_kl(STUDENT, TEACHER, temp) + temp**2 * entropy, rel=1e-10)


def test_soft_ce_and_kl_have_the_same_gradient():
    a, b = t(STUDENT, grad=True), t(STUDENT, grad=True)
    soft_ce_loss(a, t(TEACHER), 3.0).backward()
    kl_loss(b, t(TEACHER), 3.0).backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_soft_ce_of_identical_logits_is_t2_entropy_not_zero():
    temp = 2.0
    entropy = sum(entropy_row(tc, temp) for tc in TEACHER) / len(TEACHER)
    got = soft_ce_loss(t(TEACHER), t(TEACHER), temp).item()
    assert got == pytest.approx(temp**2 * entropy, rel=1e-10)


# --- mse -----------------------------------------------------------------------------------------


def test_mse_matches_hand_and_ignores_temperature():
    # (1-2)^2 + (2-0)^2 + (0.5-1)^2 + (0-1)^2 + (-1-1)^2 + (3+2)^2 = 1 + 4 + 0.25 + 1 + 4 + 25 = 35.25
    assert hand_mse(STUDENT, TEACHER) == pytest.approx(35.25 / 6)
    for temp in (1.0, 2.0, 10.0, 0.1):
        assert mse_loss(t(STUDENT), t(TEACHER), temp).item() == pytest.approx(35.25 / 6, rel=1e-12)


def test_mse_zero_for_identical_logits():
    assert mse_loss(t(TEACHER), t(TEACHER), 4.0).item() == 0.0


# --- hard ----------------------------------------------------------------------------------------


def test_hard_loss_matches_hand():
    expected = (-math.log(softmax(STUDENT[0])[1]) - math.log(softmax(STUDENT[1])[2])) / 2
    assert hand_ce(STUDENT, LABELS) == pytest.approx(expected)
    assert hard_loss(t(STUDENT), labels()).item() == pytest.approx(expected, rel=1e-10)
    other = torch.tensor([0, 0])
    assert hard_loss(t(STUDENT), other).item() == pytest.approx(hand_ce(STUDENT, [0, 0]), rel=1e-10)


# --- distillation_loss ---------------------------------------------------------------------------


@pytest.mark.parametrize("loss", list(SOFT_LOSSES))
@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.9, 1.0])
def test_distillation_loss_alpha_weighting(loss, alpha):
    temp = 2.0
    soft = {"kl": hand_kl(STUDENT, TEACHER, temp), "soft_ce": hand_soft_ce(STUDENT, TEACHER, temp),
            "mse": hand_mse(STUDENT, TEACHER)}[loss]
    expected = alpha * soft + (1 - alpha) * hand_ce(STUDENT, LABELS)
    got = distillation_loss(t(STUDENT), t(TEACHER), labels(), loss, temp, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("alpha,beta", [(0.5, 2.0), (1.0, 1.0), (0.9, 0.0), (0.0, 0.3)])
def test_distillation_loss_independent_beta(alpha, beta):
    temp = 4.0
    expected = alpha * hand_kl(STUDENT, TEACHER, temp) + beta * hand_ce(STUDENT, LABELS)
    got = distillation_loss(t(STUDENT), t(TEACHER), labels(), "kl", temp, alpha, beta=beta)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_beta_replaces_one_minus_alpha():
    a = distillation_loss(t(STUDENT), t(TEACHER), labels(), "kl", 2.0, 0.5)
    b = distillation_loss(t(STUDENT), t(TEACHER), labels(), "kl", 2.0, 0.5, beta=0.5)
    c = distillation_loss(t(STUDENT), t(TEACHER), labels(), "kl", 2.0, 0.5, beta=3.0)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    assert c.item() == pytest.approx(a.item() + 2.5 * hand_ce(STUDENT, LABELS), rel=1e-10)


def test_hard_loss_ignores_teacher_alpha_beta_and_temperature():
    expected = hand_ce(STUDENT, LABELS)
    results = [
        distillation_loss(t(STUDENT), None, labels(), "hard", 1.0, 0.0),
        distillation_loss(t(STUDENT), t(TEACHER), labels(), "hard", 8.0, 0.9),
        distillation_loss(t(STUDENT), t([[9.0, -9.0, 0.0], [5.0, 5.0, 5.0]]), labels(), "hard", 2.0, 1.0, beta=7.0),
    ]
    for r in results:
        assert r.item() == pytest.approx(expected, rel=1e-10)


def test_distillation_loss_gradient_flows_to_student_only_through_both_terms():
    s = t(STUDENT, grad=True)
    teacher = t(TEACHER, grad=True)
    distillation_loss(s, teacher, labels(), "kl", 2.0, 0.5).backward()
    assert s.grad is not None and s.grad.abs().sum().item() > 0


@pytest.mark.parametrize("name", ["KL", "kld", "cross_entropy", ""])
def test_unknown_loss_name_raises_user_error(name):
    with pytest.raises(UserError) as exc:
        distillation_loss(t(STUDENT), t(TEACHER), labels(), name, 2.0, 0.9)
    assert exc.value.field == "loss"
    assert repr(name) in str(exc.value)
    for known in list(SOFT_LOSSES) + ["hard"]:
        assert known in exc.value.fix


# --- unlabelled rows (NO_LABEL): the soft term alone ---------------------------------------------


def test_unlabelled_row_has_no_hard_term_but_counts_in_the_batch():
    # Row 1 has no label: the hard loss is row 0's CE over B = 2, not over the one labelled row.
    got = hard_loss(t(STUDENT), torch.tensor([1, -1])).item()
    assert got == pytest.approx(-math.log(softmax(STUDENT[0])[1]) / 2, rel=1e-12)
    assert hard_loss(t(STUDENT), torch.tensor([-1, -1])).item() == 0.0


@pytest.mark.parametrize("loss", ["kl", "soft_ce", "mse"])
def test_unlabelled_rows_learn_the_soft_term_alone(loss):
    lab = torch.tensor([1, -1])
    soft = {"kl": hand_kl, "soft_ce": hand_soft_ce, "mse": lambda s, tc, temp: hand_mse(s, tc)}[loss]
    got = distillation_loss(t(STUDENT), t(TEACHER), lab, loss, 2.0, 0.7).item()
    want = 0.7 * soft(STUDENT, TEACHER, 2.0) + 0.3 * (-math.log(softmax(STUDENT[0])[1])) / 2
    assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("loss", ["kl", "soft_ce", "mse"])
def test_unlabelled_weight_scales_the_soft_term_of_unlabelled_rows_only(loss):
    lab = torch.tensor([1, -1])
    temp, w = 2.0, 0.25
    if loss == "kl":
        rows = [temp**2 * kl_row(s, tc, temp) for s, tc in zip(STUDENT, TEACHER)]
    elif loss == "soft_ce":
        rows = [temp**2 * ce_row(s, tc, temp) for s, tc in zip(STUDENT, TEACHER)]
    else:
        rows = [sum((a - b) ** 2 for a, b in zip(s, tc)) / 3 for s, tc in zip(STUDENT, TEACHER)]
    got = distillation_loss(t(STUDENT), t(TEACHER), lab, loss, temp, 1.0, unlabelled_weight=w).item()
    assert got == pytest.approx((rows[0] + w * rows[1]) / 2, rel=1e-12)


def test_mixed_hard_term_drops_the_unlabelled_shares():
    from pipeline.losses import mixed_hard_loss

    ce = [[-math.log(softmax(s)[c]) for c in range(3)] for s in STUDENT]
    lam = torch.tensor([0.6, 0.3], dtype=torch.float64)
    # Row 0: labelled (1) mixed with an unlabelled partner; row 1: two unlabelled samples, no hard term at all.
    got = mixed_hard_loss(t(STUDENT), torch.tensor([1, -1]), torch.tensor([-1, -1]), lam).item()
    assert got == pytest.approx(0.6 * ce[0][1] / 2, rel=1e-12)
    got = mixed_hard_loss(t(STUDENT), torch.tensor([-1, 2]), torch.tensor([0, -1]), lam).item()
    assert got == pytest.approx((0.4 * ce[0][0] + 0.3 * ce[1][2]) / 2, rel=1e-12)
