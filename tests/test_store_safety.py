"""A published store never vanishes, never holds what it should not, and says exactly what is wrong with it.

Concurrent writers in real processes, the lease, immutability of complete stores, finiteness after the encoding
cast, the array contract checked at open (through `kd inspect` and `kd distill`), the content manifest and the
split fingerprints, and links that leave a store.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import zarr

from flows.cli import main
from pipeline import teacher
from pipeline.config import ModelConfig
from pipeline.data import load_dataset
from pipeline.errors import StoreError, UserError
from pipeline.store import FORMAT_VERSION, SoftTargetStore, StoreWriter, lease
from pipeline.train import build_seeded
from tests.conftest import cli_fails, DIGITS, small_teacher_config, synthetic_provenance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C = 5


def _splits(n):
    return {"train": (np.arange(n) % C, np.arange(n))}


def _logits(n, seed=0, scale=3.0):
    return np.random.default_rng(seed).normal(0, scale, size=(n, C)).astype(np.float32)


def _fill(w, logits):
    lay = w.layouts["train"]
    for shard in w.pending("train"):
        a, b = lay.shard_range(shard)
        w.put("train", shard, logits[a:b])


# ---------------------------------------------------------------- two real processes, one store

# Both processes get ready (imports, plan, teacher loaded), then start writing together at the test's signal.
SCRIPT = """
import os, sys, time
from pipeline import teacher
from pipeline.config import ModelConfig
from tests.conftest import small_teacher_config
root, ckpt, views, gate = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
cfg = small_teacher_config(root, model=ModelConfig(arch="cnn", width=16), checkpoint=ckpt, chunk_rows=16,
                           shard_chunks=1, encoding="float16", views=views)
p = teacher.plan(cfg)
model = teacher.load(p)
open(os.path.join(gate, f"ready-{os.getpid()}"), "w").close()
while not os.path.exists(os.path.join(gate, "go")):
    time.sleep(0.005)
print(teacher.publish(p, model), flush=True)
"""


class _Watcher(threading.Thread):
    """Polls the final name: once it has been seen complete, every later look must see it complete."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path, self.seen, self.violations, self.stop = path, 0, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                ok = zarr.open_group(self.path, mode="r").attrs.get("complete") is True
            except Exception as exc:  # noqa: BLE001 absent (fine before publishing) or unreadable
                ok = False
                why = type(exc).__name__
            else:
                why = "incomplete"
            if ok:
                self.seen += 1
            elif self.seen:
                self.violations.append(why)
            time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("views", [1, 2])
