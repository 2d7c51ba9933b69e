"""Stage 2: train a grid of students from stored teacher logits.

The teacher is never built or run here: its logits come from the store, and
its leaderboard row from the store's attributes. The flow in
``flows/distill_flow.py`` calls :func:`plan` once (all validation, before any
training) and hands the frozen :class:`DistillPlan` to :func:`train_students`
for each group of students, then to the report functions.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config import AugmentConfig, DataConfig, DistillConfig
from pipeline.checkpoints import load_store_teacher, save_state_dict
from pipeline.compat import check_compatible, check_labels
from pipeline.data import Dataset, store_dataset
from pipeline.data.labels import LabelMask, label_mask
from pipeline.errors import UserError
from pipeline.grid import StudentSpec, baselines_of
from pipeline.loader import SoftTargetLoader, fits_cache
from pipeline.metrics import expected_calibration_error
from pipeline.models import (check_source, count_parameters, input_size, measure_latency, model_size_mb,
                             resolve_device)
from pipeline.output_checks import check_output_folder
from pipeline.runs import run_dir, run_identity
from pipeline.store import SoftTargetStore, open_store
from pipeline.student_group import fit_group
from pipeline.train import Progress, build_seeded, evaluate_group
from pipeline.validation import check_augment_overlap

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def decoded_logits(store: SoftTargetStore, split: str, all_views: bool) -> np.ndarray:
    """A split's logits decoded (and so verified) once per process: (N, C), or (N, V, C) with ``all_views``."""
    return store.read_views(split) if all_views else store.read_logits(split)


@dataclass(frozen=True)
class DistillPlan:
    """What every task of one distill run shares: small, frozen and serialisable (it travels to Dask workers).

    The store and the dataset are not carried: each process opens them once, through caches keyed by
    their path and config (:func:`open_store`, :func:`pipeline.data.store_dataset`).
    """

    cfg: DistillConfig
    data_cfg: DataConfig
    run_dir: str
    student_latency_ms: float
    student_latency_busy: bool = False  # timed on a busy CPU: unreliable (pipeline.models.measure_latency)

    @property
    def store(self) -> SoftTargetStore:
        return open_store(self.cfg.store, self.cfg.storage_options)

    @property
    def dataset(self) -> Dataset:
        store = self.store
        return store_dataset(store.meta, students_data(self.data_cfg, store))

    @property
    def teacher_test_logits(self) -> torch.Tensor:
        return torch.from_numpy(decoded_logits(self.store, "test", False))  # (N_test, C)

    @property
    def baselines(self) -> tuple[str, ...]:
        """The label-only students this store calls for (:func:`pipeline.grid.store_baselines`)."""
        return baselines_of(self.store, self.cfg.mode)

    def students(self) -> list[StudentSpec]:
        """Every student of the run: the config's grid with this store's baselines."""
        return self.cfg.students(self.baselines)

    def train_logits(self) -> np.ndarray | None:
        """The decoded train logits when they fit ``cache_mb``, else None (the loader streams them)."""
        store, cfg = self.store, self.cfg
        if cfg.mode != "offline" or not fits_cache(store.size("train") * store.views, store.num_classes,
                                                       cfg.cache_mb):
            return None
        return decoded_logits(store, "train", store.views > 1)

    @functools.cached_property
    def labels(self) -> LabelMask:
        """Which train rows the students see labelled, and which they train on (pipeline.data.labels); drawn once
        per plan (and per process it travels to)."""
        ds = self.dataset
        return label_mask(ds.splits["train"], self.data_cfg, ds.class_names)

    def identity(self) -> dict:
        """What a finished report must record to be reused for this run (see :func:`run_identity`)."""
        return run_identity(self.cfg, data_cfg=self.data_cfg, provenance_key=self.store.meta.provenance_key)

    def report_meta(self) -> dict:
        """The run's header in the report: store, teacher, student, dataset, encoding, and its identity."""
        t, cfg = self.store.meta.teacher, self.cfg
        return {"store": cfg.store, "teacher": f"{t.arch} (test acc {100 * t.test_acc:.2f}%)",
                "student": f"{cfg.model.arch} width {cfg.model.width}", "dataset": self.dataset.name,
                "encoding": self.store.encoding, "test_size": len(self.dataset.splits["test"]),
                "num_classes": self.store.num_classes, **self.label_counts(), **self.identity()}

    def label_counts(self) -> dict:
        """How many train rows the students saw labelled and unlabelled (the baseline: the labelled ones)."""
        mask = self.labels
        return {"labelled": mask.num_labelled, "unlabelled": mask.num_unlabelled}

    def teacher_row(self) -> dict:
        t = self.store.meta.teacher
        return {"run_id": "teacher", "config_id": "teacher", "kind": "teacher", "arch": t.arch, "loss": "-",
                "temperature": None, "alpha": None, "beta": None, "seed": t.seed,
                "test_acc": t.test_acc, "test_nll": t.test_nll, "agreement": 1.0, "val_acc": t.val_acc,
                # Computed here from the stored test logits (the store records accuracy and NLL only):
                # exactly the targets the students learn from, at T = 1.
                "test_ece": expected_calibration_error(self.teacher_test_logits, self.dataset.splits["test"].y),
                "params": t.params, "status": "ok", "width": t.width,
                # The teacher is never built in stage 2: its size is estimated from its parameter count
                # (float32, buffers not counted) and its latency is not measured.
                "size_mb": t.params * 4 / 1e6, "size_mb_estimated": True, "latency_ms": None}


