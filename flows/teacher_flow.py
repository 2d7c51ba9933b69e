"""Stage 1 as a Prefect flow: plan → (reuse | train) → publish the store.

With ``writers`` > 1 the teacher pass is split into shard-aligned parts written
by separate tasks (Dask workers, other machines) into one store: the flow
creates the store, fans the parts out, then marks it complete.
"""
from __future__ import annotations

import os

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.parameters import TeacherParameter
from flows.progress import reporter
from flows.run_labels import label_run, run_tags
from flows.retries import IO_RETRIES
from pipeline import teacher
from pipeline.config import TeacherConfig


@task(cache_policy=NO_CACHE)
def plan_teacher(cfg: TeacherConfig) -> tuple[teacher.TeacherPlan, bool, bool]:
    """The run's plan, whether a complete store for it exists, and whether its checkpoint does."""
    plan = teacher.plan(cfg)
    return plan, plan.reusable, plan.checkpoint_ready


@task(cache_policy=NO_CACHE)
def train_teacher(plan: teacher.TeacherPlan) -> str:
    with reporter("teacher") as progress:
        teacher.train(plan, progress=progress)
    return plan.checkpoint_path


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def publish_logits(plan: teacher.TeacherPlan) -> str:
    return teacher.publish(plan, teacher.load(plan))


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def create_store(plan: teacher.TeacherPlan) -> list[dict[str, list[int]]]:
    writer = teacher.create_store(plan, teacher.load(plan))
    writer.close()
    return teacher.pending_work(writer, plan.cfg.writers)


@task(cache_policy=NO_CACHE, task_run_name="write-logits[{n}]", **IO_RETRIES)
def write_part(plan: teacher.TeacherPlan, work: dict[str, list[int]], n: int) -> int:
    teacher.write_part(plan, work)
    return sum(len(v) for v in work.values())


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def finalize_store(plan: teacher.TeacherPlan) -> str:
    return teacher.finalize(plan)


@flow(name="teacher", log_prints=True)
def teacher_flow(config: TeacherParameter) -> str:
    """Train (or load) the teacher once and write its raw logits to a soft-target store."""
    logger = get_run_logger()
    plan, reusable, checkpoint_ready = plan_teacher(config)
    label_run(name=os.path.basename(plan.store_path.rstrip("/")).removesuffix(".zarr"),
              tags=run_tags(dataset=config.data.name, store_key=plan.provenance_key))
    if reusable:
        logger.info("a complete store with this provenance already exists; not retraining: %s", plan.store_path)
        return plan.store_path
    if checkpoint_ready:  # given, or saved by an earlier run that was cut off: resume from it
        logger.info("using teacher checkpoint %s", plan.checkpoint_path)
    else:
        train_teacher(plan)
    if config.writers == 1:
        store = publish_logits(plan)
    else:
        parts = create_store(plan)
        written = [f.result() for f in [write_part.submit(plan, w, i) for i, w in enumerate(parts)]]
        logger.info("%d writers wrote %d shards", len(parts), sum(written))
        store = finalize_store(plan)
    logger.info("store: %s", store)
    return store
