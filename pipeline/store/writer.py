"""Writing a store: create (or resume) it, then write whole shards from a background thread."""
from __future__ import annotations

import dataclasses
import queue
import threading

import numpy as np

from pipeline.config import parse_encoding
from pipeline.errors import StoreError, UserError
from pipeline.store.codec import ENCODING_DTYPES, encode
from pipeline.store.layout import DEFAULT_CHUNK_ROWS, DEFAULT_SHARD_CHUNKS, SplitLayout, layout_for
from pipeline.store.meta import FORMAT_VERSION, LayoutMeta, Provenance, StoreMeta, now_iso
from pipeline.store.paths import zarr_store


class StoreWriter:
    """Creates (or resumes) a store and writes logits shard by shard from a background thread.

    The model never waits on storage: :meth:`put` hands a finished shard to a
    queue and returns. Each shard is written whole (concurrent writers must
    never share a shard), then its flag in ``written`` is set, so a killed run
    leaves an exact record of what is on disk. Opening a path that holds an
    incomplete store with the same ``provenance_key``, teacher checkpoint,
    encoding, views and layout *resumes* it: :meth:`pending` then lists only the
    shards still missing. :meth:`finish` checks every flag and sets
    ``complete`` last.

    The number of classes and of views per sample come from ``provenance``
    (``dataset.num_classes``, ``views.count``).
    """

    def __init__(self, path: str, provenance: Provenance, splits: dict[str, tuple[np.ndarray, np.ndarray]], *,
                 encoding: str, chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
                 shard_chunks: int = DEFAULT_SHARD_CHUNKS, storage_options: dict | None = None) -> None:
        num_classes, views = provenance.dataset.num_classes, provenance.views.count
        kind, k = parse_encoding(encoding)
        if k is not None and k >= num_classes:
            raise UserError("encoding", f"topk:{k} keeps every one of the {num_classes} classes",
                            f"use K < {num_classes}, or float16")
        self.path, self.encoding, self.num_classes, self.views = path, encoding, num_classes, views
        self.layouts = {s: layout_for(len(labels), num_classes, chunk_rows, shard_chunks, views)
                        for s, (labels, _) in splits.items()}
        meta = StoreMeta(**{f.name: getattr(provenance, f.name) for f in dataclasses.fields(provenance)},
                         format_version=FORMAT_VERSION, encoding=encoding, complete=False,
                         layout={s: LayoutMeta(l.chunk_rows, l.shard_rows) for s, l in self.layouts.items()})
        store = zarr_store(path, read_only=False, storage_options=storage_options)
        resumable = self._resumable(store, meta)
        self.resumed = resumable is not None
        # A resumed store keeps its own attributes (its created_at above all).
        self.group, self.meta = resumable or (self._create(store, meta, splits), meta)
        self._start_thread()

    @classmethod
    def attach(cls, path: str, storage_options: dict | None = None) -> "StoreWriter":
        """Join an incomplete store that another task created, to write some of its shards.

        Used when the teacher pass is split over tasks or machines: each writes
        whole shards only, so writers never share a file.
        """
        import zarr

        group = zarr.open_group(zarr_store(path, read_only=False, storage_options=storage_options), mode="r+",
                                zarr_format=3)
        meta = StoreMeta.from_attrs(dict(group.attrs))
        if meta.complete:
            raise StoreError("complete", f"{path!r} is not an incomplete store to write into", "create it first")
        self = cls.__new__(cls)
        self.path, self.encoding, self.group, self.resumed, self.meta = path, meta.encoding, group, True, meta
        self.num_classes, self.views = meta.dataset.num_classes, meta.views.count
        self.layouts = {s: SplitLayout(int(group[s]["labels"].shape[0]), self.num_classes, l.chunk_rows,
                                       l.shard_rows) for s, l in meta.layout.items()}
        self._start_thread()
        return self

    def _start_thread(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="store-writer", daemon=True)
        self._thread.start()

    @staticmethod
    def _resumable(store, meta: StoreMeta):
        """The existing group at ``store`` and its metadata, if it is an incomplete store of the same content."""
        import zarr

        try:
            group = zarr.open_group(store, mode="r+", zarr_format=3)
            there = StoreMeta.from_attrs(dict(group.attrs))
        except Exception:  # nothing there, unreadable, or not this format: start afresh
            return None
        same = (not there.complete and there.provenance_key == meta.provenance_key
                and there.teacher.checkpoint_sha256 == meta.teacher.checkpoint_sha256
                and there.encoding == meta.encoding and there.layout == meta.layout and there.views == meta.views)
        return (group, there) if same else None

    def _create(self, store, meta: StoreMeta, splits: dict):
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
                # One float32 column per drawn parameter, named in views.params.
                arrays["view_params"] = ((v, len(meta.views.params or ())), np.float32, np.nan)
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
        group.attrs.update(meta.to_attrs())
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

        ``view_params`` (rows, V, P) records each view's drawn parameters when V > 1 (P: ``views.params``).
        """
        start, stop = self.layouts[split].shard_range(shard)
        if logits.ndim == 2 and self.views == 1:
            logits = logits[:, None, :]  # (R, 1, C)
        expected = (stop - start, self.views, self.num_classes)
        if logits.shape != expected:
            raise ValueError(f"shard {shard} of {split} needs shape {expected}, got {logits.shape}")
        if (view_params is None) != (self.views == 1):
            raise ValueError("view_params are required exactly when the store has more than one view")
        if view_params is not None and view_params.shape != (stop - start, self.views, len(self.meta.views.params)):
            raise ValueError(f"view_params of shard {shard} of {split} need shape "
                             f"{(stop - start, self.views, len(self.meta.views.params))}, got {view_params.shape}")
        finite = np.isfinite(logits).all(axis=(1, 2))
        if not finite.all():
            rows = np.nonzero(~finite)[0]
            raise UserError("teacher logits", f"{len(rows)} {split} samples are NaN/inf (rows "
                            f"{', '.join(str(start + r) for r in rows[:10])})",
                            "the teacher diverged; lower its lr or check the checkpoint. Nothing was published")
        if self._error is not None:
            raise self._error
        arrays = encode(logits, self.encoding)
        if view_params is not None:
            arrays["view_params"] = view_params.astype(np.float32, copy=False)
        self._queue.put((split, shard, arrays))

    def _stop_thread(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def close(self) -> None:
        """Wait until every queued shard is on storage (and flagged); raise the first write error."""
        self._stop_thread()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop the writer thread without marking anything complete."""
        self._stop_thread()

    def finish(self) -> str:
        """Wait for pending writes, verify the bitmap, then mark the store complete."""
        self.close()
        for split in self.layouts:
            missing = self.pending(split)
            if missing:
                raise StoreError("store", f"{split} shards {missing} were never written", "rerun the teacher")
        self.meta = dataclasses.replace(self.meta, complete=True, completed_at=now_iso())
        self.group.attrs.update(self.meta.to_attrs())
        return self.path
