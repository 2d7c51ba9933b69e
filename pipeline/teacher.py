"""Stage 1: train (or load) the teacher once and publish its logits to a store.

The flow in ``flows/teacher_flow.py`` calls these steps in order:
:func:`plan` (validate, fingerprint, name the store, find a reusable one),
:func:`train` or :func:`load`, then :func:`publish`.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline import view_ops
from pipeline.checkpoints import load_model
from pipeline.checksums import sha256_file
from pipeline.config import TeacherConfig, config_hash, to_dict
from pipeline.data import Dataset, open_dataset
from pipeline.errors import UserError
from pipeline.models import count_parameters, resolve_device
from pipeline.store import (SPLITS, DatasetMeta, LineageEntry, Provenance, SoftTargetStore, StoreWriter, TeacherMeta,
                            ViewsMeta, exists, join, now_iso, software_versions)
from pipeline.train import Progress, evaluate, fit_teacher, predict
from pipeline.transforms import TRANSFORM, transform_hash

log = logging.getLogger(__name__)

def view_record(cfg: TeacherConfig) -> ViewsMeta:
    """How the stored views were drawn: seed, ops and the names of their stored parameters (pipeline.view_ops)."""
    if cfg.views == 1:
        return ViewsMeta(count=1)
    return ViewsMeta(count=cfg.views, seed=cfg.seed, augment=asdict(cfg.view_augment),
                     params=view_ops.columns(cfg.view_augment, cfg.view_mix),
                     mix=asdict(cfg.view_mix) if cfg.view_mix.ops else None)


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
    view_ops.check_mixable(cfg.view_mix, ds.splits)
    ckpt_sha = sha256_file(cfg.checkpoint) if cfg.checkpoint else None
    parent = lineage_of(cfg.parent_store, cfg.storage_options) if cfg.parent_store else ()
    teacher_part = {"parent": parent[0].provenance_key if parent else None,
                    "model": to_dict(cfg.model), "optim": to_dict(cfg.optim), "augment": to_dict(cfg.augment),
                    "seed": cfg.seed, "checkpoint_sha256": ckpt_sha, "views": view_record(cfg).to_attrs()}
    key = config_hash({"teacher": teacher_part, "data": to_dict(cfg.data), "fingerprints": ds.fingerprints(),
                       "transform": transform_hash(), "encoding": cfg.encoding})
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
                         device=resolve_device(cfg.device), seed=cfg.seed, progress=progress)
    if result.model is None:
        raise UserError("teacher", f"training failed: {result.failed}", "lower --lr or change the optimizer")
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
    metrics = {s: evaluate(model, ds.splits[s], device) for s in ("val", "test")}
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
        transform=TRANSFORM,
        transform_hash=transform_hash(),
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


def write_shards(p: TeacherPlan, model: nn.Module, writer: StoreWriter, work: dict[str, list[int]]) -> None:
    """Run the teacher over the given shards of each split and queue them; the caller closes the writer."""
    device = resolve_device(p.cfg.device)
    for split, shards in work.items():
        data = p.dataset.splits[split]
        lay = writer.layouts[split]
        partners = view_ops.Partners(data, split) if p.cfg.view_mix.ops else None  # mixed views: the same split
        for shard in tqdm(shards, desc=f"teacher logits [{split}]", unit="shard", disable=not progress_bar()):
            start, stop = lay.shard_range(shard)
            logits, params = teacher_views(p.cfg, model, data.x[start:stop], data.ids[start:stop], device,
                                           partners=partners)
            writer.put(split, shard, logits, params)


def teacher_views(cfg: TeacherConfig, model: nn.Module, x: torch.Tensor, ids: torch.Tensor, device: torch.device,
                  partners: view_ops.Partners | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Teacher logits of every view of ``x``: (R, V, C), and the views' drawn parameters (R, V, P) when V > 1.

    ``partners``: the samples' own split, where mixed views draw and fetch their partners.
    """
    if cfg.views == 1:
        return torch.cat(list(predict(model, x, device))).numpy()[:, None, :], None
    names = view_ops.columns(cfg.view_augment, cfg.view_mix)
    logits, params = [], []
    for v in range(cfg.views):
        rows = view_ops.draw_rows(cfg.view_augment, cfg.view_mix, ids=ids, view=v, seed=cfg.seed,
                                  size=(x.shape[-2], x.shape[-1]), partners=partners)  # (R, P)
        xv = view_ops.view_pixels(x, rows, names, partners)  # the pixels replay will rebuild from the rows
        logits.append(torch.cat(list(predict(model, xv, device))).numpy())  # (R, C)
        params.append(rows)
    return np.stack(logits, axis=1), np.stack(params, axis=1)


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
    return StoreWriter.attach(p.store_path, p.cfg.storage_options).finish()


def publish(p: TeacherPlan, model: nn.Module) -> str:
    """The single-process teacher pass: create (or resume), write every missing shard, mark complete."""
    writer = create_store(p, model)
    try:
        write_shards(p, model, writer, {s: writer.pending(s) for s in SPLITS})
        return writer.finish()
    finally:
        writer.abort()
