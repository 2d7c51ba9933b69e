"""experiments.studies, the fidelity study: its configs, the share of the gap each arm closes, its table and verdict."""
from __future__ import annotations

import json
import math
import os

import pytest

from experiments import studies
from pipeline.presets import PRESETS


def entry(kind: str, mean: float, std: float, *, seeds: int = 3, ece: float = 0.05) -> dict:
    return {"kind": kind, "test_acc_mean": mean, "test_acc_std": std, "test_ece_mean": ece, "test_ece_std": 0.01,
            "test_nll_mean": 0.3, "test_nll_std": 0.02, "seeds": seeds, "failed": 0}


def run_dir(tmp_path, name: str, *entries: dict) -> str:
    path = tmp_path / name
    path.mkdir()
    (path / "leaderboard.json").write_text(json.dumps({"meta": {}, "leaderboard": list(entries), "runs": []}))
    return str(path)


# --- the share of the gap ------------------------------------------------------------------------


def test_gap_share_hand_computed():
    # Teacher 1.00, baseline 0.92 ± 0.01: gap 0.08. Student 0.96 ± 0.02: gain 0.04, share 0.5,
    # share std 0.02 / 0.08 = 0.25; noise hypot(0.02, 0.01) = 0.02236 < 0.04: beyond noise, and
    # (0.04 - 0.02236) / 0.08 = 0.2205 of the gap remains once the noise is taken off.
    s = studies.gap_share(entry("student", 0.96, 0.02), entry("baseline", 0.92, 0.01), entry("teacher", 1.0, 0.0))
    assert s["gap"] == pytest.approx(0.08) and s["gain"] == pytest.approx(0.04)
    assert s["share"] == pytest.approx(0.5) and s["share_std"] == pytest.approx(0.25)
    assert s["noise"] == pytest.approx(math.hypot(0.02, 0.01))
    assert s["within_noise"] is False
    assert s["share_beyond_noise"] == pytest.approx((0.04 - math.hypot(0.02, 0.01)) / 0.08)


def test_gap_share_within_noise_and_losses():
    base, teacher = entry("baseline", 0.90, 0.03), entry("teacher", 1.0, 0.0)
    # Gain 0.03 <= hypot(0.03, 0.03) = 0.0424: within noise; the share is still reported (30%).
    s = studies.gap_share(entry("student", 0.93, 0.03), base, teacher)
    assert s["share"] == pytest.approx(0.3) and s["within_noise"] is True and s["share_beyond_noise"] == 0.0
    # A student below the baseline closes a negative share.
    s = studies.gap_share(entry("student", 0.85, 0.0), base, teacher)
    assert s["share"] == pytest.approx(-0.5) and s["within_noise"] is False
    # A student above the teacher closes more than all of it.
    assert studies.gap_share(entry("student", 1.02, 0.0), entry("baseline", 0.98, 0.0), teacher)["share"] == \
        pytest.approx(2.0)


def test_gap_share_without_a_gap_is_nan():
    s = studies.gap_share(entry("student", 0.99, 0.0), entry("baseline", 0.99, 0.0), entry("teacher", 0.98, 0.0))
    assert math.isnan(s["share"]) and s["gap"] == pytest.approx(-0.01)


# --- the table and the verdict -------------------------------------------------------------------


@pytest.fixture
def runs(tmp_path) -> dict[str, str]:
    teacher = entry("teacher", 1.0, 0.0, seeds=1, ece=0.01)
    return {
        "standard": run_dir(tmp_path, "standard", teacher, entry("baseline", 0.92, 0.01), entry("student", 0.931, 0.02)),
        "kview": run_dir(tmp_path, "kview", teacher, entry("baseline", 0.93, 0.01), entry("student", 0.95, 0.01)),
        "patient": run_dir(tmp_path, "patient", teacher, entry("baseline", 0.94, 0.01), entry("student", 0.972, 0.012)),
    }


def test_fidelity_table_rows_and_shares(runs):
    rows = studies.fidelity_table(standard=runs["standard"], kview=runs["kview"], patient=runs["patient"])
    assert [r["role"] for r in rows] == ["reference", "arm", "arm", "arm", "arm", "control", "control"]
    by = {r["config"].split(" (")[0]: r for r in rows}
    assert rows[0]["config"] == "teacher" and rows[0]["share"] is None
    assert by["label-only, same augmentation"]["share"] is None  # the baseline is the zero of the scale
    # Gap 0.08 from the standard run's baseline (0.92): every share is measured against that one baseline.
    assert by["standard KD"]["share"]["share"] == pytest.approx(0.1375)
    assert by["standard KD"]["share"]["within_noise"] is True  # 0.011 <= hypot(0.02, 0.01)
    assert by["K-view store"]["share"]["share"] == pytest.approx(0.375)
    assert by["patient recipe"]["share"]["share"] == pytest.approx(0.65)
    assert by["patient recipe"]["share"]["within_noise"] is False
    # Controls: the views' own baselines, against the same gap (mixed labels alone: 0.94 -> 25%).
    assert rows[-1]["share"]["share"] == pytest.approx(0.25)
    assert rows[-1]["config"].startswith("label-only on the mixed views")
    assert rows[1]["test_ece_mean"] == 0.05 and rows[0]["seeds"] == 1


