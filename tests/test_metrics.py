"""pipeline.metrics: expected calibration error on hand-computed inputs."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.metrics import ECE_BINS, expected_calibration_error


def logits_for(conf: float, predicted: int, classes: int = 2) -> list[float]:
    """Logits whose softmax puts ``conf`` on ``predicted`` and the rest evenly on the other classes."""
    rest = (1.0 - conf) / (classes - 1)
    return [math.log(conf) if c == predicted else math.log(rest) for c in range(classes)]


def test_hand_computed_two_bins():
    # Confidences 0.9, 0.9, 0.6, 0.6 (bins (0.8667, 0.9333] and (0.5333, 0.6]); predictions: class 0.
    # Bin of 0.9: labels 0, 1 -> acc 0.5, conf 0.9, |0.5 - 0.9| = 0.4, weight 2/4.
    # Bin of 0.6: labels 0, 0 -> acc 1.0, conf 0.6, |1.0 - 0.6| = 0.4, weight 2/4.
    # ECE = 0.5 * 0.4 + 0.5 * 0.4 = 0.4.
    logits = torch.tensor([logits_for(0.9, 0), logits_for(0.9, 0), logits_for(0.6, 0), logits_for(0.6, 0)])
    labels = torch.tensor([0, 1, 0, 0])
    assert expected_calibration_error(logits, labels) == pytest.approx(0.4)


def test_hand_computed_three_classes_unequal_bins():
    # Confidences 0.95 (correct), 0.5 (wrong), 0.5 (correct), 0.45 (wrong); 3 classes.
    # 0.95 -> bin 14 (0.9333, 1]: acc 1, conf 0.95 -> 0.05 * 1/4.
    # 0.5 and 0.5 -> bin 7 (0.4667, 0.5333]: acc 0.5, conf 0.5 -> 0.
    # 0.45 -> bin 6 (0.4, 0.4667]: acc 0, conf 0.45 -> 0.45 * 1/4.
    # ECE = (0.05 + 0 + 0.45) / 4 = 0.125.
    logits = torch.tensor([logits_for(0.95, 2, 3), logits_for(0.5, 1, 3), logits_for(0.5, 0, 3),
                           logits_for(0.45, 1, 3)])
    labels = torch.tensor([2, 0, 0, 2])
    assert expected_calibration_error(logits, labels) == pytest.approx(0.125)


def test_a_bin_is_closed_on_the_right():
    # Zero logits give a confidence of exactly 0.5, which is an edge with 4 bins: it belongs to (0.25, 0.5],
    # alone (predicted class 0, label 0: |1 - 0.5| = 0.5, weight 1/2), not to (0.5, 0.75] with the
    # wrong 0.6 (|0 - 0.6| = 0.6, weight 1/2). ECE = 0.55; sharing the upper bin it would be
    # |0.5 - 0.55| = 0.05.
    logits = torch.tensor([[0.0, 0.0], logits_for(0.6, 0)], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    assert expected_calibration_error(logits, labels, bins=4) == pytest.approx(0.55)


def test_perfectly_calibrated_and_overconfident():
    # Two samples at confidence 0.5 in a 2-class problem, one right and one wrong: calibrated, ECE 0.
    logits = torch.zeros(2, 2)  # softmax 0.5/0.5; argmax takes class 0
    assert expected_calibration_error(logits, torch.tensor([0, 1])) == pytest.approx(0.0, abs=1e-12)
    # Near-certain and always wrong: ECE close to 1.
    sure = torch.tensor([[20.0, 0.0]] * 5)
    assert expected_calibration_error(sure, torch.zeros(5, dtype=torch.long) + 1) == pytest.approx(1.0, abs=1e-8)


def test_fifteen_bins_by_default():
    # 0.52 and 0.58: one bin at 10 ((0.5, 0.6]), two bins at 15 ((0.4667, 0.5333] and (0.5333, 0.6]).
    logits = torch.tensor([logits_for(0.52, 0), logits_for(0.58, 0)])
    labels = torch.tensor([0, 1])
    one_bin = abs(0.5 - 0.55)  # acc 0.5 against mean conf 0.55
    two_bins = (abs(1 - 0.52) + abs(0 - 0.58)) / 2
    assert ECE_BINS == 15
    assert expected_calibration_error(logits, labels) == pytest.approx(two_bins)
    assert expected_calibration_error(logits, labels, bins=10) == pytest.approx(one_bin)


def test_evaluate_reports_the_ece_of_the_models_logits():
    from pipeline.config import DataConfig, ModelConfig
    from pipeline.data import open_dataset
    from pipeline.train import build_seeded, evaluate, predict

    ds = open_dataset(DataConfig(name="digits", train_limit=300))
    model = build_seeded(ModelConfig(arch="mlp", width=8), ds.input_shape, ds.num_classes, seed=0)
    val, cpu = ds.splits["val"], torch.device("cpu")
    logits = torch.cat(list(predict(model, val.x, cpu)))
    ece = evaluate(model, val, cpu)["ece"]
    assert ece == pytest.approx(expected_calibration_error(logits, val.y))
    assert 0.0 < ece < 1.0  # an untrained model is far from calibrated, and never off by everything