def check_views_augment(views: int, augment: AugmentConfig) -> None:
    """A store with teacher views fixes the augmentation: a student's own would never match the stored views."""
    if views > 1 and augment.ops:
        raise UserError("augment", "this store's teacher views define the augmentation (each view is replayed "
                        "exactly)", "drop --augment, or distill from a clean-view store")


def students_data(data: DataConfig, store: SoftTargetStore) -> DataConfig:
    """The data the students read, from the run's data config (the store's own unless one was given).

    A store with teacher views is the students' augmentation: each view is replayed exactly. The teacher's own
    training transforms, recorded with the store's data (and shared by `kd run`'s teacher and students), are
    therefore not drawn again on top of the views; other train transforms are refused (:func:`check_compatible`).
    """
    recorded = store.meta.data_cfg()
    if store.views > 1 and data.train_transform and data.train_transform == recorded.train_transform:
        data = dataclasses.replace(data, train_transform=())
    if data.model_preprocessing is None and recorded.model_preprocessing is not None:
        # The teacher's preprocessing is the store's, not an option of the data: students read its pixels
        # (and resize and normalise them for themselves). A data option that contradicts it is refused here.
        data = dataclasses.replace(data, model_preprocessing=recorded.model_preprocessing)
    return data


def plan(cfg: DistillConfig) -> DistillPlan:
    """Validate everything a run needs (report folder, store, data, device, online teacher) before any training."""
    check_output_folder(cfg.report_root, field="report_root", fix="pass a folder for reports, e.g. data/reports")
    resolve_device(cfg.device)
    store = open_store(cfg.store, cfg.storage_options)
    data_cfg = cfg.data or store.meta.data_cfg()
    students = students_data(data_cfg, store)
    check_augment_overlap(students, cfg.augment)
    ds = store_dataset(store.meta, students)
    check_compatible(store, ds)
    check_labels(store, ds, students)  # the labelled rows: enough for every class, and as the store recorded them
    check_views_augment(store.views, cfg.augment)
    if store.views > 1:  # every view's parameters decoded now (checksums, partners of mixed views)
        store.verify_view_params("train")
    # The students' own source: a factory or file, pretrained weights (fetched only with --download) that fit.
    check_source(cfg.model, shape=ds.input_shape, num_classes=ds.num_classes,
                 download=cfg.data.download if cfg.data is not None else False)
    if cfg.mode == "online":
        load_teacher(store)  # fail now, not in a task, if the checkpoint is gone or changed
    # CPU latency depends on the architecture, not on the trained weights, so it is measured once,
    # here, before any student trains: timed between training threads (which hold the GIL and the
    # cores) the same network measured anywhere from 1x to 100x its real time.
    latency = measure_latency(build_seeded(cfg.model, ds.input_shape, ds.num_classes, seed=0), ds.input_shape)
    if latency.busy:
        log.warning("the CPU is busy: the students' latency (%.3g ms) is marked unreliable in the leaderboard",
                    latency.ms)
    p = DistillPlan(cfg=cfg, data_cfg=data_cfg, run_dir=run_dir(cfg), student_latency_ms=latency.ms,
                    student_latency_busy=latency.busy)
    # Decoding the train logits now, when they fit the cache, verifies every chunk before any
    # training starts; larger stores are streamed and verified as they are read.
    p.train_logits()
    decoded_logits(store, "test", False)
    return p


def groups(cfg: DistillConfig, *, skip: frozenset[str] | set[str] = frozenset(),
           baselines: tuple[str, ...] = ("views",)) -> list[list[StudentSpec]]:
    """The student grid (with ``baselines``, :meth:`DistillPlan.baselines`) cut into groups that each train in
    one shared pass.

    A group shares its data order and augmentation stream, both seeded by its
    seed, so a group never mixes seeds: runs with different seeds must differ
    in data order too, or their spread would understate the noise. Nor does it
    mix what its students see: a label-only student on the clean view alone, or
    on the views without their mixing, takes a pass of its own. Every
    student of a run has the run's architecture, so a group of two or more
    trains as one stacked model wherever that applies (``pipeline.stacking``):
    up to one seed's students per group, the larger the group the less the
    sweep costs. Students named in ``skip`` (run ids) are left out of their groups (see :func:`kept_rows`);
    a student trains the same in any group (up to float rounding; with dropout, its masks depend on its stack:
    :mod:`pipeline.rng`).
    """
    by_pass: dict[tuple[int, str], list[StudentSpec]] = {}
    for spec in cfg.students(baselines):
        by_pass.setdefault((spec.seed, spec.data), []).append(spec)
    cut = [specs[i:i + cfg.group_size] for specs in by_pass.values() for i in range(0, len(specs), cfg.group_size)]
    return [g for g in ([s for s in specs if s.run_id not in skip] for specs in cut) if g]


