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

from pipeline import preprocessing, views
from pipeline.checkpoints import load_model, save_state_dict
from pipeline.config import TeacherConfig
from pipeline.data import Dataset, open_dataset
from pipeline.data.labels import label_mask
from pipeline.data.unlabelled import check_overlap
from pipeline.errors import StoreError, UserError, disk_full_is_a_user_error
from pipeline.file_hash import sha256_file
from pipeline.loader import read_batches, row_batches
from pipeline.models import SourcePlan, check_source, count_parameters, resolve_device
from pipeline.names import SPLITS
from pipeline.output_checks import check_output_folder, check_store_root
from pipeline.precision import compute_dtype, precision_name, prepare, widest
from pipeline.serialize import config_hash, to_dict
from pipeline.store import (DatasetMeta, LineageEntry, Provenance, SoftTargetStore, StoreWriter, TeacherMeta,
                            ViewsMeta, join, now_iso, published_meta, software_versions)
from pipeline.store.codec import encoding
from pipeline.store.layout import MAX_CHUNK_BYTES, chunk_bytes
from pipeline.train import Progress, build_seeded, evaluate, evaluate_splits, fit_teacher, predict

log = logging.getLogger(__name__)

# A full disk while the store is written: one line; the unfinished copy stays, and the same command resumes it.
_store_disk_full = disk_full_is_a_user_error("store_root", lambda p, *a, **k: f"the store {p.store_path}")


def view_record(cfg: TeacherConfig) -> ViewsMeta:
    """How the stored views were drawn: seed, ops and the names of their stored parameters (pipeline.views)."""
    if cfg.views == 1:
        return ViewsMeta(count=1)
    return ViewsMeta(count=cfg.views, seed=cfg.seed, augment=asdict(cfg.view_augment),
                     params=views.columns(cfg.view_augment, cfg.view_mix),
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

    cfg: TeacherConfig  # data.model_preprocessing resolved from the model (see plan)
    provenance_key: str
    store_path: str
    checkpoint_path: str
    checkpoint_sha256: str | None  # known up front only when loading a given checkpoint (or a file: model)
    source: SourcePlan = SourcePlan(source="builtin")  # what the model's options resolved to
    # The precision the logits pass computes in: None, the device's choice (pipeline.precision: float32 on the
    # CPU, autocast on CUDA). Tests set "bfloat16" to write a store under CPU autocast.
    precision: str | None = None

    @property
    def dataset(self) -> Dataset:
        return open_dataset(self.cfg.data)

    @property
    def pass_precision(self) -> str:
        """What the logits pass computes in on this process's device, as the store records it."""
        return precision_name(compute_dtype(resolve_device(self.cfg.device), fast=True, precision=self.precision))

    @property
    def as_is(self) -> bool:
        """The teacher is used as it is (pretrained, never trained here)."""
        return uses_as_is(self.cfg)

    @property
    def checkpoint_ready(self) -> bool:
        """A teacher checkpoint for this provenance exists (given, or left by an earlier run): no training."""
        return os.path.isfile(self.checkpoint_path)

    @property
    def reusable(self) -> bool:
        """A complete store with this provenance key is published at the store's name.

        Anything else already there (other content, another format version, a damaged store) is refused here,
        before any training: a published store is never overwritten.
        """
        there = published_meta(self.store_path, self.cfg.storage_options)
        if there is None:
            return False
        if there.provenance_key != self.provenance_key:
            raise StoreError("store", f"{self.store_path!r} is a complete store of other content (provenance_key "
                             f"{there.provenance_key[:12]}…)", "move or delete it: it is never overwritten")
        return True


def uses_as_is(cfg: TeacherConfig) -> bool:
    """Whether the teacher is used as it is: asked for, or a whole model from a file (never trained here)."""
    return cfg.as_is or cfg.model.source == "file"


def with_preprocessing(cfg: TeacherConfig) -> TeacherConfig:
    """``cfg`` with its data carrying the model's evaluation preprocessing (resolved from its source and options),
    so that every stage reads the pixels the teacher expects, and the store records them."""
    pre = preprocessing.resolve(cfg.model)
    if pre == cfg.data.model_preprocessing:
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, model_preprocessing=pre))


