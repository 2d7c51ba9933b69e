"""Sequential ("born-again") distillation: the best student of generation g teaches generation g + 1.

The new teacher is loaded from the student's checkpoint, its logits go to a new
store (content-named, so every generation has its own), and that store records
its parent store in its provenance, so `kd inspect` can show the lineage.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

from pipeline.config import DistillConfig, TeacherConfig
from pipeline.errors import UserError
from pipeline.atomic import write_text_atomic
from pipeline.report import markdown_table, mean_pm, read_report, reference_baseline


def best_student(run_dir: str) -> dict:
    """The distilled (non-baseline) run with the highest *validation* accuracy; test is never looked at."""
    runs = read_report(run_dir)["runs"]
    ok = [r for r in runs if r["kind"] == "student" and r["status"] == "ok"]
    if not ok:
        raise UserError("generations", f"no student of {run_dir} finished, so none can teach the next generation",
                        "fix the failed runs first")
    return max(ok, key=lambda r: (r["val_acc"], -r["seed"]))


def next_teacher(prev: TeacherConfig, students: DistillConfig, best: dict, parent_store: str) -> TeacherConfig:
    """The teacher config of the next generation: the best student's architecture and weights."""
    return dataclasses.replace(prev, model=students.model, checkpoint=best["checkpoint"], seed=best["seed"],
                               parent_store=parent_store)


def generation_row(generation: int, store: str, run_dir: str) -> dict:
    board = read_report(run_dir)["leaderboard"]
    teacher = next(e for e in board if e["kind"] == "teacher")
    students = [e for e in board if e["kind"] == "student" and not math.isnan(e["test_acc_mean"])]
    best = max(students, key=lambda e: e["test_acc_mean"]) if students else None
    baseline = reference_baseline(board)
    return {"generation": generation, "store": store, "report": run_dir, "teacher_test_acc": teacher["test_acc_mean"],
            "best_config": best["config_id"] if best else None,
            "best_test_acc_mean": best["test_acc_mean"] if best else math.nan,
            "best_test_acc_std": best["test_acc_std"] if best else math.nan,
            "baseline_test_acc_mean": baseline["test_acc_mean"] if baseline else math.nan,
            "baseline_test_acc_std": baseline["test_acc_std"] if baseline else math.nan}


def write_generations(path: str, rows: list[dict]) -> str:
    """One row per generation: its teacher, the best student grid point (mean ± std over seeds), the baseline."""
    os.makedirs(path, exist_ok=True)
    write_text_atomic(os.path.join(path, "generations.json"), json.dumps(rows, indent=2))
    table = markdown_table(
        ["generation", "teacher test acc %", "best student", "student test acc %", "baseline test acc %"],
        [[str(r["generation"]), f"{100 * r['teacher_test_acc']:.2f}", str(r["best_config"]),
          mean_pm(r["best_test_acc_mean"], r["best_test_acc_std"], 100),
          mean_pm(r["baseline_test_acc_mean"], r["baseline_test_acc_std"], 100)] for r in rows])
    md = os.path.join(path, "generations.md")
    write_text_atomic(md, "# Sequential distillation\n\nGeneration g + 1 is taught by the best student of "
                      "generation g (chosen on validation accuracy).\n\n" + table + "\n")
    return md
