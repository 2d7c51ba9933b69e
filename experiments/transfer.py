"""The transfer-set study in `make fidelity`: how much of the teacher–student gap unlabelled images close.

A fixed number of labelled train images per class; the rest of the train split, in shares of 0, 25, 50 and
100%, is given to the students as an unlabelled transfer set: the teacher scores it once (one store holds its
logits for every train image; each arm's ``--transfer-fraction`` keeps a nested, seeded share of them), and the
students learn its soft targets alone. Every arm trains the same student for the same number
of optimizer steps, so the arms differ in their data, not in their compute; its label-only baseline trains on
the labelled images alone, for the same steps. The teacher is the fidelity study's (trained on the whole train
split), as in Hinton et al.'s transfer-set experiments: a teacher trained on more labels than the students get.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics

from experiments import studies
from pipeline.atomic import write_text_atomic
from pipeline.config import DataConfig, DistillConfig, TeacherConfig, student_model, student_optim
from pipeline.data import open_dataset
from pipeline.data.labels import label_mask
from pipeline.report import gap_share, markdown_table, mean_pm, read_report, reference_baseline

LABELS_PER_CLASS = 15  # 150 labelled digits, the fidelity study's label budget
TRANSFER_SHARES = (0.0, 0.25, 0.5, 1.0)
STEPS = 1500  # optimizer steps of every student of every arm
T, ALPHA = 4.0, 0.9  # the standard recipe (studies.STANDARD_T, STANDARD_ALPHA)


def labelled_data(share: float = 1.0) -> DataConfig:
    """Digits with :data:`LABELS_PER_CLASS` labels per class and ``share`` of the other train images unlabelled."""
    return DataConfig(name="digits", labelled_per_class=LABELS_PER_CLASS, transfer_fraction=share)


def transfer_store(checkpoint: str, *, store_root: str = "data/stores") -> TeacherConfig:
    """The fidelity teacher's logits over every train image, the labelled ones and the transfer set."""
    return dataclasses.replace(studies.fidelity_teacher(store_root), data=labelled_data(), checkpoint=checkpoint)


def arm_rows(share: float) -> int:
    """Train rows an arm's students visit: every labelled image and the kept share of the others (the students'
    label mask, :func:`pipeline.data.labels.label_mask`)."""
    cfg = labelled_data(share)
    ds = open_dataset(cfg)
    return int(label_mask(ds.splits["train"], cfg, ds.class_names).kept.sum())


def epochs_for(train_rows: int, batch_size: int) -> int:
    """Epochs that make about :data:`STEPS` optimizer steps over ``train_rows`` rows."""
    return max(1, round(STEPS / math.ceil(train_rows / batch_size)))


def transfer_students(report_root: str, store: str, share: float, train_rows: int, *,
                      seeds=studies.SEEDS) -> DistillConfig:
    """The arm's grid on ``share`` of the transfer set: the label-only baseline and KL at the standard (T, α),
    for :data:`STEPS` steps each (``train_rows``: the rows the arm's students visit)."""
    optim = student_optim()
    optim = dataclasses.replace(optim, epochs=epochs_for(train_rows, optim.batch_size))
    return DistillConfig(store=store, data=labelled_data(share), model=student_model(), optim=optim,
                         temperatures=(T,), alphas=(ALPHA,), seeds=tuple(seeds), report_root=report_root,
                         group_size=2)


def student_seconds(run_dir: str) -> float:
    """Median over seeds of the KL student's stage-2 training time."""
    runs = read_report(run_dir)["runs"]
    return statistics.median(r["seconds"] for r in runs if r["kind"] == "student" and r.get("seconds") is not None)


def transfer_row(*, share: float, unlabelled: int, run_dir: str, store_bytes: float) -> dict:
    """One arm: its baseline and student (leaderboard entries), the share of the gap, and what it cost."""
    board = read_report(run_dir)["leaderboard"]
    pick = {kind: next(e for e in board if e["kind"] == kind) for kind in ("teacher", "student")}
    pick["baseline"] = reference_baseline(board)  # the leaderboard's own (with teacher views: the best on val)
    return {"share": share, "unlabelled": unlabelled, "teacher_acc": pick["teacher"]["test_acc_mean"],
            "baseline": {k: pick["baseline"][k] for k in ("test_acc_mean", "test_acc_std")},
            "student": {k: pick["student"][k] for k in ("test_acc_mean", "test_acc_std")},
            "gap": gap_share(pick["student"], pick["baseline"], pick["teacher"]),
            "transfer_bytes": store_bytes, "student_seconds": student_seconds(run_dir),
            "seeds": pick["student"]["seeds"] - pick["student"]["failed"]}


def transfer_markdown(rows: list[dict]) -> str:
    body = []
    for r in rows:
        g = r["gap"]
        share = ("no gap" if math.isnan(g["share"])
                 else f"{100 * g['share']:.0f}% ± {100 * g['share_std']:.0f}%" + (" (noise)" if g["within_noise"]
                                                                                  else ""))
        body.append([f"{100 * r['share']:.0f}%", str(r["unlabelled"]),
                     mean_pm(r["baseline"]["test_acc_mean"], r["baseline"]["test_acc_std"], 100),
                     mean_pm(r["student"]["test_acc_mean"], r["student"]["test_acc_std"], 100), share,
                     f"{r['transfer_bytes'] / 1e3:.1f}", f"{r['student_seconds']:.1f}"])
    return markdown_table(["transfer share", "unlabelled images", "label-only % (mean ± std)",
                           f"KL T={T:g} student % (mean ± std)", "share of the gap", "transfer logits kB",
                           "stage-2 s per student"], body)


def write_transfer(path: str, rows: list[dict], facts: dict) -> str:
    """``transfer.json`` and ``transfer.md`` under ``path``."""
    os.makedirs(path, exist_ok=True)
    write_text_atomic(os.path.join(path, "transfer.json"), json.dumps({"rows": rows, "facts": facts}, indent=2))
    lines = ["# Transfer-set study on digits\n", transfer_markdown(rows), ""]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    md = os.path.join(path, "transfer.md")
    write_text_atomic(md, "\n".join(lines) + "\n")
    return md
