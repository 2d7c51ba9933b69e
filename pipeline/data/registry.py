"""The dataset registry: a name (or ``imagefolder:PATH``) and a data config -> fixed, fingerprinted lazy splits.

Every dataset is split the same way: seeded and stratified, so the same config
always yields the same samples in the same order (the fingerprint proves it);
torchvision's datasets keep their own test split. Train labels may then get
symmetric noise, the train split may be cut to a prefix, and samples without labels may be appended to it
(:mod:`pipeline.data.unlabelled`).
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch

from pipeline.config import DataConfig
from pipeline.data.dataset import Dataset, Split
from pipeline.data.folder import FolderSource, RecordedFolder, native_size
from pipeline.data.unlabelled import append_unlabelled
from pipeline.data.sources import TORCHVISION, Source, cifar_sources, digits_source, locate, mnist_sources
from pipeline import names
from pipeline.errors import UserError
from pipeline.names import IMAGEFOLDER
from pipeline.transforms import Preprocess


def _hold_out(idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held out): ``fraction`` of ``idx`` held out per class (scikit-learn's stratified split)."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(idx, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as exc:  # a class too small to appear on both sides
        raise UserError("dataset", f"too few samples for a stratified split (smallest class: "
                        f"{np.bincount(labels).min()} samples; {exc})", "add samples to the smallest classes") from None


def _stratified_split(labels: np.ndarray, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Indices for (rest, a, b) where a and b take the given fractions of the whole, per class."""
    frac_a, frac_b = fractions
    rest, b = _hold_out(np.arange(len(labels)), labels, frac_b, seed)
    rest, a = _hold_out(rest, labels[rest], frac_a / (1.0 - frac_b), seed)
    return rest, a, b


def _preprocess(cfg: DataConfig, source: Source, *, v1_record: bool) -> Preprocess:
    native = None if source.shape is None else (source.shape[1], source.shape[2])
    exif = isinstance(source, FolderSource) and source.exif
    return Preprocess(image_size=cfg.image_size, train_ops=tuple(cfg.train_transform), native=native,
                      v1_record=v1_record, exif=exif, model=cfg.model_preprocessing)


def _split(source: Source, index: np.ndarray, ids: np.ndarray, pre: Preprocess) -> Split:
    return Split(source=source, index=index, y=torch.from_numpy(source.labels[index].copy()),
                 ids=torch.from_numpy(np.asarray(ids, dtype=np.int64)), preprocess=pre)


def _three_way(name: str, cfg: DataConfig, source: Source, *, channels: int, v1_record: bool,
               files: FolderSource | None = None) -> Dataset:
    """One source cut into train / val / test."""
    pre = _preprocess(cfg, source, v1_record=v1_record)
    train, val, test = _stratified_split(source.labels, (cfg.val_fraction, cfg.test_fraction), cfg.split_seed)
    splits = {n: _split(source, i, i, pre) for n, i in (("train", train), ("val", val), ("test", test))}
    return Dataset(name, list(source.classes), splits, pre, channels, files)


def load_digits(cfg: DataConfig) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 samples): the offline default, kept in memory (460 kB)."""
    return _three_way("digits", cfg, digits_source(), channels=1, v1_record=True)


def _torchvision_loader(read: Callable[[str, str], tuple[Source, Source]]) -> Callable[[DataConfig], Dataset]:
    def load(cfg: DataConfig) -> Dataset:
        train_src, test_src = read(cfg.name, locate(cfg.name, cfg.root, cfg.download))
        pre = _preprocess(cfg, train_src, v1_record=False)  # v2 scales by 1/255 as a product: not v1 to the bit
        tr, va = _hold_out(np.arange(len(train_src)), train_src.labels, cfg.val_fraction, cfg.split_seed)
        test = np.arange(len(test_src))
        splits = {"train": _split(train_src, tr, tr, pre), "val": _split(train_src, va, va, pre),
                  "test": _split(test_src, test, test + len(train_src), pre)}
        return Dataset(cfg.name, list(train_src.classes), splits, pre, int(train_src.shape[0]))  # type: ignore[index]

    return load


def load_imagefolder(cfg: DataConfig, recorded: RecordedFolder | None = None) -> Dataset:
    """``imagefolder:PATH``: one sub-folder per class, RGB, at native resolution unless ``image_size``;
    ``recorded``: the store's record of the folder, checked first (see :class:`FolderSource`)."""
    path = cfg.name[len(IMAGEFOLDER):]
    source = FolderSource(path, native_size=native_size(cfg), recorded=recorded, exif=cfg.applies_exif)
    return _three_way(cfg.name, cfg, source, channels=3, v1_record=False, files=source)


