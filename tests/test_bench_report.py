"""tests/benchmarks/report.py: docs/performance.md rendered from JSON that benchlib's own writer produced."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent / "benchmarks"


@pytest.fixture
def report(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def benchlib(report, monkeypatch, tmp_path):
    """benchlib as the benchmarks use it, writing its JSON under ``tmp_path`` instead of data/bench/."""
    lib = report.benchlib
    monkeypatch.setattr(lib, "BENCH_DIR", tmp_path / "bench")
    monkeypatch.setattr(lib, "RESULTS", [])
    return lib


def record_case(lib, case: str, figures: list[dict]) -> dict:
    return lib.record(case, figures, {"config": {"rounds_asked": 5}}, lib.begin())


def test_one_table_per_case_with_its_figures_iqr_rounds_and_machine(benchlib, report, tmp_path):
    B = benchlib
    record_case(B, "store_overhead", [
        B.figure("kd_epoch / hard_epoch", 1.0133, "≤ 1.05", True, per_round=[1.02, 0.99, 1.0133, 1.05, 1.01])])
    record_case(B, "store_io", [
        B.figure("sequential read", 0.4612, "≥ 1 GB/s", False, " GB/s", per_round=[0.40, 0.46, 0.50]),
        B.figure("naive random read", 783.4, "reported", None, " samples/s")])
    B.write_summary(B.RESULTS, 1.0)  # summary.json sits beside the cases and is not a case
    out = report.write(tmp_path / "bench", tmp_path / "docs" / "performance.md")
    text = out.read_text(encoding="utf-8")

    files = [p for p in (tmp_path / "bench").glob("*.json") if p.name != "summary.json"]
    cases = {case["case"]: case for case in (json.loads(p.read_text()) for p in files)}
    assert set(cases) == {"store_overhead", "store_io"}
    assert text.count("\n## ") == 3  # the list of cases, then one section per case
    for name, case in cases.items():
        section = text[text.index(f"\n## {name}\n"):]
        section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
        machine = case["machine"]
        assert f"**{machine['device']}**" in section and machine["cpu_model"] in section
        assert f"torch {machine['torch']}" in section and f"Python {machine['python']}" in section
        assert case["finished_at"] in section
        rows = [line for line in section.splitlines() if line.startswith("|")]
        assert rows[0] == "| figure | value | IQR over rounds | rounds | goal | met? |"
        assert len(rows) == 2 + len(case["figures"])
        for row, fig in zip(rows[2:], case["figures"]):
            cells = [c.strip() for c in row.strip("|").split("|")]
            assert cells[0] == fig["figure"] and cells[1] == B.fmt(fig["value"]) + fig["unit"]
            assert cells[4] == fig["goal"]
            assert cells[5] == {True: "yes", False: "**no**", None: "—"}[fig["met"]]
            if "iqr" in fig:
                assert cells[2] == f"{B.fmt(fig['iqr'][0])}–{B.fmt(fig['iqr'][1])}"
                assert cells[3] == str(fig["rounds"]) == str(len(fig["per_round"]))
            else:
                assert cells[2] == cells[3] == "—"
    # The figures as benchlib judged them: a value next to its goal keeps the digits it was judged by.
    assert "| kd_epoch / hard_epoch | 1.013 | 1.010–1.020 | 5 | ≤ 1.05 | yes |" in text
    assert "| sequential read | 0.461 GB/s | 0.43–0.48 | 3 | ≥ 1 GB/s | **no** |" in text


def test_no_results_says_how_to_get_them(report, tmp_path):
    (tmp_path / "bench").mkdir()
    text = report.write(tmp_path / "bench", tmp_path / "performance.md").read_text(encoding="utf-8")
    assert "No benchmark results" in text and "make bench" in text and "| figure |" not in text


def test_the_committed_page_is_the_generators_output(report):
    """docs/performance.md is written by the generator, never by hand: its fixed part matches, word for word."""
    page = (report.REPO / "docs" / "performance.md").read_text(encoding="utf-8")
    assert page.startswith(report.INTRO)
