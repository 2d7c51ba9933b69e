"""Batches of (images, labels, teacher logits), aligned by row, read chunk by chunk.

Reading a chunked store one sample at a time decodes a whole chunk per
sample. This loader instead visits each chunk once per epoch and shuffles at
two levels: the order of chunks, then the rows inside a buffer of
``buffer_chunks`` chunks. The order depends only on (seed, epoch), so it is
the same whether logits come from memory or from the store, and across runs.

When the decoded logits fit in ``cache_mb`` they are read once and kept;
otherwise a background thread decodes upcoming chunks while the model trains,
and memory stays bounded by the buffer plus the prefetch queue.

Images are read per batch from the lazy split (:meth:`pipeline.data.Split.batch`).
With DataLoader workers, the workers read, decode and augment each batch's images
(and replay its stored views) in the epoch's order, while the logits are read in
this process, once, by a single reader, and joined to them by row: every worker
gets a batch at a time, whatever the chunk size. Batches are pinned when CUDA is
available, so :meth:`Batch.to` copies them without blocking. :func:`read_batches`
reads splits in order the same way (evaluation and the teacher pass), a batch spread over the workers.
"""
from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from pipeline.data import Split
from pipeline.errors import UserError
from pipeline.store import SoftTargetStore

log = logging.getLogger(__name__)
_capped: set[tuple[int, int]] = set()  # (asked, cores) already logged by this process
_capped_lock = threading.Lock()


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, as torch's DataLoader counts them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not Linux)
        return os.cpu_count() or 1


def usable_workers(asked: int) -> int:
    """DataLoader workers to start for ``asked``: at most one per available core.

    More workers than cores only queue for them, and torch warns about it once per loader (a preset's 4
    workers on a 2-core machine printed some 30 lines). The cap is logged once per process.
    """
    cores = available_cores()
    if asked <= cores:
        return asked
    with _capped_lock:
        if (asked, cores) not in _capped:
            _capped.add((asked, cores))
            log.warning("workers: %d asked for, %d CPU cores available: using %d DataLoader workers",
                        asked, cores, cores)
    return cores


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

    def pin_memory(self) -> "Batch":
        """Page-locked copies (DataLoader's pin thread calls this), so copies to the GPU need not block."""
        return Batch(self.x.pin_memory(), self.y.pin_memory(),
                     None if self.logits is None else self.logits.pin_memory(), self.rows,
                     None if self.mix is None else tuple(t.pin_memory() for t in self.mix))


@dataclass(frozen=True)
class WorkerError:
    """A user error raised where a batch was read (a DataLoader worker), carried back to be raised here:
    DataLoader would otherwise re-raise it as a RuntimeError holding the worker's traceback."""

    field: str
    problem: str
    fix: str

    def raise_(self) -> None:
        raise UserError(self.field, self.problem, self.fix)


def _checked(item):
    if isinstance(item, WorkerError):
        item.raise_()
    return item


def default_pin_memory() -> bool:
    return torch.cuda.is_available()