def _check_as_is(cfg: TeacherConfig) -> None:
    if cfg.as_is and cfg.checkpoint is not None:
        raise UserError("as_is", "--checkpoint already loads the teacher as it is", "drop --as-is")
    if cfg.as_is and cfg.model.source == "builtin" and cfg.model.weights is None:
        raise UserError("as_is", f"{cfg.model.arch} from scratch has nothing pretrained to use as it is",
                        "pass --weights, a torchvision:/timm: model with weights, a py: factory or a file: model")
    if cfg.model.source == "file" and cfg.checkpoint is not None:
        raise UserError("checkpoint", f"{cfg.model.arch} holds its own weights", "drop --checkpoint")


def plan(cfg: TeacherConfig) -> TeacherPlan:
    """Everything that can fail on user input, checked before any training: the checkpoint (loaded once),
    the output locations, the device, the dataset and what the encoding asks of it, the model's source (its
    factory or file, its weights, its preprocessing, its classes)."""
    codec = encoding(cfg.encoding)  # a misspelt name is refused before anything is read
    _check_as_is(cfg)
    cfg = with_preprocessing(cfg)
    if cfg.checkpoint is not None and os.path.isdir(cfg.checkpoint):
        raise UserError("checkpoint", f"{cfg.checkpoint!r} is a directory", "pass a .pt file written by `kd teacher`")
    if cfg.checkpoint is not None and not os.path.isfile(cfg.checkpoint):
        raise UserError("checkpoint", f"{cfg.checkpoint!r} does not exist", "pass a file written by `kd teacher`")
    check_store_root(cfg.store_root, cfg.storage_options)
    check_output_folder(cfg.checkpoint_root, field="checkpoint_root",
                        fix="pass a folder for teacher checkpoints, e.g. data/checkpoints")
    resolve_device(cfg.device)
    ds = open_dataset(cfg.data)
    # The labelled rows (enough of them for every class) and an unlabelled folder that shares no file with the
    # labelled data, checked before anything is trained or written.
    label_mask(ds.splits["train"], cfg.data, ds.class_names)
    check_overlap(ds, cfg.data)
    codec.validate(ds.num_classes)
    views.check_mixable(cfg.view_mix, ds.splits)
    if cfg.chunk_rows is not None:
        rows = min(cfg.chunk_rows, max(len(split) for split in ds.splits.values()))
        size = chunk_bytes(rows, cfg.views, ds.num_classes)
        if size > MAX_CHUNK_BYTES:
            raise UserError("chunk_rows", f"{cfg.chunk_rows} rows of {cfg.views} x {ds.num_classes} logits are "
                            f"{size / 2**20:.0f} MiB per chunk, over the {MAX_CHUNK_BYTES >> 20} MiB a reader "
                            "allocates for one", "pass a smaller --chunk-rows, or omit it for about 1 MB per chunk")
    as_is = uses_as_is(cfg)
    source = check_source(cfg.model, shape=ds.input_shape, num_classes=ds.num_classes, class_names=ds.class_names,
                          as_is=as_is, download=cfg.data.download)
    # A given checkpoint, or a file: model, which is its own checkpoint.
    given = cfg.model.arch.partition(":")[2] if cfg.model.source == "file" else cfg.checkpoint
    ckpt_sha = sha256_file(given) if given else None
    parent = lineage_of(cfg.parent_store, cfg.storage_options) if cfg.parent_store else ()
    teacher_part = {"parent": parent[0].provenance_key if parent else None,
                    "model": cfg.model.key(), "optim": cfg.optim.key(), "augment": to_dict(cfg.augment),
                    "seed": cfg.seed, "checkpoint_sha256": ckpt_sha, "views": view_record(cfg).to_attrs()}
    # Added only when set, so the keys of every store of an earlier kind are unchanged.
    teacher_part |= {k: v for k, v in (("weights_sha256", source.weights_sha256), ("as_is", as_is or None),
                                       ("class_map", source.class_map)) if v is not None}
    key = config_hash({"teacher": teacher_part, "data": cfg.data.key(), "fingerprints": ds.fingerprints(),
                       "transform": ds.transform_hash, "encoding": cfg.encoding})
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", ds.name).strip("_")
    name = f"{slug}-{cfg.model.slug}-{key[:10]}"
    ckpt = given or os.path.join(cfg.checkpoint_root, f"{name}.pt")
    p = TeacherPlan(cfg=cfg, provenance_key=key, store_path=join(cfg.store_root, f"{name}.zarr"),
                    checkpoint_path=ckpt, checkpoint_sha256=ckpt_sha, source=source)
    if cfg.checkpoint is not None or (p.checkpoint_ready and not p.reusable and cfg.model.source != "file"):
        # Loaded once here, so a checkpoint that does not fit the architecture fails now, as a user
        # error (never retried), not in the publishing task after a teacher was trained.
        fix = ("pass the --arch/--width it was trained with" if cfg.checkpoint is not None
               else "delete it to train the teacher again")
        load_model(ckpt, model=cfg.model, input_shape=ds.input_shape, num_classes=ds.num_classes, fix=fix,
                   outputs=source.outputs, class_map=source.class_map)
    return p


