"""Writing a store: under a lease, into a staging copy (or resumed), whole shards from a background thread, then
published once, complete, and never opened for writing again.

Publishing, by backend:

- **local folders** (plain paths, ``file://``): the store is written under
  :func:`~pipeline.store.paths.staging_path` and published by one atomic
  ``rename`` to its final name, so the final name is either absent or a complete
  store: a reader can never see it half-written, and nothing ever deletes it.
- **object stores** (``s3://``, ``gs://``…; no atomic rename of a prefix): the
  store is written in place; ``complete`` is set last (one object write), and a
  complete store is never reopened. Readers refuse it until then.

On both, a lease (:mod:`pipeline.store.lease`) keeps a second writer of the same
store waiting until the first publishes; the second then reuses the published
store. If two writers still both finish (a stale lease was broken), the loser
finds the final name taken by a complete store with the same provenance and
discards its own staging copy.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time

import numpy as np

from pipeline.errors import StoreError, UserError
from pipeline.store.lease import acquire as acquire_lease
from pipeline.store.lease import lease_path
from pipeline.store.lease import release as release_lease
from pipeline.store.lease import require as require_lease
from pipeline.store.codec import Encoding
from pipeline.store.codec import encoding as encoding_named  # `encoding` is the writer's own argument
from pipeline.store.contract import check_arrays, data_arrays, expected_arrays
from pipeline.store.integrity import ALGORITHM, digest, shard_ranges
from pipeline.store.layout import DEFAULT_CHUNK_ROWS, DEFAULT_SHARD_CHUNKS, SplitLayout, layout_for
from pipeline.store.meta import FORMAT_VERSION, LayoutMeta, ManifestMeta, Provenance, StoreMeta, now_iso
from pipeline.store.paths import exists, local_path, staging_path, zarr_store

log = logging.getLogger(__name__)
IMMUTABLE = "a published store is immutable; write a new one (another --store-root, or delete this one first)"


def identity(meta: StoreMeta) -> str:
    """What makes an unfinished store resumable by a writer: same content, same checkpoint, same layout."""
    return hashlib.sha256(json.dumps({
        "provenance_key": meta.provenance_key, "checkpoint_sha256": meta.teacher.checkpoint_sha256,
        "encoding": meta.encoding, "layout": {s: l.to_attrs() for s, l in meta.layout.items()},
        "views": meta.views.to_attrs()}, sort_keys=True).encode()).hexdigest()


def _open(path: str, *, mode: str, storage_options: dict | None):
    import zarr

    return zarr.open_group(zarr_store(path, read_only=mode == "r", storage_options=storage_options), mode=mode,
                           zarr_format=3)


def published_meta(path: str, storage_options: dict | None = None) -> StoreMeta | None:
    """The metadata of the complete store published at ``path``; None if nothing is published there yet.

    Anything else at that name (a damaged store, another format version, an
    unfinished store written in place on a local disk by an older version) is
    refused in one line: a writer never overwrites what is there.
    """
    if not exists(path, storage_options):
        return None
    try:
        group = _open(path, mode="r", storage_options=storage_options)
        meta = StoreMeta.from_attrs(dict(group.attrs))
        check_arrays(group, meta)
    except StoreError as exc:
        raise StoreError("store", f"{path!r} already holds a store this pipeline cannot use ({exc.one_line()})",
                         "move or delete it, then rerun: nothing is ever written over it") from None
    if meta.complete:
        return meta
    if local_path(path) is not None:
        raise StoreError("store", f"{path!r} holds an unfinished store written in place by an earlier version",
                         "move or delete it, then rerun: it is never resumed or overwritten")
    return None  # an object store, written in place: resumed under the lease


class StoreWriter:
    """Creates (or resumes) a store and writes logits shard by shard from a background thread.

    The model never waits on storage: :meth:`put` hands a finished shard to a
    queue and returns. Each shard is written whole (concurrent writers must
    never share a shard), then its flag in ``written`` is set, so a killed run
    leaves an exact record of what is on disk. Finding an unfinished store of
    the same :func:`identity` *resumes* it: :meth:`pending` then lists only the
    shards still missing. :meth:`finish` checks every flag, records the
    manifest, sets ``complete`` last and publishes.

    If a complete store with the same provenance is already published (before,
    or while this writer waited for the lease), :attr:`reused` is true, nothing
    is written, :meth:`pending` is empty and :meth:`finish` returns its path.

    ``path`` is where the store currently is: the staging copy while writing
    on a local disk, the final name once published.
    """

    def __init__(self, path: str, provenance: Provenance, splits: dict[str, tuple[np.ndarray, np.ndarray]], *,
                 encoding: str, chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
                 shard_chunks: int = DEFAULT_SHARD_CHUNKS, storage_options: dict | None = None,
                 defer_create: bool = False) -> None:
        num_classes, views = provenance.dataset.num_classes, provenance.views.count
        encoding_named(encoding).validate(num_classes)
        self.final, self.storage_options = path, storage_options
        self.encoding, self.num_classes, self.views = encoding, num_classes, views
        self.layouts = {s: layout_for(len(labels), num_classes, chunk_rows, shard_chunks, views)
                        for s, (labels, _) in splits.items()}
        meta = StoreMeta(**{f.name: getattr(provenance, f.name) for f in dataclasses.fields(provenance)},
                         format_version=FORMAT_VERSION, encoding=encoding, complete=False,
                         layout={s: LayoutMeta(l.size, l.chunk_rows, l.shard_rows) for s, l in self.layouts.items()})
        local = local_path(path) is not None
        self.path = staging_path(path, identity(meta)) if local else path
        self.resumed = self.reused = False
        self._digests: dict[tuple[str, str, int], str] = {}
        self._to_create: tuple | None = None  # (zarr store, splits) of a new store whose files are not written yet
        self._init_thread()

        def published() -> bool:
            there = published_meta(path, storage_options)
            if there is None:
                return False
            if there.provenance_key != meta.provenance_key:
                raise StoreError("store", f"{path!r} is a complete store of other content (provenance_key "
                                 f"{there.provenance_key[:12]}…)", IMMUTABLE)
            self.meta = there
            return True

        held = acquire_lease(path, writing=self.path, published=published, storage_options=storage_options)
        if held is None:  # published already, or by the writer we waited for: reuse it
            self.path, self.reused, self.group, self._token = path, True, None, None
            return
        self._lease, self._token = held, held.token
        try:
            store = zarr_store(self.path, read_only=False, storage_options=storage_options)
            found = self._resumable(store, meta)
            self.resumed = found is not None
            if found is not None:  # a resumed store keeps its own attributes (its created_at above all)
                self.group, self._handles, self.meta = found
            else:
                self.group, self._handles, self.meta, self._to_create = None, {}, meta, (store, splits)
                if not defer_create:
                    self.create()
        except BaseException:
            held.release()
            raise
        self._start_thread()

    @functools.cached_property
    def codec(self) -> Encoding:
        """The encoding of this store (a writer created here or attached to a resumed one), looked up once."""
        return encoding_named(self.encoding)

    def create(self) -> None:
        """Write the new store's files (nothing to do for a resumed or reused one, or once done).

        ``defer_create`` leaves this to the caller (or to the first :meth:`put` or :meth:`finish`): the
        teacher pass calls it while its DataLoader workers start and read the first images, time its main
        thread would otherwise spend waiting.
        """
        if self._to_create is None:
            return
        store, splits = self._to_create
        self.group, self._handles = self._create(store, self.meta, splits)
        self._to_create = None

    @classmethod
    def attach(cls, path: str, storage_options: dict | None = None) -> "StoreWriter":
        """Join the unfinished write of ``path`` that another task of the same run created, to write some shards.

        Used when the teacher pass is split over tasks or machines: each writes
        whole shards only, so writers never share a file. The task that created
        the store holds the lease, which names the copy being written; a
        published (complete) store is refused: it is never reopened.
        """
        if published_meta(path, storage_options) is not None:
            raise StoreError("complete", f"{path!r} is published", IMMUTABLE)
        held = require_lease(path, storage_options)
        group = _open(held.writing, mode="r+", storage_options=storage_options)
        meta = StoreMeta.from_attrs(dict(group.attrs))
        handles = check_arrays(group, meta)
        if meta.complete:
            raise StoreError("complete", f"{held.writing!r} is complete", IMMUTABLE)
        self = cls.__new__(cls)
        self.final, self.path, self.storage_options = path, held.writing, storage_options
        self.encoding, self.group, self.meta, self.resumed, self.reused = meta.encoding, group, meta, True, False
        self._lease, self._token, self._digests, self._handles = None, held.token, {}, handles
        self._to_create = None
        self.num_classes, self.views = meta.dataset.num_classes, meta.views.count
        self.layouts = {s: SplitLayout(l.rows, self.num_classes, l.chunk_rows, l.shard_rows)
                        for s, l in meta.layout.items()}
        self._init_thread()
        self._start_thread()
        return self

    def _init_thread(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._drain, name="store-writer", daemon=True)
        self._thread.start()

    def _resumable(self, store, meta: StoreMeta):
        """The unfinished copy at ``self.path`` (group, array handles, metadata) if it holds the same content, else None.

        A local copy that cannot be resumed (a creation cut off halfway) is moved aside, never deleted; on an
        object store it is refused.
        """
        import zarr

        local = local_path(self.path)
        if not (os.path.exists(local) if local is not None else exists(self.path, self.storage_options)):
            return None
        try:
            group = zarr.open_group(store, mode="r+", zarr_format=3)
            there = StoreMeta.from_attrs(dict(group.attrs))
            handles = check_arrays(group, there)
            if identity(there) == identity(meta):
                return group, handles, there
        except StoreError:
            pass
        except Exception:  # noqa: BLE001 unreadable zarr metadata: treated like any other unusable copy
            pass
        if local is None:
            raise StoreError("store", f"{self.path!r} holds an unfinished store of other content, or a damaged one",
                             "delete it (nothing published is ever overwritten), then rerun")
        aside = f"{local}.unusable-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        os.rename(local, aside)
        log.warning("moved an unfinished store that cannot be resumed aside: %s", aside)
        return None

    def _create(self, store, meta: StoreMeta, splits: dict) -> tuple:
        """The new group and its array handles by (split, name), kept: reopening one reads its metadata again.

        zarr builds the whole new store (every node's metadata, the labels and ids) in memory, and its files
        are then copied to ``store``: the root's ``zarr.json`` first, the rest concurrently. Built in place,
        node by node, each of its ~150 existence checks, folder creations and writes was a round trip through
        zarr's event loop and a thread: ~50 ms on a local disk, a request each on an object store.
        """
        from zarr.core.sync import sync
        from zarr.storage import MemoryStore

        built: dict = {}
        group, handles = sync(self._build(MemoryStore(built), meta, splits))
        sync(_copy_new(built, store, self.path))
        return _rebound(group, store), {key: _rebound(arr, store) for key, arr in handles.items()}

    async def _build(self, draft, meta: StoreMeta, splits: dict) -> tuple:
        """The store's root group and array nodes (async), created in ``draft``, the labels and ids written."""
        from zarr.api.asynchronous import open_group
        from zarr.codecs import BloscCodec, Crc32cCodec

        # The attributes are the root's (complete: false): whoever finds a copy knows what it is and that it
        # is unfinished.
        group = await open_group(store=draft, mode="w-", zarr_format=3, attributes=meta.to_attrs())
        subgroups = dict(zip(splits, await asyncio.gather(*(group.create_group(s) for s in splits))))
        # lz4, not zstd: on float16 logits zstd saved ~8% of the bytes but decoded ~3x slower, and
        # stage 2 decodes every logit every epoch. Byte shuffle groups the exponent bytes together.
        compressors = (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec())
        specs = [(split, spec) for split in splits for spec in expected_arrays(meta, split)]
        arrays = await asyncio.gather(*(
            subgroups[split].create_array(spec.name, shape=spec.shape, dtype=spec.dtype, chunks=spec.chunks,
                                          shards=spec.shards, compressors=compressors, fill_value=spec.fill)
            for split, spec in specs))
        handles = {(split, spec.name): arr for (split, spec), arr in zip(specs, arrays)}
        filled = []
        for split, spec in specs:
            if spec.name in ("labels", "ids"):
                labels, ids = splits[split]
                values = np.asarray(labels if spec.name == "labels" else ids, dtype=np.int64)
                filled.append(handles[(split, spec.name)].setitem(slice(None), values))
                # Hashed as written, like the logits shards: the manifest need not read them back.
                lay = meta.layout[split]
                for i, (a, b) in enumerate(shard_ranges(lay.rows, lay.shard_rows, spec.per_shard)):
                    self._digests[(split, spec.name, i)] = digest(values[a:b])
        await asyncio.gather(*filled)
        return group, handles

    def pending(self, split: str) -> list[int]:
        """Shards of ``split`` not yet recorded as written (all of them for a new store, none for a reused one)."""
        if self.reused or self.meta.complete or not self.layouts[split].num_shards:
            return []
        if self._to_create is not None:
            return list(range(self.layouts[split].num_shards))
        return np.nonzero(self._handles[(split, "written")][:] == 0)[0].tolist()

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
                for name, values in arrays.items():
                    self._handles[(split, name)][start:stop] = values
                    self._digests[(split, name, shard)] = digest(values)  # what a reader will decode
                self._handles[(split, "written")][shard] = 1  # only after the whole shard is on storage
            except BaseException as exc:  # surfaced to the producer by put()/finish()
                self._error = exc

    def put(self, split: str, shard: int, logits: np.ndarray, view_params: np.ndarray | None = None) -> None:
        """Queue one whole shard of raw logits, shape (rows_in_shard, V, C) (or (rows, C) when V = 1).

        ``view_params`` (rows, V, P) records each view's drawn parameters when V > 1 (P: ``views.params``).
        """
        if self.reused:
            raise StoreError("store", f"{self.final!r} is already published", IMMUTABLE)
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
        self.create()
        with np.errstate(over="ignore"):  # an overflowing cast is expected here, and refused just below
            arrays = self.codec.encode(logits)
        # Finite float32 logits can still overflow the encoding (float16 tops out at 65504): check what is stored.
        for name, values in arrays.items():
            if values.dtype.kind == "f":
                ok = np.isfinite(values.reshape(len(values), -1)).all(axis=1)  # (R,)
                if not ok.all():
                    rows = np.nonzero(~ok)[0]
                    raise UserError("encoding", f"{len(rows)} {split} samples have logits beyond {self.encoding}'s "
                                    f"range (|logit| > 65504 in float16; rows "
                                    f"{', '.join(str(start + r) for r in rows[:10])})",
                                    "write the store with --encoding float32. Nothing was published")
        if view_params is not None:
            arrays["view_params"] = view_params.astype(np.float32, copy=False)
        self._queue.put((split, shard, arrays))

    def _stop_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def close(self) -> None:
        """Wait until every queued shard is on storage (and flagged); raise the first write error.

        The lease stays held: the tasks that join this write (:meth:`attach`) and the one that finishes it
        work under it.
        """
        self._stop_thread()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop the writer thread and give up the lease, without marking anything complete."""
        self._stop_thread()
        self._release()

    def discard(self) -> None:
        """Stop the writer, delete this writer's unpublished copy, and give up the lease.

        For a pass whose input turned out to be bad (an image that cannot be decoded): its copy is not worth
        resuming (the fixed input is another store, or the same one to write afresh), and bad input must leave
        nothing behind. A published or reused store is never touched.
        """
        self._stop_thread()
        if self._token is not None and not self.reused and not self.meta.complete:
            staging = local_path(self.path)
            if staging is not None:
                if staging != local_path(self.final):  # never the final name (an object store writes in place)
                    shutil.rmtree(staging, ignore_errors=True)
            else:  # an object store: written in place, under this writer's lease
                import fsspec

                fs, root = fsspec.core.url_to_fs(self.path, **(self.storage_options or {}))
                if fs.exists(root):
                    fs.rm(root, recursive=True)
        self._release()

    def _release(self) -> None:
        if self._token is not None:
            release_lease(lease_path(self.final), self._token, self.storage_options)
            self._token = None

    def finish(self) -> str:
        """Wait for pending writes, verify the bitmap, record the manifest, mark complete, publish."""
        self.close()
        if self.reused:
            return self.path
        try:
            self.create()  # (a store with no shard to write, created late)
            if not self.meta.complete:  # (a local copy completed by a run cut off before it renamed it)
                for split in self.layouts:
                    missing = self.pending(split)
                    if missing:
                        raise StoreError("store", f"{split} shards {missing} were never written", "rerun the teacher")
                self.meta = dataclasses.replace(self.meta, complete=True, completed_at=now_iso(),
                                                manifest=self._manifest())
                # One write of the group's zarr.json: `complete`, the manifest and the scores land together.
                # (attrs.update wrote the file once per key, 16 writes, and `complete` before the manifest.)
                self.group = self.group.update_attributes(self.meta.to_attrs())
            self._publish()
        finally:
            self._release()
        return self.path

    def _manifest(self) -> ManifestMeta:
        """Per shard of every data array, the digest of its decoded content.

        Shards this writer wrote were hashed as they were written; the rest (a resumed store, other writers of a
        split pass) are read back, which also decodes and so checks them once more.
        """
        arrays = {}
        for split in self.layouts:
            lay = self.meta.layout[split]
            for spec in data_arrays(self.meta, split):
                arr = self._handles[(split, spec.name)]
                arrays[f"{split}/{spec.name}"] = tuple(
                    self._digests.get((split, spec.name, i)) or digest(arr[a:b])
                    for i, (a, b) in enumerate(shard_ranges(lay.rows, lay.shard_rows, spec.per_shard)))
        return ManifestMeta(algorithm=ALGORITHM, arrays=arrays)

    def _publish(self) -> None:
        """Make the complete store visible under its final name (local: one atomic rename)."""
        staging, final = local_path(self.path), local_path(self.final)
        if staging is None or staging == final:
            self.path = self.final
            return
        try:
            os.rename(staging, final)  # atomic; fails if the final name exists (a non-empty folder)
        except OSError:
            there = published_meta(self.final, self.storage_options)
            if there is None or there.provenance_key != self.meta.provenance_key:
                raise StoreError("store", f"cannot publish {self.final!r}: the name is taken", IMMUTABLE) from None
            # Another writer published the same content first: ours is a duplicate, and only ours is discarded.
            shutil.rmtree(staging)
            log.warning("%s was published by another writer meanwhile; discarded this writer's copy", self.final)
        else:
            _sync_dir(os.path.dirname(os.path.abspath(final)))
        self.path = self.final


async def _copy_new(built: dict, store, where: str) -> None:
    """Write the files of a store built in memory (``built``: key → zarr buffer) to the empty ``store``.

    The root's ``zarr.json`` goes first, so a copy cut off halfway is still recognisably an unfinished
    store (and moved aside by the next writer); creating never overwrites anything.
    """
    if await store.exists("zarr.json"):
        raise StoreError("store", f"{where!r} appeared while this writer created it", IMMUTABLE)
    await store.set("zarr.json", built["zarr.json"])
    await asyncio.gather(*(store.set(key, value) for key, value in built.items() if key != "zarr.json"))


def _rebound(node, store):
    """An async group or array of the draft as the same node on ``store``, with a synchronous handle; its
    metadata is known, so nothing is read."""
    import zarr
    from zarr.core.group import AsyncGroup
    from zarr.storage import StorePath

    at = StorePath(store, node.store_path.path)
    if isinstance(node, zarr.AsyncArray):
        return zarr.Array(zarr.AsyncArray(node.metadata, at, config=node.config))
    return zarr.Group(AsyncGroup(node.metadata, at))


def _sync_dir(path: str) -> None:
    """Make a rename durable (POSIX: the directory entry is only on disk once the directory is synced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
