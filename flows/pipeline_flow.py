"""Both stages chained: the teacher flow, then the distill flow on the store it returns.

This is what schedules run. The teacher flow is idempotent, and a distill run
is named by its store and config, so a new teacher store triggers
distillation while an unchanged one retrains nothing at all.
"""
from __future__ import annotations

import dataclasses

from prefect import flow, get_run_logger

from flows.distill_flow import distill_flow
from flows.runners import RunnerConfig, task_runner
from flows.teacher_flow import teacher_flow
from pipeline import distill as distill_lib
from pipeline.config import DistillConfig, TeacherConfig


@flow(name="kd-pipeline", log_prints=True)
def kd_pipeline(teacher: TeacherConfig, distill: DistillConfig, runner: RunnerConfig = RunnerConfig()):
    """Teacher → soft-target store → students → leaderboard."""
    store = teacher_flow.with_options(task_runner=task_runner(runner))(teacher)
    cfg = dataclasses.replace(distill, store=store)
    cfg = dataclasses.replace(cfg, run_name=cfg.run_name or distill_lib.stable_run_name(cfg))
    done = distill_lib.completed_run(cfg)
    if done is not None:
        get_run_logger().info("store and student grid unchanged; not retraining. report: %s", done)
        return done
    return distill_flow.with_options(task_runner=task_runner(runner))(cfg)
