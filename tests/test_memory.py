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
