"""Report folders as runs of stage 2: their names, what identifies them, and whether one has finished.

A run is named by ``--run-name``, or stably by its store and what shapes its students (so a scheduled
pipeline finds its earlier run). A folder holds a finished run when its leaderboard.json is valid and no
student failed from a data or I/O error; a finished run is reused only when its identity (the config
without the execution fields, the data, the store's provenance key) is this run's, and refused otherwise.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

from pipeline.config import DataConfig, DistillConfig
from pipeline.errors import UserError
from pipeline.grid import StudentSpec, baselines_of
from pipeline.locks import check_not_running
from pipeline.output_checks import check_output_folder
from pipeline.serialize import config_hash, to_dict
from pipeline.store import open_store
from pipeline.validation import is_plain_name

log = logging.getLogger(__name__)


def run_dir(cfg: DistillConfig) -> str:
    """Where this run's report goes; call once per run (the default name carries the start time)."""
    stem = os.path.basename(cfg.store.rstrip("/")).removesuffix(".zarr")
    name = cfg.run_name or f"{stem}-{cfg.model.slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not is_plain_name(name):
        raise UserError("run_name", f"{name!r} is not a plain folder name", "pass a name without slashes")
    return os.path.join(cfg.report_root, name)


# Fields that change where a run reads or writes, or how fast it goes, never what it trains: they are
# left out of a run's identity (and of its stable name), so changing them never refuses a finished run.
# How a run is executed, not what it trains: left out of its identity and its stable name. `group_size` and
# `batch` only decide which students share a pass and whether a group is stacked: a student trains the same
# alone or in a group, and a stacked group equals the per-student loop up to float rounding, as on another device.
# (Students with dropout are the exception: a stack draws its students' masks together, from its first student's
# stream, so their masks, not their recipe, depend on the group; two runs of one configuration stay identical.)
EXECUTION_FIELDS = ("store", "report_root", "run_name", "device", "storage_options", "workers", "cache_mb",
                    "group_size", "batch")


# DistillConfig fields added after run identities were first recorded, with the value that leaves each out.
DISTILL_ADDED = {"unlabelled_weight": 1.0}


def run_identity(cfg: DistillConfig, *, data_cfg: DataConfig, provenance_key: str | None) -> dict:
    """What decides a run's results: its config without :data:`EXECUTION_FIELDS`, with the data it
    really trains on (the store's when ``cfg.data`` is None), and the store's provenance key (None when
    not known yet, e.g. a later generation's). Recorded in leaderboard.json's ``meta``."""
    shaping = _shaping(cfg)
    shaping["data"] = data_cfg.snapshot()
    # Through JSON, so tuples compare equal to the lists a finished report reads back.
    return {"config": json.loads(json.dumps(shaping, default=str)), "store_provenance_key": provenance_key}


def stable_run_name(cfg: DistillConfig) -> str:
    """A run name fixed by the store and everything that shapes the students (for scheduled pipelines)."""
    stem = os.path.basename(cfg.store.rstrip("/")).removesuffix(".zarr")
    shaping = _shaping(cfg)
    if cfg.data is not None:
        shaping["data"] = cfg.data.key()  # data options added later keep earlier run names at their defaults
    return f"{stem}-{cfg.model.slug}-{config_hash(shaping)[:8]}"


def _shaping(cfg: DistillConfig) -> dict:
    """The config without :data:`EXECUTION_FIELDS`; model and optimisation options added later are left out at
    their defaults, so earlier runs keep their names and identities."""
    shaping = {k: v for k, v in to_dict(cfg).items()  # type: ignore[union-attr]
               if k not in EXECUTION_FIELDS and not (k in DISTILL_ADDED and v == DISTILL_ADDED[k])}
    shaping["model"], shaping["optim"] = cfg.model.key(), cfg.optim.key()
    return shaping


def generation_config(store: str, cfg: DistillConfig, generation: int | None) -> DistillConfig:
    """The students' config of one generation of `kd run` (None: the only one), on the teacher's ``store``,
    with its report folder's name: ``--run-name``, or the stable name of the store and the students."""
    cfg = dataclasses.replace(cfg, store=store)
    name = cfg.run_name or stable_run_name(cfg)
    return dataclasses.replace(cfg, run_name=name if generation is None else f"{name}-gen{generation}")


def _first_difference(recorded: object, wanted: object, path: str = "") -> tuple[str, object, object] | None:
    """The first field (dotted path, in config order) whose value differs, with both values."""
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        for key in list(wanted) + [k for k in recorded if k not in wanted]:
            diff = _first_difference(recorded.get(key), wanted.get(key), f"{path}.{key}" if path else key)
            if diff is not None:
                return diff
        return None
    return None if recorded == wanted else (path, recorded, wanted)


def finished_run(path: str, identity: dict, run_ids: list[str] | None = None) -> str | None:
    """``path`` when it holds a finished run with this identity (reuse it); None when it holds no finished run.

    A finished run is one with a valid leaderboard.json, which is written last and atomically, where no
    student failed from a data or I/O error (:func:`failed_row`'s ``retry``); without one (a run cut off,
    or a file damaged outside the pipeline) the folder is an unfinished run, to be overwritten, and with
    such failures it is an unfinished run to complete (:func:`kept_rows`). A run that differs (grid, model,
    optimisation, data or store) is refused, finished or not, naming the first differing field: reusing
    it would print another run's results, and overwriting it would lose them.

    ``run_ids``: the run's students; a report that lacks some of them (one written before a store with views
    also trained its other label-only students, :func:`pipeline.grid.store_baselines`) is unfinished too.
    """
    report = _identical_report(path, identity)
    if report is None or retry_rows(report["runs"]) or _lacks(report, run_ids):
        return None
    return path


