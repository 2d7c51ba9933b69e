"""Crash safety: SIGKILL a real teacher process mid-write, rerun it, get bit-identical logits."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr

from pipeline import teacher
from pipeline.config import ModelConfig
from pipeline.data import load_dataset
from pipeline.errors import StoreError
from pipeline.store import SoftTargetStore
from pipeline.train import build_seeded
from tests.conftest import DIGITS, shard_file, small_teacher_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A wide CNN so the teacher pass takes seconds on a CPU, and 8-row shards so there are many to count.
MODEL = ModelConfig(arch="cnn", width=96)
SCRIPT = """
import sys
from pipeline import teacher
from pipeline.config import ModelConfig
from tests.conftest import small_teacher_config
root, ckpt = sys.argv[1], sys.argv[2]
cfg = small_teacher_config(root, model=ModelConfig(arch="cnn", width=96), checkpoint=ckpt,
                           chunk_rows=8, shard_chunks=1, encoding="float32")
p = teacher.plan(cfg)
print(teacher.publish(p, teacher.load(p)), flush=True)
"""


def _cfg(root, ckpt):
    return small_teacher_config(root, model=MODEL, checkpoint=ckpt, chunk_rows=8, shard_chunks=1,
                                encoding="float32")


def _shard_files(store):
    out = {}
    for split in ("train", "val", "test"):
        d = os.path.join(store, split, "logits", "c")
        if os.path.isdir(d):
            for name in os.listdir(d):
                f = shard_file(store, split, int(name))
                if os.path.exists(f):  # a kill can leave a shard's folder created but its file not yet written
                    out[f] = os.stat(f).st_mtime_ns
    return out


@pytest.mark.slow
def test_sigkill_then_rerun_writes_only_missing_shards(tmp_path):
    ds = load_dataset(DIGITS)
    ckpt = str(tmp_path / "teacher.pt")
    torch.save(build_seeded(MODEL, ds.input_shape, ds.num_classes, seed=0).state_dict(), ckpt)

    ref_plan = teacher.plan(_cfg(str(tmp_path / "ref"), ckpt))
    reference = SoftTargetStore(teacher.publish(ref_plan, teacher.load(ref_plan)))

    root = str(tmp_path / "run")
    store = teacher.plan(_cfg(root, ckpt)).store_path
    cmd = [sys.executable, "-c", SCRIPT, root, ckpt]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    total = sum(-(-n // 8) for n in (1257, 270, 270))
    done = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = int(zarr.open_group(store, mode="r")["train"]["written"][:].sum())
        except Exception:  # not created yet
            done = 0
        if done >= 20:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"teacher finished before it could be killed ({done} shards)"

    with pytest.raises(StoreError, match="incomplete"):
        SoftTargetStore(store)
    written = zarr.open_group(store, mode="r")
    flags = {s: written[s]["written"][:].copy() for s in ("train", "val", "test")}
    n_before = int(sum(f.sum() for f in flags.values()))
    assert 20 <= n_before < total
    before = _shard_files(store)

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = _shard_files(store)
    # Shards recorded as written were not touched; every other shard was written by the rerun.
    for split, f in flags.items():
        for shard in np.nonzero(f)[0]:
            path = shard_file(store, split, int(shard))
            assert after[path] == before[path], path
    assert len(after) == total

    resumed = SoftTargetStore(store)
    for split in ("train", "val", "test"):
        assert np.array_equal(resumed.read_logits(split), reference.read_logits(split)), split
    assert resumed.attrs["provenance_key"] == reference.attrs["provenance_key"]
