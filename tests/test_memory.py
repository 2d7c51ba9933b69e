"""A store several times larger than the cache budget is streamed with bounded memory."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.store import StoreWriter
from tests.conftest import synthetic_provenance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, C = 100_000, 1000  # 400 MB of decoded float32 logits
BUDGET_MB = 64
SCRIPT = """
import json, resource, sys
import numpy as np, torch
from pipeline.data import Split
from pipeline.loader import SoftTargetLoader
from pipeline.store import SoftTargetStore

def rss_mb():  # current resident set, not the lifetime high-water mark that imports already set
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e6

store = SoftTargetStore(sys.argv[1])
n = store.size("train")
split = Split.from_tensors(torch.zeros(n, 1, 1, 1), torch.from_numpy(store.labels("train")), torch.arange(n))
model = torch.nn.Linear(1000, 10)
model(torch.zeros(256, 1000)).sum().backward()  # the model's own memory is outside the budget
before = rss_mb()
loader = SoftTargetLoader(split, 256, seed=0, store=store, cache_mb=float(sys.argv[2]))
seen, peak = 0, rss_mb()
for batch in loader.epoch(0):
    model(batch.logits).sum().backward()  # (B, 1000) -> touch every decoded row
    seen += len(batch.y)
    peak = max(peak, rss_mb())
print(json.dumps({"before": before, "peak": peak, "seen": seen, "cached": loader._cache is not None}))
"""


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("big") / "big.zarr")
    w = StoreWriter(path, synthetic_provenance(C), {"train": (np.zeros(N, np.int64), np.arange(N))},
                    encoding="float16")
    block = np.random.default_rng(0).normal(0, 3, size=(w.layouts["train"].shard_rows, C)).astype(np.float32)
    for shard in w.pending("train"):
        a, b = w.layouts["train"].shard_range(shard)
        w.put("train", shard, block[: b - a])
    return w.finish()


def _run(store, cache_mb):
    out = subprocess.run([sys.executable, "-c", SCRIPT, store, str(cache_mb)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_streaming_peak_rss_stays_within_budget(big_store):
    decoded_mb = N * C * 4 / 1e6
    assert decoded_mb > 5 * BUDGET_MB
    r = _run(big_store, BUDGET_MB)
    assert r["seen"] == N and not r["cached"]
    growth = r["peak"] - r["before"]
    # The whole epoch went through; peak memory grew by less than the budget (model and buffers included).
    print(f"streamed {decoded_mb:.0f} MB of logits; peak RSS grew {growth:.1f} MB (budget {BUDGET_MB} MB)")
    assert growth < BUDGET_MB, r
    # Contrast: with a budget that fits, the loader holds the decoded store in memory.
    cached = _run(big_store, 10_000)
    assert cached["cached"] and cached["peak"] - cached["before"] > decoded_mb * 0.9, cached


# --- image folders: memory does not grow with the dataset ------------------------------------------

FOLDER_SCRIPT = """
import json, os, resource, sys
import torch
torch.set_num_threads(1)
from pipeline import distill, teacher
from pipeline.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, TeacherConfig

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e6

folder, out, materialise = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
small = dict(model=ModelConfig(arch="cnn", width=4), optim=OptimConfig(epochs=1, batch_size=32))
cfg = TeacherConfig(data=DataConfig(name=f"imagefolder:{folder}", image_size=8), store_root=os.path.join(out, "s"),
                    checkpoint_root=os.path.join(out, "c"), device="cpu", **small)
p = teacher.plan(cfg)
before = rss_mb()
# The contrast: every decoded image kept in memory, as float32 at native size.
held = [s.source.read(i).float() for s in p.dataset.splits.values() for i in s.index] if materialise else None
store = teacher.publish(p, teacher.train(p))  # stage 1: train, evaluate, the logits pass
d = DistillConfig(store=store, temperatures=(4.0,), report_root=os.path.join(out, "r"), device="cpu", **small)
rows = distill.train_students(distill.plan(d), d.students())  # stage 2: one epoch, test evaluation
assert all(r["status"] == "ok" for r in rows)
# The run's high-water mark. Not ru_maxrss: Linux carries the parent's RSS at fork into it across exec, so
# a child of a large pytest process would report the parent's size. VmHWM belongs to this process's memory.
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024 / 1e6  # kB -> MB
print(json.dumps({"before": before, "peak": peak}))
"""
# Files at 96 px, trained at --image-size 8: decoding is real work, while the evaluation batches (up to
# 512 images, so larger with more data) stay small enough not to hide a dataset held in memory.
IMAGES, SIDE = 150, 96


def _folder(root, n: int) -> str:
    from PIL import Image

    rng = np.random.default_rng(n)
    for i in range(n):
        d = os.path.join(root, f"class{i % 2}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8)).save(f"{d}/{i:05d}.png")
    return str(root)


def _run_folder(folder, out, materialise=False) -> dict:
    proc = subprocess.run([sys.executable, "-c", FOLDER_SCRIPT, folder, str(out), "1" if materialise else "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**r, "growth": r["peak"] - r["before"]}


@pytest.mark.slow
def test_both_stages_over_a_4x_larger_folder_peak_at_the_same_rss(tmp_path):
    small = _folder(tmp_path / "n", IMAGES)
    large = _folder(tmp_path / "4n", 4 * IMAGES)
    a, b = _run_folder(small, tmp_path / "a"), _run_folder(large, tmp_path / "b")
    print(f"peak RSS {a['peak']:.0f} MB (N) vs {b['peak']:.0f} MB (4N); growth over the loaded process "
          f"{a['growth']:.1f} vs {b['growth']:.1f} MB")
    assert b["peak"] <= 1.15 * a["peak"], (a, b)
    # The peaks are dominated by torch itself, so the test also bounds what the run added to the process.
    # The 4N decoded images are 600 * 3 * 96 * 96 * 4 B = 66 MB as float32: pixels held in memory would show.
    bound = 1.15 * a["growth"] + 4.0
    assert b["growth"] <= bound, (a, b)
    # Contrast, so this test can fail: the same run holding the large folder's pixels breaks the bound.
    held = _run_folder(large, tmp_path / "c", materialise=True)
    print(f"holding the 4N pixels: peak RSS {held['peak']:.0f} MB, growth {held['growth']:.1f} MB (bound {bound:.1f})")
    assert held["growth"] > bound, (a, b, held)


# --- a tampered store: memory bounded by what the store holds, never by what its attributes claim ----------

PEAK_SCRIPT = """
import atexit, sys

