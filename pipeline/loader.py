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

    def to(self, device: torch.device) -> "Batch":
        nb = device.type == "cuda"
        return Batch(self.x.to(device, non_blocking=nb), self.y.to(device, non_blocking=nb),
                     None if self.logits is None else self.logits.to(device, non_blocking=nb), self.rows)


class SoftTargetLoader:
    """One epoch of batches at a time; see the module docstring for the order."""

    def __init__(self, split: Split, batch_size: int, seed: int, store: SoftTargetStore | None = None,
                 split_name: str = "train", chunk_rows: int = 256, buffer_chunks: int = 8,
                 cache_mb: float = 1024.0, prefetch_chunks: int = 8, shuffle: bool = True,
                 cached: np.ndarray | None = None) -> None:
        self.split, self.batch_size, self.seed, self.shuffle = split, batch_size, seed, shuffle
        self.store, self.split_name = store, split_name
        self.chunk_rows = store.chunk_rows(split_name) if store is not None else chunk_rows
        self.buffer_chunks, self.prefetch_chunks = buffer_chunks, prefetch_chunks
        self.n = len(split)
        self.num_chunks = -(-self.n // self.chunk_rows)
        self._cache = cached  # (N, K) decoded logits already in memory, e.g. from the run's plan
        if store is not None and cached is None and fits_cache(self.n, store.num_classes, cache_mb):
            self._cache = store.read_logits(split_name)

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
                    q.put((r, self.store.read_logits(self.split_name, int(r[0]), int(r[-1]) + 1)))
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
        rng = np.random.default_rng([self.seed, epoch, 1])
        order = self.chunk_order(epoch)
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
            buf_rows = np.concatenate([carry_rows, buf_rows[perm]])
            if buf_logits is not None:
                buf_logits = buf_logits[perm] if carry_logits is None else np.concatenate([carry_logits, buf_logits[perm]])
            last = i == len(order) - 1
            full = len(buf_rows) if last else (len(buf_rows) // self.batch_size) * self.batch_size
            for s in range(0, full, self.batch_size):
                yield self._batch(buf_rows[s:s + self.batch_size],
                                  None if buf_logits is None else buf_logits[s:s + self.batch_size])
            carry_rows = buf_rows[full:]
            carry_logits = None if buf_logits is None else buf_logits[full:]

    def _batch(self, rows: np.ndarray, logits: np.ndarray | None) -> Batch:
        idx = torch.from_numpy(rows)
        return Batch(self.split.x[idx], self.split.y[idx],
                     None if logits is None else torch.from_numpy(np.ascontiguousarray(logits)), idx)
