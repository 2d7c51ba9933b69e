"""Both stages chained: the teacher flow, then the distill flow on the store it returns.

Because the teacher flow is idempotent, rerunning this with an unchanged
teacher config reuses the store and only distills.
"""
from __future__ import annotations

import dataclasses

from prefect import flow

from flows.distill_flow import distill_flow
from flows.teacher_flow import teacher_flow
from pipeline.config import DistillConfig, TeacherConfig


@flow(name="kd-pipeline", log_prints=True)
def kd_pipeline(teacher: TeacherConfig, distill: DistillConfig):
    """Teacher → soft-target store → students → leaderboard."""
    store = teacher_flow(teacher)
    return distill_flow(dataclasses.replace(distill, store=store))
