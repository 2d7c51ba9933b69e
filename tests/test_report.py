"""pipeline.report: aggregation over seeds, ordering, noise flag, Markdown and written files."""
from __future__ import annotations

import json
import math
import os

import pytest

from pipeline.report import gap_note, leaderboard, leaderboard_text, markdown, teacher_warning, write_report


def row(config_id: str, kind: str, seed: int, acc: float | None, *, status: str = "ok", loss: str | None = "kl",
        temperature: float | None = 2.0, alpha: float | None = 0.9, beta: float | None = None,
        nll: float | None = None, ece: float | None = None, agreement: float | None = None, params: int | None = 1000,
        error: str | None = None, size_mb: float | None = None, latency_ms: float | None = None) -> dict:
    r = {"run_id": f"{config_id}-s{seed}", "config_id": config_id, "kind": kind, "arch": "cnn", "loss": loss,
         "temperature": temperature, "alpha": alpha, "beta": beta, "seed": seed, "status": status}
    if status == "ok":
        r.update({"test_acc": acc, "test_nll": nll if nll is not None else 1.0 - acc,
                  "agreement": agreement if agreement is not None else acc, "params": params,
                  **({} if ece is None else {"test_ece": ece}),
                  "size_mb": size_mb, "latency_ms": latency_ms})
    else:
        r["error"] = error or "boom"
    return r


def teacher_row() -> dict:
    return row("teacher", "teacher", 0, 0.99, loss="-", temperature=None, alpha=None, nll=0.05, agreement=1.0,
               params=50_000)


def baseline_rows() -> list[dict]:
    # mean 0.92; sample std sqrt(((-0.02)^2 + 0^2 + 0.02^2) / (3 - 1)) = 0.02
    return [row("baseline", "baseline", s, a, loss="hard", temperature=None, alpha=None, params=900)
            for s, a in enumerate([0.90, 0.92, 0.94])]


def rows_fixture() -> list[dict]:
    return [
        # Student A: mean 0.96, std sqrt((0.01^2 + 0 + 0.01^2) / 2) = 0.01. Gain 0.04 > hypot(0.01, 0.02).
        row("kl-T2-a0.9", "student", 0, 0.95, temperature=2.0),
        # Student B: one failed seed; ok seeds 0.93, 0.935 -> mean 0.9325, std 0.005 / sqrt(2).
        row("kl-T4-a0.9", "student", 0, 0.93, temperature=4.0),
        row("kl-T4-a0.9", "student", 1, None, temperature=4.0, status="failed", error="CUDA OOM"),
        row("kl-T4-a0.9", "student", 2, 0.935, temperature=4.0),
        *baseline_rows(),
        row("kl-T2-a0.9", "student", 1, 0.96, temperature=2.0),
        # Student C: every seed failed.
        row("kl-T8-a0.9", "student", 0, None, temperature=8.0, status="failed", error="diverged"),
        row("kl-T8-a0.9", "student", 1, None, temperature=8.0, status="failed", error="diverged again"),
        row("kl-T2-a0.9", "student", 2, 0.97, temperature=2.0),
        teacher_row(),
        # Student D: mean 0.80, far below the baseline.
        row("kl-T1-a0.9", "student", 0, 0.80, temperature=1.0),
        row("kl-T1-a0.9", "student", 1, 0.80, temperature=1.0),
        row("kl-T1-a0.9", "student", 2, 0.80, temperature=1.0),
    ]


@pytest.fixture
def board() -> list[dict]:
    return leaderboard(rows_fixture())


def by_id(board: list[dict]) -> dict[str, dict]:
    return {e["config_id"]: e for e in board}


# --- leaderboard ---------------------------------------------------------------------------------


def test_order_teacher_baseline_then_students_by_mean_accuracy(board):
    assert [e["config_id"] for e in board] == [
        "teacher", "baseline", "kl-T2-a0.9", "kl-T4-a0.9", "kl-T1-a0.9", "kl-T8-a0.9"]