def test_two_processes_writing_one_store_both_succeed_and_it_never_vanishes(tmp_path, views):
    ds = load_dataset(DIGITS)
    ckpt = str(tmp_path / "teacher.pt")
    torch.save(build_seeded(ModelConfig(arch="cnn", width=16), ds.input_shape, ds.num_classes, seed=0).state_dict(),
               ckpt)
    root = str(tmp_path / "run")
    final = teacher.plan(small_teacher_config(root, model=ModelConfig(arch="cnn", width=16), checkpoint=ckpt,
                                              chunk_rows=16, shard_chunks=1, encoding="float16",
                                              views=views)).store_path
    watcher = _Watcher(final)
    watcher.start()
    gate = tmp_path / "gate"
    gate.mkdir()
    cmd = [sys.executable, "-c", SCRIPT, root, ckpt, str(views), str(gate)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    deadline = time.monotonic() + 240
    while len(os.listdir(gate)) < 2 and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    (gate / "go").touch()
    stores = os.path.dirname(final)
    outs = [p.communicate(timeout=300) for p in procs]
    watcher.stop.set()
    watcher.join()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    printed = {out.strip().splitlines()[-1] for out, _ in outs}
    assert printed == {watcher.path}  # both print the one published store
    assert sum("waiting for it to publish" in err for _, err in outs) == 1  # the second waited for the first
    assert watcher.seen > 0 and watcher.violations == []  # never missing nor incomplete once published
    assert os.listdir(stores) == [os.path.basename(watcher.path)]  # no staging copy, no lease left behind
    s = SoftTargetStore(watcher.path)
    assert s.views == views and s.verify() == {"train": 1257, "val": 270, "test": 270}


# ---------------------------------------------------------------- the lease, in one process


def test_a_second_writer_waits_for_the_first_then_reuses_its_store(tmp_path):
    path, logits = str(tmp_path / "s.zarr"), _logits(300)
    first = StoreWriter(path, synthetic_provenance(C), _splits(300), encoding="float32", chunk_rows=50)
    assert lease.current(path).pid == os.getpid() and first.path != path
    got = {}
    second = threading.Thread(target=lambda: got.update(w=StoreWriter(
        path, synthetic_provenance(C), _splits(300), encoding="float32", chunk_rows=50)))
    second.start()
    time.sleep(1.5)
    assert second.is_alive() and not os.path.exists(path)  # waiting on the lease, nothing written
    _fill(first, logits)
    assert first.finish() == path and first.path == path
    second.join(timeout=30)
    w = got["w"]
    assert w.reused and w.pending("train") == [] and w.finish() == path
    np.testing.assert_array_equal(SoftTargetStore(path).read_logits("train"), logits)
    assert lease.current(path) is None and sorted(os.listdir(tmp_path)) == ["s.zarr"]


def test_stale_leases_are_broken_live_ones_are_not(tmp_path):
    now = time.time()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    info = lease.LeaseInfo(token="t", pid=dead.pid, host=here, acquired_at=now, renewed_at=now, writing="x")
    assert lease.is_stale(info)  # a process of this host that is gone: at once
    assert not lease.is_stale(info.__class__(**{**info.__dict__, "pid": os.getpid()}))
    other = info.__class__(**{**info.__dict__, "host": "elsewhere"})
    assert not lease.is_stale(other)  # another host's live lease: cannot check its pid, so trust the renewal
    assert lease.is_stale(other, now=now + lease.TTL_S + 1)

    # A lease left by a killed writer does not block the next one.
    path = str(tmp_path / "s.zarr")
    with open(lease.lease_path(path), "w") as f:
        json.dump({**info.__dict__, "token": "dead"}, f)
    w = StoreWriter(path, synthetic_provenance(C), _splits(100), encoding="float32")
    assert lease.current(path).token == w._token != "dead"
    w.abort()
    assert lease.current(path) is None


def test_the_loser_of_a_publish_race_discards_only_its_own_copy(tmp_path):
    """Two writers past the lease (one broke the other's, thought stale): the second rename finds the store."""
    path, logits = str(tmp_path / "s.zarr"), _logits(200)
    a = StoreWriter(path, synthetic_provenance(C, checkpoint_sha256="a" * 64), _splits(200), encoding="float32")
    os.remove(lease.lease_path(path))  # as if broken by a writer that judged it stale
    b = StoreWriter(path, synthetic_provenance(C, checkpoint_sha256="b" * 64), _splits(200), encoding="float32")
    b_copy = b.path
    assert a.path != b_copy  # another checkpoint: another staging copy
    _fill(a, logits)
    _fill(b, logits + 1)
    assert a.finish() == path
    assert b.finish() == path and not os.path.exists(b_copy)
    np.testing.assert_array_equal(SoftTargetStore(path).read_logits("train"), logits)  # the first one's content
    assert sorted(os.listdir(tmp_path)) == ["s.zarr"]


# ---------------------------------------------------------------- complete stores are immutable


def test_a_complete_store_is_never_reopened_for_writing(tmp_path):
    path, logits = str(tmp_path / "s.zarr"), _logits(100)
    w = StoreWriter(path, synthetic_provenance(C), _splits(100), encoding="float32")
    _fill(w, logits)
    w.finish()
    stamp = {f: os.stat(f).st_mtime_ns for f in glob.glob(f"{path}/**", recursive=True) if os.path.isfile(f)}

    again = StoreWriter(path, synthetic_provenance(C), _splits(100), encoding="float32")
    assert again.reused and again.pending("train") == []
    with pytest.raises(StoreError, match="immutable"):
        again.put("train", 0, logits)
    with pytest.raises(StoreError) as e:  # the split-pass writers
        StoreWriter.attach(path)
    assert e.value.field == "complete"
    with pytest.raises(StoreError, match="other content"):
        StoreWriter(path, synthetic_provenance(C, key="other"), _splits(100), encoding="float32")
    g = zarr.open_group(path, mode="r+")
    g.attrs["format_version"] = 2
    with pytest.raises(StoreError, match="cannot use") as e:  # an older store at the name: refused, kept
        StoreWriter(path, synthetic_provenance(C), _splits(100), encoding="float32")
    assert "version 2" in str(e.value) and "\n" not in str(e.value)
    g.attrs["format_version"] = FORMAT_VERSION
    assert {f: os.stat(f).st_mtime_ns for f in stamp if not f.endswith("/s.zarr/zarr.json")} == \
        {f: t for f, t in stamp.items() if not f.endswith("/s.zarr/zarr.json")}
    np.testing.assert_array_equal(SoftTargetStore(path).read_logits("train"), logits)


def test_finishing_writes_complete_and_the_manifest_in_one_write(tmp_path, monkeypatch):
    """No zarr.json ever on storage says complete without its manifest: a run killed mid-write leaves
    either an unfinished store (resumed) or a whole one, never a complete store with nothing to verify."""
    from zarr.storage import LocalStore

    path = str(tmp_path / "s.zarr")
    w = StoreWriter(path, synthetic_provenance(C), _splits(100), encoding="float32")
    _fill(w, _logits(100))
    written = []
    real = LocalStore.set

    async def recording(self, key, value):
        if key == "zarr.json":  # the group's own metadata, attributes included
            written.append(json.loads(value.to_bytes())["attributes"])
        return await real(self, key, value)

    monkeypatch.setattr(LocalStore, "set", recording)
    w.finish()
    assert len(written) == 1, f"{len(written)} writes of the group's metadata"
    assert written[0]["complete"] is True and written[0]["manifest"] and written[0]["completed_at"]
    assert SoftTargetStore(path).verify() == {"train": 100}


def test_a_creation_cut_off_halfway_says_unfinished_and_is_moved_aside(tmp_path, monkeypatch):
    """The store is built in memory and copied: the root's zarr.json (complete: false) lands first, so a copy
    cut off before its arrays is recognisably unfinished; the next writer moves it aside and starts again."""
    from zarr.storage import LocalStore

    path = str(tmp_path / "s.zarr")
    order, real = [], LocalStore.set

    async def failing(self, key, value):
        order.append(key)
        if key.startswith("train/labels/"):
            raise OSError("disk full")
        return await real(self, key, value)

    monkeypatch.setattr(LocalStore, "set", failing)
    with pytest.raises(OSError, match="disk full"):
        StoreWriter(path, synthetic_provenance(C), _splits(100), encoding="float32")
    # The root first, then the rest: the split's group, its 4 arrays, and the labels' and ids' shards.
    assert order[0] == "zarr.json" and len(order) == 8
    [copy] = glob.glob(f"{path}.partial-*")
    assert json.load(open(f"{copy}/zarr.json"))["attributes"]["complete"] is False
    assert not os.path.exists(path) and not glob.glob(f"{path}*.lease*")  # nothing published, lease given up

    monkeypatch.setattr(LocalStore, "set", real)
    w = StoreWriter(path, synthetic_provenance(C), _splits(100), encoding="float32")
    assert not w.resumed and w.pending("train") == [0]
    _fill(w, _logits(100))
    w.finish()
    assert len(glob.glob(f"{copy}.unusable-*")) == 1  # the cut-off copy, kept aside, never deleted
    assert SoftTargetStore(path).verify() == {"train": 100}


def test_version_2_stores_are_refused_with_a_rewrite_hint(store_copy):
    zarr.open_group(store_copy, mode="r+").attrs["format_version"] = 2
    with pytest.raises(StoreError) as e:
        SoftTargetStore(store_copy)
    assert e.value.field == "format_version" and "rewrite the store with `kd teacher`" in str(e.value)


# ---------------------------------------------------------------- finiteness after the encoding cast


def test_logits_beyond_float16_are_refused_not_published_as_inf(tmp_path):
    path = str(tmp_path / "s.zarr")
    logits = _logits(100)
    logits[[4, 61], 2] = 1e5  # finite in float32, inf in float16
    w = StoreWriter(path, synthetic_provenance(C), _splits(100), encoding="float16", chunk_rows=50)
    with pytest.raises(UserError) as e:
        _fill(w, logits)
    w.abort()
    assert e.value.field == "encoding" and "rows 4, 61" in str(e.value) and "--encoding float32" in str(e.value)
    assert not os.path.exists(path)
    # The same logits are fine in float32.
    w = StoreWriter(str(tmp_path / "f32.zarr"), synthetic_provenance(C), _splits(100), encoding="float32")
    _fill(w, logits)
    w.finish()


def test_inf_read_back_is_not_called_a_missing_chunk(tmp_path):
    path = str(tmp_path / "s.zarr")
    w = StoreWriter(path, synthetic_provenance(C), _splits(100), encoding="float16", chunk_rows=50)
    _fill(w, _logits(100))
    w.finish()
    arr = zarr.open_group(path, mode="r+")["train"]["logits"]
    arr[70, 0, 1] = np.inf  # as an older writer would have published it
    with pytest.raises(StoreError) as e:
        SoftTargetStore(path).read_logits("train")
    assert "row 70" in str(e.value) and "inf" in str(e.value) and "missing" not in str(e.value)


# ---------------------------------------------------------------- the contract, through the CLI



def _edit_json(path, edit):
    with open(path) as f:
        meta = json.load(f)
    edit(meta)
    with open(path, "w") as f:
        json.dump(meta, f)


def _attrs(store, edit):
    g = zarr.open_group(store, mode="r+")
    attrs = json.loads(json.dumps(dict(g.attrs)))
    edit(attrs)
    g.attrs.put(attrs)


DAMAGE = {
    "group zarr.json deleted": (lambda s: os.remove(f"{s}/train/zarr.json"), "train:"),
    "test group deleted": (lambda s: shutil.rmtree(f"{s}/test"), "test:"),
    "array zarr.json deleted": (lambda s: os.remove(f"{s}/val/labels/zarr.json"), "val/labels: is missing"),
    "logits shape shrunk": (lambda s: _edit_json(f"{s}/train/logits/zarr.json",
                                                 lambda m: m.update(shape=[1000, 1, 10])), "train/logits: has shape"),
    "logits dtype int16": (lambda s: _edit_json(f"{s}/train/logits/zarr.json",
                                                lambda m: m.update(data_type="int16", fill_value=0)),
                           "train/logits: dtype is int16"),
    "oversized labels chunk": (lambda s: _edit_json(
        f"{s}/train/labels/zarr.json",
        lambda m: m["chunk_grid"]["configuration"].update(chunk_shape=[2**40])), "train/labels: chunks"),
    "encoding changed to topk": (lambda s: _attrs(s, lambda a: a.update(encoding="topk:3")),
                                 "train/topk_values: is missing"),
    "views changed": (lambda s: _attrs(s, lambda a: a.update(views={
        "count": 2, "seed": 0, "augment": {"ops": ["translate"]}, "params": ["dx", "dy", "flip", "angle"]})),
        "views.count:"),
    "dataset removed": (lambda s: _attrs(s, lambda a: a.pop("dataset")), "dataset: missing"),
    "layout rows changed": (lambda s: _attrs(s, lambda a: a["layout"]["val"].update(rows=260)),
                            "dataset.splits.val.size:"),
    # Consistent attributes, but one chunk would decode to 381 MiB: refused before any is allocated.
    "oversized logits chunks": (lambda s: _attrs(s, lambda a: (
        a["layout"]["train"].update(rows=10 ** 8, chunk_rows=10 ** 7, shard_rows=10 ** 7),
        a["dataset"]["splits"]["train"].update(size=10 ** 8))), "layout.train.chunk_rows: 10000000 rows decode to"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_bad_store_metadata_is_one_line_through_inspect_and_distill(capsys, store_copy, damage):
    edit, expected = DAMAGE[damage]
    edit(store_copy)
    assert cli_fails(capsys, "inspect", store_copy, "--verify").startswith(f"error: {expected}")
    assert cli_fails(capsys, "distill", "--store", store_copy).startswith(f"error: {expected}")


def test_stores_lists_a_damaged_store_and_goes_on(capsys, digits_store, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(digits_store, root / "a-bad.zarr")
    shutil.copytree(digits_store, root / "b-good.zarr")
    os.remove(root / "a-bad.zarr" / "train" / "logits" / "zarr.json")
    main(["stores", str(root)])
    bad, good = capsys.readouterr().out.strip().splitlines()
    assert bad.startswith("a-bad.zarr") and "DAMAGED: train/logits: is missing" in bad
    assert good.startswith("b-good.zarr") and good.endswith("complete")
    main(["stores", str(root), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert "train/logits" in rows[0]["damaged"] and rows[1]["complete"] is True


# ---------------------------------------------------------------- integrity beyond CRC


def test_permuted_logits_with_valid_checksums_fail_the_manifest(capsys, store_copy):
    arr = zarr.open_group(store_copy, mode="r+")["val"]["logits"]
    arr[:] = arr[:][::-1]  # rewritten through zarr: every chunk checksum is valid
    SoftTargetStore(store_copy).read_logits("val", 0, 256)  # a chunk read cannot tell
    err = cli_fails(capsys, "inspect", store_copy, "--verify")
    assert err.startswith("error: val/logits: shard 0 differs from the manifest")


@pytest.mark.parametrize("split", ["train", "test"])
def test_stage2_refuses_logits_rewritten_through_zarr_in_what_it_decodes_whole(capsys, store_copy, split):
    """Stage 2 decodes its test split, and its train split when it fits the cache, whole: every shard of them is
    checked against the manifest before any student trains. Streamed, train is checked by `kd inspect --verify`."""
    arr = zarr.open_group(store_copy, mode="r+")[split]["logits"]
    arr[:] = arr[:][::-1]  # valid checksums
    err = cli_fails(capsys, "distill", "--store", store_copy)
    assert err.startswith(f"error: {split}/logits: shard 0 differs from the manifest"), err
    if split == "train":
        SoftTargetStore(store_copy).read_logits("train", 0, 256)  # streamed a chunk at a time: not hashed


@pytest.mark.parametrize("name", ["labels", "ids"])
def test_replaced_labels_or_ids_are_caught_even_with_a_forged_manifest(capsys, store_copy, name):
    g = zarr.open_group(store_copy, mode="r+")
    values = g["test"][name][:]
    j = int(np.nonzero(values != values[0])[0][0])
    values[[0, j]] = values[[j, 0]]  # two swapped rows (labels of different classes, or ids)
    g["test"][name][:] = values
    assert cli_fails(capsys, "inspect", store_copy, "--verify").startswith(f"error: test/{name}: its content differs")

    from pipeline.store.integrity import digest

    forged = json.loads(json.dumps(dict(g.attrs)))
    forged["manifest"]["arrays"][f"test/{name}"] = [digest(values)]
    g.attrs.put(forged)  # the manifest agrees now: only the data's fingerprints can tell
    err = cli_fails(capsys, "inspect", store_copy, "--verify")
    assert err.startswith(f"error: test/{name}: differ from the data the store was written from at 2 rows")


def test_verify_says_when_the_data_is_not_there(capsys, store_copy, tmp_path):
    _attrs(store_copy, lambda a: a["data_config"].update(name=f"imagefolder:{tmp_path}/gone"))
    main(["inspect", store_copy, "--verify"])
    captured = capsys.readouterr()
    line = next(x for x in captured.out.splitlines() if x.startswith("fingerprints:"))
    assert "not checked" in line and "not available" in line
    assert "not checked" in captured.err and captured.err.count("\n") == 1


def test_links_that_leave_the_store_are_refused_and_never_echoed(capsys, store_copy, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-CONTENT")
    chunk = os.path.join(store_copy, "train", "labels", "c", "0")
    os.remove(chunk)
    os.symlink(secret, chunk)
    err = cli_fails(capsys, "inspect", store_copy, "--verify")
    assert "train/labels/c/0: is a link that leaves the store" in err and "TOPSECRET" not in err
    meta = os.path.join(store_copy, "val", "zarr.json")
    os.remove(meta)
    os.symlink(secret, meta)
    err = cli_fails(capsys, "distill", "--store", store_copy)
    assert "leaves the store" in err and "TOPSECRET" not in err
    # A link inside the store is followed as usual.
    inside = os.path.join(store_copy, "val", "zarr.json")
    os.remove(inside)
    os.symlink(os.path.join(store_copy, "test", "zarr.json"), inside)
    SoftTargetStore(store_copy)


def test_nan_written_through_zarr_is_not_called_a_missing_chunk(capsys, store_copy):
    arr = zarr.open_group(store_copy, mode="r+")["train"]["logits"]
    arr[1030, 0, 3] = np.nan  # valid checksums: only the values tell
    err = cli_fails(capsys, "inspect", store_copy, "--verify")
    assert err.startswith("error: train/logits: row 1030 (chunk 4) holds NaN beside finite values"), err
    assert "missing" not in err
    arr[1024:1257] = np.nan  # the whole (last) chunk NaN: what a missing chunk reads back as
    assert "chunk 4 (row 1024) is missing" in cli_fails(capsys, "inspect", store_copy, "--verify")


EDITS = {  # what the store says of its data, edited: the data rebuilt from data_config disagrees
    "dataset.name": (lambda a: a["dataset"].update(name="digitz"), "dataset.name: the store records \"digitz\"",
                     "dataset: store was written from 'digitz'"),
    "class_names": (lambda a: a["dataset"].update(class_names=["1", "0", *map(str, range(2, 10))]),
                    "dataset.class_names: the store records [\"1\", \"0\"", "dataset.class_names: "),
    "transform_hash": (lambda a: a.update(transform_hash="0123456789abcdef"),
                       "transform_hash: '0123456789abcdef' is not the hash of the recorded transform",
                       "transform_hash: "),
    "transform and its hash": (lambda a: (a["transform"].update(size=[9, 9]), a.update(
        transform_hash=__import__("pipeline.transforms").transforms.transform_hash(a["transform"]))),
        "transform_hash: the store records preprocessing", "transform_hash: "),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_verify_notices_edits_to_what_the_store_records_of_its_data(capsys, store_copy, edit):
    change, says, stage2 = EDITS[edit]
    _attrs(store_copy, change)
    err = cli_fails(capsys, "inspect", store_copy, "--verify")
    assert err.startswith(f"error: {says}") and "rewrite it with `kd teacher`" in err, err
    assert cli_fails(capsys, "distill", "--store", store_copy).startswith(f"error: {stage2}")  # stage 2 refuses it too
