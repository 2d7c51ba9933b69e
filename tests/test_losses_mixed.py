"""The hard term of mixed images: λ-weighted cross-entropy of the two labels, checked against hand values."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.losses import distillation_loss, hard_loss, kl_loss, mixed_hard_loss


def test_mixed_hard_loss_hand_computed():
    # Sample 0: softmax([0, ln 3]) = [1/4, 3/4]; its own label 0 costs ln 4, its partner's label 1 costs ln(4/3).
    # Sample 1: softmax([0, 0]) = [1/2, 1/2], not mixed (λ = 1): ln 2.
    s = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    y, partner, lam = torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([0.25, 1.0])
    expected = ((0.25 * math.log(4.0) + 0.75 * math.log(4.0 / 3.0)) + math.log(2.0)) / 2
    assert mixed_hard_loss(s, y, partner, lam).item() == pytest.approx(expected, rel=1e-6)


def test_mixed_hard_loss_reduces_to_the_plain_and_the_partner_term():
    g = torch.Generator().manual_seed(0)
    s, y, partner = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g), torch.randint(0, 5, (8,),
                                                                                                         generator=g)
    torch.testing.assert_close(mixed_hard_loss(s, y, partner, torch.ones(8)), hard_loss(s, y))
    torch.testing.assert_close(mixed_hard_loss(s, y, partner, torch.zeros(8)), hard_loss(s, partner))


def test_distillation_loss_mixes_only_the_hard_term():
    s, t = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[1.0, 0.0]])
    y, mix = torch.tensor([0]), (torch.tensor([1]), torch.tensor([0.25]))
    hard = 0.25 * math.log(4.0) + 0.75 * math.log(4.0 / 3.0)
    got = distillation_loss(s, t, y, "kl", 2.0, 0.5, mix=mix)
    assert got.item() == pytest.approx(0.5 * kl_loss(s, t, 2.0).item() + 0.5 * hard, rel=1e-6)
    assert distillation_loss(s, None, y, "hard", 1.0, 0.0, mix=mix).item() == pytest.approx(hard, rel=1e-6)
    # α = 1 (the patient recipe): the labels, mixed or not, do not enter.
    assert distillation_loss(s, t, y, "kl", 1.0, 1.0, mix=mix).item() == pytest.approx(kl_loss(s, t, 1.0).item())
