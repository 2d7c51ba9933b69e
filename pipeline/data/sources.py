"""Where raw samples come from: index-addressable sources, cheap to send to DataLoader workers.

A source knows its labels (a small int array, always in memory) and reads one
raw image (C, H, W) at a time. Pixels are never gathered into one tensor of the
whole set: ``digits`` is a 460 kB array kept in memory; MNIST's idx files are
memory-mapped; CIFAR's pickled batches (torchvision's own uint8 arrays) are
unpickled once and memory-mapped from a cache written beside them; image
folders are read file by file (:mod:`pipeline.data.folder`). A source
sent to a DataLoader worker travels without its pixels and reopens its files
there, on first use.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
from typing import Callable

import numpy as np
import torch

from pipeline.atomic import write_atomic
from pipeline.errors import UserError

HASH_BLOCK = 4096  # rows hashed per step: bounded memory whatever the split size


class Source:
    """Raw samples ``0..N-1``: ``labels`` (N,) int64, ``read(i)`` -> (C, H, W) uint8 or float32 tensor."""

    labels: np.ndarray
    classes: list[str]
    # (C, H, W) of every raw sample, or None when sizes differ (image folders of mixed sizes).
    shape: tuple[int, int, int] | None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def read(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def read_many(self, idx: np.ndarray) -> torch.Tensor | None:
        """(B, C, H, W) for sources that hold a uniform array (one indexing op), else None."""
        return None

    def hash_rows(self, h: "hashlib._Hash", idx: np.ndarray) -> None:
        """Feed ``h`` what identifies samples ``idx``, in order (pixels for arrays, paths and sizes for files)."""
        raise NotImplementedError

    # Only file-backed sources have a content hash separate from their identity.
    has_content = False


class ArraySource(Source):
    """A uniform (N, C, H, W) array: loaded by a picklable ``load`` callable, once per process."""

    def __init__(self, load: Callable[[], np.ndarray], labels: np.ndarray, classes: list[str], *,
                 array: np.ndarray | None = None) -> None:
        """``array``: the pixels when the caller already holds them (``load`` is for other processes)."""
        self._load, self.labels, self.classes = load, np.asarray(labels, dtype=np.int64), classes
        self._array = array
        self.shape = tuple(int(d) for d in self.array.shape[1:])  # type: ignore[assignment]

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = self._load()
        return self._array

    def read(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[i]))  # (C, H, W), a copy: never a view into a memmap

    def read_many(self, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.array[idx]))  # (B, C, H, W)

    def hash_rows(self, h, idx: np.ndarray) -> None:
        for s in range(0, len(idx), HASH_BLOCK):
            h.update(np.ascontiguousarray(self.array[idx[s:s + HASH_BLOCK]]).tobytes())

    def __getstate__(self) -> dict:
        # Workers reload (or re-map) the pixels themselves rather than receive a pickled copy.
        return {**self.__dict__, "_array": None}


# --- digits ----------------------------------------------------------------------------------------


def digits_pixels() -> np.ndarray:
    """scikit-learn's 8x8 digits as (1797, 1, 8, 8) float32 in [0, 1] (16 grey levels)."""
    from sklearn.datasets import load_digits

    return np.ascontiguousarray(load_digits().images[:, None, :, :] / 16.0, dtype=np.float32)


def digits_source() -> ArraySource:
    from sklearn.datasets import load_digits

    return ArraySource(digits_pixels, load_digits().target, [str(c) for c in range(10)])


# --- torchvision's files, in torchvision's layout ---------------------------------------------------

# name -> (torchvision class, the folder torchvision keeps it in under --data-root)
TORCHVISION = {
    "mnist": ("MNIST", "MNIST"),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python"),
}


def locate(name: str, root: str, download: bool) -> str:
    """The root holding ``name``'s torchvision folder: ``root`` itself (torchvision's layout), else
    ``root/<name>`` (this pipeline's earlier layout); with ``download``, fetched into ``root``."""
    cls_name, folder = TORCHVISION[name]
    for candidate in (root, os.path.join(root, name)):
        if os.path.isdir(os.path.join(candidate, folder)):
            return candidate
    if download:
        import torchvision.datasets as tvd

        try:
            for train in (True, False):
                getattr(tvd, cls_name)(root, train=train, download=True)
        except Exception as exc:  # network or disk: the user's environment
            raise UserError("download", f"could not download {name} into {root} ({exc})",
                            "check the network, or copy the files there yourself") from None
        return root
    raise UserError("data_root", f"{name} not found under {root} (looked for {os.path.join(root, folder)} and "
                    f"{os.path.join(root, name, folder)})",
                    f"pass --download once (needs network), or point --data-root at the folder holding {folder}/")


