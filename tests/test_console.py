"""What `kd run` prints: the leaderboard and `report:`, not Prefect's INFO lines, unless --verbose.

The runs are real `kd` processes, as `make distill` starts them, against the session's Prefect server
(so no temporary server starts per run). Their stderr is a pipe, not a terminal: no progress bars.
"""
from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from datetime import UTC, datetime

import numpy as np
import pytest

import flows

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

KD = os.path.join(os.path.dirname(sys.executable), "kd")
MAX_LINES = 60
EPOCHS = 3
# --group-size 1: one student per task, so each task's log lines name one student (the default groups a seed's).
GRID = ("--seeds", "0", "1", "--temperatures", "2", "4", "--student-epochs", str(EPOCHS), "--group-size", "1")
TASKS = [f"{c}-s{s}" for c in ("baseline", "kl-T2-a0.9", "kl-T4-a0.9") for s in (0, 1)]  # one student each


def _kd_run(root: str, name: str, *extra: str, columns: int | None = None) -> list[str]:
    """`kd run` on 300 digits in a fresh process; its stdout and stderr lines, interleaved. ``columns``: the
    terminal width it is told (COLUMNS), else none (a pipe)."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k not in (flows.CONSOLE_LEVEL, "COLUMNS")}  # the CLI's defaults
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    if columns is not None:
        env["COLUMNS"] = str(columns)
    argv = [KD, "run", "--epochs", "1", "--train-limit", "300", "--width", "8", "--student-width", "4", *GRID,
            "--store-root", f"{root}/stores", "--checkpoint-root", f"{root}/ckpt", "--report-root",
            f"{root}/reports", "--run-name", name, "--device", "cpu", *extra]
    proc = subprocess.run(argv, check=False, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout.splitlines()


async def _logged_between(start: datetime, end: datetime) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTimestamp

    async with get_client() as client:
        logs = await client.read_logs(log_filter=LogFilter(timestamp=LogFilterTimestamp(after_=start, before_=end)),
                                      limit=200)
    return [log.message for log in logs]


def test_default_run_prints_the_leaderboard_and_verbose_brings_prefect_lines_back(tmp_path):
    root = str(tmp_path)
    start = datetime.now(UTC)
    quiet = _kd_run(root, "quiet", columns=80)
    end = datetime.now(UTC)
    assert len(quiet) <= MAX_LINES, "\n".join(quiet)
    assert not [line for line in quiet if " | INFO " in line or " epoch " in line], "\n".join(quiet)
    assert quiet[-1] == f"report: {root}/reports/quiet"
    # At once, before Prefect starts, one line says what runs; --epochs is the teacher's and the students'.
    assert quiet[0] == "starting: teacher cnn on digits (1 epoch), then 6 cnn students (3 epochs)", quiet[0]
    # Fitted to an 80-column terminal: every line of the table and the notes under it.
    after = quiet[quiet.index(next(line for line in quiet if line.startswith("| config |"))):-1]
    assert max(len(line) for line in after) <= 80, "\n".join(after)
    table = [line for line in quiet if line.startswith("| ")]
    configs = [line.split(" | ")[0].removeprefix("| ") for line in table[1:]]  # after the header
    assert table[0].startswith("| config |") and configs[:2] == ["teacher", "baseline"]
    assert sorted(configs[2:]) == ["kl-T2-a0.9", "kl-T4-a0.9"]  # students, by accuracy
    # Only the console is quiet: Prefect's backend (the UI's logs) still has every task's epochs.
    logged = asyncio.run(_logged_between(start, end))
    for task in TASKS:
        assert len([m for m in logged if m.startswith(f"{task} epoch ")]) == EPOCHS, task

    loud = _kd_run(root, "loud", "--verbose")
    assert sum("Finished in state Completed()" in line for line in loud) >= len(TASKS)
    for task in TASKS:
        epochs = [line for line in loud if f"| INFO    | Task run 'students[{task}]' - {task} epoch " in line]
        assert len(epochs) == EPOCHS, task
    assert loud[-1] == f"report: {root}/reports/loud"


def test_progress_bar_only_on_a_terminal(monkeypatch):
    """One bar per running task on a terminal, cleared when the task ends; nothing at all otherwise."""
    from prefect import flow, task

    from flows.progress import reporter

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    @task
    def train(label: str) -> None:
        with reporter(label) as progress:
            for epoch in (1, 2, 3):
                progress(label, epoch, 3, {"best_val_acc": 0.5 * epoch / 3, "training": 4, "trainees": 5})

    @flow
    def run(label: str) -> None:
        train(label)

    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        run("seed 0: 5 students")
        monkeypatch.undo()
        out = stream.getvalue()
        if not shown:
            assert out == ""
            continue
        # Accuracy in percent, as in the leaderboard; how many of the group still train, in words.
        assert "seed 0: 5 students:" in out and "3/3" in out
        assert "best val acc 50.00%, 4 of 5 students training" in out
        assert out.rstrip(" ").endswith("\r")  # leave=False: the finished bar is erased


def test_verbose_in_process_changes_only_the_console_level():
    """`main([..., "--verbose"])` in a process whose Prefect logging is already set up (as here)."""
    import logging

    from prefect.logging.handlers import APILogHandler, PrefectConsoleHandler

    from flows import console

    def levels() -> tuple[set[int], set[int]]:
        root = logging.getLogger().handlers
        api = logging.getLogger("prefect.task_runs").handlers
        return ({h.level for h in root if isinstance(h, PrefectConsoleHandler)},
                {h.level for h in api if isinstance(h, APILogHandler)})

    try:
        console.apply(console.ConsoleConfig(verbose=True))
        assert levels() == ({logging.NOTSET}, {logging.NOTSET})
    finally:
        console.apply(console.ConsoleConfig())
    quiet = logging.getLevelName(flows.QUIET_LEVEL)  # WARNING, unless the environment set another
    assert levels() == ({quiet}, {logging.NOTSET})  # the API still gets every INFO line


def test_an_unreadable_image_met_inside_a_task_is_one_line(tmp_path):
    """A JPEG cut off after its header passes the checks before Prefect starts (they read headers only) and
    fails in the teacher's training task: Prefect's tracebacks of it (the task's, the flow's) and the failed
    state stay off the console, which shows the command's one line; exit 2, nothing written. The API still
    gets the records (the UI shows the traceback)."""
    from PIL import Image
    from prefect.settings import PREFECT_API_URL

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "f" / cls).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "f" / cls / f"{i}.jpg")
    broken = tmp_path / "f" / "a" / "3.jpg"
    broken.write_bytes(broken.read_bytes()[: len(broken.read_bytes()) * 6 // 10])
    env = {k: v for k, v in os.environ.items() if k != flows.CONSOLE_LEVEL}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    # --image-size: no header is read before Prefect starts (at native size every header is, and this one fails)
    argv = [KD, "teacher", "--dataset", f"imagefolder:{tmp_path / 'f'}", "--image-size", "16", "--epochs", "1",
            "--width", "4",
            "--store-root", str(tmp_path / "stores"), "--checkpoint-root", str(tmp_path / "ckpt"), "--device", "cpu"]
    proc = subprocess.run(argv, check=False, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 2, proc.stdout[-3000:]
    # The line saying what starts (printed before Prefect does), then the error alone.
    assert lines[0] == f"starting: teacher cnn on imagefolder:{tmp_path / 'f'} (1 epoch)", proc.stdout[-3000:]
    assert len(lines) == 2 and lines[1].startswith("error: dataset: cannot decode image a/3.jpg ("), proc.stdout[-3000:]
    assert not (tmp_path / "stores").exists() and not (tmp_path / "ckpt").exists()
