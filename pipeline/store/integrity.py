"""Integrity beyond the chunk CRCs: the content manifest, and the stored labels and ids against the data.

A CRC32C only proves a chunk was not damaged at rest; anyone who rewrites an
array through zarr (permuted logits, replaced labels) produces valid checksums.
So at completion the writer records, per array, the sha256 of every shard's
decoded bytes (:func:`digest`), and ``kd inspect --verify`` recomputes them. The
labels and ids are also checked against the split fingerprints recorded from
the data, which needs the data itself (rebuilt from the store's ``data_config``).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import numpy as np

from pipeline.errors import StoreError, UserError

ALGORITHM = "sha256"


def digest(values: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and C-order bytes: equal exactly when the decoded content is equal."""
    values = np.ascontiguousarray(values)
    h = hashlib.sha256(f"{values.dtype.str}{values.shape}".encode())
    h.update(values.tobytes())
    return h.hexdigest()


def shard_ranges(rows: int, shard_rows: int, per_shard: bool) -> list[tuple[int, int]]:
    """The row ranges the manifest hashes separately: one per shard, or the whole array."""
    if not per_shard:
        return [(0, rows)]
    return [(a, min(a + shard_rows, rows)) for a in range(0, rows, shard_rows)]


def check_digest(at: str, shard: int, expected: str, pieces: Iterable[np.ndarray], shape: tuple[int, ...],
                 dtype: np.dtype, *, whole: bool) -> None:
    """Compare a shard's :func:`digest` with the manifest's, hashing its rows piece by piece (``pieces``, in
    order, together of ``shape`` and ``dtype``): memory stays at one piece whatever the shard's size."""
    h = hashlib.sha256(f"{np.dtype(dtype).str}{tuple(int(n) for n in shape)}".encode())
    for piece in pieces:
        h.update(np.ascontiguousarray(piece).tobytes())
    if h.hexdigest() != expected:
        where = "its content" if whole else f"shard {shard}"
        raise StoreError(at, f"{where} differs from the manifest recorded at completion (rewritten after "
                             "publishing, with valid checksums)", "rewrite the store with `kd teacher`")


EDITED = "the store was edited after writing; rewrite it with `kd teacher`"


def check_transform(meta) -> None:
    """The recorded preprocessing and its hash agree (needs no data)."""
    from pipeline.transforms import transform_hash

    if transform_hash(meta.transform) != meta.transform_hash:
        raise StoreError("transform_hash", f"{meta.transform_hash[:16]!r} is not the hash of the recorded transform "
                         f"({transform_hash(meta.transform)})", EDITED)


def check_description(meta, ds) -> None:
    """What the store records of its data (``dataset.*``, ``transform``) against that data, rebuilt from the
    store's ``data_config``: name, classes (count, names, order), input shape and preprocessing."""
    described = ds.describe()
    recorded = meta.dataset.to_attrs()
    for key in ("name", "num_classes", "class_names", "input_shape"):
        if recorded[key] != described[key]:
            raise StoreError(f"dataset.{key}", f"the store records {_shown(recorded[key])}, the data it was written "
                             f"from has {_shown(described[key])}", EDITED)
    if meta.transform_hash != ds.transform_hash or meta.transform != json.loads(json.dumps(ds.transform)):
        raise StoreError("transform_hash", f"the store records preprocessing {meta.transform_hash}, the data it "
                         f"was written from is preprocessed as {ds.transform_hash}", EDITED)


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_fingerprints(store) -> str:
    """Compare every split's stored labels and ids with the data the store records, via its fingerprints.

    Returns what was checked, or one line saying why it could not be (the data is not available here).
    """
    meta = store.meta
    if not meta.dataset.splits:
        return "not checked: the store records no dataset fingerprints"
    from pipeline.data import store_dataset

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
    return f"checked against the data ({', '.join(meta.dataset.splits)})"