def _idx_header(path: str, ndim: int) -> tuple[int, ...]:
    """The dimensions of an idx (MNIST) file of unsigned bytes, checked against ``ndim``."""
    try:
        with open(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
    except OSError as exc:
        raise UserError("data_root", f"cannot read {path} ({exc.strerror})",
                        "pass --download once, or restore the file") from None
    magic = int.from_bytes(head[:4], "big") if len(head) >= 4 else -1
    if len(head) < 4 + 4 * ndim or magic != 0x0800 + ndim:
        raise UserError("data_root", f"{path} is not an idx file of {ndim}-d unsigned bytes",
                        "pass --download once, or restore the file")
    dims = tuple(int.from_bytes(head[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim))
    if os.path.getsize(path) < 4 + 4 * ndim + int(np.prod(dims)):
        raise UserError("data_root", f"{path} is truncated", "pass --download once, or restore the file")
    return dims


def idx_images(path: str) -> np.ndarray:
    """An idx3 image file memory-mapped as (N, 1, H, W) uint8: read lazily, page by page."""
    n, h, w = _idx_header(path, 3)
    return np.memmap(path, dtype=np.uint8, mode="r", offset=16, shape=(n, 1, h, w))


def idx_labels(path: str) -> np.ndarray:
    (n,) = _idx_header(path, 1)
    return np.fromfile(path, dtype=np.uint8, count=n, offset=8).astype(np.int64)


MNIST_CLASSES = {
    "mnist": [f"{d} - {w}" for d, w in enumerate("zero one two three four five six seven eight nine".split())],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}


def mnist_sources(name: str, root: str) -> tuple[ArraySource, ArraySource]:
    """(train, test) of MNIST or FashionMNIST from ``root/<MNIST|FashionMNIST>/raw/*-idx?-ubyte``."""
    raw = os.path.join(root, TORCHVISION[name][1], "raw")
    out = []
    for prefix in ("train", "t10k"):
        images = os.path.join(raw, f"{prefix}-images-idx3-ubyte")
        labels = idx_labels(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"))
        if idx_images(images).shape[0] != len(labels):
            raise UserError("data_root", f"{images} and its labels hold different numbers of samples",
                            "restore the files, or pass --download once")
        out.append(ArraySource(functools.partial(idx_images, images), labels, MNIST_CLASSES[name]))
    return out[0], out[1]


CIFAR_FILES = {  # name -> (train files, test files, meta file, labels key, class-names key)
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", "labels", "label_names"),
    "cifar100": (["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}


def _unpickle(path: str) -> dict:
    # CIFAR's own format is a pickle (as torchvision reads it): only open files you trust.
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except OSError as exc:
        raise UserError("data_root", f"cannot read {path} ({exc.strerror})",
                        "pass --download once, or restore the file") from None
    except Exception as exc:
        raise UserError("data_root", f"{path} is not a CIFAR batch ({exc})",
                        "pass --download once, or restore the file") from None


def cifar_pixels(folder: str, files: tuple[str, ...]) -> np.ndarray:
    """CIFAR batches as (N, 3, 32, 32) uint8 (the rows of its pickles are already channel-major): memory-mapped
    from the cache beside them when it is there (:func:`cached_pixels`), else unpickled."""
    try:
        return np.load(_cache_path(folder, files), mmap_mode="r")
    except (OSError, ValueError):  # no cache (a read-only folder), or a damaged one: the batches themselves
        return _unpickled_pixels(folder, files)


def _unpickled_pixels(folder: str, files: tuple[str, ...]) -> np.ndarray:
    return np.concatenate([np.asarray(_unpickle(os.path.join(folder, f))["data"], dtype=np.uint8)
                           for f in files]).reshape(-1, 3, 32, 32)


def _cache_path(folder: str, files: tuple[str, ...]) -> str:
    """``folder/.kd-pixels-<key>.npy``, keyed by the batches' names, sizes and modification times: a batch
    replaced since gets another key (the stale cache is then never read)."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(os.path.join(folder, f))
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns};".encode())
    return os.path.join(folder, f".kd-pixels-{h.hexdigest()[:16]}.npy")


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: given a name, np.save would add ".npy" to it
        np.save(f, array)


def cached_pixels(folder: str, files: tuple[str, ...], pixels: np.ndarray) -> np.ndarray:
    """``pixels`` (unpickled from ``files``) as a read-only memory map of a cache file written once beside the
    batches (a temporary file, then a rename), so that this process and every DataLoader worker share one
    copy in the page cache instead of each holding its own (CIFAR-10's train set is 150 MB). Where the folder
    cannot be written, ``pixels`` itself (each worker then unpickles its own copy, as torchvision does)."""
    path = _cache_path(folder, files)
    if not os.path.exists(path):
        try:
            write_atomic(path, lambda tmp: _save_npy(tmp, pixels), field="data_root")
        except (OSError, UserError):  # a read-only or full folder: each process keeps its own copy
            return pixels
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return pixels


def cifar_sources(name: str, root: str) -> tuple[ArraySource, ArraySource]:
    train_files, test_files, meta, label_key, names_key = CIFAR_FILES[name]
    folder = os.path.join(root, TORCHVISION[name][1])
    classes = [str(c) for c in _unpickle(os.path.join(folder, meta))[names_key]]
    out = []
    for files in (train_files, test_files):
        batches = [_unpickle(os.path.join(folder, f)) for f in files]
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
        pixels = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches]).reshape(-1, 3, 32, 32)
        if len(pixels) != len(labels):
            raise UserError("data_root", f"{folder}: {files[0]} holds {len(pixels)} images and {len(labels)} labels",
                            "restore the files, or pass --download once")
        out.append(ArraySource(functools.partial(cifar_pixels, folder, tuple(files)), labels, classes,
                               array=cached_pixels(folder, tuple(files), pixels)))
    return out[0], out[1]
