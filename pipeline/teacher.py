"""Stage 1: train (or load) the teacher once and publish its logits to a store.

The flow in ``flows/teacher_flow.py`` calls these steps in order:
:func:`plan` (validate, fingerprint, name the store, find a reusable one),
:func:`train` or :func:`load`, then :func:`publish`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.augment import Augmenter
from pipeline.checkpoints import load_model
from pipeline.checksums import sha256_file
from pipeline.config import TeacherConfig, config_hash, to_dict
from pipeline.data import Dataset, open_dataset
from pipeline.errors import UserError
from pipeline.loader import ordered_batches, row_batches
from pipeline.models import count_parameters, resolve_device
from pipeline.precision import prepare
from pipeline.store import (SPLITS, DatasetMeta, LineageEntry, Provenance, SoftTargetStore, StoreWriter, TeacherMeta,
                            ViewsMeta, exists, join, now_iso, software_versions)
from pipeline.train import Progress, evaluate, fit_teacher, predict

log = logging.getLogger(__name__)

def view_record(cfg: TeacherConfig) -> ViewsMeta:
    """How the stored views were drawn: enough for anyone to replay them (pipeline.augment.Augmenter.replay)."""
    if cfg.views == 1:
        return ViewsMeta(count=1)
    return ViewsMeta(count=cfg.views, seed=cfg.seed, augment=asdict(cfg.view_augment),
                     params=tuple(Augmenter.PARAM_NAMES))


def lineage_of(store_path: str, storage_options: dict | None = None) -> tuple[LineageEntry, ...]:
    """The chain of stores a born-again teacher descends from, nearest first."""
    meta = SoftTargetStore(store_path, storage_options=storage_options).meta
    entry = LineageEntry(store=store_path, provenance_key=meta.provenance_key, teacher=meta.teacher.arch,
                         test_acc=meta.teacher.test_acc)
    return (entry,) + meta.lineage


def public_config(cfg: TeacherConfig) -> dict:
    """The config as recorded in a store: storage options can hold credentials, so they never go in."""
    return {k: v for k, v in asdict(cfg).items() if k != "storage_options"}


@dataclass(frozen=True)
class TeacherPlan:
    """What every task of one teacher run shares: small, frozen and serialisable (it travels to Dask workers).

    The dataset is not carried: each process opens it once, through :func:`pipeline.data.open_dataset`.
    """

    cfg: TeacherConfig
    provenance_key: str
    store_path: str
    checkpoint_path: str
    checkpoint_sha256: str | None  # known up front only when loading a given checkpoint

    @property
    def dataset(self) -> Dataset:
        return open_dataset(self.cfg.data)

    @property
    def checkpoint_ready(self) -> bool:
        """A teacher checkpoint for this provenance exists (given, or left by an earlier run): no training."""
        return os.path.isfile(self.checkpoint_path)

    @property
    def reusable(self) -> bool:
        """A complete store with this provenance key already exists."""
        opts = self.cfg.storage_options
        if not exists(self.store_path, opts):
            return False
        try:
            store = SoftTargetStore(self.store_path, storage_options=opts)
        except UserError:
            return False
        return store.meta.provenance_key == self.provenance_key


def plan(cfg: TeacherConfig) -> TeacherPlan:
    """Everything that can fail on user input, checked before any training."""
    if cfg.checkpoint is not None and not os.path.isfile(cfg.checkpoint):
        raise UserError("checkpoint", f"{cfg.checkpoint!r} does not exist", "pass a file written by `kd teacher`")
    resolve_device(cfg.device)
    ds = open_dataset(cfg.data)
    ckpt_sha = sha256_file(cfg.checkpoint) if cfg.checkpoint else None
    parent = lineage_of(cfg.parent_store, cfg.storage_options) if cfg.parent_store else ()
    teacher_part = {"parent": parent[0].provenance_key if parent else None,
                    "model": to_dict(cfg.model), "optim": to_dict(cfg.optim), "augment": to_dict(cfg.augment),
                    "seed": cfg.seed, "checkpoint_sha256": ckpt_sha, "views": view_record(cfg).to_attrs()}
    key = config_hash({"teacher": teacher_part, "data": cfg.data.key(), "fingerprints": ds.fingerprints(),
                       "transform": ds.transform_hash, "encoding": cfg.encoding})
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", ds.name).strip("_")
    name = f"{slug}-{cfg.model.arch}-{key[:10]}"
    ckpt = cfg.checkpoint or os.path.join(cfg.checkpoint_root, f"{name}.pt")
    return TeacherPlan(cfg=cfg, provenance_key=key, store_path=join(cfg.store_root, f"{name}.zarr"),
                       checkpoint_path=ckpt, checkpoint_sha256=ckpt_sha)


def progress_bar() -> bool:
    """Show tqdm bars only on an interactive terminal (logs and CI stay clean)."""
    return sys.stderr.isatty()


def train(p: TeacherPlan, progress: Progress | None = None) -> nn.Module:
    """Train the teacher on hard labels, select on val, save the checkpoint."""
    cfg, ds = p.cfg, p.dataset
    result = fit_teacher(model_cfg=cfg.model, optim=cfg.optim, augment=cfg.augment, train=ds.splits["train"],
                         val=ds.splits["val"], input_shape=ds.input_shape, num_classes=ds.num_classes,
                         device=resolve_device(cfg.device), seed=cfg.seed, progress=progress, workers=cfg.workers)
    if result.model is None:
        raise UserError("teacher", f"training failed: {result.failed}", "lower --lr or change the optimizer")
    if ds.manifest is not None:
        # Training decoded train and val; decode the test images too before anything is written, so an
        # unreadable file fails the run with nothing on disk (the store's evaluation reads them next anyway).
        evaluate(result.model, ds.splits["test"], resolve_device(cfg.device), workers=cfg.workers)
    os.makedirs(os.path.dirname(p.checkpoint_path) or ".", exist_ok=True)
    tmp = p.checkpoint_path + ".tmp"
    torch.save(result.model.state_dict(), tmp)
    os.replace(tmp, p.checkpoint_path)  # never leave a half-written checkpoint under the real name
    return result.model


def load(p: TeacherPlan) -> nn.Module:
    """Load ``cfg.checkpoint`` (weights only: a checkpoint can never run code)."""
    cfg, ds = p.cfg, p.dataset
    model = load_model(p.checkpoint_path, model=cfg.model, input_shape=ds.input_shape, num_classes=ds.num_classes,
                       fix="pass the matching --arch/--width")
    return model.to(resolve_device(cfg.device))


def create_store(p: TeacherPlan, model: nn.Module) -> StoreWriter:
    """Evaluate the teacher and create the store (or reopen an incomplete one to resume it)."""
    cfg, ds = p.cfg, p.dataset
    device = resolve_device(cfg.device)
    metrics = {s: evaluate(model, ds.splits[s], device, workers=cfg.workers, fast=True) for s in ("val", "test")}
    provenance = Provenance(
        created_at=now_iso(),
        provenance_key=p.provenance_key,
        teacher=TeacherMeta(
            arch=cfg.model.arch, width=cfg.model.width, params=count_parameters(model),
            checkpoint=p.checkpoint_path, checkpoint_sha256=sha256_file(p.checkpoint_path),
            trained_here=cfg.checkpoint is None, config=public_config(cfg),
            val_acc=metrics["val"]["acc"], test_acc=metrics["test"]["acc"],
            val_nll=metrics["val"]["nll"], test_nll=metrics["test"]["nll"],
        ),
        dataset=DatasetMeta.from_attrs(ds.describe(), at="dataset"),
        data_config=asdict(cfg.data),
        transform=ds.transform,
        transform_hash=ds.transform_hash,
        software=software_versions(),
        views=view_record(cfg),
        lineage=lineage_of(cfg.parent_store, cfg.storage_options) if cfg.parent_store else (),
    )
    splits = {s: (ds.splits[s].y.numpy(), ds.splits[s].ids.numpy()) for s in SPLITS}
    writer = StoreWriter(p.store_path, provenance, splits, encoding=cfg.encoding, chunk_rows=cfg.chunk_rows,
                         shard_chunks=cfg.shard_chunks, storage_options=cfg.storage_options)
    if writer.resumed:
        log.info("resuming incomplete store %s: %s shards left", p.store_path,
                 {s: len(writer.pending(s)) for s in splits})
    return writer


def write_shards(p: TeacherPlan, model: nn.Module, writer: StoreWriter,
                 work: dict[str, list[int]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Run the teacher over the given shards of each split and queue them; the caller closes the writer.

    Images are read and decoded by ``cfg.workers`` DataLoader workers, in batches that never cross a
    shard, so each finished shard is queued at once. Returns, per split, the sha256 of every file read
    ((N, 32) uint8) and which rows were read ((N,) bool): the split's content hash without another read.
    """
    device = resolve_device(p.cfg.device)
    model = prepare(model, device, fast=True)  # channels_last on CUDA; autocast in teacher_views
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, shards in work.items():
        data = p.dataset.splits[split]
        lay = writer.layouts[split]
        digests, known = np.zeros((len(data), 32), np.uint8), np.zeros(len(data), bool)
        plan_ = [(shard, rows) for shard in shards
                 for rows in row_batches(np.arange(*lay.shard_range(shard)), PASS_BATCH)]
        batches = ordered_batches(data, [rows for _, rows in plan_], workers=p.cfg.workers,
                                  pin_memory=device.type == "cuda", digests=True)
        parts: list[tuple[np.ndarray, np.ndarray | None]] = []
        bar = tqdm(total=len(shards), desc=f"teacher logits [{split}]", unit="shard", disable=not progress_bar())
        for (shard, rows), (x, d) in zip(plan_, batches, strict=True):
            if d is not None:
                digests[rows], known[rows] = d, True
            parts.append(teacher_views(p.cfg, model, x, data.ids[torch.from_numpy(rows)], device))
            if rows[-1] + 1 == lay.shard_range(shard)[1]:  # the shard's last batch: queue it whole
                logits = np.concatenate([lg for lg, _ in parts])
                params = None if parts[0][1] is None else np.concatenate([pr for _, pr in parts])  # type: ignore[misc]
                writer.put(split, shard, logits, params)
                parts = []
                bar.update(1)
        bar.close()
        seen[split] = (digests, known)
    return seen


