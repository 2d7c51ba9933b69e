"""experiments.transfer, the transfer-set study of `make fidelity`: its arms, their step budget, and its table."""
from __future__ import annotations

import json
import math

import pytest

from experiments import transfer
from pipeline.data import load_dataset
from pipeline.data.labels import label_mask
from tests.experiments.test_studies import entry


@pytest.mark.parametrize("share", transfer.TRANSFER_SHARES)
def test_an_arm_visits_the_rows_its_mask_keeps_for_the_same_steps(share):
    cfg = transfer.labelled_data(share)
    ds = load_dataset(cfg)
    mask = label_mask(ds.splits["train"], cfg, ds.class_names)
    labelled = int(mask.labelled.sum())
    assert labelled == transfer.LABELS_PER_CLASS * ds.num_classes
    rows = transfer.arm_rows(share)
    assert rows == int(mask.kept.sum()) == labelled + {0.0: 0, 0.25: 277, 0.5: 554, 1.0: 1107}[share]
    students = transfer.transfer_students("r", "s", share, rows)
    assert students.data == cfg and students.temperatures == (transfer.T,) and students.alphas == (transfer.ALPHA,)
    steps = students.optim.epochs * math.ceil(rows / students.optim.batch_size)
    assert abs(steps - transfer.STEPS) <= math.ceil(rows / students.optim.batch_size) / 2 + 1


def test_the_store_holds_every_train_image_for_the_teacher_trained_on_all_labels():
    store = transfer.transfer_store("ckpt.pt")
    assert store.checkpoint == "ckpt.pt" and store.data.transfer_fraction == 1.0
    assert store.data.labelled_per_class == transfer.LABELS_PER_CLASS and store.data.train_limit is None


def test_transfer_row_and_table(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    board = [entry("teacher", 1.0, 0.0, seeds=1), entry("baseline", 0.80, 0.02), entry("student", 0.95, 0.01)]
    runs = [{"kind": "student", "seconds": s} for s in (3.0, 5.0, 4.0)] + [{"kind": "baseline", "seconds": 1.0}]
    (path / "leaderboard.json").write_text(json.dumps({"meta": {}, "leaderboard": board, "runs": runs}))
    row = transfer.transfer_row(share=0.5, unlabelled=553, run_dir=str(path), store_bytes=553 * 30.0)
    assert row["gap"]["share"] == pytest.approx(0.75) and row["gap"]["within_noise"] is False
    assert row["student_seconds"] == 4.0 and row["seeds"] == 3
    table = transfer.transfer_markdown([row])
    assert "| 50% | 553 | 80.00 ± 2.00 | 95.00 ± 1.00 | 75% ± 5% | 16.6 | 4.0 |" in table
    md = transfer.write_transfer(str(tmp_path / "out"), [row], {"setting": "x"})
    assert table in open(md).read()
    assert json.load(open(tmp_path / "out" / "transfer.json"))["rows"][0]["unlabelled"] == 553