def test_mean_and_sample_std_over_three_seeds(board):
    e = by_id(board)
    assert e["baseline"]["seeds"] == 3 and e["baseline"]["failed"] == 0
    assert e["baseline"]["test_acc_mean"] == pytest.approx(0.92)
    assert e["baseline"]["test_acc_std"] == pytest.approx(0.02)  # sample (n-1), not population 0.01633
    assert e["kl-T2-a0.9"]["test_acc_mean"] == pytest.approx(0.96)
    assert e["kl-T2-a0.9"]["test_acc_std"] == pytest.approx(0.01)
    assert e["kl-T1-a0.9"]["test_acc_std"] == pytest.approx(0.0, abs=1e-12)
    # NLL was 1 - acc in every row, so its spread equals the accuracy's.
    assert e["kl-T2-a0.9"]["test_nll_mean"] == pytest.approx(0.04)
    assert e["kl-T2-a0.9"]["test_nll_std"] == pytest.approx(0.01)
    assert e["kl-T2-a0.9"]["agreement_mean"] == pytest.approx(0.96)


def test_single_seed_has_zero_std():
    b = leaderboard([teacher_row()])
    assert b[0]["test_acc_mean"] == pytest.approx(0.99)
    assert b[0]["test_acc_std"] == 0.0
    assert b[0]["agreement_mean"] == 1.0


def test_failed_runs_are_counted_and_excluded_from_the_mean(board):
    e = by_id(board)["kl-T4-a0.9"]
    assert e["seeds"] == 3 and e["failed"] == 1
    assert e["test_acc_mean"] == pytest.approx(0.9325)
    assert e["test_acc_std"] == pytest.approx(0.005 / math.sqrt(2))
    assert "error" not in e


def test_all_failed_config_has_nan_metrics_and_its_error(board):
    e = by_id(board)["kl-T8-a0.9"]
    assert e["seeds"] == 2 and e["failed"] == 2
    assert math.isnan(e["test_acc_mean"]) and math.isnan(e["test_acc_std"])
    assert e["error"] == "diverged"
    assert "gain_vs_baseline" not in e and "within_noise" not in e


def test_hyperparameters_and_params_are_carried(board):
    e = by_id(board)
    assert e["kl-T4-a0.9"]["temperature"] == 4.0 and e["kl-T4-a0.9"]["alpha"] == 0.9
    assert e["kl-T4-a0.9"]["loss"] == "kl" and e["kl-T4-a0.9"]["arch"] == "cnn"
    assert e["kl-T4-a0.9"]["params"] == 1000
    assert e["baseline"]["params"] == 900 and e["baseline"]["kind"] == "baseline"
    assert e["teacher"]["params"] == 50_000 and e["teacher"]["kind"] == "teacher"


def test_gain_and_within_noise(board):
    e = by_id(board)
    base_std = 0.02
    # A: gain 0.04 > hypot(0.01, 0.02) = 0.02236 -> a real gain.
    a = e["kl-T2-a0.9"]
    assert a["gain_vs_baseline"] == pytest.approx(0.04)
    assert math.sqrt(0.01**2 + base_std**2) == pytest.approx(0.0223607, rel=1e-5)
    assert a["within_noise"] is False
    # B: gain 0.0125 <= hypot(0.003536, 0.02) = 0.02031 -> within noise.
    b = e["kl-T4-a0.9"]
    assert b["gain_vs_baseline"] == pytest.approx(0.0125)
    assert b["within_noise"] is True
    # D: loses 0.12, far more than hypot(0, 0.02): not noise either way.
    d = e["kl-T1-a0.9"]
    assert d["gain_vs_baseline"] == pytest.approx(-0.12)
    assert d["within_noise"] is False
    for cid in ("teacher", "baseline"):
        assert "gain_vs_baseline" not in e[cid] and "within_noise" not in e[cid]


def _pair(base_accs: list[float], student_accs: list[float]) -> dict:
    rows = [row("baseline", "baseline", s, a, loss="hard", temperature=None, alpha=None)
            for s, a in enumerate(base_accs)]
    rows += [row("kl-T2-a0.9", "student", s, a) for s, a in enumerate(student_accs)]
    return by_id(leaderboard(rows))["kl-T2-a0.9"]


