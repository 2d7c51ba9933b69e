"""Stage 1 as a Prefect flow: plan → (reuse | train) → publish the store."""
from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.progress import reporter
from pipeline import teacher
from pipeline.config import TeacherConfig


@task(cache_policy=NO_CACHE)
def plan_teacher(cfg: TeacherConfig) -> dict:
    p = teacher.plan(cfg)
    return {"store": p.store_path, "checkpoint": p.checkpoint_path, "reusable": p.reusable,
            "checkpoint_ready": p.checkpoint_ready}


@task(cache_policy=NO_CACHE)
def train_teacher(cfg: TeacherConfig) -> str:
    p = teacher.plan(cfg)
    teacher.train(p, progress=reporter("teacher"))
    return p.checkpoint_path


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def publish_logits(cfg: TeacherConfig) -> str:
    p = teacher.plan(cfg)
    return teacher.publish(p, teacher.load(p))


@flow(name="teacher", log_prints=True)
def teacher_flow(config: TeacherConfig) -> str:
    """Train (or load) the teacher once and write its raw logits to a soft-target store."""
    logger = get_run_logger()
    planned = plan_teacher(config)
    if planned["reusable"]:
        logger.info("a complete store with this provenance already exists; not retraining: %s", planned["store"])
        return planned["store"]
    if planned["checkpoint_ready"]:  # given, or saved by an earlier run that was cut off: resume from it
        logger.info("using teacher checkpoint %s", planned["checkpoint"])
    else:
        train_teacher(config)
    store = publish_logits(config)
    logger.info("store: %s", store)
    return store
