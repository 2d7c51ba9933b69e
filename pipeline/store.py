"""The soft-target store: a self-describing Zarr v3 group of raw teacher logits.

Layout (``FORMAT_VERSION`` 1; the README's "Store format" table is the contract)::

    <name>.zarr/                 group; attributes below
      train/logits   (N, C)      float16 | float32, fill NaN
      train/labels   (N,)        int64, fill -1
      train/ids      (N,)        int64, fill -1 (stable sample ids, aligned with logits)
      train/written  (S,)        uint8, one flag per shard: the completion bitmap
      val/...  test/...          same arrays

Rows are chunked by sample and grouped into shards (one file per shard), each
chunk compressed with Blosc/zstd and followed by a CRC32C, so a flipped byte
fails loudly on read. Missing data cannot pass as zeros either: logits are
filled with NaN, the teacher never publishes NaN, so a NaN read back from a
complete store means a chunk is gone, and the reader says which.

The group attribute ``complete`` is written last; readers refuse a store
without it. Stores are opened read-only for reading. Nothing here pickles.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pipeline.errors import StoreError, UserError

FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
SPLITS = ("train", "val", "test")
ENCODING_DTYPES = {"float16": np.float16, "float32": np.float32}
DEFAULT_CHUNK_ROWS = 256
DEFAULT_SHARD_CHUNKS = 16


# ---------------------------------------------------------------- locations


def is_url(path: str) -> bool:
    return "://" in path


def join(root: str, name: str) -> str:
    """``root``/``name`` for local paths and URLs; ``name`` may not escape ``root``."""
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise UserError("store", f"store name {name!r} escapes its root", "use a plain name inside --store-root")
    return f"{root.rstrip('/')}/{name}"


def _zarr_store(path: str, read_only: bool, storage_options: dict | None = None):
    from zarr.storage import FsspecStore, LocalStore

    if is_url(path) and not path.startswith("file://"):
        return FsspecStore.from_url(path, storage_options=storage_options or {}, read_only=read_only)
    local = path[len("file://"):] if path.startswith("file://") else path
    return LocalStore(local, read_only=read_only)


def _exists(path: str, storage_options: dict | None = None) -> bool:
    if not is_url(path) or path.startswith("file://"):
        local = path[len("file://"):] if path.startswith("file://") else path
        return os.path.exists(os.path.join(local, "zarr.json"))
    import fsspec

    fs, p = fsspec.core.url_to_fs(path, **(storage_options or {}))
    return fs.exists(f"{p.rstrip('/')}/zarr.json")


# ---------------------------------------------------------------- metadata


def software_versions() -> dict[str, str]:
    import numcodecs
    import torch
    import zarr

    import pipeline

    return {
        "pipeline": pipeline.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
        "numpy": np.__version__,
    }


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class SplitLayout:
    size: int
    num_classes: int
    chunk_rows: int
    shard_rows: int

    @property
    def num_shards(self) -> int:
        return -(-self.size // self.shard_rows) if self.size else 0

    def shard_range(self, i: int) -> tuple[int, int]:
        return i * self.shard_rows, min((i + 1) * self.shard_rows, self.size)


def layout_for(size: int, num_classes: int, chunk_rows: int = DEFAULT_CHUNK_ROWS,
               shard_chunks: int = DEFAULT_SHARD_CHUNKS) -> SplitLayout:
    chunk = max(1, min(chunk_rows, size))
    return SplitLayout(size, num_classes, chunk, chunk * max(1, shard_chunks))


class StoreWriter:
    """Creates a store and writes logits shard by shard from a background thread.

    The model never waits on storage: :meth:`put` hands a finished shard to a
    queue and returns. Each shard is written whole (concurrent writers must
    never share a shard), then its flag in ``written`` is set. :meth:`finish`
    checks every flag and sets ``complete`` last.
    """

    def __init__(self, path: str, attrs: dict, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                 num_classes: int, encoding: str, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 shard_chunks: int = DEFAULT_SHARD_CHUNKS, storage_options: dict | None = None) -> None:
        import zarr
        from zarr.codecs import BloscCodec, Crc32cCodec

        if encoding not in ENCODING_DTYPES:
            raise UserError("encoding", f"unknown encoding {encoding!r}", f"choose one of: {', '.join(ENCODING_DTYPES)}")
        self.path = path
        self.encoding = encoding
        self.layouts: dict[str, SplitLayout] = {}
        store = _zarr_store(path, read_only=False, storage_options=storage_options)
        self.group = zarr.open_group(store, mode="w", zarr_format=3)
        compressors = (BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec())
        for split, (labels, ids) in splits.items():
            lay = layout_for(len(labels), num_classes, chunk_rows, shard_chunks)
            self.layouts[split] = lay
            g = self.group.create_group(split)
            n = max(lay.size, 1)
            g.create_array("logits", shape=(lay.size, num_classes), dtype=ENCODING_DTYPES[encoding],
                           chunks=(lay.chunk_rows, num_classes), shards=(lay.shard_rows, num_classes),
                           compressors=compressors, fill_value=np.nan)
            for name, values in (("labels", labels), ("ids", ids)):
                arr = g.create_array(name, shape=(lay.size,), dtype=np.int64, chunks=(min(n, 65536),),
                                     compressors=compressors, fill_value=-1)
                arr[:] = np.asarray(values, dtype=np.int64)
            g.create_array("written", shape=(lay.num_shards,), dtype=np.uint8,
                           chunks=(max(lay.num_shards, 1),), compressors=compressors, fill_value=0)
        self.group.attrs.update({**attrs, "format_version": FORMAT_VERSION, "encoding": encoding,
                                 "complete": False,
                                 "layout": {s: {"chunk_rows": l.chunk_rows, "shard_rows": l.shard_rows}
                                            for s, l in self.layouts.items()}})
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="store-writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue
            split, shard, values = item
            try:
                start, stop = self.layouts[split].shard_range(shard)
                g = self.group[split]
                g["logits"][start:stop] = values
                g["written"][shard] = 1
            except BaseException as exc:  # surfaced to the producer by finish()
                self._error = exc

    def put(self, split: str, shard: int, logits: np.ndarray) -> None:
        """Queue one whole shard of logits, shape (rows_in_shard, C)."""
        if not np.isfinite(logits).all():
            rows = np.nonzero(~np.isfinite(logits).all(axis=1))[0]
            start, _ = self.layouts[split].shard_range(shard)
            raise UserError("teacher logits", f"{len(rows)} {split} samples are NaN/inf (rows "
                            f"{', '.join(str(start + r) for r in rows[:10])})",
                            "the teacher diverged; lower its lr or check the checkpoint. Nothing was published")
        if self._error is not None:
            raise self._error
        self._queue.put((split, shard, logits.astype(ENCODING_DTYPES[self.encoding], copy=False)))

    def finish(self, extra_attrs: dict | None = None) -> str:
        """Wait for pending writes, verify the bitmap, then mark the store complete."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        for split, lay in self.layouts.items():
            written = self.group[split]["written"][:] if lay.num_shards else np.ones(0)
            missing = np.nonzero(written == 0)[0]
            if len(missing):
                raise StoreError("store", f"{split} shards {missing.tolist()} were never written", "rerun the teacher")
        self.group.attrs.update({**(extra_attrs or {}), "complete": True, "completed_at": now_iso()})
        return self.path

    def abort(self) -> None:
        """Stop the writer thread without marking anything complete."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


# ---------------------------------------------------------------- reading


class SoftTargetStore:
    """A complete store, opened read-only. Construction validates the metadata."""

    def __init__(self, path: str, storage_options: dict | None = None, require_complete: bool = True) -> None:
        import zarr

        self.path = path
        if not _exists(path, storage_options):
            raise StoreError("store", f"no soft-target store at {path!r}",
                             "pass the path printed by `kd teacher` (see `kd stores`)")
        try:
            self.group = zarr.open_group(_zarr_store(path, True, storage_options), mode="r", zarr_format=3)
        except Exception as exc:  # unreadable metadata is a user-visible store problem
            raise StoreError("store", f"cannot open {path!r} as a Zarr v3 group ({exc})",
                             "pass a store written by `kd teacher`") from None
        self.attrs = dict(self.group.attrs)
        version = self.attrs.get("format_version")
        if version not in SUPPORTED_VERSIONS:
            raise StoreError("format_version", f"store has version {version!r}, this pipeline reads "
                             f"{', '.join(map(str, SUPPORTED_VERSIONS))}", "upgrade the pipeline or rewrite the store")
        if require_complete and self.attrs.get("complete") is not True:
            raise StoreError("complete", f"store {path!r} is incomplete (the teacher run did not finish)",
                             "rerun the same `kd teacher` command to finish it")

    # --- metadata -------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.attrs["dataset"]["num_classes"])

    @property
    def encoding(self) -> str:
        return str(self.attrs["encoding"])

    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self.group]

    def size(self, split: str) -> int:
        return int(self.group[split]["logits"].shape[0])

    def chunk_rows(self, split: str) -> int:
        return int(self.group[split]["logits"].chunks[0])

    def labels(self, split: str) -> np.ndarray:
        return self._read(split, "labels", slice(None))

    def ids(self, split: str) -> np.ndarray:
        return self._read(split, "ids", slice(None))

    # --- data -----------------------------------------------------------
    def _read(self, split: str, name: str, rows: slice) -> np.ndarray:
        arr = self.group[split][name]
        try:
            values = arr[rows]
        except Exception as exc:  # checksum mismatch or undecodable chunk
            raise StoreError(f"{split}/{name}", f"chunk {self._chunk_of(arr, rows)} is corrupt ({type(exc).__name__}: "
                             f"{str(exc)[:120]})", "the store was damaged after writing; re-run `kd teacher`") from None
        bad = np.isnan(values).any(axis=-1) if values.dtype.kind == "f" else (values < 0)
        if np.any(bad):
            row = (rows.start or 0) + int(np.nonzero(bad)[0][0])
            chunk = row // arr.chunks[0]
            raise StoreError(f"{split}/{name}", f"chunk {chunk} (row {row}) is missing from the store",
                             "the store was damaged after writing; re-run `kd teacher`")
        return values

    @staticmethod
    def _chunk_of(arr, rows: slice) -> str:
        start = rows.start or 0
        stop = rows.stop if rows.stop is not None else arr.shape[0]
        first, last = start // arr.chunks[0], max(start, stop - 1) // arr.chunks[0]
        return str(first) if first == last else f"{first}..{last}"

    def read_logits(self, split: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Decoded logits (rows, C) as float32, verified (checksums, no missing chunk)."""
        stop = self.size(split) if stop is None else stop
        return self._read(split, "logits", slice(start, stop)).astype(np.float32, copy=False)

    def iter_chunks(self, split: str) -> Iterator[tuple[int, np.ndarray]]:
        """(start row, logits) per chunk, in order: each chunk is decoded exactly once."""
        rows = self.chunk_rows(split)
        for start in range(0, self.size(split), rows):
            yield start, self.read_logits(split, start, start + rows)

    def verify(self) -> dict[str, int]:
        """Decode every chunk of every array: checksums, missing chunks, NaN. Returns rows checked."""
        checked = {}
        for split in self.splits():
            for _ in self.iter_chunks(split):
                pass
            self.labels(split)
            self.ids(split)
            checked[split] = self.size(split)
        return checked

    # --- size -----------------------------------------------------------
    def nbytes_stored(self) -> int:
        total = 0
        for split in self.splits():
            for name in ("logits", "labels", "ids", "written"):
                total += int(self.group[split][name].nbytes_stored())
        return total

    def summary(self) -> dict:
        """What ``kd inspect`` prints: metadata plus size, bytes per sample and compression ratio."""
        stored = self.nbytes_stored()
        logits_stored = sum(int(self.group[s]["logits"].nbytes_stored()) for s in self.splits())
        logits_raw = sum(int(self.group[s]["logits"].nbytes) for s in self.splits())
        n = sum(self.size(s) for s in self.splits())
        return {
            "path": self.path,
            **{k: v for k, v in self.attrs.items()},
            "samples": {s: self.size(s) for s in self.splits()},
            "bytes_stored": stored,
            "bytes_per_sample": stored / max(n, 1),
            "logits_bytes_per_sample": logits_stored / max(n, 1),
            "compression_ratio": logits_raw / max(logits_stored, 1),
        }


def find_stores(root: str, storage_options: dict | None = None) -> list[str]:
    """Paths of the ``*.zarr`` stores directly under ``root`` (local or URL)."""
    if not is_url(root) or root.startswith("file://"):
        local = root[len("file://"):] if root.startswith("file://") else root
        if not os.path.isdir(local):
            raise UserError("root", f"{root!r} is not a directory", "pass the folder given as --store-root")
        return sorted(os.path.join(root, d) for d in os.listdir(local) if d.endswith(".zarr"))
    import fsspec

    fs, p = fsspec.core.url_to_fs(root, **(storage_options or {}))
    protocol = root.split("://", 1)[0]
    return sorted(f"{protocol}://{e.rstrip('/')}" for e in fs.ls(p, detail=False) if e.rstrip("/").endswith(".zarr"))