def test_within_noise_boundaries():
    # One seed on either side: the spread is unknown, so there is no verdict either way.
    assert _pair([0.5], [0.5])["within_noise"] is None
    assert _pair([0.5], [0.9, 0.91])["within_noise"] is None and _pair([0.5, 0.6], [0.9])["within_noise"] is None
    # Seeds that agree exactly: no spread at all; equal means are within noise, any difference is not.
    assert _pair([0.5, 0.5], [0.5, 0.5])["within_noise"] is True
    assert _pair([0.5, 0.5], [0.5 + 1e-9] * 2)["within_noise"] is False
    assert _pair([0.5, 0.5], [0.5 - 1e-9] * 2)["within_noise"] is False
    # Baseline [0.5, 0.5]: std 0. Student [0.25, 0.75]: sample std sqrt(2 * 0.25^2 / 1) = 0.35355.
    assert _pair([0.5, 0.5], [0.25, 0.75])["within_noise"] is True  # gain 0
    assert _pair([0.5, 0.5], [0.5, 1.0])["within_noise"] is True  # gain 0.25 <= 0.35355
    assert _pair([0.0, 0.0], [0.5, 0.75])["within_noise"] is False  # gain 0.625 > 0.17678
    # The spreads combine in quadrature, not by taking the larger one: baseline [0.4, 0.6] and
    # student [0.7, 0.9] each have std 0.14142; combined 0.2. Gain 0.3 > 0.2 -> not noise;
    # student [0.55, 0.75] (gain 0.15 > 0.14142 but <= 0.2) -> noise.
    assert _pair([0.4, 0.6], [0.7, 0.9])["within_noise"] is False
    assert _pair([0.4, 0.6], [0.55, 0.75])["within_noise"] is True


def test_no_baseline_means_no_gain():
    rows = [row("kl-T2-a0.9", "student", 0, 0.9)]
    e = leaderboard(rows)[0]
    assert "gain_vs_baseline" not in e and "within_noise" not in e


def test_order_does_not_depend_on_input_order():
    rows = rows_fixture()
    first = [e["config_id"] for e in leaderboard(rows)]
    assert [e["config_id"] for e in leaderboard(list(reversed(rows)))] == first


# --- markdown ------------------------------------------------------------------------------------


def test_markdown_contains_every_config_and_a_row_each(board):
    md = markdown(board)
    lines = md.splitlines()
    assert len(lines) == 2 + len(board)
    assert lines[0].startswith("| config |")
    for e, line in zip(board, lines[2:]):
        assert line.startswith(f"| {e['config_id']} |")
    assert "92.00 ± 2.00" in md  # baseline accuracy in percent
    assert "96.00 ± 1.00" in md
    assert "+4.00" in md and "+1.25 (noise)" in md and "-12.00" in md
    assert "3 (1 failed)" in md and "2 (2 failed)" in md
    assert "50,000" in md


def test_size_and_latency_columns():
    teacher = {**teacher_row(), "size_mb": 50_000 * 4 / 1e6, "size_mb_estimated": True, "latency_ms": None}
    rows = [teacher,
            *[row("baseline", "baseline", s, 0.9, loss="hard", temperature=None, alpha=None, params=900,
                  size_mb=0.0041, latency_ms=ms) for s, ms in enumerate([0.30, 0.10, 0.20])],
            row("kl-T2-a0.9", "student", 0, 0.95, size_mb=0.0041, latency_ms=0.25),
            row("kl-T2-a0.9", "student", 1, None, status="failed")]
    board = leaderboard(rows)
    e = by_id(board)
    assert e["baseline"]["latency_ms"] == pytest.approx(0.20)  # median over seeds
    assert e["kl-T2-a0.9"]["latency_ms"] == pytest.approx(0.25)  # failed seeds have no latency
    assert e["teacher"]["latency_ms"] is None and e["teacher"]["size_mb_estimated"] is True
    assert e["baseline"]["size_mb"] == 0.0041 and e["baseline"]["size_mb_estimated"] is False
    lines = markdown(board).splitlines()
    assert lines[0].endswith("| params | size MB | latency ms |")
    cells = {line.split(" | ")[0][2:]: [c.strip() for c in line.strip("| ").split(" | ")] for line in lines[2:]}
    assert cells["teacher"][-3:] == ["50,000", "≈0.2", "—"]  # estimated size, no latency
    assert cells["baseline"][-3:] == ["900", "0.0041", "0.2"]
    assert cells["kl-T2-a0.9"][-2:] == ["0.0041", "0.25"]
    assert all(len(c) == len(cells["teacher"]) for c in cells.values())


