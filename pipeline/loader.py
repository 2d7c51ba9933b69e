"""Batches of (images, labels, teacher logits), aligned by row, read chunk by chunk.

Reading a chunked store one sample at a time decodes a whole chunk per
sample. This loader instead visits each chunk once per epoch and shuffles at
two levels: the order of chunks, then the rows inside a buffer of
``buffer_chunks`` chunks. The order depends only on (seed, epoch), so it is
the same whether logits come from memory or from the store, and across runs.

When the decoded logits fit in ``cache_mb`` they are read once and kept;
otherwise a background thread decodes upcoming chunks while the model trains,
and memory stays bounded by the buffer plus the prefetch queue.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from pipeline.data import Split
from pipeline.store import SoftTargetStore


def fits_cache(rows: int, classes: int, cache_mb: float) -> bool:
    """Whether ``rows`` decoded float32 logits fit in a cache of ``cache_mb`` megabytes."""
    return rows * classes * 4 <= cache_mb * 1e6


@dataclass
class Batch:
    x: torch.Tensor  # (B, C, H, W)
    y: torch.Tensor  # (B,)
    logits: torch.Tensor | None  # (B, K) float32 teacher logits, None for label-only training
    rows: torch.Tensor  # (B,) row indices into the split
    mix: tuple[torch.Tensor, torch.Tensor] | None = None  # mixed views: (partner labels (B,), λ (B,))

    def to(self, device: torch.device) -> "Batch":
        nb = device.type == "cuda"
        return Batch(self.x.to(device, non_blocking=nb), self.y.to(device, non_blocking=nb),
                     None if self.logits is None else self.logits.to(device, non_blocking=nb), self.rows,
                     None if self.mix is None else tuple(t.to(device, non_blocking=nb) for t in self.mix))


class SoftTargetLoader:
    """One epoch of batches at a time; see the module docstring for the order."""

    def __init__(self, split: Split, batch_size: int, seed: int, store: SoftTargetStore | None = None,
                 split_name: str = "train", chunk_rows: int = 256, buffer_chunks: int = 8,
                 cache_mb: float = 1024.0, prefetch_chunks: int = 8, shuffle: bool = True,
                 cached: np.ndarray | None = None, workers: int = 0, view_policy: str = "uniform") -> None:
        self.split, self.batch_size, self.seed, self.shuffle = split, batch_size, seed, shuffle
        self.store, self.split_name = store, split_name
        self.chunk_rows = store.chunk_rows(split_name) if store is not None else chunk_rows
        self.buffer_chunks = buffer_chunks
        if store is not None:
            # Streaming holds the prefetch queue plus about two buffers of decoded chunks: size the queue
            # from the memory budget (the buffer size fixes the sample order, so it is never changed);
            # at least two, so decoding the next chunk overlaps consuming this one.
            chunk_mb = self.chunk_rows * store.views * store.num_classes * 4 / 1e6
            prefetch_chunks = int(min(prefetch_chunks, max(2, cache_mb / 2 / max(chunk_mb, 1e-9)
                                                           - 2 * buffer_chunks)))
        self.prefetch_chunks = prefetch_chunks
        self.n = len(split)
        self.num_chunks = -(-self.n // self.chunk_rows)
        self.workers, self._next_epoch, self._dataloader = workers, 0, None
        self._store_path = None if store is None else store.path
        self._storage_options = None if store is None else store.storage_options
        # Stores with K teacher views: each epoch picks a view per sample and replays its transform,
        # so the student sees exactly the pixels the teacher scored.
        self.views = 1 if store is None else store.views
        self.view_policy = view_policy
        self._replay = None
        if self.views > 1:
            from pipeline.view_ops import ViewReplay

            # Each view is replayed from its stored parameters, carried next to its logits.
            self._replay = ViewReplay(store.meta.views.params, store.num_classes, split, split_name)
            if cached is not None:
                cached = self._replay.pack(cached, store.view_params(split_name))
        self._epoch_views: tuple[int, np.ndarray] | None = None
        self._cache = cached  # (N, C), or (N, V, C + P) logits and view parameters, e.g. from the run's plan
        if store is not None and cached is None and fits_cache(self.n * self.views, store.num_classes, cache_mb):
            self._cache = self._read(0, self.n)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def chunk_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_chunks)
        return np.random.default_rng([self.seed, epoch, 0]).permutation(self.num_chunks)

    def _chunks(self, order: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(rows, logits) per chunk in ``order``; decoded ahead in a thread when streaming."""
        def rows_of(c: int) -> np.ndarray:
            return np.arange(c * self.chunk_rows, min((c + 1) * self.chunk_rows, self.n))

        if self.store is None or self._cache is not None:
            for c in order:
                r = rows_of(int(c))
                yield r, None if self._cache is None else self._cache[r[0]:r[-1] + 1]
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch_chunks)
        stop = threading.Event()

        def produce() -> None:
            try:
                for c in order:
                    if stop.is_set():
                        return
                    r = rows_of(int(c))
                    q.put((r, self._read(int(r[0]), int(r[-1]) + 1)))
                q.put(None)
            except BaseException as exc:  # re-raised in the consumer
                q.put(exc)

        t = threading.Thread(target=produce, name="chunk-prefetch", daemon=True)
        t.start()
        try:
            while (item := q.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while t.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    t.join(0.01)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of one epoch; with ``workers`` > 0 they come from DataLoader worker processes."""
        if not self.workers:
            yield from self._iterate(epoch, 0, 1)
            return
        if epoch != self._next_epoch:  # worker processes count epochs themselves
            raise ValueError(f"with workers, epochs must be read in order: expected {self._next_epoch}, got {epoch}")
        self._next_epoch += 1
        if self._dataloader is None:
            # spawn, not fork: a forked child inherits zarr's event-loop thread in an unusable state.
            # Persistent workers pay the spawn (and each opens the store once) for the whole run.
            self._dataloader = torch.utils.data.DataLoader(
                _WorkerStream(self), batch_size=None, num_workers=self.workers, persistent_workers=True,
                multiprocessing_context="spawn", prefetch_factor=4)
        yield from self._dataloader

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Decoded logits of rows [start, stop): (R, C), or (R, V, C + P) logits and parameters of every view."""
        if self.views > 1:
            return self._replay.pack(self.store.read_views(self.split_name, start, stop),
                                     self.store.view_params(self.split_name, start, stop))
        return self.store.read_logits(self.split_name, start, stop)

    def views_for(self, rows: np.ndarray, epoch: int) -> np.ndarray:
        """The view each row is trained on this epoch: uniform at random (seeded) or cycling through all."""
        if self.view_policy == "cycle":
            return (rows + epoch) % self.views
        if self._epoch_views is None or self._epoch_views[0] != epoch:
            self._epoch_views = (epoch, np.random.default_rng([self.seed, epoch, 2]).integers(0, self.views, self.n))
        return self._epoch_views[1][rows]

    def _iterate(self, epoch: int, worker: int, num_workers: int) -> Iterator[Batch]:
        """Worker ``worker`` of ``num_workers`` takes every num_workers-th buffer of the epoch's chunk order."""
        rng = np.random.default_rng([self.seed, epoch, 1, worker])
        order = self.chunk_order(epoch)
        buffers = [order[i:i + self.buffer_chunks] for i in range(0, len(order), self.buffer_chunks)]
        order = np.concatenate(buffers[worker::num_workers] or [np.zeros(0, dtype=np.int64)])
        pending_rows: list[np.ndarray] = []
        pending_logits: list[np.ndarray] = []
        carry_rows = np.zeros(0, dtype=np.int64)
        carry_logits: np.ndarray | None = None
        for i, (rows, logits) in enumerate(self._chunks(order)):
            pending_rows.append(rows)
            if logits is not None:
                pending_logits.append(logits)
            if len(pending_rows) < self.buffer_chunks and i < len(order) - 1:
                continue
            buf_rows = np.concatenate(pending_rows)  # (R,)
            buf_logits = np.concatenate(pending_logits) if pending_logits else None  # (R, K)
            pending_rows, pending_logits = [], []
            perm = rng.permutation(len(buf_rows)) if self.shuffle else np.arange(len(buf_rows))
            # The epoch's row sequence is the previous buffer's leftover, then this buffer permuted.
            # Logits are gathered per batch, never as a permuted copy of the whole buffer.
            seq = np.concatenate([carry_rows, buf_rows[perm]])  # (r + R,)
            last = i == len(order) - 1
            full = len(seq) if last else (len(seq) // self.batch_size) * self.batch_size
            for start in range(0, full, self.batch_size):
                stop = start + self.batch_size
                yield self._batch(epoch, seq[start:stop], None if buf_logits is None else
                                  self._gather(carry_logits, buf_logits, perm, start, min(stop, len(seq))))
            carry_rows = seq[full:]
            if buf_logits is not None:
                carry_logits = self._gather(carry_logits, buf_logits, perm, full, len(seq))

    @staticmethod
    def _gather(carry: np.ndarray | None, buf: np.ndarray, perm: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of concat(carry, buf[perm]) without materialising it. (stop - start, K)."""
        c = 0 if carry is None else len(carry)
        parts = []
        if start < c:
            parts.append(carry[start:min(stop, c)])
        if stop > c:
            parts.append(buf[perm[max(start - c, 0):stop - c]])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __getstate__(self) -> dict:
        # Sent to spawned workers: no open store, no worker pool; the store is reopened by path there.
        state = dict(self.__dict__)
        state["store"], state["_dataloader"] = None, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._store_path is not None:
            self.store = SoftTargetStore(self._store_path, storage_options=self._storage_options)

    def _batch(self, epoch: int, rows: np.ndarray, logits: np.ndarray | None) -> Batch:
        idx = torch.from_numpy(rows)
        x = self.split.x[idx]  # (B, C, H, W)
        mix = None
        if self._replay is not None and logits is not None:
            views = self.views_for(rows, epoch)  # (B,)
            x, logits, mix = self._replay.batch(x, self.split.y[idx], logits[np.arange(len(rows)), views])  # (B, K)
        return Batch(x, self.split.y[idx], None if logits is None else torch.from_numpy(np.ascontiguousarray(logits)),
                     idx, mix)


class _WorkerStream(torch.utils.data.IterableDataset):
    """One DataLoader worker's share of each epoch: whole buffers of chunks, so no chunk is read twice."""

    def __init__(self, loader: SoftTargetLoader) -> None:
        self.loader = loader
        self.epoch = 0

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch, self.epoch = self.epoch, self.epoch + 1
        yield from self.loader._iterate(epoch, worker, num_workers)
