"""Helpers for the benchmarks in this folder (run by ``make bench``, never by ``make test``).

Every figure a benchmark reports is a ratio of two sides measured side by side
in the same run, repetitions interleaved (A, B, A, B, ...) and reduced with a
median, because the machines this runs on are shared and noisy. Absolute
throughputs (GB/s, samples/s) are reported too where the issue asks for them,
but only the ratios are meant to be compared across machines.

Each case writes ``data/bench/<case>.json`` (figures, goals, raw timings,
configuration and machine info) and prints one line; the folder's conftest
writes ``data/bench/summary.json`` and prints a Markdown table at the end.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipeline.data import Split
from pipeline.models import resolve_device
from pipeline.store import SoftTargetStore, StoreWriter

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / "data" / "bench"
TMP_DIR = BENCH_DIR / "tmp"

SHAPE = (3, 32, 32)  # CIFAR-shaped inputs
CLASSES = 10

# Results recorded in this session, in order; the conftest aggregates them.
RESULTS: list[dict] = []


# ---------------------------------------------------------------- environment


def device() -> torch.device:
    return resolve_device("auto")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    import numcodecs
    import zarr

    dev = device()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
        "numpy": np.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
    }


def sync() -> None:
    """Wait for queued GPU work so that wall-clock timings are real."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------- timing


def timed(fn: Callable[[], object]) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def interleaved(sides: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run the sides in turn (A, B, A, B, ...) ``warmup + reps`` times; return the timed reps per side."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(warmup + reps):
        for name, fn in sides.items():
            dt_ = timed(fn)
            if r >= warmup:
                times[name].append(dt_)
    for name, ts in times.items():
        check_timings(name, ts)
    return times


def check_timings(name: str, ts: list[float]) -> None:
    assert ts, f"{name}: no timings"
    assert all(math.isfinite(t) and t > 0 for t in ts), f"{name}: non-positive or non-finite timing in {ts}"


def med(ts: list[float]) -> float:
    return float(statistics.median(ts))


def ratio(num: list[float], den: list[float]) -> float:
    """median(num) / median(den), both sides' timings from the same interleaved run."""
    r = med(num) / med(den)
    assert math.isfinite(r) and r > 0, f"ratio {r}"
    return r


def spread(ts: list[float]) -> float:
    """(max - min) / median: how noisy one side was."""
    return (max(ts) - min(ts)) / med(ts) if len(ts) > 1 else 0.0


# ---------------------------------------------------------------- data


def synthetic_split(n: int, seed: int, shape: tuple[int, ...] = SHAPE, classes: int = CLASSES) -> Split:
    """``n`` random CIFAR-shaped samples in [0, 1] with random labels (accuracy is irrelevant here)."""
    g = torch.Generator().manual_seed(seed)
    return Split(x=torch.rand((n, *shape), generator=g), y=torch.randint(0, classes, (n,), generator=g),
                 ids=torch.arange(n, dtype=torch.int64))


def write_store(path: str | os.PathLike, logits: np.ndarray, labels: np.ndarray, encoding: str = "float16",
                **layout) -> SoftTargetStore:
    """A complete one-split (``train``) store of the given logits, written shard by shard through StoreWriter."""
    n, c = logits.shape
    w = StoreWriter(str(path), {"dataset": {"num_classes": c}}, {"train": (labels, np.arange(n))}, c, encoding,
                    **layout)
    lay = w.layouts["train"]
    for shard in range(lay.num_shards):
        a, b = lay.shard_range(shard)
        w.put("train", shard, logits[a:b])
    w.finish()
    return SoftTargetStore(str(path))


def tmp_dir(name: str) -> Path:
    import tempfile

    TMP_DIR.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=TMP_DIR))


# ---------------------------------------------------------------- results


def figure(name: str, value: float, goal: str, met: bool | None, unit: str = "") -> dict:
    assert math.isfinite(value) and value > 0, f"{name}: {value}"
    return {"figure": name, "value": value, "unit": unit, "goal": goal, "met": met}


def record(case: str, figures: list[dict], details: dict, wall_s: float) -> dict:
    """Write ``data/bench/<case>.json`` and print the one-line summary."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    result = {
        "case": case,
        "figures": figures,
        "wall_s": wall_s,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **details,
    }
    with open(BENCH_DIR / f"{case}.json", "w") as f:
        json.dump(result, f, indent=2, default=_jsonable)
    RESULTS.append(result)
    parts = [f"{f['figure']}={fmt(f['value'])}{f['unit']} (goal {f['goal']}: "
             f"{'met' if f['met'] else 'n/a' if f['met'] is None else 'MISSED'})" for f in figures]
    print(f"\n[bench] {case}: " + "; ".join(parts) + f" [{wall_s:.0f} s]", flush=True)
    return result


def _jsonable(o: object) -> object:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def fmt(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if v < 1 else f"{v:.2f}"


def markdown_table(results: list[dict]) -> str:
    lines = ["| case | figure | value | goal | met? |", "|---|---|---|---|---|"]
    for r in results:
        for f in r["figures"]:
            met = "—" if f["met"] is None else ("yes" if f["met"] else "**no**")
            lines.append(f"| {r['case']} | {f['figure']} | {fmt(f['value'])}{f['unit']} | {f['goal']} | {met} |")
    return "\n".join(lines)


def write_summary(results: list[dict], wall_s: float | None) -> Path:
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    summary = {
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": wall_s,
        "machine": machine_info(),
        "cases": {r["case"]: {"figures": r["figures"], "wall_s": r["wall_s"]} for r in results},
        "goals_met": sum(1 for r in results for f in r["figures"] if f["met"] is True),
        "goals_missed": sum(1 for r in results for f in r["figures"] if f["met"] is False),
        "markdown": markdown_table(results),
    }
    path = BENCH_DIR / "summary.json"
    with open(path, "w") as f:
        json.dump(summary, f, indent=2, default=_jsonable)
    return path