def peak():  # this process's high-water mark in MiB (VmHWM: not a forking parent's, unlike ru_maxrss)
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    open(sys.argv[1], "w").write(str(hwm // 1024))

atexit.register(peak)
from flows.cli import main
main(sys.argv[2:])
"""


def _kd_peak(tmp_path, *argv: str) -> tuple[subprocess.CompletedProcess, int]:
    """`kd ARGV` in a fresh process: its result and its peak resident memory in MiB."""
    out = tmp_path / "peak"
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(out), *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT, "DO_NOT_TRACK": "1"})
    return proc, int(out.read_text())


def _edit_json(path, edit) -> None:
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


def zlib_bomb(inflated: int) -> bytes:
    """A valid zlib stream of ``inflated`` zero bytes (a multiple of 16 MiB), about a thousand times smaller:
    one fully flushed deflate block repeated, so building it costs no compression of the whole."""
    import zlib

    piece = b"\0" * (16 << 20)
    c = zlib.compressobj(9)
    block = c.compress(piece) + c.flush(zlib.Z_FULL_FLUSH)
    final = c.flush(zlib.Z_FINISH)[:-4]  # the last (empty) block, without this compressor's checksum
    adler = 1
    for _ in range(inflated // len(piece)):
        adler = zlib.adler32(piece, adler)
    return block[:2] + block[2:] * (inflated // len(piece)) + final + adler.to_bytes(4, "big")


BOMB = 2 << 30  # 2 GiB inflated, from about 2 MB of attributes
# A `kd distill` that stops before any work peaks at about 700 MiB (torch and Prefect imported): the bound
# leaves room for that, and none for holding the inflated listing.
PEAK_BOUND_MIB = 1024


@pytest.mark.slow
def test_a_zlib_bomb_in_the_recorded_folder_listing_is_refused_in_bounded_memory(tmp_path):
    import base64
    import zlib

    from pipeline import teacher
    from pipeline.config import DataConfig, ModelConfig, OptimConfig, TeacherConfig

    folder = _folder(tmp_path / "f", 16)
    p = teacher.plan(TeacherConfig(data=DataConfig(name=f"imagefolder:{folder}", image_size=8),
                                   model=ModelConfig(arch="cnn", width=4), optim=OptimConfig(epochs=1, batch_size=8),
                                   store_root=str(tmp_path / "s"), checkpoint_root=str(tmp_path / "c"),
                                   device="cpu"))
    store = teacher.publish(p, teacher.train(p))
    bomb = zlib_bomb(BOMB)
    assert len(zlib.decompressobj().decompress(bomb, 1 << 20)) == 1 << 20 and len(bomb) < BOMB / 500
    _edit_json(os.path.join(store, "zarr.json"),
               lambda d: d["attributes"]["dataset"].update(files=base64.b64encode(bomb).decode()))
    proc, peak = _kd_peak(tmp_path, "distill", "--store", store, "--report-root", str(tmp_path / "r"),
                          "--device", "cpu")
    print(f"kd distill on a {len(bomb) / 1e6:.1f} MB listing that inflates to {BOMB >> 20} MiB: peak {peak} MiB")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: dataset.files: the image folder changed since the store was written"), \
        proc.stderr
    assert peak < PEAK_BOUND_MIB < BOMB >> 20


def grow_store(store: str, rows: int) -> None:
    """Edit a store consistently to claim ``rows`` train rows: the attributes and every array's metadata agree
    (labels and ids at their contract's chunking), while the chunks on disk are the real ones."""
    lay = {}

    def group(d):
        attrs = d["attributes"]
        attrs["layout"]["train"]["rows"] = attrs["dataset"]["splits"]["train"]["size"] = rows
        lay.update(attrs["layout"]["train"])

    _edit_json(os.path.join(store, "zarr.json"), group)
    for name in ("logits", "labels", "ids", "written"):
        def array(d, name=name):
            d["shape"][0] = -(-rows // lay["shard_rows"]) if name == "written" else rows
            if name in ("labels", "ids"):
                d["chunk_grid"]["configuration"]["chunk_shape"][0] = min(rows, 65536)
        _edit_json(os.path.join(store, "train", name, "zarr.json"), array)


@pytest.mark.slow
def test_verify_of_a_store_claiming_a_trillion_rows_is_refused_in_bounded_memory(store_copy, tmp_path):
    """Its manifest is checked against its layout before any array is read: the written bitmap alone would be
    244 million one-byte chunks."""
    grow_store(store_copy, 10 ** 12)
    proc, peak = _kd_peak(tmp_path, "inspect", store_copy, "--verify")
    print(f"kd inspect --verify on a store claiming 10^12 rows: peak {peak} MiB")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: manifest.arrays.train/"), proc.stderr
    assert "the layout has 244140625" in proc.stderr and peak < PEAK_BOUND_MIB
