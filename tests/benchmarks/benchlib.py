"""Helpers for the benchmarks in this folder (run by ``make bench``, never by ``make test``).

Every figure a benchmark reports is a ratio of two sides measured side by side
in the same run, repetitions interleaved (A, B, A, B, ...) and reduced with a
median of the per-round ratios, because the machines this runs on are shared
and noisy (other processes come and go; torch's threads then stall). Absolute
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
from tests.conftest import synthetic_provenance

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / "data" / "bench"
TMP_DIR = BENCH_DIR / "tmp"

SHAPE = (3, 32, 32)  # CIFAR-shaped inputs
CLASSES = 10

# Results recorded in this session, in order; the conftest aggregates them.
RESULTS: list[dict] = []

TORCH_DEFAULT_THREADS = torch.get_num_threads()

# The whole session stays under 15 minutes on a 2-core machine even when other processes load it:
# past this many seconds, every remaining measurement stops at 3 rounds.
SESSION_START = time.perf_counter()
DEADLINE_S = float(os.environ.get("BENCH_DEADLINE_S", 720))


def past_deadline() -> bool:
    return time.perf_counter() - SESSION_START > DEADLINE_S


def configure_threads() -> int:
    """Intra-op threads for the benchmarks: ``BENCH_THREADS`` (0 = torch's default), else 1 on a CPU.

    On a small shared machine torch's default (one thread per core) stalls at every parallel region
    whenever another process holds a core: on the 2-core box this was sized on, a student step went
    from 48 ms to ~560 ms under other load, while one thread stayed at ~90 ms. One thread keeps the
    ratios measurable there; ``BENCH_THREADS=0 make bench`` measures torch's default instead.
    """
    env = os.environ.get("BENCH_THREADS")
    n = int(env) if env else (0 if torch.cuda.is_available() else 1)
    torch.set_num_threads(n if n > 0 else TORCH_DEFAULT_THREADS)
    return torch.get_num_threads()


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
        "torch_default_threads": TORCH_DEFAULT_THREADS,
        "bench_threads_env": os.environ.get("BENCH_THREADS"),
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


def interleaved(sides: dict[str, Callable[[], object]], min_reps: int, max_reps: int | None = None,
                budget_s: float = 0.0, warmup: int = 1) -> dict[str, list[float]]:
    """Run the sides in turn (A, B, A, B, ...); return the timed repetitions per side.

    ``warmup`` rounds are run and dropped. Then at least ``min_reps`` rounds,
    and more (up to ``max_reps``) while the timed rounds have taken less than
    ``budget_s``: a quiet machine gets more repetitions, a loaded one stays
    within its time.
    """
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(warmup):
        for fn in sides.values():
            timed(fn)
    start = time.perf_counter()
    max_reps = max(min_reps, max_reps or min_reps)
    r = 0

    def more() -> bool:
        if r < 3:
            return True
        if past_deadline():  # a very loaded machine: keep the whole run within its limit, with fewer rounds
            return False
        return r < min_reps or (r < max_reps and time.perf_counter() - start < budget_s)

    while more():
        for name, fn in sides.items():
            times[name].append(timed(fn))
        r += 1
    for name, ts in times.items():
        check_timings(name, ts)
    return times


def check_timings(name: str, ts: list[float]) -> None:
    assert ts, f"{name}: no timings"
    assert all(math.isfinite(t) and t > 0 for t in ts), f"{name}: non-positive or non-finite timing in {ts}"


def med(ts: list[float]) -> float:
    return float(statistics.median(ts))


def rounds(num: list[float], den: list[float]) -> list[float]:
    """Per-round ratios num[i] / den[i], both sides measured back to back in round i."""
    assert len(num) == len(den) and num, (num, den)
    return [a / b for a, b in zip(num, den)]


def ratio(num: list[float], den: list[float]) -> float:
    """The median of the per-round ratios num[i] / den[i].

    Pairing the sides round by round cancels load that drifts over the run;
    the median drops rounds where a burst hit only one side.
    """
    r = med(rounds(num, den))
    assert math.isfinite(r) and r > 0, f"ratio {r}"
    return r


def iqr(values: list[float]) -> list[float]:
    """[25th, 75th] percentile: the spread of the per-round values behind a median."""
    if len(values) < 2:
        return [values[0], values[0]]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def ratio_of_medians(num: list[float], den: list[float]) -> float:
    return med(num) / med(den)


def spread(ts: list[float]) -> float:
    """(max - min) / median: how noisy one side was."""
    return (max(ts) - min(ts)) / med(ts) if len(ts) > 1 else 0.0


# ---------------------------------------------------------------- data


def synthetic_split(n: int, seed: int, shape: tuple[int, ...] = SHAPE, classes: int = CLASSES) -> Split:
    """``n`` random CIFAR-shaped samples in [0, 1] with random labels (accuracy is irrelevant here)."""
    g = torch.Generator().manual_seed(seed)
    return Split.from_tensors(x=torch.rand((n, *shape), generator=g), y=torch.randint(0, classes, (n,), generator=g),
                              ids=torch.arange(n, dtype=torch.int64))


def write_store(path: str | os.PathLike, logits: np.ndarray, labels: np.ndarray, encoding: str = "float16",
                **layout) -> SoftTargetStore:
    """A complete one-split (``train``) store of the given logits, written shard by shard through StoreWriter."""
    n, c = logits.shape
    w = StoreWriter(str(path), synthetic_provenance(c), {"train": (labels, np.arange(n))}, encoding=encoding,
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


def figure(name: str, value: float, goal: str, met: bool | None, unit: str = "",
           per_round: list[float] | None = None) -> dict:
    """One reported figure; ``per_round`` (the value in each round) adds its count and interquartile range."""
    assert math.isfinite(value) and value > 0, f"{name}: {value}"
    out = {"figure": name, "value": value, "unit": unit, "goal": goal, "met": met}
    if per_round:
        assert all(math.isfinite(v) and v > 0 for v in per_round), per_round
        out.update(rounds=len(per_round), iqr=iqr(per_round), per_round=per_round)
    return out


def begin() -> dict:
    """Call at the start of a case; pass the result to :func:`record`."""
    return {"t0": time.perf_counter(), "loadavg_1min_start": os.getloadavg()[0]}


def record(case: str, figures: list[dict], details: dict, begun: dict) -> dict:
    """Write ``data/bench/<case>.json`` and print the one-line summary."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    wall_s = time.perf_counter() - begun["t0"]
    result = {
        "case": case,
        "figures": figures,
        "wall_s": wall_s,
        "past_session_deadline": past_deadline(),
        # other processes on the machine during the case (1-minute load average; > cores means contention)
        "loadavg_1min": {"start": begun["loadavg_1min_start"], "end": os.getloadavg()[0]},
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
    """Enough digits that a value next to its goal (1.051 vs ≤ 1.05) reads the way it was judged."""
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}" if v >= 1 else f"{v:.3g}"


def markdown_table(results: list[dict]) -> str:
    lines = ["| case | figure | value | IQR over rounds (n) | goal | met? |", "|---|---|---|---|---|---|"]
    for r in results:
        for f in r["figures"]:
            met = "—" if f["met"] is None else ("yes" if f["met"] else "**no**")
            spread_ = f"{fmt(f['iqr'][0])}–{fmt(f['iqr'][1])} ({f['rounds']})" if "iqr" in f else "—"
            lines.append(f"| {r['case']} | {f['figure']} | {fmt(f['value'])}{f['unit']} | {spread_} | {f['goal']} "
                         f"| {met} |")
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


# ---------------------------------------------------------------- image folders (test_imagefolder_bench.py)
#
# A folder of generated JPEGs, one sub-folder per class, made once under data/bench/ (never committed:
# data/ is git-ignored) and reused by later sessions. Every image is a pure function of (class, index),
# so a folder made serially or by threads, here or elsewhere, is the same bytes.

FOLDER_CLASSES = 10


def _folder_image(label: int, index: int, size: int) -> bytes:
    """One JPEG: a class tint, smooth random structure, a few shapes and sensor-like noise, so it
    compresses like a photo (~10 KB at 160 px), not like a flat colour."""
    import io

    from PIL import Image, ImageDraw

    rng = np.random.default_rng([label, index, size])
    tint = np.array([(37 * label) % 256, (91 * label + 60) % 256, (151 * label + 120) % 256], np.float32)
    low = rng.uniform(0, 255, (6, 6, 3)).astype(np.float32) * 0.6 + tint * 0.4  # (6, 6, 3)
    img = Image.fromarray(low.clip(0, 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        w, h = (int(v) for v in rng.integers(size // 8, size // 2, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h], fill=colour)
    pixels = np.asarray(img, np.int16) + rng.integers(-12, 13, (size, size, 3), dtype=np.int16)  # (H, W, 3)
    out = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def image_folder(n: int, size: int) -> Path:
    """``data/bench/imagefolder-<n>x<size>px``: ``n`` JPEGs of ``size`` x ``size`` in 10 class folders, made
    once (in a temporary folder renamed into place, so a folder under that name is always complete)."""
    import shutil
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    final = BENCH_DIR / f"imagefolder-{n}x{size}px"
    if final.is_dir():
        return final
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".imagefolder-", dir=BENCH_DIR))
    try:
        for c in range(FOLDER_CLASSES):
            (work / f"class{c}").mkdir()

        def make(i: int) -> None:
            label = i % FOLDER_CLASSES
            (work / f"class{label}" / f"img{i:06d}.jpg").write_bytes(_folder_image(label, i, size))

        # PIL's encoder and numpy release the GIL: threads spread the work over the cores, no processes.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(make, range(n)))
        os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return final


def gpu_info() -> dict | None:
    """The GPU the benchmarks ran on, or None on a CPU."""
    dev = device()
    if dev.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(dev)
    return {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
            "cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported()}


class ProcessClock:
    """This process's CPU seconds per side, recorded alongside :func:`interleaved`'s wall-clock rounds.

    Wrap the sides (``interleaved(clock.wrap(sides), ...)``), then take :meth:`rounds`. Where all the work
    runs in this process (no DataLoader workers, no GPU), CPU time is what the code costs without the
    time spent waiting for a core that another process holds: on an oversubscribed machine it varies
    far less than wall-clock time. Elsewhere it misses the workers and the GPU, so it means nothing.
    """

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def wrap(self, sides: dict[str, Callable[[], object]]) -> dict[str, Callable[[], object]]:
        return {name: self._timed(name, fn) for name, fn in sides.items()}

    def _timed(self, name: str, fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            t = time.process_time()
            try:
                return fn()
            finally:
                self.times.setdefault(name, []).append(time.process_time() - t)
        return run

    def rounds(self, n: int) -> dict[str, list[float]]:
        """The last ``n`` rounds of each side (the warm-up rounds dropped)."""
        out = {name: ts[-n:] for name, ts in self.times.items()}
        for name, ts in out.items():
            check_timings(name, ts)
        return out
