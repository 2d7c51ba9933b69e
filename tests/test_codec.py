"""The store's encodings, each one object: its arrays, encode/decode, tolerance and class-count check."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.store.codec import ENCODINGS, TopK, encoding

SPELLED = {name: f"{name}:3" if name == "topk" else name for name in ENCODINGS}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_each_encoding_round_trips_within_its_tolerance_or_keeps_its_top_k_exactly(name):
    enc = encoding(SPELLED[name])
    logits = np.random.default_rng(0).normal(0, 3, size=(5, 2, 7)).astype(np.float32)  # (R, V, C)
    arrays = enc.encode(logits)
    assert tuple(arrays) == enc.arrays() and set(arrays) == set(enc.columns(2, 7))
    for array, (tail, dtype, _) in enc.columns(2, 7).items():
        assert arrays[array].shape == (5, *tail) and arrays[array].dtype == np.dtype(dtype)
    back = enc.decode(lambda a: arrays[a], 7)
    assert back.shape == logits.shape and back.dtype == np.float32
    if enc.tolerance is not None:
        rel, abs_ = enc.tolerance
        assert (np.abs(back - logits) <= rel * np.abs(logits) + abs_).all()
    else:  # top-k: the kept classes exactly, and the T = 1 normaliser exactly
        top = np.argsort(-logits, axis=-1)[..., :3]
        assert np.array_equal(np.take_along_axis(back, top, -1), np.take_along_axis(logits, top, -1))
        lse = lambda z: np.log(np.exp(z.astype(np.float64)).sum(-1))  # noqa: E731
        assert np.allclose(lse(back), lse(logits), atol=1e-5)


def test_topk_must_keep_fewer_classes_than_the_data_has():
    TopK(3).validate(4)
    with pytest.raises(UserError) as e:
        encoding("topk:10").validate(10)
    assert e.value.field == "encoding" and "K < 10" in e.value.fix


@pytest.mark.parametrize("text", ["float8", "topk", "topk:0", "topk:x", "float16:2", ""])
def test_an_unknown_encoding_is_one_user_error(text):
    with pytest.raises(UserError) as e:
        encoding(text)
    assert e.value.field == "encoding"
