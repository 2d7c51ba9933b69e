"""How logits are encoded in a store: dense float16/float32, or the top-K classes plus the log-sum-exp."""
from __future__ import annotations

import numpy as np

from pipeline.config import parse_encoding

ENCODING_DTYPES = {"float16": np.float16, "float32": np.float32}


def logits_arrays(encoding: str) -> tuple[str, ...]:
    """The per-split arrays that hold the logits under ``encoding``; all share the row layout."""
    return ("logits",) if parse_encoding(encoding)[0] != "topk" else ("topk_values", "topk_indices", "lse")


def encode(logits: np.ndarray, encoding: str) -> dict[str, np.ndarray]:
    """The arrays that store (R, V, C) float32 ``logits`` under ``encoding``, by array name."""
    kind, k = parse_encoding(encoding)
    if kind == "topk":
        return encode_topk(logits, k)
    return {"logits": logits.astype(ENCODING_DTYPES[kind], copy=False)}


def encode_topk(logits: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """The K largest logits per row, their class indices, and the row's full log-sum-exp.

    ``logits`` is (R, V, C); the outputs are (R, V, K), (R, V, K) and (R, V).
    """
    r, v, c = logits.shape
    flat = _encode_topk_rows(logits.reshape(r * v, c), k)
    return {name: a.reshape((r, v) + a.shape[1:]) for name, a in flat.items()}


def _encode_topk_rows(logits: np.ndarray, k: int) -> dict[str, np.ndarray]:
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]  # (R, K) unordered: O(C) per row, not O(C log C)
    order = np.argsort(-np.take_along_axis(logits, part, axis=1), axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)  # (R, K), largest first
    values = np.take_along_axis(logits, idx, axis=1)  # (R, K)
    m = logits.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]  # (R,)
    return {"topk_values": values.astype(np.float32), "topk_indices": idx.astype(np.int32),
            "lse": lse.astype(np.float32)}


def decode_topk(values: np.ndarray, indices: np.ndarray, lse: np.ndarray, num_classes: int) -> np.ndarray:
    """Dense (..., C) logits from (..., K) values and indices and (...) log-sum-exps; see :func:`_decode_rows`."""
    lead = values.shape[:-1]
    k = values.shape[-1]
    return _decode_rows(values.reshape(-1, k), indices.reshape(-1, k), lse.reshape(-1),
                        num_classes).reshape(lead + (num_classes,))


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
