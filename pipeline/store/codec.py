"""How logits are encoded in a store: one object per encoding, found by name in :data:`ENCODINGS`.

An :class:`Encoding` owns everything that differs between encodings: the arrays it stores, how logits
become those arrays and back, how exactly it reproduces them (:attr:`Encoding.tolerance`), and which class
counts it can hold (:meth:`Encoding.validate`). Nothing outside the store matches an encoding by its name.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline import names
from pipeline.errors import UserError

Columns = dict[str, tuple[tuple[int, ...], type, float | int]]  # array -> (shape after the row axis, dtype, fill)


class Encoding:
    """The arrays that hold a split's (N, V, C) logits; every array shares the row layout."""

    name: str  # as the store's ``encoding`` attribute and ``--encoding`` spell it
    # (relative to each logit, absolute) rounding of a stored logit; None: not an exact encoding
    tolerance: tuple[float, float] | None

    def columns(self, views: int, num_classes: int) -> Columns:
        raise NotImplementedError

    def arrays(self) -> tuple[str, ...]:
        return tuple(self.columns(1, 2))

    def encode(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays that store (R, V, C) float32 ``logits``, by array name."""
        raise NotImplementedError

    def decode(self, read: Callable[[str], np.ndarray], num_classes: int) -> np.ndarray:
        """(R, V, C) float32 logits from the arrays ``read(name)`` returns for the same rows."""
        raise NotImplementedError

    def validate(self, num_classes: int) -> None:
        """Refuse a dataset of ``num_classes`` classes this encoding cannot hold usefully."""


@dataclass(frozen=True)
class Dense(Encoding):
    """Every logit, cast to ``dtype``."""

    name: str
    dtype: type
    tolerance: tuple[float, float]

    def columns(self, views: int, num_classes: int) -> Columns:
        return {"logits": ((views, num_classes), self.dtype, np.nan)}

    def encode(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        return {"logits": logits.astype(self.dtype, copy=False)}

    def decode(self, read: Callable[[str], np.ndarray], num_classes: int) -> np.ndarray:
        return read("logits").astype(np.float32, copy=False)


@dataclass(frozen=True)
class TopK(Encoding):
    """The K largest logits per row, their class indices, and the row's full log-sum-exp."""

    k: int
    tolerance = None  # the classes not kept are approximated (see :func:`_decode_rows`)

    @property
    def name(self) -> str:
        return f"topk:{self.k}"

    def columns(self, views: int, num_classes: int) -> Columns:
        return {"topk_values": ((views, self.k), np.float32, np.nan), "topk_indices": ((views, self.k), np.int32, -1),
                "lse": ((views,), np.float32, np.nan)}

    def encode(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        r, v, c = logits.shape
        flat = _encode_topk_rows(logits.reshape(r * v, c), self.k)
        return {name: a.reshape((r, v) + a.shape[1:]) for name, a in flat.items()}  # (R, V, K), (R, V, K), (R, V)

    def decode(self, read: Callable[[str], np.ndarray], num_classes: int) -> np.ndarray:
        values, indices, lse = read("topk_values"), read("topk_indices"), read("lse")
        lead = values.shape[:-1]
        return _decode_rows(values.reshape(-1, self.k), indices.reshape(-1, self.k), lse.reshape(-1),
                            num_classes).reshape(lead + (num_classes,))

    def validate(self, num_classes: int) -> None:
        if self.k >= num_classes:
            raise UserError("encoding", f"topk:{self.k} keeps every one of the {num_classes} classes",
                            f"use topk:K with K < {num_classes}, or float32 to keep all logits")


# float16 keeps 11 significant bits, a relative error up to 2^-11: 2^-10 leaves slack for another convolution
# algorithm on another machine. float32 only differs by summation order.
ENCODINGS: dict[str, Callable[[str | None], Encoding]] = {
    "float16": lambda _: Dense("float16", np.float16, (2.0**-10, 1e-3)),
    "float32": lambda _: Dense("float32", np.float32, (1e-5, 1e-4)),
    "topk": lambda k: TopK(int(k)),  # topk:K, K classes kept per sample
}
assert tuple(ENCODINGS) == names.ENCODINGS, "declare the encodings' names in pipeline/names.py"


def encoding(text: str) -> Encoding:
    """The encoding named ``text`` (``float16``, ``float32`` or ``topk:K``); a user error when there is none."""
    kind, sep, arg = text.partition(":")
    takes_arg = kind == "topk"
    if kind in ENCODINGS and bool(sep) == takes_arg and (not takes_arg or (arg.isdigit() and int(arg) > 0)):
        return ENCODINGS[kind](arg or None)
    raise UserError("encoding", f"unknown encoding {text!r}", "use float16, float32 or topk:K (e.g. topk:20)")


def _encode_topk_rows(logits: np.ndarray, k: int) -> dict[str, np.ndarray]:
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]  # (R, K) unordered: O(C) per row, not O(C log C)
    order = np.argsort(-np.take_along_axis(logits, part, axis=1), axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)  # (R, K), largest first
    values = np.take_along_axis(logits, idx, axis=1)  # (R, K)
    m = logits.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]  # (R,)
    return {"topk_values": values.astype(np.float32), "topk_indices": idx.astype(np.int32),
            "lse": lse.astype(np.float32)}


def _decode_rows(values: np.ndarray, indices: np.ndarray, lse: np.ndarray, num_classes: int) -> np.ndarray:
    """Dense (R, C) logits whose T = 1 softmax is exact on the kept classes.

    The classes that were not kept share the remaining probability mass
    equally: each gets logit ``lse + log((1 - sum p_kept) / (C - K))``. At
    T = 1 the normaliser is then exactly ``exp(lse)``; at other temperatures
    the flat tail is an approximation (see docs/store-format.md, "Encodings").
    """
    rows, k = values.shape
    kept_mass = np.exp(values.astype(np.float64) - lse[:, None]).sum(axis=1)  # (R,)
    rest = max(num_classes - k, 1)
    tail = np.maximum(1.0 - kept_mass, 1e-12) / rest
    out = np.repeat((lse + np.log(tail))[:, None], num_classes, axis=1).astype(np.float32)  # (R, C)
    np.put_along_axis(out, indices.astype(np.int64), values.astype(np.float32), axis=1)
    return out
