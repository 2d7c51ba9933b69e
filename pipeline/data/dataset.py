"""Lazy splits: index-addressable samples of a source, with labels and stable ids held as small int arrays.

A :class:`Split` never holds its pixels. :meth:`Split.batch` reads the rows it
is asked for (decoding them where it runs: in a DataLoader worker, or in this
process) and preprocesses them with the dataset's named pipelines
(:mod:`pipeline.transforms`). Its fingerprint is computed by streaming: sha256
over the split's shape, ids, labels and then, block by block, what identifies
each sample (raw pixels for an array, relative path and byte size for a file).
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.data.folder import FolderSource
from pipeline.data.sources import ArraySource, Source
from pipeline.transforms import Preprocess, apply_seeded, sample_seed


def _held(array: np.ndarray) -> np.ndarray:
    return array


class Split:
    """Rows ``0..N-1`` of a split: row ``r`` is sample ``index[r]`` of ``source``, with label ``y[r]`` and
    stable id ``ids[r]`` (its index in the source dataset; test ids offset past train)."""

    def __init__(self, *, source: Source, index: np.ndarray, y: torch.Tensor, ids: torch.Tensor,
                 preprocess: Preprocess) -> None:
        self.source, self.index = source, np.asarray(index, dtype=np.int64)
        self.y, self.ids = y, ids  # (N,) int64 each
        self.preprocess = preprocess
        self._pipelines: tuple | None = None

    @classmethod
    def from_tensors(cls, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> "Split":
        """A split over images already in memory, (N, C, H, W) float32 in [0, 1] (tests, benchmarks)."""
        array = x.numpy()
        source = ArraySource(functools.partial(_held, array), y.numpy(), [], array=array)
        pre = Preprocess(image_size=None, train_ops=(), native=tuple(x.shape[2:]), v1_record=True)
        return cls(source=source, index=np.arange(len(y)), y=y, ids=ids, preprocess=pre)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def _tf(self):
        if self._pipelines is None:
            self._pipelines = (self.preprocess.eval(), self.preprocess.train())
        return self._pipelines

    def batch(self, rows: np.ndarray, *, train_seed: tuple[int, int] | None = None) -> torch.Tensor:
        """Rows ``rows`` preprocessed, (B, C, H, W) float32. With ``train_seed`` = (seed, epoch) the train
        pipeline is drawn per sample from (seed, epoch, sample id): the same in any process."""
        rows = np.asarray(rows, dtype=np.int64)
        idx = self.index[rows]
        evaluate, train = self._tf()
        if train_seed is None or train is None:
            many = self.source.read_many(idx)
            if many is not None:  # one indexing op and one batched transform for in-memory arrays
                return evaluate(many)
            return torch.stack([evaluate(self.source.read(int(i))) for i in idx])
        seed, epoch = train_seed
        return torch.stack([apply_seeded(train, self.source.read(int(i)), sample_seed(seed, epoch, int(self.ids[r])))
                            for r, i in zip(rows, idx)])

    def batch_with_digests(self, rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray | None]:
        """Preprocessed rows and, for file-backed sources, the sha256 of each file's bytes ((B, 32) uint8),
        both from a single read of each file."""
        if not self.source.has_content:
            return self.batch(rows), None
        evaluate, _ = self._tf()
        images, digests = [], []
        for i in self.index[np.asarray(rows, dtype=np.int64)]:
            img, digest = self.source.read_with_digest(int(i))  # type: ignore[attr-defined]
            images.append(evaluate(img))
            digests.append(np.frombuffer(digest, dtype=np.uint8))
        return torch.stack(images), np.stack(digests)

    @property
    def x(self) -> torch.Tensor:
        """Every image of the split in one tensor (N, C, H, W). For small sets and tests only: the pipeline
        itself reads batches (:meth:`batch`)."""
        return self.batch(np.arange(len(self)))

    def fingerprint(self) -> str:
        """sha256 over the split's shape, ids, labels and sample identities, streamed: any changed sample,
        label or order changes it. For arrays the identity is the pixels; for files, path and size."""
        h = hashlib.sha256()
        shape = self.source.shape if not self.source.has_content else None
        h.update(str((len(self), *shape) if shape else ("files", len(self))).encode())
        for t in (self.ids, self.y):
            h.update(np.ascontiguousarray(t.numpy()).tobytes())
        self.source.hash_rows(h, self.index)
        return h.hexdigest()

    def content_hash(self, digests: np.ndarray | None = None, known: np.ndarray | None = None) -> str:
        """The full content hash: for file-backed sources sha256 over every file's sha256, in row order (rows
        not ``known`` in ``digests`` (N, 32) are read now); for arrays, the fingerprint (it covers the pixels)."""
        if not self.source.has_content:
            return self.fingerprint()
        h = hashlib.sha256()
        h.update(f"content:{len(self)}".encode())
        for r, i in enumerate(self.index):
            if digests is not None and known is not None and known[r]:
                h.update(digests[r].tobytes())
            else:
                h.update(self.source.digest(int(i)))  # type: ignore[attr-defined]
        return h.hexdigest()

    def head(self, n: int) -> "Split":
        """The first ``n`` rows (all of them when there are fewer)."""
        return self.subset(np.arange(min(n, len(self))))

    def subset(self, rows: np.ndarray) -> "Split":
        """Rows ``rows`` of this split (in that order), as a split of their own: same source and preprocessing."""
        rows = np.asarray(rows, dtype=np.int64)
        idx = torch.from_numpy(rows)
        return Split(source=self.source, index=self.index[rows], y=self.y[idx].clone(), ids=self.ids[idx].clone(),
                     preprocess=self.preprocess)

    def with_labels(self, y: torch.Tensor) -> "Split":
        return Split(source=self.source, index=self.index, y=y, ids=self.ids, preprocess=self.preprocess)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pipelines": None}  # rebuilt where the split is used


@dataclass
class Dataset:
    name: str
    class_names: list[str]
    splits: dict[str, Split]
    preprocess: Preprocess
    channels: int
    files: FolderSource | None = None  # image folders: the folder, whose listing a store records

    @functools.cached_property
    def manifest(self) -> str | None:
        """The folder's listing as a store records it (folder.read_manifest reads it); None for other data.

        Built on demand: stage 2 compares listings without it (:meth:`FolderSource.matches`).
        """
        return None if self.files is None else self.files.manifest()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every preprocessed image."""
        return (self.channels, *self.preprocess.out_size)

    @property
    def transform(self) -> dict:
        """The eval preprocessing as the store records it."""
        return self.preprocess.record()

    @property
    def transform_hash(self) -> str:
        return self.preprocess.hash

    def fingerprints(self) -> dict[str, str]:
        return {name: split.fingerprint() for name, split in self.splits.items()}

    def describe(self) -> dict:
        """What a store records about the data it was written from."""
        out = {
            "name": self.name,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "input_shape": list(self.input_shape),
            "splits": {n: {"size": len(s), "fingerprint": s.fingerprint()} for n, s in self.splits.items()},
        }
        if self.files is not None:
            out["files"] = self.manifest
        return out