def progress_bar() -> bool:
    """Show tqdm bars only on an interactive terminal (logs and CI stay clean)."""
    return sys.stderr.isatty()


def _save_checkpoint(plan: TeacherPlan, model: nn.Module) -> None:
    os.makedirs(os.path.dirname(plan.checkpoint_path) or ".", exist_ok=True)
    save_state_dict(model, plan.checkpoint_path, field="checkpoint_root")


def train(plan: TeacherPlan, progress: Progress | None = None) -> nn.Module:
    """Train the teacher on hard labels, select on val, save the checkpoint. A teacher used as it is is only
    built from its pretrained weights and saved, so that every later step loads it as it loads a trained one."""
    cfg, ds = plan.cfg, plan.dataset
    if plan.as_is:
        model = build_seeded(cfg.model, ds.input_shape, ds.num_classes, seed=cfg.seed, outputs=plan.source.outputs,
                             class_map=plan.source.class_map).eval()
        _save_checkpoint(plan, model)
        return model.to(resolve_device(cfg.device))
    # Rows without a label (--unlabelled samples) are left out of its training: a hard loss needs a class. With
    # --labelled-fraction/-per-class every row keeps its true label here; only the students lose theirs.
    mask = label_mask(ds.splits["train"], cfg.data, ds.class_names)
    train_rows = ds.splits["train"] if mask.has_label.all() else ds.splits["train"].subset(mask.rows("has_label"))
    result = fit_teacher(model_cfg=cfg.model, optim=cfg.optim, augment=cfg.augment, train=train_rows,
                         val=ds.splits["val"], input_shape=ds.input_shape, num_classes=ds.num_classes,
                         device=resolve_device(cfg.device), seed=cfg.seed, progress=progress, workers=cfg.workers)
    if result.model is None:
        raise UserError("teacher", f"training failed: {result.failed}", "lower --lr or change the optimizer")
    if ds.files is not None:
        # Training decoded train and val; decode the test images too before anything is written, so an
        # unreadable file fails the run with nothing on disk (the store's evaluation reads them next anyway).
        evaluate(result.model, ds.splits["test"], resolve_device(cfg.device), workers=cfg.workers)
    _save_checkpoint(plan, result.model)
    return result.model


def load(plan: TeacherPlan) -> nn.Module:
    """Load ``cfg.checkpoint`` (weights only: a checkpoint can never run code)."""
    cfg, ds = plan.cfg, plan.dataset
    model = load_model(plan.checkpoint_path, model=cfg.model, input_shape=ds.input_shape, num_classes=ds.num_classes,
                       fix="pass the --arch/--width it was trained with", outputs=plan.source.outputs,
                       class_map=plan.source.class_map)
    return model.to(resolve_device(cfg.device))


