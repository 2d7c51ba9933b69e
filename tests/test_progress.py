"""flows/progress.py: what a terminal shows of the running tasks' bars, drawn by tqdm as it draws them."""
from __future__ import annotations

import io
import sys

from flows.progress import describe, open_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(output: str) -> list[str]:
    """The lines a terminal shows after ``output``: carriage return, newline, cursor up (ESC [ A) and erase to
    the end of the line (ESC [ K), the only controls tqdm and close_bar write."""
    lines, row, col, i = [[]], 0, 0, 0
    while i < len(output):
        if output.startswith("\x1b[A", i):
            row, i = max(row - 1, 0), i + 3
            continue
        if output.startswith("\x1b[K", i):
            del lines[row][col:]
            i += 3
            continue
        ch = output[i]
        i += 1
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
            while len(lines) <= row:
                lines.append([])
        else:
            line = lines[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = ch
            col += 1
    return [text for text in ("".join(line).rstrip() for line in lines) if text]


def test_finished_bars_leave_nothing_on_screen(monkeypatch, tmp_path):
    """Three tasks' bars, then the teacher's logits pass: when each is done, nothing of it stays on screen."""
    from tests.conftest import build_store

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    bars = [open_bar(name) for name in ("teacher", "seed 0: 5 students", "seed 1: 5 students")]
    for bar in bars:
        bar.total = 10
        bar.update(3)
    assert [line.split(":")[0] for line in screen(term.getvalue())] == ["teacher", "seed 0", "seed 1"]
    bars[1].close()
    bars[0].close()
    bars[2].update(1)
    bars[2].refresh()
    shown = screen(term.getvalue())
    assert len(shown) == 1 and shown[0].startswith("seed 1: 5 students:") and "4/10" in shown[0], shown
    bars[2].close()
    assert screen(term.getvalue()) == []
    # The teacher pass that writes the store draws its own bar ("teacher logits"), which stayed at 100%.
    build_store(str(tmp_path))
    assert "teacher logits" in term.getvalue() and screen(term.getvalue()) == []


def test_an_epoch_reads_in_words_and_percent():
    assert describe({"best_val_acc": 0.97222, "training": 5, "trainees": 5}) == \
        "best val acc 97.22%, 5 of 5 students training"
    assert describe({"best_val_acc": 0.5, "training": 1, "trainees": 1}) == "best val acc 50.00%"  # the teacher
