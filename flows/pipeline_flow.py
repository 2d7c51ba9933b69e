"""Both stages chained: the teacher flow, then the distill flow on the store it returns.

This is what schedules run. The teacher flow is idempotent, and a distill run
is named by its store and config, so a new teacher store triggers
distillation while an unchanged one retrains nothing at all. With
``generations`` > 1 the best student of each generation becomes the teacher
of the next (born-again distillation).
"""
from __future__ import annotations

import os

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.distill_flow import distill_flow
from flows.parameters import FROM_TEACHER, PipelineDistillParameter, RunnerParameter, TeacherParameter
from flows.run_labels import label_run, publish_report, run_tags
from flows.runners import RunnerConfig, task_runner
from flows.teacher_flow import teacher_flow
from pipeline import runs, sequential
from pipeline.store import open_store
from pipeline.config import DistillConfig, TeacherConfig


@flow(name="kd-pipeline", log_prints=True)
def kd_pipeline(teacher: TeacherParameter = TeacherConfig(),
                distill: PipelineDistillParameter = DistillConfig(store=FROM_TEACHER),
                runner: RunnerParameter = RunnerConfig(), generations: int = 1):
    """Teacher → soft-target store → students → leaderboard (× generations)."""
    rows = []
    for g in range(1, generations + 1):
        store = teacher_flow.with_options(task_runner=task_runner(runner))(teacher)
        if g == 1:  # named after its report folder, found by its dataset and first store
            label_run(name=runs.generation_config(store, distill, None).run_name,
                      tags=run_tags(dataset=teacher.data.name,
                                    store_key=open_store(store, teacher.storage_options)
                                    .meta.provenance_key))
        run_dir = distill_generation(store, distill, runner, g if generations > 1 else None)
        rows.append(sequential.generation_row(g, store, run_dir))
        if g < generations:
            teacher = next_generation_teacher(teacher, distill, run_dir, store)
    publish_report(run_dir)  # the parent run shows the leaderboard too, not only its distill subflow
    if generations == 1:
        return run_dir
    base = os.path.basename(rows[0]["report"]).removesuffix("-gen1")
    report = os.path.join(distill.report_root, f"{base}-generations")
    get_run_logger().info("generations: %s", sequential.write_generations(report, rows))
    return run_dir


def distill_generation(store: str, distill: DistillConfig, runner: RunnerConfig, generation: int | None) -> str:
    cfg = runs.generation_config(store, distill, generation)
    done = runs.completed_run(cfg)  # a finished run with another config or store is refused
    if done is not None:
        get_run_logger().info("an identical run (same store and config) has finished; not retraining. "
                              "report: %s", done)
        return done
    return distill_flow.with_options(task_runner=task_runner(runner))(cfg)


@task(cache_policy=NO_CACHE)
def next_generation_teacher(prev: TeacherConfig, distill: DistillConfig, run_dir: str, store: str) -> TeacherConfig:
    best = sequential.best_student(run_dir)
    get_run_logger().info("best student %s (val acc %.4f) teaches the next generation", best["run_id"], best["val_acc"])
    return sequential.next_teacher(prev, distill, best, store)