def test_ece_column_next_to_nll_mean_and_std_over_seeds():
    # Baseline ECE 0.02, 0.04, 0.06: mean 0.04, sample std 0.02. Teacher: one value, std 0.
    rows = [row("teacher", "teacher", 0, 0.99, loss="-", temperature=None, alpha=None, nll=0.05, ece=0.011),
            *[row("baseline", "baseline", s, 0.9, loss="hard", temperature=None, alpha=None, ece=e)
              for s, e in enumerate([0.02, 0.04, 0.06])],
            row("kl-T2-a0.9", "student", 0, 0.95, ece=0.03),
            row("kl-T2-a0.9", "student", 1, None, status="failed")]
    board = leaderboard(rows)
    e = by_id(board)
    assert e["baseline"]["test_ece_mean"] == pytest.approx(0.04)
    assert e["baseline"]["test_ece_std"] == pytest.approx(0.02)
    assert e["kl-T2-a0.9"]["test_ece_mean"] == pytest.approx(0.03)  # the failed seed has no ECE
    lines = markdown(board).splitlines()
    head = [c.strip() for c in lines[0].strip("| ").split(" | ")]
    assert head.index("test ECE") == head.index("test NLL") + 1
    cells = {line.split(" | ")[0][2:]: [c.strip() for c in line.strip("| ").split(" | ")] for line in lines[2:]}
    col = head.index("test ECE")
    assert cells["teacher"][col] == "0.011"  # one run: no spread shown
    assert cells["baseline"][col] == "0.040 ± 0.020"
    assert cells["kl-T2-a0.9"][col] == "0.030"  # one seed scored (the other failed)


def test_rows_without_ece_show_a_dash(board):
    # Reports written before ECE was recorded: the column reads "—" rather than failing.
    old = [{k: v for k, v in e.items() if not k.startswith("test_ece")} for e in board]
    line = next(x for x in markdown(old).splitlines() if x.startswith("| baseline |"))
    assert "| 0.080 ± 0.020 | — | 92.00 ± 2.00 |" in line


def test_rows_without_size_or_latency_show_dashes(board):
    line = next(x for x in markdown(board).splitlines() if x.startswith("| baseline |"))
    assert line.endswith("| 900 | — | — |")


# --- gap note ------------------------------------------------------------------------------------


def _board_with(teacher_acc: float, base_accs: list[float]) -> list[dict]:
    rows = [row("teacher", "teacher", 0, teacher_acc, loss="-", temperature=None, alpha=None)]
    rows += [row("baseline", "baseline", s, a, loss="hard", temperature=None, alpha=None)
             for s, a in enumerate(base_accs)]
    return leaderboard(rows)


def test_gap_note_for_the_make_distill_gap():
    # make distill on digits: teacher 100%, baseline 99.01% of 270 test images. Half the gap is 0.495
    # points = 1.34 images, under 2: too small to measure.
    board = _board_with(1.0, [0.9901 - 0.0021, 0.9901, 0.9901 + 0.0021])
    note = gap_note(board, 270)
    assert note is not None and "\n" not in note
    assert "0.99 points (2.7 of 270 test images)" in note
    assert "fewer than 2 test images" in note and "make fidelity" in note


def test_no_gap_note_for_a_measurable_gap():
    # Gap 6.67 points of 270 images: half of it is 9 images, and the baseline spread is 1 point.
    assert gap_note(_board_with(1.0, [0.9233, 0.9333, 0.9433]), 270) is None
    # The same gap without a known test size is judged on noise alone: still measurable.
    assert gap_note(_board_with(1.0, [0.9233, 0.9333, 0.9433]), None) is None


def test_gap_note_when_half_the_gap_is_within_seed_noise():
    # Gap 4 points (half: 2 points = 5.4 images) but the baseline spreads 0.80, 0.96, 0.92 -> std 0.0833;
    # sqrt(2) * 8.33 = 11.8 points of noise: within noise, whatever the test size.
    board = _board_with(0.93, [0.80, 0.96, 0.91])
    note = gap_note(board, 270)
    assert note is not None and "within the baseline's seed noise" in note
    # Just on the measurable side: half the gap (2.5 points) beats sqrt(2) * 1 point and is 6.75 images.
    assert gap_note(_board_with(0.98, [0.92, 0.93, 0.94]), 270) is None
    # Two images exactly for half the gap is measurable; just under is not (test split of 100 images).
    assert gap_note(_board_with(0.94, [0.90]), 100) is None
    assert gap_note(_board_with(0.9399, [0.90]), 100) is not None


def test_gap_note_when_the_baseline_matches_the_teacher():
    note = gap_note(_board_with(0.99, [0.99, 0.99]), 270)
    assert note is not None and "no gap" in note


