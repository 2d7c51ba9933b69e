"""`make fidelity`: how much of the teacher-student gap each distillation recipe closes, on digits.

One teacher, trained once on the whole train split, writes three stores over a
label-scarce split (clean view; K augmented views; the patient recipe's mixed
views); the same student is then trained four ways over the same seeds, plus the
label-only controls on the stored views. Every store and run is reused when its
inputs are unchanged, so rerunning the flow retrains nothing.
"""
from __future__ import annotations

import os
import statistics
import time

import flows  # noqa: F401  (Prefect environment defaults)
from prefect import flow, get_run_logger

from flows.pipeline_flow import distill_generation
from flows.runners import RunnerConfig
from flows.teacher_flow import teacher_flow
from experiments import studies, transfer
from pipeline.report import read_report
from pipeline.store import SoftTargetStore


def stage2_seconds(run_dir: str) -> float:
    """Median over seeds of one seed's stage-2 training time (its group: the baseline and the student together;
    not the passes of the label-only students of a view store on other data, marked ``data``)."""
    runs = [r for r in read_report(run_dir)["runs"] if r.get("seconds") is not None and "data" not in r]
    return statistics.median({r["seed"]: r["seconds"] for r in runs}.values())


def store_facts(path: str) -> str:
    """Bytes per view and size of a store, as `kd inspect` reports them."""
    info = SoftTargetStore(path).summary()
    n = sum(info["samples"].values())
    return (f"{info['views']} views × {n} samples, {info['bytes_stored'] / 1e3:.1f} kB stored; "
            f"{info['bytes_stored'] / (n * info['views']):.1f} B per view "
            f"({info['logits_bytes_per_view']:.1f} B of it logits)")


@flow(name="fidelity", log_prints=True)
def fidelity(report_root: str = "data/reports/fidelity") -> str:
    start = time.perf_counter()
    runs = os.path.join(report_root, "runs")
    full = teacher_flow(studies.fidelity_teacher())
    checkpoint = SoftTargetStore(full).meta.teacher.checkpoint
    clean = teacher_flow(studies.fidelity_store(checkpoint))
    kview = teacher_flow(studies.fidelity_store(checkpoint, views=studies.FIDELITY_KVIEWS))
    mixed = teacher_flow(studies.fidelity_store(checkpoint, mixed=True))

    def arm(store: str, *, patient: bool, augment: bool) -> str:
        return distill_generation(store, studies.fidelity_students(runs, store, patient=patient, augment=augment),
                                  RunnerConfig(), None)

    standard = arm(clean, patient=False, augment=True)
    kviews = arm(kview, patient=False, augment=False)
    patient = arm(mixed, patient=True, augment=False)
    rows = studies.fidelity_table(standard=standard, kview=kviews, patient=patient)
    facts = {
        "setting": f"teacher cnn width 32 trained on the whole digits train split; students cnn width 8 on its "
                   f"first {studies.FIDELITY_LABELS} labelled images; {studies.fidelity_epochs()} epochs each, "
                   f"seeds {', '.join(map(str, studies.SEEDS))}; checkpoints chosen on val, accuracy on test",
        "patient store": store_facts(mixed),
        "K-view store": store_facts(kview),
        "stage-2 time per seed (baseline + student, one pass)": (
            f"standard {stage2_seconds(standard):.0f} s, K-view {stage2_seconds(kviews):.0f} s, "
            f"patient {stage2_seconds(patient):.0f} s (medians over seeds, same machine, this study's runs)"),
        "this invocation": f"{time.perf_counter() - start:.0f} s wall (stores and runs already done are reused)",
    }
    md = studies.write_fidelity(report_root, rows, facts)
    get_run_logger().info("fidelity study: %s", md)
    get_run_logger().info("transfer-set study: %s", transfer_study(checkpoint, report_root))
    return md


def transfer_study(checkpoint: str, report_root: str) -> str:
    """The transfer-set arms (experiments/transfer.py): one store of the fidelity teacher's logits over every train
    image, then the same students on the labelled images and 0, 25, 50 and 100% of the others."""
    start = time.perf_counter()
    store = teacher_flow(transfer.transfer_store(checkpoint))
    labels = SoftTargetStore(store).meta.dataset.labels
    info = SoftTargetStore(store).summary()
    per_row = info["bytes_stored"] / sum(info["samples"].values())  # measured: this store's bytes per sample
    rows = []
    for share in transfer.TRANSFER_SHARES:
        n = transfer.arm_rows(share)
        cfg = transfer.transfer_students(os.path.join(report_root, "transfer-runs"), store, share, n)
        run = distill_generation(store, cfg, RunnerConfig(), None)
        rows.append(transfer.transfer_row(share=share, unlabelled=n - labels.labelled, run_dir=run,
                                          store_bytes=(n - labels.labelled) * per_row))
    facts = {
        "setting": f"the fidelity teacher (cnn width 32, whole digits train split); students cnn width 8 with "
                   f"{transfer.LABELS_PER_CLASS} labels per class ({labels.labelled} images) and a share of the other "
                   f"{labels.unlabelled} train images unlabelled; KL T={transfer.T:g}, α={transfer.ALPHA:g}; about "
                   f"{transfer.STEPS} optimizer steps for every student of every arm (the baseline on the labelled "
                   f"images alone, for the same steps); seeds {', '.join(map(str, studies.SEEDS))}; checkpoints chosen "
                   "on val, accuracy on test",
        "store": f"{store_facts(store)}; an unlabelled image costs {per_row:.0f} B of it",
        "this invocation": f"{time.perf_counter() - start:.0f} s wall (stores and runs already done are reused)",
    }
    return transfer.write_transfer(report_root, rows, facts)


if __name__ == "__main__":
    print(open(fidelity()).read())