PASS_BATCH = 512  # images per teacher forward in the logits pass


def teacher_views(cfg: TeacherConfig, model: nn.Module, x: torch.Tensor, ids: torch.Tensor,
                  device: torch.device) -> tuple[np.ndarray, np.ndarray | None]:
    """Teacher logits of every view of ``x``: (R, V, C) float32, and the views' drawn parameters (R, V, 4) when V > 1.

    On CUDA the teacher runs under autocast, channels_last (:mod:`pipeline.precision`); logits are cast to
    float32 before they are encoded.
    """
    if cfg.views == 1:
        return torch.cat(list(predict(model, x, device, batch_size=PASS_BATCH, fast=True))).numpy()[:, None, :], None
    aug = Augmenter(cfg.view_augment)
    logits, params = [], []
    for v in range(cfg.views):
        drawn = aug.view_params(ids, torch.full_like(ids, v), cfg.seed)
        logits.append(torch.cat(list(predict(model, aug.apply(x, drawn), device, batch_size=PASS_BATCH,
                                             fast=True))).numpy())  # (R, C)
        params.append(Augmenter.params_array(drawn))  # (R, 4)
    return np.stack(logits, axis=1), np.stack(params, axis=1)


def record_content(p: TeacherPlan, writer: StoreWriter, seen: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Put each split's full content hash into the store's dataset record before it is marked complete.

    Only image folders have one apart from their fingerprint. The files this process read in the pass
    are hashed already (``seen``); the others (shards written by an earlier, cut-off run or by other
    writers) are read now.
    """
    ds = p.dataset
    if ds.manifest is None:
        return
    meta = writer.meta.dataset
    splits = {}
    for name, info in meta.splits.items():
        digests, known = seen.get(name, (None, None))
        splits[name] = dataclasses.replace(info, content=ds.splits[name].content_hash(digests, known))
    writer.meta = dataclasses.replace(writer.meta, dataset=dataclasses.replace(meta, splits=splits))


def pending_work(writer: StoreWriter, parts: int) -> list[dict[str, list[int]]]:
    """The missing shards cut into ``parts`` contiguous, disjoint pieces of nearly equal size."""
    todo = [(split, shard) for split in SPLITS for shard in writer.pending(split)]
    bounds = [round(i * len(todo) / parts) for i in range(parts + 1)]
    pieces = []
    for a, b in zip(bounds, bounds[1:]):
        piece: dict[str, list[int]] = {}
        for split, shard in todo[a:b]:
            piece.setdefault(split, []).append(shard)
        pieces.append(piece)
    return [piece for piece in pieces if piece]


def write_part(p: TeacherPlan, work: dict[str, list[int]]) -> None:
    """One writer of a split teacher pass: attach to the created store and write only ``work``."""
    writer = StoreWriter.attach(p.store_path, p.cfg.storage_options)
    try:
        write_shards(p, load(p), writer, work)
    finally:
        writer.close()


def finalize(p: TeacherPlan) -> str:
    """After every part is written: check the bitmap and mark the store complete."""
    writer = StoreWriter.attach(p.store_path, p.cfg.storage_options)
    record_content(p, writer, {})  # the parts' digests stayed in their processes: read the files once more
    return writer.finish()


def publish(p: TeacherPlan, model: nn.Module) -> str:
    """The single-process teacher pass: create (or resume), write every missing shard, mark complete."""
    writer = create_store(p, model)
    try:
        seen = write_shards(p, model, writer, {s: writer.pending(s) for s in SPLITS})
        record_content(p, writer, seen)
        return writer.finish()
    finally:
        writer.abort()