@_store_disk_full
def create_store(plan: TeacherPlan, model: nn.Module, *, defer: bool = False) -> StoreWriter:
    """Create the store (or reopen an incomplete one to resume it); the teacher's scores come with the pass.

    ``defer``: a new store's files are written later, by :func:`write_shards` once its reader has started.
    """
    cfg, ds = plan.cfg, plan.dataset
    provenance = Provenance(
        created_at=now_iso(),
        provenance_key=plan.provenance_key,
        teacher=TeacherMeta(
            arch=cfg.model.arch, width=cfg.model.width, params=count_parameters(model),
            source=plan.source.source, weights=plan.source.weights, weights_sha256=plan.source.weights_sha256,
            preprocessing=plan.source.preprocessing.record() if plan.source.preprocessing is not None else None,
            outputs=plan.source.outputs, class_map=plan.source.class_map, class_map_names=plan.source.class_map_names,
            checkpoint=plan.checkpoint_path,
            # A given checkpoint was hashed by plan() into the provenance key (a large file is not read twice);
            # one trained by this run is hashed now.
            checkpoint_sha256=plan.checkpoint_sha256 or sha256_file(plan.checkpoint_path),
            trained_here=cfg.checkpoint is None and not plan.as_is, config=public_config(cfg),
            # Scored from the logits pass itself (record_scores) before the store is marked complete; until
            # then these placeholders stand in (training readers open complete stores only, and `kd inspect`
            # / `kd stores` show an unfinished store's scores as "—").
            val_acc=UNSCORED, test_acc=UNSCORED, val_nll=UNSCORED, test_nll=UNSCORED,
            precision=plan.pass_precision,
        ),
        dataset=DatasetMeta.from_attrs({**ds.describe(), "labels": label_mask(
            ds.splits["train"], cfg.data, ds.class_names).record(ds.splits["train"])}, at="dataset"),
        data_config=asdict(cfg.data),
        transform=ds.transform,
        transform_hash=ds.transform_hash,
        software=software_versions(),
        views=view_record(cfg),
        lineage=lineage_of(cfg.parent_store, cfg.storage_options) if cfg.parent_store else (),
    )
    splits = {s: (ds.splits[s].y.numpy(), ds.splits[s].ids.numpy()) for s in SPLITS}
    writer = StoreWriter(plan.store_path, provenance, splits, encoding=cfg.encoding, chunk_rows=cfg.chunk_rows,
                         shard_chunks=cfg.shard_chunks, storage_options=cfg.storage_options, defer_create=defer)
    if writer.reused:
        log.info("%s was published by a concurrent run meanwhile; reusing it", plan.store_path)
    elif writer.resumed:
        log.info("resuming incomplete store %s: %s shards left", plan.store_path,
                 {s: len(writer.pending(s)) for s in splits})
        # A resumed store keeps its own attributes; if it was started on another device, its logits mix two
        # precisions and the record keeps the less precise (a version 3 store records none: left unknown).
        recorded = writer.meta.teacher.precision
        if recorded is not None and widest(recorded, plan.pass_precision) != recorded:
            writer.meta = dataclasses.replace(writer.meta, teacher=dataclasses.replace(
                writer.meta.teacher, precision=widest(recorded, plan.pass_precision)))
    return writer


UNSCORED = -1.0  # the teacher's val/test scores in an unfinished store's attributes
SCORED_SPLITS = ("val", "test")


@dataclass
class ScoreSum:
    """Running accuracy and NLL of the teacher's clean-view logits over the rows of one split seen in a pass."""
    correct: int = 0
    nll: float = 0.0  # summed over rows, float64
    rows: int = 0

    def add(self, logits: np.ndarray, labels: torch.Tensor) -> None:
        """logits (R, C) float32, labels (R,) int64."""
        z = torch.from_numpy(logits)
        self.correct += int((z.argmax(1) == labels).sum())
        self.nll += float(torch.nn.functional.cross_entropy(z.double(), labels, reduction="sum"))
        self.rows += len(labels)


