"""Errors the user can act on are one line through the `kd` binary, whatever raised them: a full disk (for the
teacher's checkpoint, its store, a student's checkpoint or the report), never Prefect's tracebacks or a
repetition of the line. Real `kd` processes against the session's Prefect server; the full disk is a real
one for the process, a file-size limit (RLIMIT_FSIZE), under which a write fails with EFBIG as on ENOSPC."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import flows

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

KD = os.path.join(os.path.dirname(sys.executable), "kd")
LIMITED = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # ignored across exec: a write past the limit fails with EFBIG
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
os.execv(sys.argv[2], sys.argv[2:])
"""


def kd(*argv: str, file_limit: int | None = None) -> subprocess.CompletedProcess:
    """`kd ARGV` in a fresh process (with every file it writes limited to ``file_limit`` bytes)."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k != flows.CONSOLE_LEVEL}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    cmd = [KD, *argv] if file_limit is None else [sys.executable, "-c", LIMITED, str(file_limit), KD, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def one_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The command's one error line: no traceback, and no other line repeating it (Prefect's failed states).
    Other lines may precede it: `starting: …`, and a warning such as a busy CPU's about the latency."""
    assert proc.returncode == code, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    problem = errors[0].split(": ", 2)[2][:60]
    assert proc.stderr.count(problem) == 1, proc.stderr[-3000:]
    return errors[0]


def files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def teacher_argv(root) -> list[str]:
    return ["teacher", "--epochs", "1", "--width", "8", "--store-root", f"{root}/stores", "--checkpoint-root",
            f"{root}/ckpt", "--device", "cpu", "--encoding", "float32"]


def test_a_full_disk_is_one_line_for_the_teachers_checkpoint_and_its_store(tmp_path):
    # The checkpoint (about 20 KB) does not fit: one line naming it and --checkpoint-root; nothing left behind.
    err = one_line(kd(*teacher_argv(tmp_path), file_limit=4000))
    assert err.startswith(f"error: checkpoint_root: no space left writing {tmp_path}/ckpt/digits-cnn-"), err
    assert "--checkpoint-root" in err and "run the same command again" in err
    assert not any(f.endswith(".tmp") for f in files(tmp_path)), files(tmp_path)
    assert not (tmp_path / "stores").exists() or not any(f.endswith(".zarr") for f in os.listdir(tmp_path / "stores"))
    # The checkpoint fits, the store's logits do not: one line naming --store-root; nothing published.
    err = one_line(kd(*teacher_argv(tmp_path), file_limit=30_000))
    assert err.startswith("error: store_root: no space left writing "), err
    assert not any(f.endswith(".zarr") for f in os.listdir(tmp_path / "stores"))
    # With room, the same command finishes (resuming the unfinished copy).
    proc = kd(*teacher_argv(tmp_path))
    assert proc.returncode == 0 and proc.stdout.startswith("store: "), proc.stderr[-3000:]


def test_a_full_disk_is_one_line_for_the_report_and_a_students_checkpoint(digits_store, tmp_path):
    argv = ["distill", "--store", digits_store, "--epochs", "1", "--width", "4", "--temperatures", "4",
            "--report-root", str(tmp_path), "--run-name", "r", "--device", "cpu"]
    # The students' checkpoints (a few KB) fit, the report's plot does not.
    err = one_line(kd(*argv, file_limit=12_000))
    assert err.startswith(f"error: report_root: no space left writing {tmp_path}/r/"), err
    assert "--report-root" in err
    left = files(tmp_path / "r")
    assert "leaderboard.json" not in left and not any(f.endswith(".tmp") for f in left), left
    # No checkpoint fits either: the students fail (a data or I/O error), and so does the report, in one line.
    err = one_line(kd(*argv, file_limit=1000))
    assert err.startswith("error: report_root: no space left writing "), err
    assert not any(f.endswith(".tmp") for f in files(tmp_path / "r")), files(tmp_path / "r")
