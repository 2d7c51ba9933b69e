"""The reproduction study behind `make reproduce`: configs, and the table that collects its runs.

It checks our pipeline against the claims of Hinton et al. (2015) and Kim et
al. (2021) on `digits`: KL at several temperatures, MSE on logits, sequential
(born-again) distillation and distillation under 20% label noise, every
configuration over the same seeds.
"""
from __future__ import annotations

import json
import os

from pipeline.config import AugmentConfig, DataConfig, DistillConfig, TeacherConfig
from pipeline.report import markdown_table, mean_pm, read_report, write_text_atomic

SEEDS = (0, 1, 2)
TEMPERATURES = (1.0, 2.0, 4.0, 8.0, 20.0)


def teacher(label_noise: float = 0.0, store_root: str = "data/stores") -> TeacherConfig:
    return TeacherConfig(data=DataConfig(name="digits", label_noise=label_noise), store_root=store_root)


def students(report_root: str, run_name: str, losses=("kl",), temperatures=TEMPERATURES) -> DistillConfig:
    return DistillConfig(store="from-teacher", losses=tuple(losses), temperatures=tuple(temperatures), seeds=SEEDS,
                         report_root=report_root, run_name=run_name, group_size=6)


def _board(run_dir: str) -> list[dict]:
    return read_report(run_dir)["leaderboard"]


def table(sweep: str, mse: str, generations: list[dict], noisy: str) -> list[dict]:
    """Rows of the reproduction table: (study, configuration, mean, std, seeds)."""
    rows = []

    def add(study: str, entry: dict, label: str | None = None) -> None:
        rows.append({"study": study, "config": label or entry["config_id"], "test_acc_mean": entry["test_acc_mean"],
                     "test_acc_std": entry["test_acc_std"], "seeds": entry["seeds"] - entry["failed"]})

    board = _board(sweep)
    for e in sorted(board, key=lambda e: (e["kind"] != "teacher", e["kind"] != "baseline", e["temperature"] or 0)):
        add("temperature sweep", e)
    add("logit matching", next(e for e in _board(mse) if e["kind"] == "student"), "mse (logits)")
    for g in generations:
        rows.append({"study": "born-again (kl T=4)", "config": f"generation {g['generation']}",
                     "test_acc_mean": g["best_test_acc_mean"], "test_acc_std": g["best_test_acc_std"],
                     "seeds": len(SEEDS)})
    for e in sorted(_board(noisy), key=lambda e: (e["kind"] != "teacher", e["kind"] != "baseline",
                                                  e["temperature"] or 0)):
        add("label noise 0.2", e)
    return rows


def write(path: str, rows: list[dict], name: str = "reproduce",
          title: str = "Reproduction on digits") -> str:
    """``<name>.json`` and ``<name>.md`` (the table the README quotes) under ``path``."""
    os.makedirs(path, exist_ok=True)
    write_text_atomic(os.path.join(path, f"{name}.json"), json.dumps(rows, indent=2))
    table = markdown_table(["study", "configuration", "test acc % (mean ± std)", "seeds"],
                           [[str(r["study"]), str(r["config"]), mean_pm(r["test_acc_mean"], r["test_acc_std"], 100),
                             str(r["seeds"])] for r in rows])
    md = os.path.join(path, f"{name}.md")
    write_text_atomic(md, f"# {title}\n\nTeacher: cnn width 32; students: cnn width 8; α = 0.9; checkpoints "
                      "chosen on validation, accuracy on the (clean) test split.\n\n" + table + "\n")
    return md


def load_generations(runs_root: str, run_name: str) -> list[dict]:
    """The per-generation rows that the pipeline flow wrote for ``run_name`` (see pipeline/sequential.py)."""
    with open(os.path.join(runs_root, f"{run_name}-generations", "generations.json")) as f:
        return json.load(f)


# --- augmentation-consistent KD (teacher views) ------------------------------------------------

VIEW_AUGMENT = ("translate", "rotate")


def views_students(report_root: str, run_name: str, store: str, augment: bool, mode: str = "offline",
                   seeds=SEEDS) -> DistillConfig:
    return DistillConfig(store=store, temperatures=(4.0,), seeds=tuple(seeds), report_root=report_root, run_name=run_name,
                         augment=AugmentConfig(ops=VIEW_AUGMENT if augment else ()), mode=mode, group_size=2)


def views_table(stale: str, consistent: str, online: str) -> list[dict]:
    """Same student, same seeds: label-only with augmentation, stale clean-view targets, K-view targets, online."""
    def pick(run_dir: str, kind: str) -> dict:
        return next(e for e in _board(run_dir) if e["kind"] == kind)

    rows = [("label-only, augmented", pick(stale, "baseline")),
            ("clean-view store + augmentation (stale targets)", pick(stale, "student")),
            ("K-view store, views replayed (consistent targets)", pick(consistent, "student")),
            ("online KD, teacher on every augmented batch (reference)", pick(online, "student"))]
    return [{"study": "augmentation-consistent KD", "config": name, "test_acc_mean": e["test_acc_mean"],
             "test_acc_std": e["test_acc_std"], "seeds": e["seeds"] - e["failed"]} for name, e in rows]
