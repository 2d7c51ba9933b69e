"""The chunk-aware loader: alignment, coverage, reproducible two-level shuffle, streaming = caching."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline.data import Split, load_dataset
from pipeline.errors import StoreError
from pipeline.loader import SoftTargetLoader
from pipeline.store import SoftTargetStore
from tests.conftest import DIGITS, flip_byte, shard_file


@pytest.fixture(scope="module")
def train_split():
    return load_dataset(DIGITS).splits["train"]


def _epoch(loader, e):
    return list(loader.epoch(e))


def test_each_row_once_and_aligned_with_store(digits_store, train_split):
    store = SoftTargetStore(digits_store)
    logits = store.read_logits("train")
    loader = SoftTargetLoader(train_split, 50, seed=3, store=store, buffer_chunks=2)
    batches = _epoch(loader, 0)
    rows = torch.cat([b.rows for b in batches]).numpy()
    assert sorted(rows.tolist()) == list(range(len(train_split)))
    assert len(batches) == len(loader) and all(len(b.y) == 50 for b in batches[:-1])
    for b in batches:
        np.testing.assert_array_equal(b.logits.numpy(), logits[b.rows.numpy()])
        assert torch.equal(b.y, train_split.y[b.rows]) and torch.equal(b.x, train_split.x[b.rows])
    assert rows.tolist() != sorted(rows.tolist())  # shuffled


def test_order_is_seeded_and_changes_per_epoch(digits_store, train_split):
    store = SoftTargetStore(digits_store)
    a = SoftTargetLoader(train_split, 64, seed=1, store=store)
    b = SoftTargetLoader(train_split, 64, seed=1, store=store)
    first = torch.cat([x.rows for x in _epoch(a, 0)])
    assert torch.equal(first, torch.cat([x.rows for x in _epoch(b, 0)]))
    assert not torch.equal(first, torch.cat([x.rows for x in _epoch(a, 1)]))
    assert not torch.equal(first, torch.cat([x.rows for x in _epoch(SoftTargetLoader(train_split, 64, 2, store), 0)]))


def test_streaming_yields_the_same_batches_as_caching(digits_store, train_split):
    store = SoftTargetStore(digits_store)
    cached = SoftTargetLoader(train_split, 64, seed=5, store=store, cache_mb=1000)
    streamed = SoftTargetLoader(train_split, 64, seed=5, store=store, cache_mb=0, prefetch_chunks=1)
    assert cached._cache is not None and streamed._cache is None
    for x, y in zip(_epoch(cached, 2), _epoch(streamed, 2), strict=True):
        assert torch.equal(x.rows, y.rows) and torch.equal(x.logits, y.logits)


def test_kept_rows_alone_once_per_epoch_aligned_cached_or_streamed(digits_store, train_split):
    """``keep``: an epoch visits the kept rows once each (the baseline's labelled rows), with their own logits,
    the same whether the logits are cached or streamed."""
    store = SoftTargetStore(digits_store)
    keep = np.zeros(len(train_split), dtype=bool)
    keep[np.random.default_rng(0).choice(len(train_split), 100, replace=False)] = True
    cached = SoftTargetLoader(train_split, 32, seed=1, store=store, cache_mb=1000, keep=keep)
    streamed = SoftTargetLoader(train_split, 32, seed=1, store=store, cache_mb=0, prefetch_chunks=1, keep=keep)
    assert len(cached) == len(streamed) == 4 and cached.rows == 100
    a, b = _epoch(cached, 0), _epoch(streamed, 0)
    rows = torch.cat([x.rows for x in a])
    assert sorted(rows.tolist()) == np.flatnonzero(keep).tolist()
    everything = store.read_logits("train")
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.rows, y.rows) and torch.equal(x.logits, y.logits)
        assert torch.equal(x.logits, torch.from_numpy(everything[x.rows.numpy()]))
        assert torch.equal(x.y, train_split.y[x.rows])
    label_only = _epoch(SoftTargetLoader(train_split, 32, seed=1, keep=keep), 0)
    assert sorted(torch.cat([x.rows for x in label_only]).tolist()) == np.flatnonzero(keep).tolist()


def test_epoch_rows_pass_over_the_kept_rows_again_until_reached_aligned(digits_store, train_split):
    """``epoch_rows``: the baseline's epoch on a labelled share visits it again and again, each pass in its own order
    and with its own draws, with each row's own logits, until exactly that many rows: the first pass is the one-pass
    epoch's order, and the epoch has the steps of ``epoch_rows`` rows."""
    store = SoftTargetStore(digits_store)
    logits = store.read_logits("train")
    keep = np.zeros(len(train_split), dtype=bool)
    keep[np.random.default_rng(0).choice(len(train_split), 100, replace=False)] = True
    once = _epoch(SoftTargetLoader(train_split, 25, seed=1, store=store, keep=keep), 0)
    loader = SoftTargetLoader(train_split, 25, seed=1, store=store, keep=keep, epoch_rows=260)
    batches = list(loader._iterate(0))
    assert len(loader) == len(batches) == 11 and sum(len(r) for _, r, _ in batches) == 260
    rows = np.concatenate([r for _, r, _ in batches])
    counts = np.bincount(rows, minlength=len(keep))
    assert set(np.unique(counts[keep])) <= {2, 3} and counts[keep].sum() == 260 and not counts[~keep].any()
    assert np.array_equal(rows[:100], torch.cat([b.rows for b in once]).numpy())
    assert not np.array_equal(rows[:100], rows[100:200])  # each pass in its own order
    draws = [d for d, _, _ in batches]
    assert draws[0] == 0 * 3 + 0 and draws[-1] == 2 and sorted(set(draws)) == [0, 1, 2]  # a pass's own draws
    assert [d for d, _, _ in loader._iterate(1)][0] == 3  # epoch 1's first pass draws after epoch 0's three
    for b, (_, r, lg) in zip(_epoch(loader, 0), batches, strict=True):
        assert torch.equal(b.rows, torch.from_numpy(r))
        assert torch.equal(b.logits, torch.from_numpy(logits[r])) and np.array_equal(lg, logits[r])


def test_label_only_loader_has_no_logits(train_split):
    batches = _epoch(SoftTargetLoader(train_split, 100, seed=0), 0)
    assert all(b.logits is None for b in batches)
    assert sum(len(b.y) for b in batches) == len(train_split)


def test_corrupt_chunk_while_streaming_raises(store_copy, train_split):
    flip_byte(shard_file(store_copy), at=0.3, mask=0x01)
    loader = SoftTargetLoader(train_split, 64, seed=0, store=SoftTargetStore(store_copy), cache_mb=0)
    with pytest.raises(StoreError, match="train/logits"):
        _epoch(loader, 0)


@pytest.mark.slow
def test_dataloader_workers_cover_every_row_aligned(digits_store, train_split):
    """Two spawned DataLoader workers read the images, the logits stream here: every row once per epoch,
    images and logits aligned, and the very batches of a loader without workers, in any epoch order."""
    store = SoftTargetStore(digits_store)
    logits = store.read_logits("train")
    # One chunk per buffer: buffers smaller than the workers' share of the epoch, yet every worker gets work.
    loader = SoftTargetLoader(train_split, 32, seed=7, store=store, cache_mb=0, workers=2, buffer_chunks=1)
    serial = SoftTargetLoader(train_split, 32, seed=7, store=store, cache_mb=0, buffer_chunks=1)
    epochs = []
    for e in (0, 1, 5):
        batches = list(loader.epoch(e))
        rows = torch.cat([b.rows for b in batches]).numpy()
        assert sorted(rows.tolist()) == list(range(len(train_split)))
        for b, s in zip(batches, serial.epoch(e), strict=True):
            np.testing.assert_array_equal(b.logits.numpy(), logits[b.rows.numpy()])
            assert torch.equal(b.y, train_split.y[b.rows])
            assert torch.equal(b.x, train_split.batch(b.rows.numpy()))
            assert torch.equal(b.rows, s.rows) and torch.equal(b.x, s.x)
        epochs.append(rows)
    assert not np.array_equal(epochs[0], epochs[1])


class _LoggedSplit(Split):
    """A real split that appends (reading process, rows read) to a log file at every read: what each
    DataLoader worker was handed."""

    def __init__(self, split: Split, log: str) -> None:
        super().__init__(source=split.source, index=split.index, y=split.y, ids=split.ids, preprocess=split.preprocess)
        self.log = log

    def batch(self, rows, **kwargs):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {len(rows)}\n")
        return super().batch(rows, **kwargs)


def test_a_batch_is_spread_over_the_workers_in_pieces(train_split, tmp_path):
    """Each batch is read as pieces of at most ``piece_rows`` rows by every worker, and joined back in order:
    the same pixels as one whole read. (One task per batch left a worker with twice the others' work on a
    pass of a few thousand images.)"""
    from pipeline.loader import read_batches, row_batches

    log = str(tmp_path / "reads.txt")
    split = _LoggedSplit(train_split.head(300), log)
    items = [("a", rows) for rows in row_batches(np.arange(len(split)), 128)]  # 128, 128, 44
    got = list(read_batches({"a": split}, items, workers=2, piece_rows=32))
    for (_, rows), (x, d) in zip(items, got, strict=True):
        assert d is None and torch.equal(x, train_split.batch(rows))
    reads = [tuple(map(int, line.split())) for line in open(log)]
    assert sorted(n for _, n in reads) == [12] + [32] * 9  # 128 = 4 × 32, twice; 44 = 32 + 12
    assert len({pid for pid, _ in reads}) == 2 and os.getpid() not in {pid for pid, _ in reads}


@pytest.mark.slow
def test_one_reader_for_several_splits_keeps_each_batch_and_metric(train_split):
    """read_batches over (split, rows) items with two workers: the batches of each split in order, and
    evaluate_splits' metrics equal evaluate's split by split."""
    from pipeline.config import ModelConfig
    from pipeline.loader import read_batches, row_batches
    from pipeline.models import build_model
    from pipeline.train import evaluate, evaluate_splits

    splits = {"a": train_split.head(300), "b": load_dataset(DIGITS).splits["val"]}
    items = [(name, rows) for name, s in splits.items() for rows in row_batches(np.arange(len(s)), 128)]
    for (name, rows), (x, d) in zip(items, read_batches(splits, items, workers=2), strict=True):
        assert d is None and torch.equal(x, splits[name].batch(rows))
    model = build_model(ModelConfig(arch="cnn", width=4), (1, 8, 8), 10)
    cpu = torch.device("cpu")
    assert evaluate_splits(model, splits, cpu, workers=2) == {  # the same batches of 512 as evaluate
        name: evaluate(model, s, cpu) for name, s in splits.items()}


def test_more_workers_than_cores_are_capped_once_without_torchs_warnings(train_split, caplog, recwarn):
    """A preset's 4 workers on a 2-core machine: torch warned about "excessive" workers again and again."""
    from pipeline.loader import available_cores, read_batches

    cores = available_cores()
    split = train_split.head(96)
    with caplog.at_level("WARNING", logger="pipeline.loader"):
        loader = SoftTargetLoader(split, 32, seed=0, workers=cores + 2)
        batches = list(loader.epoch(0))
        again = SoftTargetLoader(split, 32, seed=0, workers=cores + 2)
        read = list(read_batches({"train": split}, [("train", np.arange(len(split)))], workers=cores + 2))
    assert loader.workers == again.workers == cores
    assert sorted(torch.cat([b.rows for b in batches]).tolist()) == list(range(len(split)))
    assert torch.equal(read[0][0], split.batch(np.arange(len(split))))
    capped = [r.getMessage() for r in caplog.records if "CPU cores available" in r.getMessage()]
    assert capped == [f"workers: {cores + 2} asked for, {cores} CPU cores available: using {cores} DataLoader "
                      "workers"]  # once, however many loaders
    assert not [w for w in recwarn if "worker" in str(w.message)]