def _lacks(report: dict, run_ids: list[str] | None) -> bool:
    """Whether ``report`` has no row for some of ``run_ids`` (None: nothing to check)."""
    return run_ids is not None and not set(run_ids) <= {r.get("run_id") for r in report["runs"]}


def kept_rows(path: str, identity: dict, run_ids: list[str] | None = None) -> list[dict] | None:
    """The student rows of an identical, unfinished run at ``path`` that need no retraining, in its order;
    None when ``path`` holds no such run (nothing to complete).

    Every student that failed from a data or I/O error is retrained; so is a trained one whose checkpoint
    is gone. The others keep their rows: trained ones with their checkpoints, and those that failed in
    training itself (a loss that became NaN), which is a result, reproduced by retraining them.
    """
    report = _identical_report(path, identity, quiet=True)
    if report is None or not (retry_rows(report["runs"]) or _lacks(report, run_ids)):
        return None
    return [r for r in report["runs"] if r.get("kind") != "teacher" and not r.get("retry")
            and (r.get("status") != "ok" or os.path.isfile(os.path.join(path, "students", f"{r['run_id']}.pt")))]


def resume_line(path: str, kept: list[dict], todo: list[list[StudentSpec]]) -> str:
    """What completing an unfinished run does, in one line: students with no row in its report (a store's new
    label-only students, :func:`finished_run`) are trained, those failed from a data or I/O error retrained."""
    from pipeline.report import read_report

    have = {r.get("run_id") for r in read_report(path)["runs"]}  # kept_rows found it valid
    n = sum(map(len, todo))
    new = sum(s.run_id not in have for g in todo for s in g)
    what = [f"training the {new} student{'s' * (new != 1)} it has no row for"] if new else []
    if n - new or not new:
        what.append(f"retraining the {n - new} student{'s' * (n - new != 1)} that failed from a data or I/O error")
    return f"completing the unfinished run in {path}: {' and '.join(what)}, keeping the other {len(kept)}"


def retry_rows(rows: list[dict]) -> list[dict]:
    """The students that failed from a data or I/O error: the rows a rerun retrains."""
    return [r for r in rows if r.get("status") != "ok" and r.get("retry")]


RERUN = "fix the cause and run the same command again: only the students that failed from it are retrained"


def unfinished_note(rows: list[dict]) -> str | None:
    """One line saying which students failed from a data or I/O error and what to do; None for a finished run."""
    retry = retry_rows(rows)
    if not retry:
        return None
    students = [r for r in rows if r.get("kind") != "teacher"]
    return (f"{len(retry)} of {len(students)} students failed from a data or I/O error (first: {retry[0]['run_id']}: "
            f"{retry[0].get('error')}), so this run is not finished; {RERUN}")


def _identical_report(path: str, identity: dict, *, quiet: bool = False) -> dict | None:
    """The report at ``path`` when its run has this identity; None without a valid one; a differing one is refused."""
    from pipeline.report import LEADERBOARD, read_report

    if not os.path.isfile(os.path.join(path, LEADERBOARD)):
        return None
    try:
        report = read_report(path)
    except UserError as exc:
        if not quiet:
            log.warning("%s; treating %s as an unfinished run", exc.one_line(), path)
        return None
    meta = report["meta"]
    fix = "pass another --run-name, or delete the folder to train this grid there"
    if "config" not in meta:
        raise UserError("run_name", f"{path} holds a finished run that does not record its config (an older "
                        "report), so it cannot be reused safely", fix)
    recorded = {"config": meta.get("config"), "store_provenance_key": meta.get("store_provenance_key")}
    if identity.get("store_provenance_key") is None:  # not known yet: compare the config alone
        recorded["store_provenance_key"] = None
    diff = _first_difference(recorded, identity)
    if diff is None:
        return report
    field, old, new = diff
    field = field.removeprefix("config.")
    if field == "store_provenance_key":
        raise UserError("run_name", f"{path} holds a finished run distilled from another store (provenance "
                        f"{str(old)[:10]}…, this run's is {str(new)[:10]}…)", fix)
    raise UserError(field, f"{path} holds a finished run with {field} {old!r}, this run asks for {new!r}", fix)


def completed_run(cfg: DistillConfig) -> str | None:
    """The report folder of an identical finished run, if there is one (a differing one is refused).

    For an existing store: its provenance key, and the data it was written from when ``cfg.data`` is None.
    """
    store = open_store(cfg.store, cfg.storage_options)
    identity = run_identity(cfg, data_cfg=cfg.data or store.meta.data_cfg(),
                            provenance_key=store.meta.provenance_key)
    return finished_run(run_dir(cfg), identity, [s.run_id for s in cfg.students(baselines_of(store, cfg.mode))])


def preflight(cfg: DistillConfig, *, data_cfg: DataConfig, provenance_key: str | None, path: str | None = None) -> None:
    """The report-folder checks a run makes before anything starts: ``report_root`` can be written, no live
    run holds the folder, and a finished run there is identical (it is then reused) or refused."""
    check_output_folder(cfg.report_root, field="report_root", fix="pass a folder for reports, e.g. data/reports")
    path = path or run_dir(cfg)
    check_not_running(path)
    finished_run(path, run_identity(cfg, data_cfg=data_cfg, provenance_key=provenance_key))
