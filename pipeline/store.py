"""The soft-target store: a self-describing Zarr v3 group of raw teacher logits.

Layout (``FORMAT_VERSION`` 2; the README's "Store format" table is the contract)::

    <name>.zarr/                 group; attributes below
      train/logits   (N, V, C)   float16 | float32, fill NaN (V teacher views per sample; view 0 is clean)
      train/view_params (N, V, 4) float32 [dx, dy, flip, angle] of each view (only when V > 1)
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

from pipeline.config import parse_encoding  # noqa: F401  (re-exported: the codec's names)
from pipeline.errors import StoreError, UserError

FORMAT_VERSION = 2  # 2: a views axis (N, V, C) on every logits array
SUPPORTED_VERSIONS = (2,)
SPLITS = ("train", "val", "test")
ENCODING_DTYPES = {"float16": np.float16, "float32": np.float32}
DEFAULT_CHUNK_ROWS = None  # auto: about CHUNK_TARGET_BYTES of decoded logits per chunk
DEFAULT_SHARD_CHUNKS = 16
# Each chunk read costs a fixed overhead (zarr's machinery, one codec call), so chunks must be big
# enough to amortise it: ~1 MB of decoded float32 reads about 10x faster than 256 rows of 100 classes.
CHUNK_TARGET_BYTES = 1 << 20
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 64, 1 << 16


def auto_chunk_rows(row_bytes: int) -> int:
    """A power of two of rows holding about CHUNK_TARGET_BYTES (row_bytes: decoded float32 bytes per row)."""
    rows = 2 ** round(np.log2(max(CHUNK_TARGET_BYTES / max(row_bytes, 1), 1)))
    return int(min(max(rows, MIN_CHUNK_ROWS), MAX_CHUNK_ROWS))


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

    try:
        fs, p = fsspec.core.url_to_fs(path, **(storage_options or {}))
        return fs.exists(f"{p.rstrip('/')}/zarr.json")
    except (OSError, ValueError, ImportError) as exc:  # bad credentials, unreachable endpoint, unknown protocol
        raise UserError("store", f"cannot reach {path!r} ({type(exc).__name__}: {str(exc)[:160]})",
                        "check the URL and --storage-options / credentials") from None


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


def logits_arrays(encoding: str) -> tuple[str, ...]:
    """The per-split arrays that hold the logits under ``encoding``; all share the row layout."""
    return ("logits",) if parse_encoding(encoding)[0] != "topk" else ("topk_values", "topk_indices", "lse")


def encode_topk(logits: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """The K largest logits per row, their class indices, and the row's full log-sum-exp.

    ``logits`` is (R, V, C); the outputs are (R, V, K), (R, V, K) and (R, V).
    """
    r, v, c = logits.shape
    flat = _encode_topk_rows(logits.reshape(r * v, c), k)
    return {name: a.reshape((r, v) + a.shape[1:]) for name, a in flat.items()}


def _encode_topk_rows(logits: np.ndarray, k: int) -> dict[str, np.ndarray]:
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]  # (R, K) unordered: O(C) per row, not O(C log C)
    order = np.argsort(-np.take_along_axis(logits, part, axis=1), axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)  # (R, K), largest first
    values = np.take_along_axis(logits, idx, axis=1)  # (R, K)
    m = logits.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]  # (R,)
    return {"topk_values": values.astype(np.float32), "topk_indices": idx.astype(np.int32),
            "lse": lse.astype(np.float32)}


def decode_topk(values: np.ndarray, indices: np.ndarray, lse: np.ndarray, num_classes: int) -> np.ndarray:
    """Dense (..., C) logits from (..., K) values and indices and (...) log-sum-exps; see :func:`_decode_rows`."""
    lead = values.shape[:-1]
    k = values.shape[-1]
    return _decode_rows(values.reshape(-1, k), indices.reshape(-1, k), lse.reshape(-1),
                        num_classes).reshape(lead + (num_classes,))


def _decode_rows(values: np.ndarray, indices: np.ndarray, lse: np.ndarray, num_classes: int) -> np.ndarray:
    """Dense (R, C) logits whose T = 1 softmax is exact on the kept classes.

    The classes that were not kept share the remaining probability mass
    equally: each gets logit ``lse + log((1 - sum p_kept) / (C - K))``. At
    T = 1 the normaliser is then exactly ``exp(lse)``; at other temperatures
    the flat tail is an approximation (see the README).
    """
    rows, k = values.shape
    kept_mass = np.exp(values.astype(np.float64) - lse[:, None]).sum(axis=1)  # (R,)
    rest = max(num_classes - k, 1)
    tail = np.maximum(1.0 - kept_mass, 1e-12) / rest
    out = np.repeat((lse + np.log(tail))[:, None], num_classes, axis=1).astype(np.float32)  # (R, C)
    np.put_along_axis(out, indices.astype(np.int64), values.astype(np.float32), axis=1)
    return out


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


def layout_for(size: int, num_classes: int, chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
               shard_chunks: int = DEFAULT_SHARD_CHUNKS, views: int = 1) -> SplitLayout:
    if chunk_rows is None:
        chunk_rows = auto_chunk_rows(views * num_classes * 4)
    chunk = max(1, min(chunk_rows, size))
    return SplitLayout(size, num_classes, chunk, chunk * max(1, shard_chunks))


class StoreWriter:
    """Creates (or resumes) a store and writes logits shard by shard from a background thread.

    The model never waits on storage: :meth:`put` hands a finished shard to a
    queue and returns. Each shard is written whole (concurrent writers must
    never share a shard), then its flag in ``written`` is set, so a killed run
    leaves an exact record of what is on disk. Opening a path that holds an
    incomplete store with the same ``provenance_key``, teacher checkpoint,
    encoding and layout *resumes* it: :meth:`pending` then lists only the
    shards still missing. :meth:`finish` checks every flag and sets
    ``complete`` last.
    """

    def __init__(self, path: str, attrs: dict, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                 num_classes: int, encoding: str, chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
                 shard_chunks: int = DEFAULT_SHARD_CHUNKS, storage_options: dict | None = None,
                 views: int = 1) -> None:
        kind, k = parse_encoding(encoding)
        if k is not None and k >= num_classes:
            raise UserError("encoding", f"topk:{k} keeps every one of the {num_classes} classes",
                            f"use K < {num_classes}, or float16")
        self.path, self.encoding, self.num_classes, self.views = path, encoding, num_classes, views
        self.layouts = {s: layout_for(len(labels), num_classes, chunk_rows, shard_chunks, views)
                        for s, (labels, _) in splits.items()}
        layout_attr = {s: {"chunk_rows": l.chunk_rows, "shard_rows": l.shard_rows} for s, l in self.layouts.items()}
        store = _zarr_store(path, read_only=False, storage_options=storage_options)
        self.group = self._resumable(store, attrs, layout_attr)
        self.resumed = self.group is not None
        if self.group is None:
            self.group = self._create(store, attrs, splits, layout_attr)
        self._start_thread()

    @classmethod
    def attach(cls, path: str, storage_options: dict | None = None) -> "StoreWriter":
        """Join an incomplete store that another task created, to write some of its shards.

        Used when the teacher pass is split over tasks or machines: each writes
        whole shards only, so writers never share a file.
        """
        import zarr

        group = zarr.open_group(_zarr_store(path, False, storage_options), mode="r+", zarr_format=3)
        a = dict(group.attrs)
        if a.get("complete") is not False:
            raise StoreError("complete", f"{path!r} is not an incomplete store to write into", "create it first")
        self = cls.__new__(cls)
        self.path, self.encoding, self.group, self.resumed = path, a["encoding"], group, True
        self.num_classes = int(a["dataset"]["num_classes"])
        self.views = int(a.get("views", {}).get("count", 1))
        self.layouts = {s: SplitLayout(int(group[s]["labels"].shape[0]), self.num_classes, l["chunk_rows"],
                                       l["shard_rows"]) for s, l in a["layout"].items()}
        self._start_thread()
        return self

    def _start_thread(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="store-writer", daemon=True)
        self._thread.start()

    def _resumable(self, store, attrs: dict, layout_attr: dict):
        import zarr

        try:
            group = zarr.open_group(store, mode="r+", zarr_format=3)
        except Exception:  # nothing there (or unreadable): start afresh
            return None
        a = dict(group.attrs)
        same = (a.get("complete") is False and a.get("format_version") == FORMAT_VERSION
                and a.get("provenance_key") == attrs.get("provenance_key")
                and a.get("teacher", {}).get("checkpoint_sha256") == attrs.get("teacher", {}).get("checkpoint_sha256")
                and a.get("encoding") == self.encoding and a.get("layout") == layout_attr
                and a.get("views") == attrs.get("views"))
        return group if same else None

    def _create(self, store, attrs: dict, splits: dict, layout_attr: dict):
        import zarr
        from zarr.codecs import BloscCodec, Crc32cCodec

        kind, k = parse_encoding(self.encoding)
        group = zarr.open_group(store, mode="w", zarr_format=3)
        # lz4, not zstd: on float16 logits zstd saved ~8% of the bytes but decoded ~3x slower, and
        # stage 2 decodes every logit every epoch. Byte shuffle groups the exponent bytes together.
        compressors = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec())
        width = self.num_classes if k is None else k
        for split, (labels, ids) in splits.items():
            lay = self.layouts[split]
            g = group.create_group(split)
            rows = dict(chunks=(lay.chunk_rows,), shards=(lay.shard_rows,))
            v = self.views
            if kind == "topk":
                arrays = {"topk_values": ((v, width), np.float32, np.nan), "topk_indices": ((v, width), np.int32, -1),
                          "lse": ((v,), np.float32, np.nan)}
            else:
                arrays = {"logits": ((v, width), ENCODING_DTYPES[kind], np.nan)}
            if v > 1:
                arrays["view_params"] = ((v, 4), np.float32, np.nan)
            for name, (cols, dtype, fill) in arrays.items():
                g.create_array(name, shape=(lay.size, *cols), dtype=dtype, chunks=rows["chunks"] + cols,
                               shards=rows["shards"] + cols, compressors=compressors, fill_value=fill)
            n = max(lay.size, 1)
            for name, values in (("labels", labels), ("ids", ids)):
                arr = g.create_array(name, shape=(lay.size,), dtype=np.int64, chunks=(min(n, 65536),),
                                     compressors=compressors, fill_value=-1)
                arr[:] = np.asarray(values, dtype=np.int64)
            # One chunk per flag: writers in other processes set their flags without touching each other's.
            g.create_array("written", shape=(lay.num_shards,), dtype=np.uint8, chunks=(1,),
                           compressors=compressors, fill_value=0)
        group.attrs.update({**attrs, "format_version": FORMAT_VERSION, "encoding": self.encoding,
                            "complete": False, "layout": layout_attr})
        return group

    def pending(self, split: str) -> list[int]:
        """Shards of ``split`` not yet recorded as written (all of them for a new store)."""
        if not self.layouts[split].num_shards:
            return []
        return np.nonzero(self.group[split]["written"][:] == 0)[0].tolist()

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue
            split, shard, arrays = item
            try:
                start, stop = self.layouts[split].shard_range(shard)
                g = self.group[split]
                for name, values in arrays.items():
                    g[name][start:stop] = values
                g["written"][shard] = 1  # only after the whole shard is on storage
            except BaseException as exc:  # surfaced to the producer by put()/finish()
                self._error = exc

    def put(self, split: str, shard: int, logits: np.ndarray, view_params: np.ndarray | None = None) -> None:
        """Queue one whole shard of raw logits, shape (rows_in_shard, V, C) (or (rows, C) when V = 1).

        ``view_params`` (rows, V, 4) records each view's drawn augmentation when V > 1.
        """
        start, stop = self.layouts[split].shard_range(shard)
        if logits.ndim == 2 and self.views == 1:
            logits = logits[:, None, :]  # (R, 1, C)
        expected = (stop - start, self.views, self.num_classes)
        if logits.shape != expected:
            raise ValueError(f"shard {shard} of {split} needs shape {expected}, got {logits.shape}")
        if (view_params is None) != (self.views == 1):
            raise ValueError("view_params are required exactly when the store has more than one view")
        finite = np.isfinite(logits).all(axis=(1, 2))
        if not finite.all():
            rows = np.nonzero(~finite)[0]
            raise UserError("teacher logits", f"{len(rows)} {split} samples are NaN/inf (rows "
                            f"{', '.join(str(start + r) for r in rows[:10])})",
                            "the teacher diverged; lower its lr or check the checkpoint. Nothing was published")
        if self._error is not None:
            raise self._error
        kind, k = parse_encoding(self.encoding)
        arrays = (encode_topk(logits, k) if kind == "topk"
                  else {"logits": logits.astype(ENCODING_DTYPES[kind], copy=False)})
        if view_params is not None:
            arrays["view_params"] = view_params.astype(np.float32, copy=False)
        self._queue.put((split, shard, arrays))

    def close(self) -> None:
        """Wait until every queued shard is on storage (and flagged); raise the first write error."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def finish(self, extra_attrs: dict | None = None) -> str:
        """Wait for pending writes, verify the bitmap, then mark the store complete."""
        self.close()
        for split in self.layouts:
            missing = self.pending(split)
            if missing:
                raise StoreError("store", f"{split} shards {missing} were never written", "rerun the teacher")
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

        self.path, self.storage_options = path, storage_options
        if not _exists(path, storage_options):
            raise StoreError("store", f"no soft-target store at {path!r}",
                             "pass the path printed by `kd teacher` (see `kd stores`)")
        try:
            self.group = zarr.open_group(_zarr_store(path, True, storage_options), mode="r", zarr_format=3)
        except Exception as exc:  # unreadable metadata is a user-visible store problem
            raise StoreError("store", f"cannot open {path!r} as a Zarr v3 group ({exc})",
                             "pass a store written by `kd teacher`") from None
        self.attrs = dict(self.group.attrs)
        self._arrays: dict[tuple[str, str], object] = {}
        version = self.attrs.get("format_version")
        if version not in SUPPORTED_VERSIONS:
            raise StoreError("format_version", f"store has version {version!r}, this pipeline reads "
                             f"{', '.join(map(str, SUPPORTED_VERSIONS))}", "upgrade the pipeline or rewrite the store")
        if require_complete and self.attrs.get("complete") is not True:
            raise StoreError("complete", f"store {path!r} is incomplete (the teacher run did not finish)",
                             "rerun the same `kd teacher` command to finish it")

    def _array(self, split: str, name: str):
        """An array handle, opened once: opening reads its metadata from storage (~a quarter of a chunk read)."""
        key = (split, name)
        if key not in self._arrays:
            self._arrays[key] = self.group[split][name]
        return self._arrays[key]

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
        return int(self._array(split, "labels").shape[0])

    def chunk_rows(self, split: str) -> int:
        return int(self._array(split, logits_arrays(self.encoding)[0]).chunks[0])

    def labels(self, split: str) -> np.ndarray:
        return self._read(split, "labels", slice(None))

    def ids(self, split: str) -> np.ndarray:
        return self._read(split, "ids", slice(None))

    # --- data -----------------------------------------------------------
    def _read(self, split: str, name: str, rows: slice) -> np.ndarray:
        arr = self._array(split, name)
        try:
            values = arr[rows]
        except Exception as exc:  # checksum mismatch or undecodable chunk
            raise StoreError(f"{split}/{name}", f"chunk {self._chunk_of(arr, rows)} is corrupt ({type(exc).__name__}: "
                             f"{str(exc)[:120]})", "the store was damaged after writing; re-run `kd teacher`") from None
        if values.dtype.kind == "f":
            # NaN is the fill value: one float32 sum per row finds it (published logits are finite, and
            # float16 rows cannot overflow a float32 sum), far cheaper than an elementwise test.
            bad = ~np.isfinite(values.reshape(len(values), -1).sum(axis=1, dtype=np.float32)) if values.ndim > 1 \
                else ~np.isfinite(values)
        else:
            bad = values < 0 if values.ndim == 1 else (values < 0).reshape(len(values), -1).any(axis=1)
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

    @property
    def views(self) -> int:
        """Teacher views per sample (1: the clean image only)."""
        return int(self.attrs.get("views", {}).get("count", 1))

    def read_views(self, split: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Decoded logits of every view, (rows, V, C) float32, verified (checksums, no missing chunk).

        Under ``topk:K`` these are the dense logits of :func:`decode_topk`.
        """
        stop = self.size(split) if stop is None else stop
        rows = slice(start, stop)
        if parse_encoding(self.encoding)[0] == "topk":
            return decode_topk(self._read(split, "topk_values", rows), self._read(split, "topk_indices", rows),
                               self._read(split, "lse", rows), self.num_classes)
        return self._read(split, "logits", rows).astype(np.float32, copy=False)

    def read_logits(self, split: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Logits of the clean view (view 0), (rows, C) float32, verified."""
        return np.ascontiguousarray(self.read_views(split, start, stop)[:, 0, :])

    def view_params(self, split: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(rows, V, 4) [dx, dy, flip, angle] of each stored view (only for stores with V > 1)."""
        stop = self.size(split) if stop is None else stop
        return self._read_params(split, slice(start, stop))

    def _read_params(self, split: str, rows: slice) -> np.ndarray:
        if self.views == 1:
            raise StoreError("views", "this store holds the clean view only", "write it with --views K")
        return self._read(split, "view_params", rows)

    def iter_chunks(self, split: str) -> Iterator[tuple[int, np.ndarray]]:
        """(start row, logits) per chunk, in order: each chunk is decoded exactly once."""
        rows = self.chunk_rows(split)
        for start in range(0, self.size(split), rows):
            yield start, self.read_logits(split, start, start + rows)

    def file_count(self) -> int | None:
        """Objects the store occupies on a local disk (None for URL stores)."""
        if is_url(self.path) and not self.path.startswith("file://"):
            return None
        local = self.path[len("file://"):] if self.path.startswith("file://") else self.path
        return sum(len(files) for _, _, files in os.walk(local))

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
    def _nbytes(self, names: tuple[str, ...], stored: bool = True) -> int:
        total = 0
        for split in self.splits():
            for name in names:
                arr = self._array(split, name)
                total += int(arr.nbytes_stored() if stored else arr.nbytes)
        return total

    def nbytes_stored(self) -> int:
        extra = ("view_params",) if self.views > 1 else ()
        return self._nbytes(logits_arrays(self.encoding) + extra + ("labels", "ids", "written"))

    def summary(self) -> dict:
        """What ``kd inspect`` prints: metadata plus size, bytes per sample and compression ratio.

        The compression ratio compares the stored logits with dense float32
        logits (N x C x 4 bytes), i.e. what the encoding plus compression saves.
        """
        stored = self.nbytes_stored()
        logits_stored = self._nbytes(logits_arrays(self.encoding))
        n = sum(self.size(s) for s in self.splits())
        logits_raw = n * self.views * self.num_classes * 4
        return {
            "path": self.path,
            **{k: v for k, v in self.attrs.items()},
            "samples": {s: self.size(s) for s in self.splits()},
            "bytes_stored": stored,
            "bytes_per_sample": stored / max(n, 1),
            "logits_bytes_per_sample": logits_stored / max(n, 1),
            "views": self.views,
            "logits_bytes_per_view": logits_stored / max(n * self.views, 1),
            "compression_ratio": logits_raw / max(logits_stored, 1),
            "files": self.file_count(),
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
    fs.invalidate_cache(p)  # fsspec caches listings per process: stores written since the last call would be missed
    try:
        entries = fs.ls(p, detail=False)
    except OSError as exc:  # FileNotFoundError (no such prefix/bucket), PermissionError (credentials)
        raise UserError("root", f"cannot list {root!r} ({type(exc).__name__}: {str(exc)[:120]})",
                        "pass the URL given as --store-root, with its --storage-options") from None
    return sorted(f"{protocol}://{e.rstrip('/')}" for e in entries if e.rstrip("/").endswith(".zarr"))
