"""Datasets: a registry of loaders that return fixed, fingerprinted splits.

Every loader returns a :class:`Dataset` whose ``train``/``val``/``test`` splits
hold the whole split in memory as tensors, with a stable integer id per sample
(its index in the source dataset, test ids offset past the training set). The
split is seeded and stratified, so the same config always yields the same
samples in the same order; the fingerprint proves it.
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pipeline.config import DataConfig
from pipeline.errors import UserError

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor  # (N,) int64
    ids: torch.Tensor  # (N,) int64, stable across runs

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def fingerprint(self) -> str:
        """sha256 over ids, labels and pixel content: any changed sample, label or order changes it."""
        h = hashlib.sha256()
        h.update(str(tuple(self.x.shape)).encode())
        for t in (self.ids, self.y, self.x):
            h.update(np.ascontiguousarray(t.numpy()).tobytes())
        return h.hexdigest()


@dataclass
class Dataset:
    name: str
    class_names: list[str]
    splits: dict[str, Split]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.splits["train"].x.shape[1:]
        return int(c), int(h), int(w)

    def fingerprints(self) -> dict[str, str]:
        return {name: split.fingerprint() for name, split in self.splits.items()}

    def describe(self) -> dict:
        """What a store records about the data it was written from."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "input_shape": list(self.input_shape),
            "splits": {n: {"size": len(s), "fingerprint": s.fingerprint()} for n, s in self.splits.items()},
        }


def _stratified_split(labels: np.ndarray, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Indices for (rest, a, b) where a and b take the given fractions of the whole, per class."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    frac_a, frac_b = fractions
    rest, b = train_test_split(idx, test_size=frac_b, stratify=labels, random_state=seed)
    rest, a = train_test_split(rest, test_size=frac_a / (1.0 - frac_b), stratify=labels[rest], random_state=seed)
    return rest, a, b


def _make_split(x: np.ndarray, y: np.ndarray, ids: np.ndarray) -> Split:
    return Split(
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        y=torch.from_numpy(np.asarray(y, dtype=np.int64)),
        ids=torch.from_numpy(np.asarray(ids, dtype=np.int64)),
    )


def _limit(split: Split, limit: int | None) -> Split:
    if limit is None or limit >= len(split):
        return split
    return Split(split.x[:limit].clone(), split.y[:limit].clone(), split.ids[:limit].clone())


def load_digits(cfg: DataConfig) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 samples): the offline default."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = bunch.images[:, None, :, :] / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = bunch.target
    train, val, test = _stratified_split(y, (cfg.val_fraction, cfg.test_fraction), cfg.split_seed)
    splits = {name: _make_split(x[i], y[i], i) for name, i in (("train", train), ("val", val), ("test", test))}
    return Dataset("digits", [str(c) for c in range(10)], splits)


def _torchvision_loader(cls_name: str) -> Callable[[DataConfig], Dataset]:
    def load(cfg: DataConfig) -> Dataset:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        root = os.path.join(cfg.root, cfg.name)
        try:
            train_ds = cls(root, train=True, download=cfg.download)
            test_ds = cls(root, train=False, download=cfg.download)
        except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
            raise UserError("data_root", f"{cfg.name} not found under {root} ({exc})",
                            "pass --download once (needs network), or point --data-root at a copy") from None

        def arrays(ds) -> tuple[np.ndarray, np.ndarray]:
            data = np.asarray(ds.data)
            data = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)  # (N, C, H, W)
            return data.astype(np.float32) / 255.0, np.asarray(ds.targets, dtype=np.int64)

        x_tr, y_tr = arrays(train_ds)
        x_te, y_te = arrays(test_ds)
        from sklearn.model_selection import train_test_split

        idx = np.arange(len(y_tr))
        tr, va = train_test_split(idx, test_size=cfg.val_fraction, stratify=y_tr, random_state=cfg.split_seed)
        splits = {
            "train": _make_split(x_tr[tr], y_tr[tr], tr),
            "val": _make_split(x_tr[va], y_tr[va], va),
            "test": _make_split(x_te, y_te, np.arange(len(y_te)) + len(y_tr)),
        }
        return Dataset(cfg.name, [str(c) for c in train_ds.classes], splits)

    return load


def load_imagefolder(cfg: DataConfig, image_size: int = 32) -> Dataset:
    """``imagefolder:PATH``: one sub-folder per class, resized to ``image_size`` squared RGB."""
    import torchvision.datasets as tvd
    from torchvision.transforms import v2

    path = cfg.name.split(":", 1)[1]
    if not os.path.isdir(path):
        raise UserError("dataset", f"image folder {path!r} does not exist", "pass imagefolder:PATH to a directory")
    tf = v2.Compose([v2.PILToTensor(), v2.Resize((image_size, image_size), antialias=True),
                     v2.ToDtype(torch.float32, scale=True)])
    try:
        ds = tvd.ImageFolder(path, transform=tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError("dataset", f"cannot read image folder {path!r}: {exc}",
                        "use one sub-folder of images per class") from None
    x = np.stack([ds[i][0].expand(3, -1, -1).numpy() for i in range(len(ds))])  # (N, 3, S, S)
    y = np.asarray(ds.targets, dtype=np.int64)
    train, val, test = _stratified_split(y, (cfg.val_fraction, cfg.test_fraction), cfg.split_seed)
    splits = {name: _make_split(x[i], y[i], i) for name, i in (("train", train), ("val", val), ("test", test))}
    return Dataset(cfg.name, list(ds.classes), splits)


DATASETS: dict[str, Callable[[DataConfig], Dataset]] = {
    "digits": load_digits,
    "mnist": _torchvision_loader("MNIST"),
    "fashion-mnist": _torchvision_loader("FashionMNIST"),
    "cifar10": _torchvision_loader("CIFAR10"),
    "cifar100": _torchvision_loader("CIFAR100"),
}


def check_dataset_name(name: str) -> None:
    if name in DATASETS or name.startswith("imagefolder:"):
        return
    raise UserError("dataset", f"unknown dataset {name!r}",
                    f"choose one of: {', '.join(DATASETS)}, or imagefolder:PATH")


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
    return Split(split.x, torch.from_numpy(noisy.astype(np.int64)), split.ids)


@functools.lru_cache(maxsize=4)
def open_dataset(cfg: DataConfig) -> Dataset:
    """The dataset of ``cfg``, loaded once per process (every task of a run, Dask workers included, shares it).

    Callers must treat it as read-only.
    """
    return load_dataset(cfg)


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load ``cfg``'s dataset afresh; prefer :func:`open_dataset`."""
    check_dataset_name(cfg.name)
    ds = load_imagefolder(cfg) if cfg.name.startswith("imagefolder:") else DATASETS[cfg.name](cfg)
    # Noise only ever touches train labels (what the teacher and the hard-label term see); val and
    # test keep the true labels, so selection and accuracy are measured against the truth. It is
    # drawn over the whole train split before the limit, so a limited split is a prefix of the full one.
    ds.splits["train"] = add_label_noise(ds.splits["train"], cfg.label_noise, ds.num_classes,
                                         cfg.effective_noise_seed)
    ds.splits["train"] = _limit(ds.splits["train"], cfg.train_limit)
    return ds