class SoftTargetLoader:
    """One epoch of batches at a time; see the module docstring for the order.

    ``view_size`` (H, W): with a store of teacher views, the resolution they are replayed at (a student's own,
    when it differs from the store's); its batches are then (B, C, H, W). Without views it changes nothing: the
    images come at the store's resolution and the student's input hook resizes them, once.
    """

    def __init__(self, split: Split, batch_size: int, seed: int, store: SoftTargetStore | None = None,
                 split_name: str = "train", chunk_rows: int = 256, buffer_chunks: int = 8,
                 cache_mb: float = 1024.0, prefetch_chunks: int = 8, shuffle: bool = True,
                 cached: np.ndarray | None = None, workers: int = 0, view_policy: str = "uniform",
                 pin_memory: bool | None = None, view_size: tuple[int, int] | None = None,
                 keep: np.ndarray | None = None, epoch_rows: int | None = None, view_data: str = "views") -> None:
        """``keep``: (N,) bool, the rows an epoch visits (None: every row), e.g. the labelled rows alone for the
        label-only baseline; chunks are still read whole and the order still depends on (seed, epoch) alone.
        ``epoch_rows``: rows in an epoch (None: the kept rows, once each). More than the kept rows makes an epoch
        pass over them again, each pass in its own seeded order with its own draws of views and train transforms,
        until that many rows were visited: the baseline's epoch on a labelled share then has exactly the rows, and
        so the steps, of the students' epoch on every kept row. ``view_data``: what a store's views show
        (:class:`pipeline.views.ViewReplay`): all of them, view 0 alone, or unmixed."""
        self.split, self.batch_size, self.seed, self.shuffle = split, batch_size, seed, shuffle
        self.keep = None if keep is None or keep.all() else np.asarray(keep, dtype=bool)
        kept = len(split) if self.keep is None else int(self.keep.sum())
        self.epoch_rows = kept if epoch_rows is None else epoch_rows
        if epoch_rows is not None and (epoch_rows < 1 or kept == 0):
            raise ValueError(f"epoch_rows must be >= 1 over at least one kept row, got {epoch_rows} over {kept}")
        self.passes = max(1, -(-self.epoch_rows // max(kept, 1)))
        self.pin_memory = default_pin_memory() if pin_memory is None else pin_memory
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
        self.workers, self._dataloader, self._sampler = usable_workers(workers), None, None
        # Stores with K teacher views: each epoch picks a view per sample and replays its transform,
        # so the student sees exactly the pixels the teacher scored.
        self.views = 1 if store is None else store.views
        self.view_policy = view_policy
        self.view_data = view_data  # what a store's views show: all of them, view 0 alone, or unmixed (ViewReplay)
        self._replay = None
        if self.views > 1:
            from pipeline.views import ViewReplay

            # Each view is replayed from its stored parameters, carried next to its logits; at ``view_size`` (a
            # student's own resolution) when given, in one resampling from the recorded box.
            self._replay = ViewReplay(store.meta.views.params, store.num_classes, split, split_name, size=view_size,
                                      data=view_data)
            if cached is not None:
                cached = self._replay.pack(cached, store.view_params(split_name))
        self._epoch_views: tuple[int, np.ndarray] | None = None
        self._images = _TrainImages(split, seed, self._replay)
        self._cache = cached  # (N, C), or (N, V, C + P) logits and view parameters, e.g. from the run's plan
        if store is not None and cached is None and fits_cache(self.n * self.views, store.num_classes, cache_mb):
            self._cache = self._read(0, self.n)

    @property
    def rows(self) -> int:
        """Rows an epoch visits."""
        return self.n if self.keep is None else int(self.keep.sum())

    def __len__(self) -> int:
        return -(-self.epoch_rows // self.batch_size)

    def chunk_order(self, epoch: int, visit: int = 0) -> np.ndarray:
        """The chunks of pass ``visit`` of ``epoch``, in order."""
        if not self.shuffle:
            return np.arange(self.num_chunks)
        key = [self.seed, epoch, 0] if visit == 0 else [self.seed, epoch, 0, visit]  # pass 0: as ever
        return np.random.default_rng(key).permutation(self.num_chunks)

    def _chunks(self, order: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(rows, logits) per chunk in ``order``; decoded ahead in a thread when streaming."""
        def bounds(c: int) -> tuple[int, int]:
            return c * self.chunk_rows, min((c + 1) * self.chunk_rows, self.n)

        def kept(lo: int, hi: int, logits: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
            """The chunk's rows [lo, hi) and their logits, restricted to the rows kept."""
            r = np.arange(lo, hi)
            if self.keep is None:
                return r, logits
            sel = self.keep[lo:hi]  # (R,)
            return r[sel], None if logits is None else logits[sel]

        if self.store is None or self._cache is not None:
            for c in order:
                lo, hi = bounds(int(c))
                yield kept(lo, hi, None if self._cache is None else self._cache[lo:hi])
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch_chunks)
        stop = threading.Event()

        def produce() -> None:
            try:
                for c in order:
                    if stop.is_set():
                        return
                    lo, hi = bounds(int(c))
                    q.put(kept(lo, hi, self._read(lo, hi)))
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
        """The batches of one epoch, in any order of epochs. With ``workers`` > 0 their images are read,
        decoded and augmented (their views replayed) by DataLoader worker processes, a batch each, in the
        epoch's order; logits are read here (cached, or streamed by a background thread) and joined to
        them by row."""
        if not self.workers:
            for draw, rows, payload in self._iterate(epoch):
                logits, params = self._chosen(draw, rows, payload)
                b = self._batch(rows, logits, params, _checked(self._images[(draw, rows, params)]))
                yield b.pin_memory() if self.pin_memory else b
            return
        if self._dataloader is None:
            # Persistent workers start once for the run (see worker_context for where they come from).
            self._sampler = _EpochBatches(len(self))
            self._dataloader = torch.utils.data.DataLoader(
                self._images, sampler=self._sampler, batch_size=None, num_workers=self.workers,
                persistent_workers=True, multiprocessing_context=worker_context(), prefetch_factor=4,
                pin_memory=self.pin_memory, generator=_worker_seeds(self.seed))
        # The DataLoader draws the sampler's items here, in this process, a few batches ahead of the
        # consumer: each item reads its logits (one reader for the epoch) and sends the workers only the
        # rows and the chosen views' parameters. Workers keep the order, so the oldest pending logits
        # belong to the next batch that comes back.
        pending: collections.deque[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = collections.deque()

        def items() -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
            for draw, rows, payload in self._iterate(epoch):
                logits, params = self._chosen(draw, rows, payload)
                pending.append((rows, logits, params))
                yield draw, rows, params

        self._sampler.items = items()
        for x in self._dataloader:
            rows, logits, params = pending.popleft()
            b = self._batch(rows, logits, params, _checked(x))
            # The images come pinned from DataLoader's pin thread; labels and logits are pinned here, since a
            # copy from pageable memory to the GPU first waits for all the work queued there (a sync per batch).
            yield b.pin_memory() if self.pin_memory else b
        assert not pending, "every batch read was joined to its logits"

    @property
    def mixed_views(self) -> bool:
        """Whether batches carry mixed views (MixUp/CutMix partners): ``Batch.mix`` is set."""
        return self._replay is not None and self._replay.partners is not None

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Decoded logits of rows [start, stop): (R, C), or (R, V, C + P) logits and parameters of every view."""
        if self.views > 1:
            return self._replay.pack(self.store.read_views(self.split_name, start, stop),
                                     self.store.view_params(self.split_name, start, stop))
        return self.store.read_logits(self.split_name, start, stop)

    def views_for(self, rows: np.ndarray, epoch: int) -> np.ndarray:
        """The view each row is trained on this epoch: uniform at random (seeded) or cycling through all; the
        clean view 0 when the loader serves it alone (``view_data`` plain)."""
        if self.view_data == "plain":
            return np.zeros(len(rows), dtype=np.int64)
        if self.view_policy == "cycle":
            return (rows + epoch) % self.views
        if self._epoch_views is None or self._epoch_views[0] != epoch:
            self._epoch_views = (epoch, np.random.default_rng([self.seed, epoch, 2]).integers(0, self.views, self.n))
        return self._epoch_views[1][rows]

    def _iterate(self, epoch: int) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """(draw, rows (B,), logits or None) per batch of the epoch: buffers of ``buffer_chunks`` chunks in the
        epoch's chunk order, each shuffled inside, once per pass until ``epoch_rows`` rows; rows left over from a
        pass open the next one's first batch. Logits are (B, K), or (B, V, K + P) with views. ``draw`` numbers the
        pass whose views and train transforms the batch draws: the epoch itself with one pass an epoch."""
        carry_rows = np.zeros(0, dtype=np.int64)
        carry_logits: np.ndarray | None = None
        left = self.epoch_rows
        for visit in range(self.passes):
            draw = epoch if self.passes == 1 else epoch * self.passes + visit
            rng = np.random.default_rng([self.seed, epoch, 1, visit])
            order = self.chunk_order(epoch, visit)
            pending_rows: list[np.ndarray] = []
            pending_logits: list[np.ndarray] = []
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
                last = visit == self.passes - 1 and i == len(order) - 1
                full = len(seq) if last else (len(seq) // self.batch_size) * self.batch_size
                full = min(full, left)  # the epoch ends after epoch_rows rows, inside this buffer if need be
                for start in range(0, full, self.batch_size):
                    stop = min(start + self.batch_size, full)
                    yield draw, seq[start:stop], None if buf_logits is None else \
                        self._gather(carry_logits, buf_logits, perm, start, stop)
                left -= full
                if not left:
                    return
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

    def _chosen(self, epoch: int, rows: np.ndarray, payload: np.ndarray | None
                ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(logits (B, K) or None, the chosen views' parameters (B, P) or None) of one batch."""
        if self._replay is None or payload is None:
            return payload, None
        chosen = payload[np.arange(len(rows)), self.views_for(rows, epoch)]  # (B, V, K + P) -> (B, K + P)
        return self._replay.split(chosen)

    def _batch(self, rows: np.ndarray, logits: np.ndarray | None, params: np.ndarray | None,
               x: torch.Tensor) -> Batch:
        """The batch of ``rows``: images ``x`` (B, C, H, W) as read (views replayed), labels, logits."""
        idx = torch.from_numpy(rows)
        y = self.split.y[idx]
        mix = None if params is None else self._replay.labels(y, params)
        return Batch(x, y, None if logits is None else torch.from_numpy(np.ascontiguousarray(logits)), idx, mix)


def worker_context() -> multiprocessing.context.BaseContext:
    """Where DataLoader workers come from: a fork server that has imported torch and this package once.

    Not fork: a forked child inherits this process's threads' locks (zarr's I/O loop, the store writer,
    the prefetch thread) in an unusable state. Not spawn either: a spawned worker imports torch (and its
    CUDA libraries) afresh for every DataLoader, seconds per pass; a worker forked from the clean,
    single-threaded server starts in a fraction of that (docs/design.md, "How stage 2 reads the store").
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "pipeline.loader"])  # only read when the server first starts
    return ctx


def _worker_seeds(seed: int) -> torch.Generator:
    """Where a DataLoader draws its workers' base seed: its own generator, not torch's global RNG, which a
    student's dropout stream may hold at that moment in another thread (pipeline.rng.TrainRng)."""
    return torch.Generator().manual_seed(seed)


class _EpochBatches(torch.utils.data.Sampler):
    """The current epoch's (epoch, rows, view parameters) items, drawn lazily in this process; the loader
    sets ``items`` before each epoch."""

    def __init__(self, batches: int) -> None:
        self.items: Iterator[tuple[int, np.ndarray, np.ndarray | None]] = iter(())
        self.batches = batches

    def __iter__(self):
        return self.items

    def __len__(self) -> int:
        return self.batches


class _TrainImages(torch.utils.data.Dataset):
    """Map-style: (epoch, rows, view parameters (B, P) or None) -> the rows' images (B, C, H, W) with the
    train pipeline drawn for that epoch and, with a store's views, each row's view replayed."""

    def __init__(self, split: Split, seed: int, replay) -> None:
        self.split, self.seed, self.replay = split, seed, replay

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, np.ndarray, np.ndarray | None]):
        epoch, rows, params = item
        try:
            x = self.split.batch(rows, train_seed=(self.seed, epoch))
            return x if params is None else self.replay.pixels(x, params)
        except UserError as exc:  # an unreadable image: raised again, in one line, by the consumer
            return WorkerError(exc.field, exc.problem, exc.fix)


class _RowBatches(torch.utils.data.Dataset):
    """Map-style: (split name, rows) -> (images (B, C, H, W), file digests (B, 32) or None)."""

    def __init__(self, splits: dict[str, Split], digests: bool) -> None:
        self.splits, self.digests = splits, digests

    def __len__(self) -> int:
        return sum(len(s) for s in self.splits.values())

    def __getitem__(self, item: tuple[str, np.ndarray]):
        name, rows = item
        try:
            if self.digests:
                return self.splits[name].batch_with_digests(rows)
            return self.splits[name].batch(rows), None
        except UserError as exc:
            return WorkerError(exc.field, exc.problem, exc.fix)


def row_batches(rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``rows`` cut into consecutive batches of ``batch_size`` (the last one shorter)."""
    return [rows[s:s + batch_size] for s in range(0, len(rows), batch_size)]


PIECE_ROWS = 64  # images per worker task when read_batches spreads a batch over its workers


def read_batches(splits: dict[str, Split], items: list[tuple[str, np.ndarray]], *, workers: int = 0,
                 device: torch.device | None = None, digests: bool = False,
                 piece_rows: int = PIECE_ROWS) -> Iterator[tuple[torch.Tensor, np.ndarray | None]]:
    """The (split name, rows) batches ``items``, in order: (images (B, C, H, W), file digests (B, 32) or None).

    With ``workers`` > 0 they are read and decoded by that many DataLoader worker processes, which keep
    the order. Workers start (:func:`worker_context`) once per call, so a caller reads all it needs (every
    split of a pass) in one call. Each batch is read as pieces of at most ``piece_rows`` rows, spread over
    the workers, and joined here: a worker reads a whole task, so with one task per batch (512 rows) a
    pass of a few thousand images has barely more tasks than workers, and the workers that draw a second
    one set the pace (a 4,000-image pass on 8 workers ran at 0.75 of a plain DataLoader on an H100 host).
    Pieces also bound what the workers hold in flight (``prefetch_factor`` tasks each).

    ``device``: where the batches are wanted. On CUDA the pieces are pinned and copied without blocking,
    and a batch is joined on the device (no host-side copy of the whole batch); elsewhere on the CPU.

    The workers start when this is called, not at the first batch: the caller can do other work (the
    teacher pass creates its store) while they start and read the first pieces.
    """
    return iter(BatchReader(splits, items, workers=workers, device=device, digests=digests, piece_rows=piece_rows))


class BatchReader:
    """:func:`read_batches` that can be read again: each iteration yields the same batches, in order.

    ``persistent``: the DataLoader workers outlive an iteration and serve the next one (validation reads
    val after every epoch; starting its workers anew each time cost ~0.15 s on this 2-core CPU with 2
    fork-server workers, more with 8). They exit when the reader is closed or dropped.
    """

    def __init__(self, splits: dict[str, Split], items: list[tuple[str, np.ndarray]], *, workers: int = 0,
                 device: torch.device | None = None, digests: bool = False, piece_rows: int = PIECE_ROWS,
                 persistent: bool = False) -> None:
        self.items, self.piece_rows = items, piece_rows
        self.device = device or torch.device("cpu")
        self._data = _RowBatches(splits, digests)
        self._pin = self.device.type == "cuda"
        self._loader = None
        if workers and items:  # (nothing to read: no worker started)
            pieces = [(name, piece) for name, rows in items for piece in row_batches(rows, piece_rows)]
            self._loader = torch.utils.data.DataLoader(
                self._data, sampler=pieces, batch_size=None, num_workers=usable_workers(workers),
                multiprocessing_context=worker_context(), pin_memory=self._pin, prefetch_factor=4,
                persistent_workers=persistent, generator=_worker_seeds(0))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, np.ndarray | None]]:
        if self._loader is None:  # read in this process: nothing to balance
            return _read_here(self._data, self.items, self._pin, self.device)
        return _join_pieces(iter(self._loader), self.items, self.piece_rows, self.device)  # workers read now

    def close(self) -> None:
        """Stop persistent workers now rather than when the reader is collected."""
        self._loader = None


def _read_here(data: _RowBatches, items: list[tuple[str, np.ndarray]], pin: bool,
               device: torch.device) -> Iterator[tuple[torch.Tensor, np.ndarray | None]]:
    for item in items:
        x, d = _checked(data[item])
        yield _joined([x.pin_memory() if pin else x], device), d


def _join_pieces(read: Iterator, items: list[tuple[str, np.ndarray]], piece_rows: int,
                 device: torch.device) -> Iterator[tuple[torch.Tensor, np.ndarray | None]]:
    for _, rows in items:
        got = [_checked(next(read)) for _ in range(-(-len(rows) // piece_rows))]
        xs = _joined([x for x, _ in got], device)
        yield xs, None if got[0][1] is None else np.concatenate([np.asarray(d) for _, d in got])


def _joined(pieces: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """One batch (B, C, H, W) on ``device`` from its pieces (b, C, H, W); CUDA copies are non-blocking."""
    if device.type == "cpu":
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    moved = [x.to(device, non_blocking=True) for x in pieces]
    return moved[0] if len(moved) == 1 else torch.cat(moved)


def ordered_batches(split: Split, batches: list[np.ndarray], **kwargs) -> Iterator[tuple[torch.Tensor,
                                                                                         np.ndarray | None]]:
    """:func:`read_batches` over one split."""
    return read_batches({"": split}, [("", rows) for rows in batches], **kwargs)
