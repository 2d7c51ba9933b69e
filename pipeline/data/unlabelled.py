"""``--unlabelled SOURCE``: samples without labels, appended to the train split.

The source is a folder of images (``PATH`` or ``imagefolder:PATH``, read recursively: class folders are not
needed and, if there, ignored) or a dataset name (``mnist``...: its train samples, labels ignored). Its samples
become the last rows of train, labelled :data:`~pipeline.names.NO_LABEL`, with stable ids offset past every id
of the dataset, read through one :class:`ConcatSource` so that the split stays lazy and index-addressable.
They are appended after label noise and ``--train-limit``, which apply to the labelled data alone.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

from pipeline.data.dataset import Dataset, Split
from pipeline.data.folder import FolderSource, native_size
from pipeline.data.sources import Source, cifar_sources, digits_source, locate, mnist_sources
from pipeline.errors import UserError
from pipeline.names import DATASETS, IMAGEFOLDER, NO_LABEL

FIX_OVERLAP = "remove the shared files from the unlabelled folder, or pass another folder"


class ConcatSource(Source):
    """Sources one after another: sample ``i`` of part ``k`` is sample ``starts[k] + i`` here."""

    def __init__(self, parts: list[Source]) -> None:
        self.parts = parts
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
        self.labels = np.concatenate([p.labels for p in parts])
        self.classes = parts[0].classes
        shapes = {p.shape for p in parts}
        self.shape = parts[0].shape if len(shapes) == 1 else None
        self.has_content = any(p.has_content for p in parts)

    def _part(self, i: int) -> tuple[Source, int]:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[k], i - int(self.starts[k])

    def read(self, i: int) -> torch.Tensor:
        part, j = self._part(i)
        return part.read(j)

    def read_many(self, idx: np.ndarray) -> torch.Tensor | None:
        ks = np.searchsorted(self.starts, idx, side="right") - 1
        if len(idx) == 0 or (ks != ks[0]).any():
            return None
        return self.parts[int(ks[0])].read_many(idx - self.starts[int(ks[0])])

    def hash_rows(self, h, idx: np.ndarray) -> None:
        """Each run of consecutive rows from one part, hashed by that part, in order."""
        ks = np.searchsorted(self.starts, idx, side="right") - 1
        cuts = np.flatnonzero(np.diff(ks)) + 1
        for run in np.split(np.arange(len(idx)), cuts):
            if len(run):
                k = int(ks[run[0]])
                self.parts[k].hash_rows(h, idx[run] - self.starts[k])

    def digest(self, i: int) -> bytes:
        """A file's sha256; for a sample of an array, the sha256 of its pixels."""
        part, j = self._part(i)
        if part.has_content:
            return part.digest(j)  # type: ignore[attr-defined]
        return hashlib.sha256(np.ascontiguousarray(part.read(j).numpy()).tobytes()).digest()

    def read_with_digest(self, i: int) -> tuple[torch.Tensor, bytes]:
        part, j = self._part(i)
        if part.has_content:
            return part.read_with_digest(j)  # type: ignore[attr-defined]
        img = part.read(j)
        return img, hashlib.sha256(np.ascontiguousarray(img.numpy()).tobytes()).digest()


def folder_path(source: str) -> str | None:
    """The folder an ``--unlabelled`` value names, or None for a dataset name."""
    if source in DATASETS:
        return None
    return source[len(IMAGEFOLDER):] if source.startswith(IMAGEFOLDER) else source


def unlabelled_source(cfg) -> Source:
    """The samples ``cfg.unlabelled`` names, every label NO_LABEL."""
    path = folder_path(cfg.unlabelled)
    if path is not None:
        return FolderSource(path, native_size=native_size(cfg), exif=cfg.exif_orientation, unlabelled=True)
    name = cfg.unlabelled
    if name == cfg.name:
        raise UserError("unlabelled", f"{name} is the labelled dataset itself", "pass another dataset or a folder")
    if name == "digits":
        src = digits_source()
    else:  # a torchvision dataset: its train samples
        read = cifar_sources if name.startswith("cifar") else mnist_sources
        src, _ = read(name, locate(name, cfg.root, cfg.download))
    src.labels = np.full(len(src), NO_LABEL, dtype=np.int64)
    return src


def append_unlabelled(ds: Dataset, cfg) -> Dataset:
    """``ds`` with ``cfg.unlabelled``'s samples appended to its train split (unchanged without the option)."""
    if cfg.unlabelled is None:
        return ds
    extra = unlabelled_source(cfg)
    train = ds.splits["train"]
    if extra.shape is not None and train.source.shape is not None and extra.shape[0] != train.source.shape[0]:
        raise UserError("unlabelled", f"its images have {extra.shape[0]} channels, the dataset's {ds.channels}",
                        "pass unlabelled data of the dataset's kind")
    if native_size(cfg) and extra.shape != train.source.shape:
        have = "x".join(map(str, extra.shape[1:][::-1])) if extra.shape else "several sizes"
        want = "x".join(map(str, train.source.shape[1:][::-1])) if train.source.shape else "?"
        raise UserError("unlabelled", f"its images are {have}, the dataset's {want}: native resolution needs one "
                        "size", "pass --image-size S to resize and center-crop every image to S x S")
    offset = 1 + max(int(s.ids.max()) for s in ds.splits.values() if len(s))
    n, m = len(train.source), len(extra)
    source = ConcatSource([train.source, extra])
    index = np.concatenate([train.index, n + np.arange(m)])
    y = torch.cat([train.y, torch.full((m,), NO_LABEL, dtype=torch.int64)])
    ids = torch.cat([train.ids, offset + torch.arange(m, dtype=torch.int64)])
    ds.splits["train"] = Split(source=source, index=index, y=y, ids=ids, preprocess=train.preprocess)
    return ds


def check_overlap(ds: Dataset, cfg) -> None:
    """Refuse an unlabelled folder that holds files of the labelled data: the same file (its resolved path), or
    the same bytes (compared by sha256, only between files of equal size). Called once, before the teacher runs."""
    path = folder_path(cfg.unlabelled) if cfg.unlabelled is not None else None
    if path is None or ds.files is None:
        return
    extra = ds.splits["train"].source.parts[-1]  # type: ignore[attr-defined]
    labelled = ds.files
    real = {os.path.realpath(os.path.join(labelled.root, labelled.path(i))): i for i in range(len(labelled))}
    by_size: dict[int, list[int]] = {}
    for i, size in enumerate(labelled.sizes.tolist()):
        by_size.setdefault(size, []).append(i)
    digests: dict[int, bytes] = {}
    for j in range(len(extra)):
        rel = extra.path(j)
        if os.path.realpath(os.path.join(extra.root, rel)) in real:
            raise UserError("unlabelled", f"{rel} is a file of the labelled dataset", FIX_OVERLAP)
        same_size = by_size.get(int(extra.sizes[j]), [])
        if not same_size:
            continue
        mine = extra.digest(j)
        for i in same_size:
            if i not in digests:
                digests[i] = labelled.digest(i)
            if digests[i] == mine:
                raise UserError("unlabelled", f"{rel} has the same bytes as {labelled.path(i)} of the labelled "
                                "dataset", FIX_OVERLAP)
