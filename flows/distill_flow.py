"""Stage 2 as a Prefect flow: validate the store → train student groups → report.

The teacher is never constructed here; every soft target comes from the store.
"""
from __future__ import annotations

import os

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from flows.parameters import DistillParameter
from flows.progress import reporter
from flows.retries import IO_RETRIES
from flows.run_labels import label_run, publish_report, run_tags
from pipeline import distill, report, runs
from pipeline.locks import run_lock
from pipeline.config import DistillConfig
from pipeline.errors import UserError
from pipeline.grid import StudentSpec


@task(cache_policy=NO_CACHE, **IO_RETRIES)
def plan_run(cfg: DistillConfig) -> distill.DistillPlan:
    return distill.plan(cfg)


@task(cache_policy=NO_CACHE)
def verify_views(plan: distill.DistillPlan) -> dict:
    """The optional fidelity check: the teacher reruns on replayed views of a few samples."""
    from pipeline.view_fidelity import verify_views as check

    result = check(plan.store, samples=plan.cfg.verify_views)
    get_run_logger().info("views verified: %s", result)
    return result


@task(cache_policy=NO_CACHE, task_run_name="students[{name}]")
def train_students(plan: distill.DistillPlan, specs: list[StudentSpec], name: str) -> list[dict]:
    """One group of students; ``name`` says which (distill.group_names), for its run, artifact and bar."""
    try:
        with reporter(name) as progress:
            return distill.train_students(plan, specs, progress=progress)
    except (UserError, OSError) as exc:  # a corrupt image or chunk, a full disk: fail these rows, keep the others
        error = exc.one_line() if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"[:300]
        # INFO, for the UI: the command prints what failed once, when the run ends (never twice on the console).
        get_run_logger().info("%s failed: %s", ", ".join(s.run_id for s in specs), error)
        # Not a result: the run is unfinished, and running it again retrains these students (and only them).
        return [distill.failed_row(plan.cfg, s, error, retry=True) for s in specs]


@task(cache_policy=NO_CACHE)
def write_report(run_dir: str, rows: list[dict], meta: dict) -> dict:
    return report.write_report(run_dir, rows, meta)


@flow(name="distill", log_prints=True)
def distill_flow(config: DistillParameter):
    """Train every student of the grid from the store and report a leaderboard."""
    logger = get_run_logger()
    plan = plan_run(config)
    run_dir = plan.run_dir
    label_run(name=os.path.basename(run_dir),
              tags=run_tags(dataset=plan.data_cfg.name, store_key=plan.store.meta.provenance_key))
    # Held until the report is written: a second run on this folder is refused, not merged into it.
    with run_lock(run_dir):
        students = [s.run_id for s in plan.students()]
        done = runs.finished_run(run_dir, plan.identity(), students)  # a differing finished run is refused
        if done is not None:
            logger.info("an identical run has finished in %s; not retraining", done)
            publish_report(done)
            return done
        kept = runs.kept_rows(run_dir, plan.identity(), students)  # an identical run some of whose students failed
        skip = {r["run_id"] for r in kept or ()}
        todo = [(g, name if len(g) == len(full) else ", ".join(s.run_id for s in g))
                for full, name in zip(distill.groups(config, baselines=plan.baselines),
                                      distill.group_names(config, baselines=plan.baselines))
                for g in [[s for s in full if s.run_id not in skip]] if g]
        if kept is not None:
            logger.info(runs.resume_line(run_dir, kept, [g for g, _ in todo]))
        if config.verify_views:
            verify_views(plan)
        futures = [train_students.submit(plan, g, name) for g, name in todo]
        done_rows = {r["run_id"]: r for r in kept or ()} | {row["run_id"]: row for f in futures for row in f.result()}
        rows = [plan.teacher_row()] + [done_rows[s.run_id] for s in plan.students()]
        paths = write_report(run_dir, rows, plan.report_meta())
    publish_report(run_dir)
    students = [r for r in rows if r["kind"] != "teacher"]
    if all(r["status"] != "ok" for r in students):
        return Failed(message=f"every student failed ({students[0].get('error')}); "
                      + (runs.RERUN if runs.retry_rows(students) else f"see {paths['md']}"))
    logger.info("report: %s", run_dir)
    return run_dir