def test_fidelity_markdown_marks_noise_and_shows_ece(runs):
    rows = studies.fidelity_table(standard=runs["standard"], kview=runs["kview"], patient=runs["patient"])
    lines = studies.fidelity_markdown(rows).splitlines()
    assert lines[0] == ("| configuration | test acc % (mean ± std) | test ECE | test NLL | share of the gap | "
                        "seeds |")
    assert len(lines) == 2 + len(rows)
    standard = next(line for line in lines if line.startswith("| standard KD"))
    assert "| 93.10 ± 2.00 | 0.050 ± 0.010 | 0.300 ± 0.020 | 14% ± 25% (noise) | 3 |" in standard
    patient = next(line for line in lines if line.startswith("| patient recipe"))
    assert "| 65% ± 15% | 3 |" in patient and "(noise)" not in patient
    assert lines[2].startswith("| teacher | 100.00 ± 0.00 |") and lines[2].endswith("| — | 1 |")


def test_verdict_met_short_and_noise(tmp_path, runs):
    rows = studies.fidelity_table(standard=runs["standard"], kview=runs["kview"], patient=runs["patient"])
    met = studies.fidelity_verdict(rows)
    # 65% ± 15%; hypot(0.012, 0.01) = 0.0156 of noise leaves (0.052 - 0.0156) / 0.08 = 45% beyond it.
    assert "gap is 8.00 points" in met and "closes 65% of it (± 15%; 45% after" in met and "is met" in met
    # Patient at 0.955: 43.75% of the gap, 6.25 points of share short of 50%.
    t = entry("teacher", 1.0, 0.0, seeds=1)
    short = run_dir(tmp_path, "short", t, entry("baseline", 0.94, 0.01), entry("student", 0.955, 0.01))
    verdict = studies.fidelity_verdict(studies.fidelity_table(standard=runs["standard"], kview=runs["kview"],
                                                              patient=short))
    assert "closes 44%" in verdict and "not met (6 points of share short of 50%)" in verdict
    # 75% of the gap on average but spread over seeds so widely that the gain is within noise.
    noisy = run_dir(tmp_path, "noisy", t, entry("baseline", 0.94, 0.01), entry("student", 0.98, 0.08))
    verdict = studies.fidelity_verdict(studies.fidelity_table(standard=runs["standard"], kview=runs["kview"],
                                                              patient=noisy))
    assert "closes 75%" in verdict and "not met (its gain is within seed noise)" in verdict


def test_write_fidelity_writes_the_table_verdict_and_facts(tmp_path, runs):
    rows = studies.fidelity_table(standard=runs["standard"], kview=runs["kview"], patient=runs["patient"])
    md = studies.write_fidelity(str(tmp_path / "out"), rows, {"patient store": "32 views, 1 kB"})
    text = open(md).read()
    assert text.startswith("# Fidelity study on digits")
    assert studies.fidelity_markdown(rows) in text and studies.fidelity_verdict(rows) in text
    assert "- patient store: 32 views, 1 kB" in text
    data = json.load(open(tmp_path / "out" / "fidelity.json"))
    assert data["facts"] == {"patient store": "32 views, 1 kB"} and len(data["rows"]) == len(rows)
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")]


# --- the study's configs -------------------------------------------------------------------------


def test_the_arms_differ_only_in_their_targets():
    checkpoint = "data/checkpoints/teacher.pt"
    clean = studies.fidelity_store(checkpoint)
    kview = studies.fidelity_store(checkpoint, views=studies.FIDELITY_KVIEWS)
    mixed = studies.fidelity_store(checkpoint, mixed=True)
    for store in (clean, kview, mixed):
        assert store.checkpoint == checkpoint and store.data.train_limit == studies.FIDELITY_LABELS
    assert studies.fidelity_teacher().data.train_limit is None  # the teacher knows the whole split
    assert (clean.views, kview.views) == (1, studies.FIDELITY_KVIEWS)
    recipe = PRESETS["patient"]
    assert mixed.views == recipe["teacher"]["views"] and mixed.view_mix.ops == recipe["teacher"]["view_mix"]["ops"]
    # Same image transforms for every arm: the study's augmentation, for training and for the views.
    assert kview.view_augment.ops == mixed.view_augment.ops == studies.FIDELITY_AUGMENT
    standard = studies.fidelity_students("r", "s", patient=False, augment=True)
    views = studies.fidelity_students("r", "s", patient=False, augment=False)
    patient = studies.fidelity_students("r", "s", patient=True, augment=False)
    assert standard.augment.ops == studies.FIDELITY_AUGMENT and not views.augment.ops
    # One schedule length for every arm (the patient's), so no arm wins by training longer.
    assert standard.optim.epochs == views.optim.epochs == patient.optim.epochs == recipe["distill"]["optim"]["epochs"]
    assert standard.model == views.model == patient.model
    assert (patient.losses, patient.temperatures, patient.alphas) == (
        tuple(recipe["distill"]["losses"]), tuple(recipe["distill"]["temperatures"]), tuple(recipe["distill"]["alphas"]))
    assert (standard.temperatures, standard.alphas) == ((studies.STANDARD_T,), (studies.STANDARD_ALPHA,))
    assert standard.seeds == patient.seeds and len(standard.seeds) >= 3