DATASETS: dict[str, Callable[[DataConfig], Dataset]] = {
    "digits": load_digits,
    "mnist": _torchvision_loader(mnist_sources),
    "fashion-mnist": _torchvision_loader(mnist_sources),
    "cifar10": _torchvision_loader(cifar_sources),
    "cifar100": _torchvision_loader(cifar_sources),
}
assert tuple(DATASETS) == names.DATASETS, "declare the datasets' names in pipeline/names.py"
assert set(TORCHVISION) <= set(DATASETS)


def check_dataset_name(name: str) -> None:
    if name in DATASETS or name.startswith(IMAGEFOLDER):
        return
    raise UserError("dataset", f"unknown dataset {name!r}",
                    f"choose one of: {', '.join(DATASETS)}, or imagefolder:PATH")


def check_data_root(name: str) -> None:
    """Refuse a ``--data-root`` given for a dataset that reads nothing under it: it would be silently ignored."""
    if name in TORCHVISION:
        return
    where = "ships with scikit-learn" if name == "digits" else "is read from the folder it names"
    raise UserError("data_root", f"{name} {where}: nothing is read under --data-root",
                    "drop --data-root (it is for mnist, fashion-mnist, cifar10 and cifar100)")


def add_label_noise(split: Split, rate: float, num_classes: int, seed: int) -> Split:
    """Symmetric label noise: each label, with probability ``rate``, becomes a uniformly drawn *other* class.

    Both draws are made for every sample whatever the rate, so with one seed the samples flipped
    at a lower rate are a subset of those flipped at a higher one.
    """
    if rate == 0.0:
        return split
    if num_classes < 2:
        raise UserError("label_noise", f"needs at least 2 classes, the dataset has {num_classes}",
                        "drop --label-noise")
    rng = np.random.default_rng(seed)
    n = len(split)
    flip = rng.random(n) < rate  # (N,)
    shift = rng.integers(1, num_classes, size=n)  # (N,) in [1, C - 1]: never back to the true class
    y = split.y.numpy()  # (N,)
    noisy = np.where(flip, (y + shift) % num_classes, y)  # (N,)
    return split.with_labels(torch.from_numpy(noisy.astype(np.int64)))


@functools.lru_cache(maxsize=4)
def open_dataset(cfg: DataConfig, recorded: RecordedFolder | None = None) -> Dataset:
    """The dataset of ``cfg``, opened once per process (every task of a run, Dask workers included, shares it).

    Callers must treat it as read-only. It holds labels, ids and (for folders) paths; never pixels.
    ``recorded``: for the image folder a store was written from, what the store recorded of it
    (``RecordedFolder.of(store.meta, cfg)``): the folder is compared with it before any image is read.
    """
    return load_dataset(cfg, recorded)


def store_dataset(meta, cfg: DataConfig | None = None, *, cached: bool = True) -> Dataset:
    """The dataset a store's checks and stage 2 use: ``cfg`` (default: the one the store was written from),
    given what the store's metadata ``meta`` recorded of its image folder (:meth:`RecordedFolder.of`), so that
    a folder changed since is refused before any image is read, and a native-resolution folder that has not
    changed takes the store's image size instead of reading every header again. ``cached``: through
    :func:`open_dataset` (once per process), else opened afresh."""
    cfg = cfg if cfg is not None else meta.data_cfg()
    recorded = RecordedFolder.of(meta, cfg)
    return open_dataset(cfg, recorded) if cached else load_dataset(cfg, recorded)


def load_dataset(cfg: DataConfig, recorded: RecordedFolder | None = None) -> Dataset:
    """Open ``cfg``'s dataset afresh; prefer :func:`open_dataset`."""
    check_dataset_name(cfg.name)
    ds = load_imagefolder(cfg, recorded) if cfg.name.startswith(IMAGEFOLDER) else DATASETS[cfg.name](cfg)
    # Noise only ever touches train labels (what the teacher and the hard-label term see); val and
    # test keep the true labels, so selection and accuracy are measured against the truth. It is
    # drawn over the whole train split before the limit, so a limited split is a prefix of the full one.
    ds.splits["train"] = add_label_noise(ds.splits["train"], cfg.label_noise, ds.num_classes,
                                         cfg.effective_noise_seed)
    if cfg.train_limit is not None and cfg.train_limit < len(ds.splits["train"]):
        ds.splits["train"] = ds.splits["train"].head(cfg.train_limit)
    # Samples without labels come last, after the noise and the limit, which apply to labelled data alone.
    return append_unlabelled(ds, cfg)