def group_names(cfg: DistillConfig, *, baselines: tuple[str, ...] = ("views",)) -> list[str]:
    """What each group of :func:`groups` trains, in the same order, for its progress bar, progress artifact and
    task run: a lone student's run id (``kl-T4-a0.9-s0``), a seed's students (``seed 0: 5 students``), or part
    of them when a seed's students take several groups (``seed 0: students 1-8 of 10``). A pass of label-only
    students on other data than the views (one per lr of a sweep) is named by its students' config ids."""
    out, done = [], {}
    per_seed = {s.seed: 0 for s in cfg.students(baselines)}
    for s in cfg.students(baselines):
        per_seed[s.seed] += s.data == "views"
    for group in groups(cfg, baselines=baselines):
        seed, n = group[0].seed, len(group)
        if n == 1:
            out.append(group[0].run_id)
        elif group[0].data != "views":
            out.append(f"seed {seed}: {', '.join(s.config_id for s in group)}")
        elif n == per_seed[seed]:
            out.append(f"seed {seed}: {n} students")
        else:
            first = done.get(seed, 0) + 1
            out.append(f"seed {seed}: students {first}-{first + n - 1} of {per_seed[seed]}")
        if group[0].data == "views":
            done[seed] = done.get(seed, 0) + n
    return out


# DistillConfig.batch -> fit_group's `batched`: None lets it decide per group (vectorises, and pays on the device).
BATCHED = {"auto": None, "on": True, "off": False}


def student_loader(plan: DistillPlan, *, seed: int, device: torch.device, keep: np.ndarray | None = None,
                   epoch_rows: int | None = None, view_data: str = "views",
                   label_only: bool = False) -> SoftTargetLoader:
    """The students' train batches: stored logits (none online: the teacher scores each batch) and, with teacher
    views, each view replayed at the students' own resolution when it differs from the store's, in one resampling
    from its recorded box (their input hook then only normalises). Val and test keep the store's resolution: the
    hook resizes them once. Labels the students may not see are NO_LABEL (:attr:`DistillPlan.labels`); ``keep``:
    the rows an epoch visits (None: every row), ``epoch_rows`` of them an epoch (None: each once). ``view_data``:
    which views a group of label-only students sees (``SoftTargetLoader``). ``label_only``: a group that reads no
    soft target; from a store without views (whose rows carry nothing else) no logits are read at all, and the
    order of rows is the same (the store's chunk size is kept)."""
    cfg, ds = plan.cfg, plan.dataset
    mask = plan.labels
    train = mask.hidden(ds.splits["train"]) if mask.active else ds.splits["train"]
    no_logits = cfg.mode == "online" or (label_only and plan.store.views == 1)
    return SoftTargetLoader(train, cfg.optim.batch_size, seed=seed, store=None if no_logits else plan.store,
                            cache_mb=cfg.cache_mb, cached=None if no_logits else plan.train_logits(),
                            chunk_rows=plan.store.chunk_rows("train"), workers=cfg.workers, view_policy=cfg.view_policy,
                            pin_memory=device.type == "cuda", view_size=input_size(cfg.model, ds.input_shape),
                            keep=keep, epoch_rows=epoch_rows, view_data=view_data)


