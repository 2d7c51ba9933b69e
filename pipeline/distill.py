"""Stage 2: train a grid of students from stored teacher logits.

The teacher is never built or run here: its logits come from the store, and
its leaderboard row from the store's attributes. The flow in
``flows/distill_flow.py`` calls :func:`plan` once (all validation, before any
training) and hands the frozen :class:`DistillPlan` to :func:`train_students`
for each group of students, then to the report functions.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config import DataConfig, DistillConfig, StudentSpec, config_hash, to_dict
from pipeline.checkpoints import load_store_teacher
from pipeline.data import Dataset, open_dataset
from pipeline.errors import StoreError, UserError
from pipeline.loader import SoftTargetLoader, fits_cache
from pipeline.metrics import expected_calibration_error
from pipeline.models import count_parameters, measure_latency_ms, model_size_mb, resolve_device
from pipeline.store import SoftTargetStore
from pipeline.train import Progress, build_seeded, evaluate, fit_group
from pipeline.transforms import transform_hash

log = logging.getLogger(__name__)


def check_compatible(store: SoftTargetStore, ds: Dataset) -> None:
    """Refuse a store written from other data, naming the first field that differs."""
    meta = store.meta
    fix = "distill with the dataset the teacher saw, or rerun `kd teacher` on this data"
    if meta.transform_hash != transform_hash():
        raise StoreError("transform_hash", f"store preprocessing {meta.transform_hash} differs from this "
                         f"pipeline's {transform_hash()}", "rerun `kd teacher` with this version")
    if meta.dataset.name != ds.name:
        raise StoreError("dataset", f"store was written from {meta.dataset.name!r}, not {ds.name!r}", fix)
    if store.num_classes != ds.num_classes:
        raise StoreError("num_classes", f"store has {store.num_classes} classes, dataset has {ds.num_classes}", fix)
    for split, info in meta.dataset.splits.items():
        if split not in ds.splits:
            continue
        if info.size != len(ds.splits[split]) or store.size(split) != len(ds.splits[split]):
            raise StoreError(f"splits.{split}.size", f"store has {store.size(split)} {split} samples, dataset has "
                             f"{len(ds.splits[split])}", fix)
        if info.fingerprint != ds.splits[split].fingerprint():
            raise StoreError(f"splits.{split}.fingerprint", f"{split} samples or labels differ from the store's", fix)


@functools.lru_cache(maxsize=4)
def _open_store(path: str, options_json: str) -> SoftTargetStore:
    return SoftTargetStore(path, storage_options=json.loads(options_json) or None)


def open_store(path: str, storage_options: dict | None = None) -> SoftTargetStore:
    """A complete store, opened read-only once per process (complete stores never change)."""
    return _open_store(path, json.dumps(storage_options or {}, sort_keys=True))


@functools.lru_cache(maxsize=4)
def decoded_logits(store: SoftTargetStore, split: str, all_views: bool) -> np.ndarray:
    """A split's logits decoded (and so verified) once per process: (N, C), or (N, V, C) with ``all_views``."""
    return store.read_views(split) if all_views else store.read_logits(split)


@dataclass(frozen=True)
class DistillPlan:
    """What every task of one distill run shares: small, frozen and serialisable (it travels to Dask workers).

    The store and the dataset are not carried: each process opens them once, through caches keyed by
    their path and config (:func:`open_store`, :func:`pipeline.data.open_dataset`).
    """

    cfg: DistillConfig
    data_cfg: DataConfig
    run_dir: str
    student_latency_ms: float

    @property
    def store(self) -> SoftTargetStore:
        return open_store(self.cfg.store, self.cfg.storage_options)

    @property
    def dataset(self) -> Dataset:
        return open_dataset(self.data_cfg)

    @property
    def teacher_test_logits(self) -> torch.Tensor:
        return torch.from_numpy(decoded_logits(self.store, "test", False))  # (N_test, C)

    def train_logits(self) -> np.ndarray | None:
        """The decoded train logits when they fit ``cache_mb``, else None (the loader streams them)."""
        store, cfg = self.store, self.cfg
        if cfg.mode != "offline" or not fits_cache(store.size("train") * store.views, store.num_classes,
                                                       cfg.cache_mb):
            return None
        return decoded_logits(store, "train", store.views > 1)

    def report_meta(self) -> dict:
        """The run's header in the report: store, teacher, student, dataset, encoding."""
        t, cfg = self.store.meta.teacher, self.cfg
        return {"store": cfg.store, "teacher": f"{t.arch} (test acc {100 * t.test_acc:.2f}%)",
                "student": f"{cfg.model.arch} width {cfg.model.width}", "dataset": self.dataset.name,
                "encoding": self.store.encoding, "test_size": len(self.dataset.splits["test"])}

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


def plan(cfg: DistillConfig) -> DistillPlan:
    """Validate everything a run needs (store, data, device, online teacher) before any training."""
    resolve_device(cfg.device)
    store = open_store(cfg.store, cfg.storage_options)
    data_cfg = cfg.data or store.meta.data_cfg()
    ds = open_dataset(data_cfg)
    check_compatible(store, ds)
    if store.views > 1:  # every view's parameters decoded now (checksums, partners of mixed views)
        store.verify_view_params("train")
    if store.views > 1 and cfg.augment.ops:
        raise UserError("augment", "this store's teacher views define the augmentation (each view is replayed "
                        "exactly)", "drop --augment, or distill from a clean-view store")
    if cfg.mode == "online":
        load_teacher(store)  # fail now, not in a task, if the checkpoint is gone or changed
    # CPU latency depends on the architecture, not on the trained weights, so it is measured once,
    # here, before any student trains: timed between training threads (which hold the GIL and the
    # cores) the same network measured anywhere from 1x to 100x its real time.
    latency = measure_latency_ms(build_seeded(cfg.model, ds.input_shape, ds.num_classes, seed=0), ds.input_shape)
    p = DistillPlan(cfg=cfg, data_cfg=data_cfg, run_dir=run_dir(cfg), student_latency_ms=latency)
    # Decoding the train logits now, when they fit the cache, verifies every chunk before any
    # training starts; larger stores are streamed and verified as they are read.
    p.train_logits()
    decoded_logits(store, "test", False)
    return p


