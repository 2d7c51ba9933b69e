"""Benchmarks only: aggregate this session's results into data/bench/summary.json and print the table."""
from __future__ import annotations

import time

import benchlib

_START = time.perf_counter()
benchlib.configure_threads()


def pytest_terminal_summary(terminalreporter) -> None:
    try:
        benchlib.TMP_DIR.rmdir()  # every case removes its own folder in it
    except OSError:
        pass
    if not benchlib.RESULTS:
        return
    wall = time.perf_counter() - _START
    path = benchlib.write_summary(benchlib.RESULTS, wall)
    tr = terminalreporter
    tr.write_line("")
    tr.write_line(f"benchmarks: {len(benchlib.RESULTS)} cases in {wall:.0f} s on "
                  f"{benchlib.machine_info()['device']} ({benchlib.machine_info()['cpu_model']}, "
                  f"{benchlib.machine_info()['torch_threads']} torch threads); summary: {path}")
    tr.write_line("")
    tr.write_line(benchlib.markdown_table(benchlib.RESULTS))