def train_students(plan: DistillPlan, specs: list[StudentSpec], *, progress: Progress | None = None) -> list[dict]:
    """Train one group from the store, evaluate on test at T = 1, save each chosen checkpoint."""
    cfg, ds, run_dir = plan.cfg, plan.dataset, plan.run_dir
    device = resolve_device(cfg.device)
    online = cfg.mode == "online"
    mask = plan.labels
    # Students train on every kept row, the labels they may not see hidden (NO_LABEL: the soft term alone); the
    # label-only baseline on the labelled rows alone. Each gets its own pass when the two differ.
    weight = cfg.unlabelled_weight if mask.num_unlabelled else 1.0
    results = []
    parts = _by_rows(specs, mask)
    for i, (keep, part) in enumerate(parts):
        # Label-only students alone on the labelled rows, for as many rows an epoch as the students' epoch.
        baseline = keep is not None and all(s.is_baseline for s in part)
        loader = student_loader(plan, seed=part[0].seed, device=device, keep=keep,
                                epoch_rows=int(mask.kept.sum()) if baseline else None, label_only=baseline,
                                view_data=part[0].data)  # one per group (groups)
        label = ",".join(s.run_id for s in part)
        results += fit_group(part, model_cfg=cfg.model, optim=cfg.optim, augment=cfg.augment, loader=loader,
                             val=ds.splits["val"], input_shape=ds.input_shape, num_classes=ds.num_classes,
                             device=device, label=label, progress=_pass_progress(progress, i, len(parts)),
                             teacher=load_teacher(plan.store) if online else None, batched=BATCHED[cfg.batch],
                             unlabelled_weight=weight)
    order = {s.run_id: i for i, s in enumerate(specs)}
    results.sort(key=lambda r: order[r.spec.run_id])  # the group's order, whichever pass trained each
    os.makedirs(os.path.join(run_dir, "students"), exist_ok=True)
    # The trained students' test scores, in order, from one read of test for the whole group.
    scores = iter(evaluate_group([r.model for r in results if r.model is not None], ds.splits["test"], device,
                                 teacher_logits=plan.teacher_test_logits, workers=cfg.workers))
    rows = []
    for r in results:
        if r.model is None:
            rows.append({**failed_row(cfg, r.spec, r.failed or "failed"), "seconds": r.seconds})
            continue
        m = next(scores)
        path = os.path.join(run_dir, "students", f"{r.spec.run_id}.pt")
        save_state_dict(r.model, path, field="report_root")  # atomic; a full disk is one line
        rows.append({**_row(cfg, r.spec), "status": "ok", "seconds": r.seconds, "test_acc": m["acc"],
                     "test_nll": m["nll"], "test_ece": m["ece"], "agreement": m["agreement"], "val_acc": r.val_acc,
                     "best_epoch": r.best_epoch, "params": count_parameters(r.model),
                     "size_mb": model_size_mb(r.model), "latency_ms": plan.student_latency_ms,
                     "latency_busy": plan.student_latency_busy,
                     "epochs_trained": len(r.history), "stopped_epoch": r.stopped_epoch,
                     # What `kd export` needs to rebuild the student from its checkpoint.
                     "input_shape": list(ds.input_shape), "num_classes": ds.num_classes, "checkpoint": path})
    return rows


def _pass_progress(progress: Progress | None, i: int, passes: int) -> Progress | None:
    """The group's progress for pass ``i`` of ``passes``: its epochs counted after the earlier passes' (one bar)."""
    if progress is None or passes == 1:
        return progress
    return lambda label, epoch, epochs, metrics: progress(label, i * epochs + epoch, passes * epochs, metrics)


def _by_rows(specs: list[StudentSpec], mask: LabelMask) -> list[tuple[np.ndarray | None, list[StudentSpec]]]:
    """The group's students by the train rows they visit: (rows kept, or None for every row; students), in order.
    The baseline visits the labelled rows, the others every kept row; one part when those are the same rows."""
    def rows(s: StudentSpec) -> np.ndarray:
        return mask.labelled if s.is_baseline else mask.kept

    if all(np.array_equal(rows(s), rows(specs[0])) for s in specs):
        return [(None if rows(specs[0]).all() else rows(specs[0]), specs)]
    parts = [[s for s in specs if s.is_baseline], [s for s in specs if not s.is_baseline]]
    return [(rows(p[0]), p) for p in parts if p]


def load_teacher(store: SoftTargetStore) -> torch.nn.Module:
    """Online mode only: the store's teacher, from its recorded checkpoint (weights only)."""
    return load_store_teacher(store, field="mode", fix="use --mode offline, or restore the checkpoint")


def _row(cfg: DistillConfig, s: StudentSpec) -> dict:
    """The hyperparameters that identify a leaderboard row."""
    return {"run_id": s.run_id, "config_id": s.config_id, "kind": "baseline" if s.is_baseline else "student",
            "arch": cfg.model.arch, "width": cfg.model.width, "model": cfg.model.key(), "loss": s.loss,
            "temperature": s.temperature if s.uses_temperature else None,  # shown as "—": T never entered
            "alpha": None if s.is_baseline else s.alpha, "beta": s.beta, "seed": s.seed,
            # A label-only student of a store with views that sees other data (pipeline.grid.BASELINE_DATA).
            **({} if s.data == "views" else {"data": s.data})}


def failed_row(cfg: DistillConfig, s: StudentSpec, error: str, *, retry: bool = False) -> dict:
    """A student that failed. ``retry``: from a data or I/O error (an unreadable image or chunk, a full disk),
    not from training itself: its run is not finished, and running it again retrains this student."""
    return {**_row(cfg, s), "status": "failed", "error": error, **({"retry": True} if retry else {})}
