"""Stage 2: train a grid of students from stored teacher logits.

The teacher is never built or run here: its logits come from the store, and
its leaderboard row from the store's attributes. The flow in
``flows/distill_flow.py`` calls :func:`plan` once (all validation, before any
training), then :func:`train_students` per group of students, then the
report functions.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import torch

from pipeline.config import DataConfig, DistillConfig, StudentSpec, config_hash, to_dict
from pipeline.data import Dataset, load_dataset
from pipeline.errors import StoreError, UserError
from pipeline.loader import SoftTargetLoader, fits_cache
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


class DistillPlan:
    """An opened, validated store and the dataset it is aligned with."""

    def __init__(self, cfg: DistillConfig) -> None:
        resolve_device(cfg.device)
        self.cfg = cfg
        self.store = SoftTargetStore(cfg.store, storage_options=cfg.storage_options)
        self.data_cfg: DataConfig = cfg.data or self.store.meta.data_cfg()
        self.dataset = load_dataset(self.data_cfg)
        check_compatible(self.store, self.dataset)
        # CPU latency depends on the architecture, not on the trained weights, so it is measured once,
        # here, before any student trains: timed between training threads (which hold the GIL and the
        # cores) the same network measured anywhere from 1x to 100x its real time.
        self.student_latency_ms = measure_latency_ms(
            build_seeded(cfg.model, self.dataset.input_shape, self.dataset.num_classes, seed=0),
            self.dataset.input_shape)
        self.teacher_test_logits = torch.from_numpy(self.store.read_logits("test"))  # (N_test, C)
        # Decoding the train logits here, when they fit the cache, also verifies every chunk
        # before any training starts; larger stores are streamed and verified as they are read.
        if cfg.mode == "online":
            load_teacher(self)  # fail now, not in a task, if the checkpoint is gone or changed
        n_train = self.store.size("train")
        if self.store.views > 1 and cfg.augment.ops:
            raise UserError("augment", "this store's teacher views define the augmentation (each view is replayed "
                            "exactly)", "drop --augment, or distill from a clean-view store")
        views = self.store.views
        self.train_logits = None  # (N, C), or (N, V, C) with views
        if cfg.mode == "offline" and fits_cache(n_train * views, self.store.num_classes, cfg.cache_mb):
            self.train_logits = (self.store.read_views("train") if views > 1 else self.store.read_logits("train"))

    def teacher_row(self) -> dict:
        t = self.store.meta.teacher
        return {"run_id": "teacher", "config_id": "teacher", "kind": "teacher", "arch": t.arch, "loss": "-",
                "temperature": None, "alpha": None, "beta": None, "seed": t.seed,
                "test_acc": t.test_acc, "test_nll": t.test_nll, "agreement": 1.0, "val_acc": t.val_acc,
                "params": t.params, "status": "ok", "width": t.width,
                # The teacher is never built in stage 2: its size is estimated from its parameter count
                # (float32, buffers not counted) and its latency is not measured.
                "size_mb": t.params * 4 / 1e6, "size_mb_estimated": True, "latency_ms": None}


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


_PLANS: dict[str, DistillPlan] = {}
_PLANS_LOCK = threading.Lock()


def plan(cfg: DistillConfig) -> DistillPlan:
    """Validate everything and open the store; cached so every task of a run in this process shares one."""
    key = config_hash(cfg)
    with _PLANS_LOCK:
        if key not in _PLANS:
            _PLANS[key] = DistillPlan(cfg)
        return _PLANS[key]


def release(cfg: DistillConfig) -> None:
    """Drop the cached plan (dataset and open store) once a run is over."""
    with _PLANS_LOCK:
        _PLANS.pop(config_hash(cfg), None)


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


def train_students(cfg: DistillConfig, specs: list[StudentSpec], run_dir: str,
                   progress: Progress | None = None) -> list[dict]:
    """Train one group from the store, evaluate on test at T = 1, save each chosen checkpoint."""
    p = plan(cfg)
    ds = p.dataset
    device = resolve_device(cfg.device)
    online = cfg.mode == "online"
    loader = SoftTargetLoader(ds.splits["train"], cfg.optim.batch_size, seed=specs[0].seed,
                              store=None if online else p.store, cache_mb=cfg.cache_mb, cached=p.train_logits,
                              chunk_rows=p.store.chunk_rows("train"), workers=cfg.workers,
                              view_policy=cfg.view_policy)
    label = ",".join(s.run_id for s in specs)
    results = fit_group(specs, model_cfg=cfg.model, optim=cfg.optim, augment=cfg.augment, loader=loader,
                        val=ds.splits["val"], input_shape=ds.input_shape, num_classes=ds.num_classes, device=device,
                        label=label, progress=progress, teacher=load_teacher(p) if online else None)
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
                     "test_nll": m["nll"], "agreement": m["agreement"], "val_acc": r.val_acc,
                     "best_epoch": r.best_epoch, "params": count_parameters(r.model),
                     "size_mb": model_size_mb(r.model), "latency_ms": p.student_latency_ms,
                     "epochs_trained": len(r.history), "stopped_epoch": r.stopped_epoch,
                     # What `kd export` needs to rebuild the student from its checkpoint.
                     "input_shape": list(ds.input_shape), "num_classes": ds.num_classes, "checkpoint": path})
    return rows


def load_teacher(p: DistillPlan) -> torch.nn.Module:
    """Online mode only: the store's teacher, from its recorded checkpoint (weights only)."""
    from pipeline.views import load_store_teacher

    return load_store_teacher(p.store, field="mode", fix="use --mode offline, or restore the checkpoint")


def _row(cfg: DistillConfig, s: StudentSpec) -> dict:
    """The hyperparameters that identify a leaderboard row."""
    return {"run_id": s.run_id, "config_id": s.config_id, "kind": "baseline" if s.is_baseline else "student",
            "arch": cfg.model.arch, "width": cfg.model.width, "loss": s.loss,
            "temperature": None if s.is_baseline else s.temperature,
            "alpha": None if s.is_baseline else s.alpha, "beta": s.beta, "seed": s.seed}


def failed_row(cfg: DistillConfig, s: StudentSpec, error: str) -> dict:
    return {**_row(cfg, s), "status": "failed", "error": error}
