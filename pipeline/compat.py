"""Whether a store matches data: the checks that tie a store to the data it was written from.

They sit below both stages and the store: stage 2 refuses a store from other data (:func:`check_compatible`,
at every start, cheap), and `kd inspect` goes further on demand: what the store records of its data against
the data rebuilt from its ``data_config`` (:func:`check_fingerprints`, ``--verify``), and every sample's content
(:func:`verify_data`, ``--verify-data``). The store's own integrity (checksums, manifest) needs no data and is
in :mod:`pipeline.store.integrity`.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os

import numpy as np

from pipeline.config_keys import MASK_OPTIONS
from pipeline.data import Dataset, store_dataset
from pipeline.data.labels import LabelMask, label_mask
from pipeline.errors import StoreError, UserError
from pipeline.store import SoftTargetStore
from pipeline.store.integrity import EDITED
from pipeline.store.paths import local_path


def check_compatible(store: SoftTargetStore, ds: Dataset) -> None:
    """Refuse a store written from other data, naming the first field that differs (for an image folder
    changed since, the first file added, removed or resized). Open ``ds`` with
    :func:`pipeline.data.store_dataset`, so that a changed folder is refused before any of its images is read."""
    meta = store.meta
    fix = "distill with the dataset the teacher saw, or rerun `kd teacher` on this data"
    if meta.transform_hash != ds.transform_hash:
        raise StoreError("transform_hash", f"store preprocessing {meta.transform_hash} ({_shown(meta.transform)}) "
                         f"differs from this data's {ds.transform_hash} ({_shown(ds.transform)})",
                         "pass the --image-size and --exif-orientation (or --no-exif-orientation) the store was "
                         "written with, or rerun `kd teacher`")
    if meta.dataset.name != ds.name:
        raise StoreError("dataset", f"store was written from {meta.dataset.name!r}, not {ds.name!r}", fix)
    if store.num_classes != ds.num_classes:
        raise StoreError("num_classes", f"store has {store.num_classes} classes, dataset has {ds.num_classes}", fix)
    if list(meta.dataset.class_names) != list(ds.class_names):  # same count, other names or order: other labels
        raise StoreError("dataset.class_names", f"the store's classes {_listed(meta.dataset.class_names)} are not "
                         f"this data's {_listed(ds.class_names)}", fix)
    if meta.dataset.files is not None and ds.files is not None:
        ds.files.check_unchanged(meta.dataset.files)  # free when store_dataset compared them already
    for split, info in meta.dataset.splits.items():
        if split not in ds.splits:
            continue
        n = len(ds.splits[split])
        if info.size != store.size(split):  # the store contradicts itself: say which number is which
            raise StoreError(f"splits.{split}.size", f"the store records {info.size} {split} samples but its "
                             f"arrays hold {store.size(split)} (the dataset has {n})",
                             "the store is damaged: rerun `kd teacher`")
        if info.size != n:
            raise StoreError(f"splits.{split}.size", f"store has {info.size} {split} samples, dataset has {n}", fix)
        if info.fingerprint != ds.splits[split].fingerprint():
            raise StoreError(f"splits.{split}.fingerprint", f"{split} samples or labels differ from the store's", fix)
    if store.views > 1 and ds.preprocess.train_ops:
        raise UserError("train_transform", "this store's teacher views define the augmentation (each view is "
                        "replayed exactly)", "drop --train-transform, or distill from a clean-view store")


def check_labels(store: SoftTargetStore, ds: Dataset, data_cfg) -> LabelMask:
    """The students' label mask under ``data_cfg``: refused when it leaves fewer labelled rows than classes, and,
    when the run chooses the labelled rows as the store was written for, when it differs from the store's record
    (counts or the unlabelled rows' fingerprint). A run may choose other labelled rows than the store's (the same
    train rows, other labels hidden from the students): those are its own, and accepted."""
    mask = label_mask(ds.splits["train"], data_cfg, ds.class_names)
    recorded = store.meta.dataset.labels
    written = store.meta.data_cfg()
    same = all(getattr(written, k) == getattr(data_cfg, k) for k in (*MASK_OPTIONS, "split_seed"))
    if recorded is not None and same:
        record = mask.record(ds.splits["train"])
        for key in ("labelled", "unlabelled", "fingerprint"):
            if record[key] != getattr(recorded, key):
                raise StoreError(f"dataset.labels.{key}", f"the store records {getattr(recorded, key)!s:.16}, this "
                                 f"data's label mask gives {record[key]!s:.16}",
                                 "distill with the data the teacher saw, or rerun `kd teacher` on this data")
    return mask


def _listed(names) -> str:
    text = ", ".join(names)
    return f"({text if len(text) <= 60 else text[:57] + '...'})"


def _shown(record: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(record.items()) if k != "pixels")


def check_description(meta, ds) -> None:
    """What the store records of its data (``dataset.*``, ``transform``) against that data, rebuilt from the
    store's ``data_config``: name, classes (count, names, order), input shape and preprocessing."""
    described = ds.describe()
    recorded = meta.dataset.to_attrs()
    for key in ("name", "num_classes", "class_names", "input_shape"):
        if recorded[key] != described[key]:
            raise StoreError(f"dataset.{key}", f"the store records {_brief(recorded[key])}, the data it was written "
                             f"from has {_brief(described[key])}", EDITED)
    if meta.transform_hash != ds.transform_hash or meta.transform != json.loads(json.dumps(ds.transform)):
        raise StoreError("transform_hash", f"the store records preprocessing {meta.transform_hash}, the data it "
                         f"was written from is preprocessed as {ds.transform_hash}", EDITED)


def _brief(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_fingerprints(store) -> str:
    """Compare every split's stored labels and ids with the data the store records, via its fingerprints.

    Returns what was checked, or one line saying why it could not be (the data is not available here).
    """
    meta = store.meta
    if not meta.dataset.splits:
        return "not checked: the store records no dataset fingerprints"
    try:
        ds = store_dataset(meta, cached=False)
    except StoreError:  # the data is there but differs from the store's (an image folder changed since)
        raise
    except (UserError, OSError, ValueError, RuntimeError) as exc:
        reason = exc.one_line() if isinstance(exc, UserError) else type(exc).__name__
        return f"not checked: the data the store was written from is not available here ({reason[:160]})"
    check_description(meta, ds)
    for split, recorded in meta.dataset.splits.items():
        data = ds.splits.get(split)
        if data is None:
            return f"not checked: the rebuilt data has no {split} split"
        if store.size(split) != len(data):  # compared before the stored rows are read
            raise StoreError(f"{split}/labels", f"the store holds {store.size(split)} {split} rows, the data it was "
                             f"written from has {len(data)}", "the store was edited after writing; rewrite it with "
                             "`kd teacher`")
        labels, ids = store.labels(split), store.ids(split)
        for name, stored, truth in (("ids", ids, data.ids.numpy()), ("labels", labels, data.y.numpy())):
            if stored.shape != truth.shape or not np.array_equal(stored, truth):
                bad = np.nonzero(stored != truth)[0] if stored.shape == truth.shape else [0]
                raise StoreError(f"{split}/{name}", f"differ from the data the store was written from at "
                                 f"{len(bad)} rows (first: row {int(bad[0])})",
                                 "the store was edited after writing; rewrite it with `kd teacher`")
        # The stored labels and ids equal the data's (checked above), so the data's own fingerprint is
        # the fingerprint of the stored rows with the data's pixels.
        if data.fingerprint() != recorded.fingerprint:
            raise StoreError(f"dataset.splits.{split}.fingerprint", "the stored labels and ids with the data's "
                             "pixels do not reproduce the recorded fingerprint (the data changed since)",
                             "rebuild the store from the current data with `kd teacher`")
    if meta.dataset.labels is not None:  # the unlabelled rows, as the store's own options choose them
        check_labels(store, ds, meta.data_cfg())
    return f"checked against the data ({', '.join(meta.dataset.splits)})"


def verify_data(store) -> dict[str, str]:
    """Rebuild the store's data from its recorded config and compare every split's content; raise on a mismatch."""
    meta = store.meta
    ds = store_dataset(meta, cached=False)  # an image folder's listing compared first, before any image is read
    check_compatible(store, ds)
    out = {}
    for name, info in meta.dataset.splits.items():
        expected = info.content or info.fingerprint
        if ds.splits[name].content_hash() != expected:
            raise StoreError(f"dataset.splits.{name}.content", f"{name} contents differ from the store's although "
                             "every name and size matches: a file was modified in place "
                             f"({_named(ds.splits[name], store)})", "restore the data, or rerun `kd teacher` on it")
        out[name] = expected
    return out


def _completed(store) -> float:
    """When the store was completed: its metadata file's last write on a local disk (to the nanosecond), else
    the recorded time (to the second)."""
    local = local_path(store.path)
    if local is not None:
        with contextlib.suppress(OSError):
            return os.stat(os.path.join(local, "zarr.json")).st_mtime
    return dt.datetime.fromisoformat(store.meta.completed_at or store.meta.created_at).timestamp()


def _named(split, store) -> str:
    """Which files of ``split`` changed on disk since the store was completed, by their timestamps.

    The store records one content hash per split, not one per file, so the file itself cannot be proven;
    a file's status-change time (ctime) moves with any write to it and cannot be set back by the user,
    so the files whose ctime is after the store was completed are named (a copied folder names them all).
    """
    source = split.source
    if not hasattr(source, "root"):
        return "the store records one content hash per split, so the sample cannot be named"
    since = _completed(store)
    changed = []
    for i in split.index:
        rel = source.path(int(i))
        with contextlib.suppress(OSError):
            st = os.stat(os.path.join(source.root, rel))
            if max(st.st_mtime, st.st_ctime) > since:
                changed.append(rel)
    if not changed:
        return ("no file changed on disk since the store was written, by its timestamps; the store records one "
                "content hash per split, so the file cannot be named")
    more = f", and {len(changed) - 3} more" if len(changed) > 3 else ""
    return f"changed on disk since the store was written: {', '.join(changed[:3])}{more}"