def write_shards(plan: TeacherPlan, model: nn.Module, writer: StoreWriter, work: dict[str, list[int]],
                 scores: dict[str, ScoreSum] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Run the teacher over the given shards of each split and queue them; the caller closes the writer.

    Images are read and decoded by ``cfg.workers`` DataLoader workers, started once for every split of the
    pass, in batches that never cross a shard, so each finished shard is queued at once. Returns, per split, the
    sha256 of every file read ((N, 32) uint8) and which rows were read ((N,) bool): the split's content hash
    without another read.
    ``scores``: per split, the teacher's accuracy and NLL on the clean view (view 0) are summed into it, so
    the store's val/test scores need no second pass over those images.
    """
    device = resolve_device(plan.cfg.device)
    model = prepare(model, device, fast=True)  # channels_last on CUDA; autocast in teacher_views
    splits = {name: plan.dataset.splits[name] for name in work}
    seen = {name: (np.zeros((len(s), 32), np.uint8), np.zeros(len(s), bool)) for name, s in splits.items()}
    # Mixed views: partners come from the sample's own split.
    partners = {name: views.Partners(s, name) if plan.cfg.view_mix.ops else None for name, s in splits.items()}
    plan_ = [(name, shard, rows) for name, shards in work.items() for shard in shards
             for rows in row_batches(np.arange(*writer.layouts[name].shard_range(shard)), PASS_BATCH)]
    # One reader for every split: DataLoader workers are started once for the whole pass. Extra views are
    # drawn from the CPU pixels, as stage 2's workers replay them, so only a single view's batch is joined
    # on the device.
    batches = read_batches(splits, [(name, rows) for name, _, rows in plan_], workers=plan.cfg.workers,
                           device=device if plan.cfg.views == 1 else torch.device("cpu"), digests=True)
    writer.create()  # a new store's files, written while the workers start and read the first images
    parts: list[tuple[np.ndarray, np.ndarray | None]] = []
    bar = tqdm(total=sum(len(v) for v in work.values()), desc="teacher logits", unit="shard", leave=False,
               disable=not progress_bar())  # leave=False: a finished pass is erased, like the training bars
    for (name, shard, rows), (x, d) in zip(plan_, batches, strict=True):
        if d is not None:
            digests, known = seen[name]
            digests[rows], known[rows] = d, True
        parts.append(teacher_views(plan.cfg, model, x, splits[name].ids[torch.from_numpy(rows)], device,
                                   partners=partners[name], precision=plan.precision))
        if scores is not None and name in scores:
            scores[name].add(parts[-1][0][:, 0], splits[name].y[torch.from_numpy(rows)])  # view 0: clean
        if rows[-1] + 1 == writer.layouts[name].shard_range(shard)[1]:  # the shard's last batch: queue it whole
            logits = np.concatenate([lg for lg, _ in parts])
            params = None if parts[0][1] is None else np.concatenate([pr for _, pr in parts])  # type: ignore[misc]
            writer.put(name, shard, logits, params)
            parts = []
            bar.update(1)
    bar.close()
    return seen


PASS_BATCH = 512  # images per teacher forward in the logits pass


def teacher_views(cfg: TeacherConfig, model: nn.Module, x: torch.Tensor, ids: torch.Tensor, device: torch.device,
                  partners: views.Partners | None = None,
                  precision: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Teacher logits of every view of ``x``: (R, V, C) float32, and the views' drawn parameters (R, V, P) when V > 1.

    ``partners``: the samples' own split, where mixed views draw and fetch their partners (read through
    the lazy split, only the partners a batch needs). On CUDA the teacher runs under autocast,
    channels_last (:mod:`pipeline.precision`); logits are cast to float32 before they are encoded.
    ``precision``: :attr:`TeacherPlan.precision` (None: the device's choice).
    """
    if cfg.views == 1:
        return torch.cat(list(predict(model, x, device, batch_size=PASS_BATCH, fast=True,
                                      precision=precision))).numpy()[:, None, :], None
    names = views.columns(cfg.view_augment, cfg.view_mix)
    logits, params = [], []
    for v in range(cfg.views):
        rows = views.draw_rows(cfg.view_augment, cfg.view_mix, ids=ids, view=v, seed=cfg.seed,
                                  size=(x.shape[-2], x.shape[-1]), partners=partners)  # (R, P)
        xv = views.view_pixels(x, rows, names, partners)  # the pixels replay will rebuild from the rows
        logits.append(torch.cat(list(predict(model, xv, device, batch_size=PASS_BATCH, fast=True,
                                             precision=precision))).numpy())  # (R, C)
        params.append(rows)
    return np.stack(logits, axis=1), np.stack(params, axis=1)


def record_scores(plan: TeacherPlan, writer: StoreWriter, scores: dict[str, ScoreSum],
                  model: nn.Module | None = None) -> None:
    """Put the teacher's val/test accuracy and NLL into the store's record before it is marked complete.

    A split whose every row went through this process's pass is scored from those logits; one that did
    not (a resumed store, a pass split over tasks) is evaluated now, which reads its images once more.
    """
    if writer.reused or writer.meta.complete:  # published, or completed by a run cut off before its rename
        return
    ds = plan.dataset
    metrics = {name: {"acc": s.correct / s.rows, "nll": s.nll / s.rows} for name, s in scores.items()
               if s.rows == len(ds.splits[name]) > 0}
    rest = [name for name in SCORED_SPLITS if name not in metrics]
    if rest:
        model = model if model is not None else load(plan)
        metrics |= evaluate_splits(model, {name: ds.splits[name] for name in rest}, resolve_device(plan.cfg.device),
                                   workers=plan.cfg.workers, fast=True)
    writer.meta = dataclasses.replace(writer.meta, teacher=dataclasses.replace(
        writer.meta.teacher, val_acc=metrics["val"]["acc"], test_acc=metrics["test"]["acc"],
        val_nll=metrics["val"]["nll"], test_nll=metrics["test"]["nll"]))


def record_content(plan: TeacherPlan, writer: StoreWriter, seen: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Put each split's full content hash into the store's dataset record before it is marked complete.

    Only image folders have one apart from their fingerprint. The files this process read in the pass
    are hashed already (``seen``); the others (shards written by an earlier, cut-off run or by other
    writers) are read now.
    """
    ds = plan.dataset
    if ds.files is None:
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


@_store_disk_full
def write_part(plan: TeacherPlan, work: dict[str, list[int]]) -> None:
    """One writer of a split teacher pass: attach to the created store and write only ``work``."""
    writer = StoreWriter.attach(plan.store_path, plan.cfg.storage_options)
    try:
        write_shards(plan, load(plan), writer, work)
    finally:
        writer.close()


@_store_disk_full
def finalize(plan: TeacherPlan) -> str:
    """After every part is written: check the bitmap, mark the store complete and publish it.

    If it is published already (a concurrent run finished it first), it is returned as it is.
    """
    there = published_meta(plan.store_path, plan.cfg.storage_options)
    if there is not None and there.provenance_key == plan.provenance_key:
        return plan.store_path
    writer = StoreWriter.attach(plan.store_path, plan.cfg.storage_options)
    try:
        record_scores(plan, writer, {})  # the parts' logits stayed in their processes: evaluate val and test here
        record_content(plan, writer, {})  # the parts' digests stayed in their processes: read the files once more
    except BaseException:
        writer.close()  # stop its thread; the lease stays with the run, whose retry finishes the store
        raise
    return writer.finish()


@_store_disk_full
def publish(plan: TeacherPlan, model: nn.Module) -> str:
    """The single-process teacher pass: create (or resume), write every missing shard, mark complete."""
    writer = create_store(plan, model, defer=True)
    try:
        scores = {s: ScoreSum() for s in SCORED_SPLITS}
        seen = write_shards(plan, model, writer, {s: writer.pending(s) for s in SPLITS}, scores)
        record_scores(plan, writer, scores, model)
        record_content(plan, writer, seen)
        return writer.finish()
    except UserError as exc:
        if not isinstance(exc, StoreError):  # the input is bad (an image that cannot be decoded): keep nothing
            writer.discard()
        raise
    finally:
        writer.abort()
