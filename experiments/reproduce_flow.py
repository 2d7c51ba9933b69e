"""`make reproduce`: the literature's claims on digits, as one Prefect flow of pipeline runs.

Every part reuses what exists: the clean teacher is trained once and its store
serves the sweep, the MSE run and generation 1; rerunning the flow retrains
nothing whose inputs did not change.
"""
from __future__ import annotations

import os

import flows  # noqa: F401  (Prefect environment defaults)
from prefect import flow, get_run_logger

from flows.pipeline_flow import kd_pipeline
from experiments import studies


@flow(name="reproduce", log_prints=True)
def reproduce(report_root: str = "data/reports/reproduce") -> str:
    runs = os.path.join(report_root, "runs")
    clean = studies.teacher()
    sweep = kd_pipeline(clean, studies.students(runs, "kl-sweep"))
    mse = kd_pipeline(clean, studies.students(runs, "mse", losses=("mse",), temperatures=(1.0,)))
    kd_pipeline(clean, studies.students(runs, "born-again", temperatures=(4.0,)), generations=3)
    gens = studies.load_generations(runs, "born-again")
    noisy = kd_pipeline(studies.teacher(label_noise=0.2), studies.students(runs, "noise-0.2", temperatures=(1.0, 4.0)))
    md = studies.write(report_root, studies.table(sweep, mse, gens, noisy))
    get_run_logger().info("reproduction table: %s", md)
    return md


if __name__ == "__main__":
    print(open(reproduce()).read())
