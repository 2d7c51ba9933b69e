"""The soft-target store: round trip, metadata, and every refusal provoked for real."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import zarr

from pipeline.errors import StoreError, UserError
from pipeline.store import (FORMAT_VERSION, SoftTargetStore, StoreWriter, find_stores, join, layout_for)
from tests.conftest import flip_byte, shard_file, synthetic_provenance

C = 7


def _write(path, logits_by_split, encoding="float32", finish=True, **kw):
    splits = {s: (np.arange(len(l)) % C, np.arange(len(l)) + 1000 * i)
              for i, (s, l) in enumerate(logits_by_split.items())}
    w = StoreWriter(str(path), synthetic_provenance(C), splits, encoding=encoding, **kw)
    for s, logits in logits_by_split.items():
        lay = w.layouts[s]
        for shard in range(lay.num_shards):
            a, b = lay.shard_range(shard)
            w.put(s, shard, logits[a:b])
    if finish:
        return w.finish()
    w.abort()
    return w.path  # the unfinished (staging) copy: never published under `path`


def _logits(n, seed=0):
    return np.random.default_rng(seed).normal(0, 3, size=(n, C)).astype(np.float32)


def test_round_trip_float32_is_exact(tmp_path):
    data = {"train": _logits(1000), "val": _logits(130, 1), "test": _logits(70, 2)}
    path = _write(tmp_path / "s.zarr", data, chunk_rows=64, shard_chunks=4)
    s = SoftTargetStore(path)
    for split, logits in data.items():
        np.testing.assert_array_equal(s.read_logits(split), logits)
        np.testing.assert_array_equal(s.labels(split), np.arange(len(logits)) % C)
    assert s.attrs["format_version"] == FORMAT_VERSION and s.attrs["complete"] is True
    assert s.group["train"]["written"][:].tolist() == [1] * 4  # 1000 rows / 256-row shards (64 x 4)
    assert s.verify() == {"train": 1000, "val": 130, "test": 70}


def test_float16_rounds_to_half_precision(tmp_path):
    data = {"train": _logits(300)}
    s = SoftTargetStore(_write(tmp_path / "s.zarr", data, encoding="float16"))
    got = s.read_logits("train")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, data["train"].astype(np.float16).astype(np.float32))


def test_layout_is_chunked_and_sharded(tmp_path):
    lay = layout_for(10_000, C, chunk_rows=256, shard_chunks=16)
    assert (lay.chunk_rows, lay.shard_rows, lay.num_shards) == (256, 4096, 3)
    path = _write(tmp_path / "s.zarr", {"train": _logits(10_000)}, chunk_rows=256)
    arr = SoftTargetStore(path).group["train"]["logits"]
    assert arr.chunks == (256, 1, C) and arr.shards == (4096, 1, C)  # (rows, views, classes)
    assert len(os.listdir(os.path.join(path, "train", "logits", "c"))) == 3  # one file per shard


def test_summary_reports_size_and_compression(digits_store):
    info = SoftTargetStore(digits_store).summary()
    assert info["bytes_per_sample"] > 0 and info["compression_ratio"] > 0
    assert info["samples"] == {"train": 1257, "val": 270, "test": 270}
    for key in ("provenance_key", "teacher", "dataset", "software", "created_at", "transform_hash"):
        assert key in info
    assert info["teacher"]["checkpoint_sha256"] and 0 < info["teacher"]["test_acc"] <= 1
    json.dumps(info)  # attributes are plain JSON: no pickles anywhere


def test_incomplete_store_is_refused(tmp_path):
    path = _write(tmp_path / "s.zarr", {"train": _logits(100)}, finish=False)
    with pytest.raises(StoreError) as e:
        SoftTargetStore(path)
    assert e.value.field == "complete"
    assert SoftTargetStore(path, require_complete=False).attrs["complete"] is False


def test_unknown_format_version_is_refused(store_copy):
    zarr.open_group(store_copy, mode="r+").attrs["format_version"] = 99
    with pytest.raises(StoreError) as e:
        SoftTargetStore(store_copy)
    assert e.value.field == "format_version" and "99" in str(e.value)


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(StoreError, match="no soft-target store"):
        SoftTargetStore(str(tmp_path / "nope.zarr"))


def test_nan_teacher_logits_are_never_published(tmp_path):
    bad = _logits(50)
    bad[[3, 17]] = np.nan
    with pytest.raises(UserError) as e:
        _write(tmp_path / "s.zarr", {"train": bad})
    assert e.value.field == "teacher logits" and "3, 17" in str(e.value)
    with pytest.raises(StoreError):
        SoftTargetStore(str(tmp_path / "s.zarr"))


def _shard_file(store, split="train"):
    return shard_file(store, split, 0)


def test_flipped_byte_fails_with_array_and_chunk(store_copy):
    flip_byte(_shard_file(store_copy), at=1 / 3)
    s = SoftTargetStore(store_copy)
    with pytest.raises(StoreError) as e:
        s.read_logits("train")
    assert e.value.field == "train/logits" and "chunk" in str(e.value)
    with pytest.raises(StoreError):
        s.verify()


def test_deleted_chunk_is_detected_not_read_as_fill(store_copy):
    os.remove(_shard_file(store_copy, "val"))
    s = SoftTargetStore(store_copy)
    with pytest.raises(StoreError) as e:
        s.read_logits("val")
    assert e.value.field == "val/logits" and "missing" in str(e.value)


def test_store_names_cannot_escape_their_root():
    assert join("data/stores", "a.zarr") == "data/stores/a.zarr"
    assert join("s3://bucket/root/", "a.zarr") == "s3://bucket/root/a.zarr"
    for bad in ("../a.zarr", "x/../../a.zarr", "/etc/a.zarr"):
        with pytest.raises(UserError):
            join("data/stores", bad)


def test_find_stores_lists_zarr_folders(tmp_path):
    _write(tmp_path / "a.zarr", {"train": _logits(10)})
    _write(tmp_path / "b.zarr", {"train": _logits(10)})
    (tmp_path / "other").mkdir()
    assert [os.path.basename(p) for p in find_stores(str(tmp_path))] == ["a.zarr", "b.zarr"]
    with pytest.raises(UserError):
        find_stores(str(tmp_path / "missing"))


def test_topk_keeps_exact_t1_probabilities(tmp_path):
    import torch

    logits = _logits(600) * 2
    path = _write(tmp_path / "k.zarr", {"train": logits}, encoding="topk:3")
    s = SoftTargetStore(path)
    dense = s.read_logits("train")  # (N, C) reconstructed
    p_true = torch.softmax(torch.from_numpy(logits).double(), 1).numpy()
    p_back = torch.softmax(torch.from_numpy(dense).double(), 1).numpy()
    top = np.argsort(-logits, axis=1)[:, :3]
    np.testing.assert_allclose(np.take_along_axis(p_back, top, 1), np.take_along_axis(p_true, top, 1), rtol=1e-5)
    np.testing.assert_array_equal(np.argmax(dense, 1), np.argmax(logits, 1))
    # The tail shares the remaining mass equally, so every row is still a distribution.
    np.testing.assert_allclose(p_back.sum(1), 1.0, rtol=1e-6)
    assert s.summary()["logits_bytes_per_sample"] < 4 * C


def test_topk_must_drop_some_classes(tmp_path):
    with pytest.raises(UserError) as e:
        _write(tmp_path / "k.zarr", {"train": _logits(10)}, encoding=f"topk:{C}")
    assert e.value.field == "encoding"
    with pytest.raises(UserError):
        _write(tmp_path / "k2.zarr", {"train": _logits(10)}, encoding="top3")


def test_file_count_grows_with_shards_not_chunks(tmp_path):
    # 40 000 rows at 256-row chunks would be 157 chunk files per array; 16-chunk shards make it 10.
    path = _write(tmp_path / "s.zarr", {"train": np.zeros((40_000, C), np.float32)}, chunk_rows=256)
    s = SoftTargetStore(path)
    assert len(os.listdir(os.path.join(path, "train", "logits", "c"))) == 10
    # 10 shards + 10 one-byte `written` flags + labels, ids and metadata.
    assert s.summary()["files"] < 40


def test_resume_writes_only_missing_shards(tmp_path):
    data = _logits(1000)
    splits = {"train": (np.arange(1000) % C, np.arange(1000))}
    prov = synthetic_provenance(C, key="k1", checkpoint_sha256="abc")
    w = StoreWriter(str(tmp_path / "s.zarr"), prov, splits, encoding="float16", chunk_rows=100, shard_chunks=2)
    for shard in (0, 2, 3):
        a, b = w.layouts["train"].shard_range(shard)
        w.put("train", shard, data[a:b])
    w.abort()  # "crash": complete never set
    # Another provenance (or checkpoint) never resumes: it starts afresh, in its own staging copy.
    other = StoreWriter(str(tmp_path / "s.zarr"), synthetic_provenance(C, key="k2", checkpoint_sha256="abc"), splits,
                        encoding="float16", chunk_rows=100, shard_chunks=2)
    assert not other.resumed and other.pending("train") == [0, 1, 2, 3, 4] and other.path != w.path
    other.abort()
    again = StoreWriter(str(tmp_path / "s.zarr"), prov, splits, encoding="float16", chunk_rows=100, shard_chunks=2)
    assert again.resumed and again.pending("train") == [1, 4]
    for shard in again.pending("train"):
        a, b = again.layouts["train"].shard_range(shard)
        again.put("train", shard, data[a:b])
    again.finish()
    np.testing.assert_array_equal(SoftTargetStore(again.path).read_logits("train"),
                                  data.astype(np.float16).astype(np.float32))
    # Once published, other content is refused at that name (it used to be wiped by mode="w"), and the
    # published store is untouched.
    with pytest.raises(StoreError, match="immutable"):
        StoreWriter(str(tmp_path / "s.zarr"), synthetic_provenance(C, key="k2", checkpoint_sha256="abc"), splits,
                    encoding="float16", chunk_rows=100, shard_chunks=2)
    assert SoftTargetStore(again.path).verify() == {"train": 1000}


def test_chunks_default_to_about_a_megabyte():
    from pipeline.store import auto_chunk_rows

    assert layout_for(10**6, 1000).chunk_rows == 256  # 256 x 1000 x 4 B = 1 MB
    assert layout_for(10**6, 100).chunk_rows == 2048
    assert layout_for(10**6, 10).chunk_rows == 32768 and layout_for(500, 10).chunk_rows == 500
    assert layout_for(10**6, 1000, views=4).chunk_rows == 64
    assert auto_chunk_rows(10**9) == 64 and auto_chunk_rows(1) == 65536


def test_resume_keeps_the_first_created_at_and_resumes_views_stores(tmp_path):
    splits = {"train": (np.arange(300) % C, np.arange(300))}
    logits = np.repeat(_logits(300)[:, None, :], 2, axis=1)  # (N, 2, C)
    params = np.zeros((300, 2, 4), np.float32)
    first = StoreWriter(str(tmp_path / "s.zarr"), synthetic_provenance(C, views=2), splits, encoding="float32",
                        chunk_rows=50, shard_chunks=2)
    first.put("train", 0, logits[:100], params[:100])
    first.abort()
    created = SoftTargetStore(first.path, require_complete=False).meta.created_at
    again = StoreWriter(str(tmp_path / "s.zarr"), dataclasses.replace(synthetic_provenance(C, views=2),
                                                                       created_at="later"), splits,
                        encoding="float32", chunk_rows=50, shard_chunks=2)
    assert again.resumed and again.pending("train") == [1, 2]
    for shard in again.pending("train"):
        a, b = again.layouts["train"].shard_range(shard)
        again.put("train", shard, logits[a:b], params[a:b])
    assert again.path == first.path  # the same unfinished copy, reopened
    again.finish()
    s = SoftTargetStore(again.path)
    assert again.path == str(tmp_path / "s.zarr")
    assert s.meta.created_at == created and s.meta.completed_at is not None
    np.testing.assert_array_equal(s.read_views("train"), logits)