def test_no_gap_note_without_teacher_or_baseline(board):
    assert gap_note([e for e in board if e["kind"] != "teacher"], 270) is None
    assert gap_note([e for e in board if e["kind"] != "baseline"], 270) is None


def test_leaderboard_text_is_the_table_then_the_note():
    board = _board_with(1.0, [0.99, 0.99])
    text = leaderboard_text({"meta": {"test_size": 270}, "leaderboard": board})
    table, note = text.split("\n\n")
    assert table == markdown(board) and " ".join(note.split()) == gap_note(board, 270)
    assert max(len(line) for line in note.splitlines()) <= 100 < len(gap_note(board, 270))  # wrapped, not one line
    measurable = _board_with(1.0, [0.90, 0.90])
    assert leaderboard_text({"meta": {"test_size": 270}, "leaderboard": measurable}) == markdown(measurable)


def test_a_narrow_terminal_drops_low_value_columns_and_wraps_the_note():
    report = {"meta": {"test_size": 270}, "leaderboard": leaderboard(rows_fixture())}
    wide = leaderboard_text(report)
    assert max(len(line) for line in wide.splitlines()) > 80  # every column: what report.md keeps
    assert leaderboard_text(report, width=500) == wide
    narrow = leaderboard_text(report, width=80).splitlines()
    assert max(len(line) for line in narrow) <= 80, "\n".join(narrow)
    head = [c.strip() for c in narrow[0].strip("| ").split(" | ")]
    assert head[:2] == ["config", "test acc %"] and "Δ vs base" in head and "latency ms" not in head
    assert "T" not in head and "loss" not in head  # the config id spells them: kl-T2-a0.9
    assert narrow[len(leaderboard(rows_fixture())) + 2].startswith("(not shown at this width: loss, T, α, β")
    # The note wraps to the width too.
    note = leaderboard_text({"meta": {"test_size": 270}, "leaderboard": _board_with(1.0, [0.99, 0.99])}, width=60)
    assert max(len(line) for line in note.split("\n\n")[1].splitlines()) <= 60


def test_a_single_seed_shows_no_spread_and_no_noise_verdict():
    rows = [teacher_row(), row("baseline", "baseline", 0, 0.90, loss="hard", temperature=None, alpha=None),
            row("kl-T2-a0.9", "student", 0, 0.905), row("kl-T4-a0.9", "student", 0, 0.95, temperature=4.0)]
    md = markdown(leaderboard(rows))
    assert "±" not in md and "(noise)" not in md
    assert "| 90.00 |" in md and "+0.50 |" in md and "+5.00 |" in md


def test_a_teacher_at_chance_is_warned_about_and_never_called_a_match():
    """33% on 3 classes with a test NLL of 22,997: the run that once read "the baseline already matches"."""
    rows = [row("teacher", "teacher", 0, 1 / 3, loss="-", temperature=None, alpha=None, nll=22997.0),
            *[row("baseline", "baseline", s, 0.40, loss="hard", temperature=None, alpha=None) for s in (0, 1)]]
    report = {"meta": {"test_size": 30, "num_classes": 3}, "leaderboard": leaderboard(rows)}
    text = leaderboard_text(report)
    note = " ".join(text.split("\n\n")[1].split())
    assert note.startswith("warning: the teacher is at chance level (33.33% on 3 classes, chance 33.33%; test NLL "
                           "2.3e+04)") and "matches" not in text and "no gap" not in text
    assert len(text.split("\n\n")) == 2  # one warning, no gap note besides
    # Within noise of chance counts too (2 standard errors of 1/3 over 30 images: 17.2 points), above it not.
    assert teacher_warning(acc=0.50, nll=1.0, num_classes=3, test_size=30) is not None
    assert teacher_warning(acc=0.52, nll=1.0, num_classes=3, test_size=30) is None
    # A non-finite NLL is a failed teacher whatever its accuracy; reports without a class count are not judged.
    assert "NLL is nan" in teacher_warning(acc=0.9, nll=math.nan, num_classes=10, test_size=300)
    assert teacher_warning(acc=1 / 3, nll=1.0, num_classes=None, test_size=30) is None


