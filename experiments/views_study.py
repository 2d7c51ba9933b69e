"""`make views-study`: does storing K teacher views fix stale soft targets under augmentation?

One teacher (trained once) writes two stores: the clean view only, and 4 views.
The same student is then distilled four ways over the same seeds.
"""
from __future__ import annotations

import dataclasses
import os

import flows  # noqa: F401  (Prefect environment defaults)
from prefect import flow, get_run_logger

from flows.distill_flow import distill_flow
from flows.teacher_flow import teacher_flow
from experiments import studies
from pipeline.config import AugmentConfig
from pipeline.store import SoftTargetStore


@flow(name="views-study", log_prints=True)
def views_study(report_root: str = "data/reports/views-study", views: int = 4) -> str:
    runs = os.path.join(report_root, "runs")
    clean = teacher_flow(studies.teacher())
    checkpoint = SoftTargetStore(clean).meta.teacher.checkpoint
    viewed = teacher_flow(dataclasses.replace(studies.teacher(), checkpoint=checkpoint, views=views,
                                              view_augment=AugmentConfig(ops=studies.VIEW_AUGMENT)))
    stale = distill_flow(studies.views_students(runs, "stale", clean, augment=True))
    consistent = distill_flow(studies.views_students(runs, f"views-{views}", viewed, augment=False))
    online = distill_flow(studies.views_students(runs, "online", clean, augment=True, mode="online"))
    md = studies.write(report_root, studies.views_table(stale, consistent, online), name="views",
                       title="Augmentation-consistent KD on digits")
    get_run_logger().info("views study: %s", md)
    return md


if __name__ == "__main__":
    print(open(views_study()).read())