def run_dir(cfg: DistillConfig) -> str:
    """Where this run's report goes; call once per run (the default name carries the start time)."""
    stem = os.path.basename(cfg.store.rstrip("/")).removesuffix(".zarr")
    name = cfg.run_name or f"{stem}-{cfg.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    if os.sep in name or name in ("", ".", ".."):
        raise UserError("run_name", f"{name!r} is not a plain folder name", "pass a name without slashes")
    return os.path.join(cfg.report_root, name)


def stable_run_name(cfg: DistillConfig) -> str:
    """A run name fixed by the store and everything that shapes the students (for scheduled pipelines)."""
    stem = os.path.basename(cfg.store.rstrip("/")).removesuffix(".zarr")
    shaping = {k: v for k, v in to_dict(cfg).items()  # type: ignore[union-attr]
               if k not in ("store", "report_root", "run_name", "device", "storage_options", "workers", "cache_mb")}
    return f"{stem}-{cfg.model.arch}-{config_hash(shaping)[:8]}"


def completed_run(cfg: DistillConfig) -> str | None:
    """The report folder of an identical finished run, if there is one."""
    path = run_dir(cfg)
    from pipeline.report import LEADERBOARD

    return path if os.path.isfile(os.path.join(path, LEADERBOARD)) else None


def groups(cfg: DistillConfig) -> list[list[StudentSpec]]:
    """The student grid cut into groups that each train in one shared pass.

    A group shares its data order and augmentation stream, both seeded by its
    seed, so a group never mixes seeds: runs with different seeds must differ
    in data order too, or their spread would understate the noise.
    """
    by_seed: dict[int, list[StudentSpec]] = {}
    for spec in cfg.students():
        by_seed.setdefault(spec.seed, []).append(spec)
    return [specs[i:i + cfg.group_size] for specs in by_seed.values() for i in range(0, len(specs), cfg.group_size)]


def train_students(p: DistillPlan, specs: list[StudentSpec], *, progress: Progress | None = None) -> list[dict]:
    """Train one group from the store, evaluate on test at T = 1, save each chosen checkpoint."""
    cfg, ds, run_dir = p.cfg, p.dataset, p.run_dir
    device = resolve_device(cfg.device)
    online = cfg.mode == "online"
    loader = SoftTargetLoader(ds.splits["train"], cfg.optim.batch_size, seed=specs[0].seed,
                              store=None if online else p.store, cache_mb=cfg.cache_mb, cached=p.train_logits(),
                              chunk_rows=p.store.chunk_rows("train"), workers=cfg.workers,
                              view_policy=cfg.view_policy)
    label = ",".join(s.run_id for s in specs)
    results = fit_group(specs, model_cfg=cfg.model, optim=cfg.optim, augment=cfg.augment, loader=loader,
                        val=ds.splits["val"], input_shape=ds.input_shape, num_classes=ds.num_classes, device=device,
                        label=label, progress=progress, teacher=load_teacher(p.store) if online else None)
    os.makedirs(os.path.join(run_dir, "students"), exist_ok=True)
    rows = []
    for r in results:
        if r.model is None:
            rows.append({**failed_row(cfg, r.spec, r.failed or "failed"), "seconds": r.seconds})
            continue
        m = evaluate(r.model, ds.splits["test"], device, teacher_logits=p.teacher_test_logits)
        path = os.path.join(run_dir, "students", f"{r.spec.run_id}.pt")
        torch.save(r.model.state_dict(), path)
        rows.append({**_row(cfg, r.spec), "status": "ok", "seconds": r.seconds, "test_acc": m["acc"],
                     "test_nll": m["nll"], "test_ece": m["ece"], "agreement": m["agreement"], "val_acc": r.val_acc,
                     "best_epoch": r.best_epoch, "params": count_parameters(r.model),
                     "size_mb": model_size_mb(r.model), "latency_ms": p.student_latency_ms,
                     "epochs_trained": len(r.history), "stopped_epoch": r.stopped_epoch,
                     # What `kd export` needs to rebuild the student from its checkpoint.
                     "input_shape": list(ds.input_shape), "num_classes": ds.num_classes, "checkpoint": path})
    return rows


def load_teacher(store: SoftTargetStore) -> torch.nn.Module:
    """Online mode only: the store's teacher, from its recorded checkpoint (weights only)."""
    return load_store_teacher(store, field="mode", fix="use --mode offline, or restore the checkpoint")


def _row(cfg: DistillConfig, s: StudentSpec) -> dict:
    """The hyperparameters that identify a leaderboard row."""
    return {"run_id": s.run_id, "config_id": s.config_id, "kind": "baseline" if s.is_baseline else "student",
            "arch": cfg.model.arch, "width": cfg.model.width, "loss": s.loss,
            "temperature": None if s.is_baseline else s.temperature,
            "alpha": None if s.is_baseline else s.alpha, "beta": s.beta, "seed": s.seed}


def failed_row(cfg: DistillConfig, s: StudentSpec, error: str) -> dict:
    return {**_row(cfg, s), "status": "failed", "error": error}