def test_a_latency_timed_on_a_busy_cpu_is_marked():
    rows = [teacher_row(), row("baseline", "baseline", 0, 0.9, loss="hard", temperature=None, alpha=None,
                               latency_ms=0.31)]
    rows[1]["latency_busy"] = True
    report = {"meta": {}, "leaderboard": leaderboard(rows)}
    text = leaderboard_text(report)
    assert "| 0.31? |" in text and "latency ms?: timed while the CPU was busy" in " ".join(text.split())
    rows[1]["latency_busy"] = False
    assert "?" not in leaderboard_text({"meta": {}, "leaderboard": leaderboard(rows)})


# --- write_report --------------------------------------------------------------------------------


def test_write_report_writes_json_markdown_and_png(tmp_path):
    rows = rows_fixture()
    run_dir = tmp_path / "reports" / "run-1"
    meta = {"store": "data/stores/x.zarr", "teacher": "cnn", "student": "cnn w4", "dataset": "digits"}
    paths = write_report(str(run_dir), rows, meta)

    assert set(paths) == {"json", "md", "plot"}
    assert paths["json"] == os.path.join(str(run_dir), "leaderboard.json")
    assert paths["md"] == os.path.join(str(run_dir), "report.md")

    with open(paths["json"]) as f:
        data = json.load(f)
    assert data["meta"] == meta
    assert data["runs"] == json.loads(json.dumps(rows))
    assert [e["config_id"] for e in data["leaderboard"]] == [e["config_id"] for e in leaderboard(rows)]
    base = next(e for e in data["leaderboard"] if e["config_id"] == "baseline")
    assert base["test_acc_mean"] == pytest.approx(0.92) and base["test_acc_std"] == pytest.approx(0.02)

    md = open(paths["md"]).read()
    assert md.startswith("# Distillation report: run-1")
    assert "data/stores/x.zarr" in md
    for cid in ("teacher", "baseline", "kl-T2-a0.9", "kl-T4-a0.9", "kl-T8-a0.9", "kl-T1-a0.9"):
        assert f"| {cid} |" in md
    assert "## Failed runs" in md
    for r in rows:
        if r["status"] != "ok":
            assert f"`{r['run_id']}`: {r['error']}" in md
    assert "accuracy_vs_temperature.png" in md
    assert "note:" not in md  # no test size in meta, and the 7-point gap beats the baseline's noise

    png = run_dir / "accuracy_vs_temperature.png"
    assert paths["plot"] == str(png)
    content = png.read_bytes()
    assert len(content) > 1000
    assert content[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_report_puts_the_gap_note_under_the_table(tmp_path):
    rows = [row("teacher", "teacher", 0, 1.0, loss="-", temperature=None, alpha=None),
            *[row("baseline", "baseline", s, 0.99, loss="hard", temperature=None, alpha=None) for s in range(2)]]
    md = open(write_report(str(tmp_path / "r"), rows, {"test_size": 270})["md"]).read()
    table = markdown(leaderboard(rows))
    assert md.index(table) + len(table) < md.index("note: the teacher–baseline gap is 1.00 points") < md.index("![")


def test_write_report_without_failures_has_no_failed_section(tmp_path):
    rows = [teacher_row(), *baseline_rows(), row("kl-T2-a0.9", "student", 0, 0.95)]
    paths = write_report(str(tmp_path / "r"), rows, {})
    md = open(paths["md"]).read()
    assert "Failed runs" not in md
    assert "note:" not in md  # teacher 99% vs baseline 92 ± 2%: a measurable gap
    assert os.path.getsize(paths["plot"]) > 0


# --- losses that ignore T, atomic writes -------------------------------------------------------------


def test_a_loss_that_ignores_t_shows_a_dash_and_is_plotted(tmp_path):
    rows = [teacher_row(), *baseline_rows(), row("kl-T2-a0.9", "student", 0, 0.95),
            row("mse-a0.9", "student", 0, 0.94, loss="mse", temperature=None)]
    paths = write_report(str(tmp_path / "r"), rows, {})
    line = next(ln for ln in markdown(leaderboard(rows)).splitlines() if ln.startswith("| mse-a0.9 |"))
    assert line.startswith("| mse-a0.9 | mse | — | 0.9 | — | 94.00 |")  # one seed: no spread
    assert open(paths["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


FULL_DISK = """
import json, resource, signal, sys
from pipeline.report import write_report
run_dir, limit = sys.argv[1], int(sys.argv[2])
rows = json.load(open(run_dir + "/leaderboard.json"))["runs"]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, like ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
write_report(run_dir, rows, {"store": "x" * 4 * limit})  # leaderboard.json grows past the limit
"""


@pytest.mark.slow
def test_a_write_cut_off_by_a_full_disk_leaves_the_previous_report(tmp_path):
    """A real write failure (a file-size limit in a child process, no mocking): every report file is the
    previous one or the whole new one, and no temporary file is left behind."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    rows = [teacher_row(), *baseline_rows(), row("kl-T2-a0.9", "student", 0, 0.95)]
    write_report(str(run_dir), rows, {"store": "first"})
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    limit = 200_000  # above the plot and report.md, below the new leaderboard.json
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(run_dir), str(limit)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": root})
    assert proc.returncode != 0 and "File too large" in proc.stderr, proc.stderr[-2000:]
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(before)  # no temporary file left
    assert (run_dir / "leaderboard.json").read_bytes() == before["leaderboard.json"]
    assert json.loads((run_dir / "leaderboard.json").read_text())["meta"] == {"store": "first"}


# --- several label-only students (a store with teacher views) --------------------------------------


def views_store_rows(*, plain_val: tuple[float, ...] = (0.97, 0.96), nomix_val: tuple[float, ...] = (0.95, 0.95)
                     ) -> list[dict]:
    """The patient-like case: the recipe's baseline (mixed views) is weak; the plain recipe and the unmixed views
    are label-only students too. Test accuracies are chosen so that test and val disagree on which is best."""
    def label_only(config_id: str, accs, vals, data: str | None) -> list[dict]:
        out = []
        for s, (a, v) in enumerate(zip(accs, vals)):
            r = row(config_id, "baseline", s, a, loss="hard", temperature=None, alpha=None)
            r["val_acc"] = v
            if data is not None:
                r["data"] = data
            out.append(r)
        return out

    return [teacher_row(),
            *label_only("baseline", (0.93, 0.94), (0.93, 0.94), None),
            *label_only("baseline-plain", (0.96, 0.962), plain_val, "plain"),
            *label_only("baseline-nomix", (0.97, 0.97), nomix_val, "nomix"),  # best on test, not on val
            row("kl-T2-a1", "student", 0, 0.966, temperature=2.0, alpha=1.0),
            row("kl-T2-a1", "student", 1, 0.968, temperature=2.0, alpha=1.0)]


def test_with_several_label_only_students_the_base_is_the_best_on_val_never_on_test():
    board = leaderboard(views_store_rows())
    e = {x["config_id"]: x for x in board}
    assert [x["config_id"] for x in board if x["kind"] == "baseline"] == ["baseline-nomix", "baseline-plain",
                                                                          "baseline"]
    assert e["baseline-plain"]["reference"] is True  # val 0.965 beats nomix's 0.95, whatever test says
    assert not any(x.get("reference") for x in board if x["config_id"] != "baseline-plain")
    assert e["baseline-plain"]["val_acc_mean"] == pytest.approx(0.965)
    assert e["kl-T2-a1"]["gain_vs_baseline"] == pytest.approx(0.967 - 0.961)
    assert e["baseline"]["gain_vs_baseline"] == pytest.approx(0.935 - 0.961)  # the recipe's own, against the base
    assert e["baseline-nomix"]["gain_vs_baseline"] == pytest.approx(0.97 - 0.961)
    # The noise flag is against the chosen base: hypot(std_student, std_plain).
    noise = math.hypot(e["kl-T2-a1"]["test_acc_std"], e["baseline-plain"]["test_acc_std"])
    assert e["kl-T2-a1"]["within_noise"] is (abs(0.967 - 0.961) <= noise)
    cells = {r[0]: r for r in [line.split(" | ") for line in markdown(board).splitlines()[2:]]}
    assert cells["| baseline-plain"][9] == "base"
    # When val favours the unmixed views, they are the base.
    flipped = {x["config_id"]: x for x in leaderboard(views_store_rows(nomix_val=(0.99, 0.98)))}
    assert flipped["baseline-nomix"].get("reference") and flipped["kl-T2-a1"]["gain_vs_baseline"] == \
        pytest.approx(0.967 - 0.97)


def test_the_note_says_which_label_only_student_is_the_base(tmp_path):
    paths = write_report(str(tmp_path / "r"), views_store_rows(), {"num_classes": 10, "test_size": 500})
    md = open(paths["md"]).read()
    assert "Δ vs base: against baseline-plain, the best label-only student on val (val acc %: baseline-plain " \
           "96.50 ± 0.71, baseline-nomix 95.00 ± 0.00, baseline 93.50 ± 0.71)" in md
    assert "baseline-plain: the clean view 0 alone (the plain recipe)" in md
    text = leaderboard_text(json.load(open(paths["json"])), width=200)
    assert "Δ vs base: against baseline-plain" in text
    # The gap note measures the teacher against the chosen base too: 0.99 - 0.961, whose half moves 1.45 of 100
    # test images (against the recipe's own baseline, 0.935, it would move 2.75: no note).
    assert "the teacher–baseline gap is 2.90 points (2.9 of 100 test images)" in gap_note(
        leaderboard(views_store_rows()), 100)


def test_one_baseline_has_no_choice_to_note_and_no_new_fields():
    """A store without views (one label-only student per lr): today's leaderboard, key for key."""
    board = leaderboard(rows_fixture() + [row("baseline-lr0.1", "baseline", 0, 0.99, loss="hard", temperature=None,
                                              alpha=None)])
    assert not any("reference" in e or "data" in e for e in board)
    e = {x["config_id"]: x for x in board}
    assert e["kl-T2-a0.9"]["gain_vs_baseline"] == pytest.approx(0.04)  # against the first baseline, as before
    assert "gain_vs_baseline" not in e["baseline-lr0.1"]
    assert "Δ vs base" not in leaderboard_text({"leaderboard": board, "meta": {}}).split("\n\n", 1)[-1]


def test_the_header_says_how_many_train_rows_were_labelled(tmp_path):
    rows = [teacher_row(), *baseline_rows(), row("kl-T2-a0.9", "student", 0, 0.95)]
    meta = {"test_size": 270, "labelled": 50, "unlabelled": 250}
    md = open(write_report(str(tmp_path / "r"), rows, meta)["md"]).read()
    assert "- train rows: 50 labelled, 250 unlabelled (students: all of them" in md and "baseline: the 50" in md
    assert "train rows: 50 labelled, 250 unlabelled" in leaderboard_text({"meta": meta,
                                                                          "leaderboard": leaderboard(rows)})
    every = {"test_size": 270, "labelled": 300, "unlabelled": 0}
    assert "- train rows: 300, every one labelled" in open(write_report(str(tmp_path / "s"), rows, every)["md"]).read()
    assert "train rows" not in leaderboard_text({"meta": every, "leaderboard": leaderboard(rows)})  # as before


def _with_val(r: dict, val: float) -> dict:
    return {**r, "val_acc": val} if r["status"] == "ok" else r


def test_the_share_of_the_gap_closed_by_the_best_student_on_val_is_noted():
    from pipeline.report import notes, share_note

    rows = [_with_val(row("teacher", "teacher", 0, 1.0, loss="-", temperature=None, alpha=None), 1.0)]
    rows += [_with_val(row("baseline", "baseline", s, a, loss="hard", temperature=None, alpha=None), 0.8)
             for s, a in enumerate((0.79, 0.80, 0.81))]
    # kl-T4 is best on test (0.97) but kl-T2 on val: the note reports kl-T2, chosen on val.
    rows += [_with_val(row("kl-T2-a0.9", "student", s, a), 0.99) for s, a in enumerate((0.94, 0.95, 0.96))]
    rows += [_with_val(row("kl-T4-a0.9", "student", s, a, temperature=4.0), 0.90) for s, a in enumerate((0.97,) * 3)]
    board = leaderboard(rows)
    # Gap 1.00 - 0.80 = 20 points; kl-T2 gains 15 (0.95 - 0.80): 75% of it, beyond hypot(0.01, 0.01).
    note = share_note(board)
    assert note == ("note: the best student on val, kl-T2-a0.9, closes 75% of the 20.00-point teacher–baseline gap "
                    "(+15.00 points, beyond the combined seed spread (±1.41)).")
    assert note in notes({"leaderboard": board, "meta": {"test_size": 270, "num_classes": 10}})
    # Within noise: said so.
    rows = [r if r["config_id"] != "kl-T2-a0.9" else {**r, "test_acc": 0.80 + 0.02 * (r["seed"] - 1) + 0.005}
            for r in rows]
    assert "within the combined seed spread" in share_note(leaderboard(rows))
    # No gap (the baseline matches the teacher): no share.
    assert share_note(leaderboard([r if r["kind"] != "teacher" else {**r, "test_acc": 0.8} for r in rows])) is None
