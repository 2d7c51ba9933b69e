"""The arrays a store must hold, derived from its attributes alone, and the one check every opener goes through.

The writer creates exactly :func:`expected_arrays`; every reader (``kd inspect``,
``kd stores``, stage 2, a resuming writer) calls :func:`check_arrays` right after
parsing the attributes, so a deleted array, a changed dtype, a shape that
disagrees with the recorded sizes or a chunk grid nobody wrote is refused in one
line naming the array, before any chunk is read or allocated.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from pipeline.errors import StoreError, UserError
from pipeline.store.codec import encoding
from pipeline.names import SPLITS
from pipeline.store.layout import MAX_CHUNK_BYTES, chunk_bytes
from pipeline.store.meta import StoreMeta

# labels and ids are one chunk each up to this many rows (they are read whole).
LABEL_CHUNK_ROWS = 65536
REWRITE = "the store was damaged or edited after writing; rewrite it with `kd teacher`"


@dataclass(frozen=True)
class ArraySpec:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    fill: float | int
    per_shard: bool  # rows grouped like the logits (hashed per shard); else hashed whole


def num_shards(rows: int, shard_rows: int) -> int:
    return -(-rows // shard_rows) if rows else 0


def expected_arrays(meta: StoreMeta, split: str) -> list[ArraySpec]:
    """Every array of ``split`` as the attributes define it: name, shape (N, V, C or K), dtype, chunks, fill."""
    lay = meta.layout[split]
    n, v, c = lay.rows, meta.views.count, meta.dataset.num_classes
    cols = encoding(meta.encoding).columns(v, c)
    if v > 1:
        # One float32 column per drawn parameter, named in views.params.
        cols["view_params"] = ((v, len(meta.views.params or ())), np.float32, np.nan)
    specs = [ArraySpec(name, (n, *tail), np.dtype(dtype), (lay.chunk_rows, *tail), (lay.shard_rows, *tail), fill,
                       True) for name, (tail, dtype, fill) in cols.items()]
    one = (min(max(n, 1), LABEL_CHUNK_ROWS),)
    specs += [ArraySpec(name, (n,), np.dtype(np.int64), one, None, -1, False) for name in ("labels", "ids")]
    # One chunk per flag: writers in other processes set their flags without touching each other's.
    specs.append(ArraySpec("written", (num_shards(n, lay.shard_rows),), np.dtype(np.uint8), (1,), None, 0, False))
    return specs


def data_arrays(meta: StoreMeta, split: str) -> list[ArraySpec]:
    """The arrays whose content the manifest covers (everything but the ``written`` bitmap)."""
    return [spec for spec in expected_arrays(meta, split) if spec.name != "written"]


def check_layout(meta: StoreMeta) -> None:
    """The attributes agree with themselves: known splits, sizes and a sane chunk grid."""
    if not meta.layout:
        raise StoreError("layout", "lists no split", REWRITE)
    for split, lay in meta.layout.items():
        at = f"layout.{split}"
        if split not in SPLITS:
            raise StoreError(at, f"unknown split (expected {', '.join(SPLITS)})", REWRITE)
        if lay.rows < 0 or lay.chunk_rows < 1 or lay.shard_rows < lay.chunk_rows or lay.shard_rows % lay.chunk_rows:
            raise StoreError(at, f"impossible layout (rows {lay.rows}, chunk_rows {lay.chunk_rows}, "
                                 f"shard_rows {lay.shard_rows})", REWRITE)
        if lay.rows and lay.chunk_rows > lay.rows:
            raise StoreError(f"{at}.chunk_rows", f"{lay.chunk_rows} exceeds the split's {lay.rows} rows", REWRITE)
        size = chunk_bytes(lay.chunk_rows, max(meta.views.count, 1), max(meta.dataset.num_classes, 1))
        if size > MAX_CHUNK_BYTES:  # checked before any chunk is allocated
            raise StoreError(f"{at}.chunk_rows", f"{lay.chunk_rows} rows decode to {size / 2**20:.0f} MiB per chunk, "
                             f"over the {MAX_CHUNK_BYTES >> 20} MiB a reader allocates for one", REWRITE)
    splits = meta.dataset.splits
    if splits:  # a store written from a dataset records every split it holds, with its size
        if set(splits) != set(meta.layout):
            raise StoreError("dataset.splits", f"lists {sorted(splits)} but the layout has {sorted(meta.layout)}",
                             REWRITE)
        for split, info in splits.items():
            if info.size != meta.layout[split].rows:
                raise StoreError(f"dataset.splits.{split}.size", f"{info.size} disagrees with "
                                 f"layout.{split}.rows {meta.layout[split].rows}", REWRITE)
    labels, train = meta.dataset.labels, meta.layout.get("train")
    if labels is not None and train is not None and labels.labelled + labels.unlabelled > train.rows:
        raise StoreError("dataset.labels", f"counts {labels.labelled} + {labels.unlabelled} exceed the {train.rows} "
                         "train rows", REWRITE)
    if meta.views.count < 1 or meta.dataset.num_classes < 1:
        raise StoreError("views.count" if meta.views.count < 1 else "dataset.num_classes", "must be positive", REWRITE)
    try:
        enc = encoding(meta.encoding)
    except UserError:  # it names --encoding; here the bad value is the store's attribute
        raise StoreError("encoding", f"unknown encoding {meta.encoding[:40]!r}", REWRITE) from None
    try:
        enc.validate(meta.dataset.num_classes)
    except UserError:
        raise StoreError("encoding", f"{meta.encoding} for {meta.dataset.num_classes} classes", REWRITE) from None


def check_arrays(group, meta: StoreMeta) -> dict[tuple[str, str], object]:
    """Open every array the contract lists and check it against its spec; returns the handles by (split, name)."""
    check_layout(meta)
    keys = [(split, None) for split in meta.layout]
    keys += [(split, spec.name) for split in meta.layout for spec in expected_arrays(meta, split)]
    opened = dict(zip(keys, open_members(group, [s if n is None else f"{s}/{n}" for s, n in keys])))
    handles = {}
    for split in meta.layout:
        if isinstance(opened[(split, None)], Exception):  # KeyError (absent), or unreadable group metadata
            if isinstance(opened[(split, None)], StoreError):
                raise opened[(split, None)]
            raise StoreError(split, "group is missing from the store (or its zarr.json is unreadable)", REWRITE)
        for spec in expected_arrays(meta, split):
            handles[(split, spec.name)] = _check_array(opened[(split, spec.name)], split, spec)
    if meta.manifest is not None:
        expected = {f"{s}/{a.name}" for s in meta.layout for a in data_arrays(meta, s)}
        if set(meta.manifest.arrays) != expected:
            extra, missing = sorted(set(meta.manifest.arrays) - expected), sorted(expected - set(meta.manifest.arrays))
            raise StoreError("manifest.arrays", f"does not cover the store's arrays (missing {missing[:4]}, "
                             f"unknown {extra[:4]})", REWRITE)
    return handles


def open_members(group, paths: list[str]) -> list:
    """``group[path]`` for every path, with their metadata read concurrently; a failure comes back as its exception.

    Opening is one metadata read per member. In turn they cost a round trip each through zarr's event loop
    (about 1 ms on a local disk, far more on an object store), which made opening a store cost more than
    reading a small split's logits; gathered, they overlap.
    """
    import zarr
    from zarr.core.sync import sync

    async def gather() -> list:
        return await asyncio.gather(*(group._async_group.getitem(p) for p in paths), return_exceptions=True)

    wrap = {zarr.core.group.AsyncGroup: zarr.Group, zarr.AsyncArray: zarr.Array}
    return [m if isinstance(m, BaseException) else wrap[type(m)](m) for m in sync(gather())]


def _shape_field(at: str, spec: ArraySpec, shape: tuple[int, ...]) -> str:
    """The attribute a shape disagrees with: views per sample, the class count, else the array itself."""
    if len(shape) == len(spec.shape) and shape[0] == spec.shape[0] and len(shape) > 1:
        if shape[1] != spec.shape[1]:
            return "views.count"
        if spec.name == "logits" and shape[2] != spec.shape[2]:
            return "num_classes"
    return at


def _check_array(arr, split: str, spec: ArraySpec):
    """``arr``: the opened array, or the exception opening it raised."""
    at = f"{split}/{spec.name}"
    try:
        if isinstance(arr, BaseException):
            raise arr
        shape, dtype, chunks, shards = tuple(arr.shape), np.dtype(arr.dtype), tuple(arr.chunks), arr.shards
    except StoreError:
        raise
    except Exception as exc:  # KeyError (absent), or metadata zarr cannot parse (e.g. a NaN fill for an int dtype)
        problem = "is missing from the store" if isinstance(exc, KeyError) else \
            f"has unreadable array metadata ({type(exc).__name__})"
        raise StoreError(at, problem, REWRITE) from None
    if dtype != spec.dtype:
        raise StoreError(at, f"dtype is {dtype}, the contract says {spec.dtype}", REWRITE)
    if shape != spec.shape:
        field = _shape_field(at, spec, shape)
        raise StoreError(field, f"{'' if field == at else at + ' '}has shape {shape}, the attributes record "
                                f"{spec.shape}", REWRITE)
    if chunks != spec.chunks or (tuple(shards) if shards else None) != spec.shards:
        raise StoreError(at, f"chunks {chunks} / shards {shards} differ from the recorded layout "
                             f"({spec.chunks} / {spec.shards})", REWRITE)
    return arr
