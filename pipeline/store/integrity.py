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
from collections.abc import Iterable

import numpy as np

from pipeline.errors import StoreError

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
