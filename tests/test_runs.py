"""Report folders: a finished run is reused only when identical, a live run holds its folder, and a
folder without a valid leaderboard.json is an unfinished run."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from flows.cli import main
from pipeline import distill, locks, runs
from pipeline.config import DataConfig, DistillConfig, ModelConfig
from pipeline.errors import UserError
from pipeline.report import write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_ROW = {"run_id": "teacher", "config_id": "teacher", "kind": "teacher", "arch": "cnn", "loss": "-",
               "temperature": None, "alpha": None, "beta": None, "seed": 0, "status": "ok", "test_acc": 0.9,
               "test_nll": 0.3, "agreement": 1.0, "params": 10}


def _cfg(tmp_path, **kw) -> DistillConfig:
    return DistillConfig(store="s.zarr", report_root=str(tmp_path), run_name="fixed", temperatures=(4.0,), **kw)


def _finish(cfg: DistillConfig, key: str = "key-1") -> str:
    """A finished run of ``cfg`` on the store with provenance ``key``, as the distill flow records it."""
    path = runs.run_dir(cfg)
    write_report(path, [TEACHER_ROW], runs.run_identity(cfg, data_cfg=DataConfig(), provenance_key=key))
    return path


def _identity(cfg: DistillConfig, key: str | None = "key-1") -> dict:
    return runs.run_identity(cfg, data_cfg=DataConfig(), provenance_key=key)


# ---------------------------------------------------------------- library level


def test_a_finished_run_is_reused_only_when_config_and_store_match(tmp_path):
    cfg = _cfg(tmp_path)
    path = _finish(cfg)
    assert runs.finished_run(path, _identity(cfg)) == path
    # Where and how fast it runs is not what it trains.
    fast = _cfg(tmp_path, device="cpu", workers=2, cache_mb=1.0, storage_options={"anon": True})
    assert runs.finished_run(path, _identity(fast)) == path
    assert runs.finished_run(path, _identity(cfg, key=None)) == path  # store not known yet: config alone

    for other, field in ((_cfg(tmp_path, model=ModelConfig(arch="cnn", width=16)), "model.width"),
                         (DistillConfig(store="s.zarr", report_root=str(tmp_path), run_name="fixed",
                                        temperatures=(2.0,)), "temperatures"),
                         (_cfg(tmp_path, seeds=(0, 1)), "seeds")):
        with pytest.raises(UserError) as e:
            runs.finished_run(path, _identity(other))
        assert e.value.field == field and path in e.value.problem and "--run-name" in e.value.fix
    with pytest.raises(UserError) as e:
        runs.finished_run(path, _identity(cfg, key="key-2"))
    assert e.value.field == "run_name" and "another store" in e.value.problem
    with pytest.raises(UserError) as e:  # the data really trained on, even when given explicitly
        runs.finished_run(path, runs.run_identity(cfg, data_cfg=DataConfig(train_limit=300),
                                                        provenance_key="key-1"))
    assert e.value.field == "data.train_limit"


def test_a_folder_without_a_valid_leaderboard_is_an_unfinished_run(tmp_path):
    cfg = _cfg(tmp_path)
    path = _finish(cfg)
    board = os.path.join(path, "leaderboard.json")
    text = open(board).read()
    open(board, "w").write(text[: len(text) // 2])  # truncated, as a full disk used to leave it
    assert runs.finished_run(path, _identity(cfg)) is None
    os.remove(board)
    assert runs.finished_run(path, _identity(cfg)) is None
    # A report from before runs recorded their config cannot be proven identical: refused, not reused.
    write_report(path, [TEACHER_ROW], {"store": "s.zarr"})
    with pytest.raises(UserError, match="does not record its config"):
        runs.finished_run(path, _identity(cfg))


# ---------------------------------------------------------------- through the CLI


def _kd(*argv: str) -> list[str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(list(argv))
    return buf.getvalue().strip().splitlines()


def _kd_fails(*argv: str) -> str:
    """The one stderr line of a `kd` refusal (exit 2). (Not capsys: see tests/test_flows.py.)"""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        main(list(argv))
    text = err.getvalue()
    assert e.value.code == 2 and text.count("\n") == 1 and text.startswith("error: "), text
    assert "Traceback" not in text
    return text.strip()


def _snapshot(*folders: str) -> dict:
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for folder in folders for d, _, files in os.walk(folder) for f in files}


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_kd_run_refuses_a_finished_run_with_another_grid_before_any_work(tmp_path):
    root = str(tmp_path)
    common = ("run", "--epochs", "1", "--train-limit", "300", "--student-epochs", "1", "--width", "8",
              "--device", "cpu", "--store-root", f"{root}/stores", "--checkpoint-root", f"{root}/ckpt",
              "--report-root", f"{root}/reports", "--run-name", "fixed")
    first = _kd(*common, "--temperatures", "4")
    assert first[-1] == f"report: {root}/reports/fixed"
    before = _snapshot(root)
    err = _kd_fails(*common, "--temperatures", "2", "--student-width", "16")
    assert err.startswith(f"error: model.width: {root}/reports/fixed holds a finished run with model.width 8, "
                          "this run asks for 16")
    assert _kd_fails(*common, "--temperatures", "2").startswith("error: --temperatures (students): ")
    # Another teacher (so another store) for the same folder: refused before that teacher trains.
    assert "another store" in _kd_fails(*common, "--temperatures", "4", "--seed", "1")
    assert _snapshot(root) == before  # nothing trained, written or replaced
    assert _kd(*common, "--temperatures", "4") == first  # the identical run is reused, not retrained
    # How students are scheduled is not what they learn: another group size or batching mode reuses it too.
    assert _kd(*common, "--temperatures", "4", "--group-size", "1", "--batch", "off") == first
    assert _snapshot(root) == before


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_truncated_leaderboard_is_rerun_not_a_crash(digits_store, tmp_path):
    argv = ("distill", "--store", digits_store, "--epochs", "1", "--width", "4", "--temperatures", "4",
            "--report-root", str(tmp_path), "--run-name", "cut", "--device", "cpu")
    os.makedirs(tmp_path / "cut")
    (tmp_path / "cut" / "leaderboard.json").write_text('{"meta": {"store": "')  # a write cut off by a full disk
    assert _kd(*argv)[-1] == f"report: {tmp_path}/cut"
    data = json.loads((tmp_path / "cut" / "leaderboard.json").read_text())
    assert [r["run_id"] for r in data["runs"]] == ["teacher", "baseline-s0", "kl-T4-a0.9-s0"]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_two_processes_with_one_run_name_the_second_is_refused(digits_store, tmp_path):
    """Two real `kd distill` processes on one --run-name: the second is refused in one line while the first
    holds the folder (stopped with SIGSTOP, so the overlap does not depend on timing); the first finishes."""
    import prefect.settings

    kd = os.path.join(os.path.dirname(sys.executable), "kd")
    argv = [kd, "distill", "--store", digits_store, "--epochs", "1", "--width", "4", "--temperatures", "4",
            "--report-root", str(tmp_path), "--run-name", "same", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    api = prefect.settings.PREFECT_API_URL.value()
    if api:  # the test harness's server: the first process need not start its own
        env["PREFECT_API_URL"] = api
    lock = tmp_path / "same" / locks.LOCK
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 300
        while not lock.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert lock.exists(), first.communicate()[1][-3000:]
        os.kill(first.pid, signal.SIGSTOP)
        try:
            second = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr[-3000:]
    assert second.stderr.startswith(f"error: run_name: {tmp_path}/same is in use by another run (pid {first.pid} ")
    assert first.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == f"report: {tmp_path}/same"
    data = json.loads((tmp_path / "same" / "leaderboard.json").read_text())
    assert [r["status"] for r in data["runs"]] == ["ok", "ok", "ok"]
    assert not lock.exists()


def _kd_process(*argv: str) -> subprocess.CompletedProcess:
    """`kd ARGV` in its own process (what the console shows), against the session's Prefect server."""
    import prefect.settings

    env = {**os.environ, "PYTHONPATH": ROOT, "PREFECT_API_URL": prefect.settings.PREFECT_API_URL.value()}
    kd = os.path.join(os.path.dirname(sys.executable), "kd")
    return subprocess.run([kd, *argv], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_students_failed_by_a_data_error_are_retrained_by_the_same_command_and_only_they(store_copy, tmp_path):
    """A chunk found corrupt mid-training (streamed: --cache-mb 0) fails every student: exit 1 in one line, and
    the report says which failed and why. Once the chunk is restored, the same command retrains them. A run
    where one student failed from such an error and one diverged retrains the first only, keeping the trained
    student's checkpoint untouched and the divergence as a result."""
    from tests.conftest import flip_byte, shard_file

    argv = ("distill", "--store", store_copy, "--epochs", "1", "--width", "4", "--temperatures", "2", "4",
            "--report-root", str(tmp_path), "--run-name", "r", "--device", "cpu", "--cache-mb", "0")
    run, chunk = tmp_path / "r", shard_file(store_copy)
    good = open(chunk, "rb").read()
    flip_byte(chunk)
    first = _kd_process(*argv)
    assert first.returncode == 1 and first.stdout == "", first.stderr[-3000:]
    said = [line for line in first.stderr.splitlines() if line.startswith("error: ")]  # (and `starting: …`)
    assert len(said) == 1 and said[0].startswith("error: run failed: every student failed ("), first.stderr
    assert "Traceback" not in first.stderr and first.stderr.count("is corrupt") == 1, first.stderr
    assert "is corrupt" in said[0] and "only the students that failed from it are retrained" in said[0]
    runs = json.loads((run / "leaderboard.json").read_text())["runs"]
    assert [(r["status"], r.get("retry")) for r in runs[1:]] == [("failed", True)] * 3
    assert "is corrupt" in runs[1]["error"]
    assert "rerunning the same command retrains it" in (run / "report.md").read_text()

    open(chunk, "wb").write(good)  # the data fixed: the same command completes the run
    second = _kd_process(*argv)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.splitlines()[0] == (f"completing the unfinished run in {run}: retraining the 3 students "
                                             "that failed from a data or I/O error, keeping the other 0")
    board = json.loads((run / "leaderboard.json").read_text())
    assert [r["status"] for r in board["runs"]] == ["ok"] * 4

    # One student failed from a data error (its checkpoint never written), one diverged: only the first retrains.
    for r in board["runs"]:
        if r["run_id"] == "kl-T2-a0.9-s0":
            r.update(status="failed", error="loss became nan at epoch 0 step 3")
        if r["run_id"] == "kl-T4-a0.9-s0":
            r.update(status="failed", error="dataset: cannot decode image a/3.jpg (…)", retry=True)
    write_report(str(run), board["runs"], board["meta"])
    os.remove(run / "students" / "kl-T4-a0.9-s0.pt")
    baseline = run / "students" / "baseline-s0.pt"
    before = (baseline.read_bytes(), baseline.stat().st_mtime_ns)
    third = _kd_process(*argv)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "retraining the 1 student that failed from a data or I/O error, keeping the other 2" in third.stdout
    runs = {r["run_id"]: r for r in json.loads((run / "leaderboard.json").read_text())["runs"]}
    assert runs["kl-T4-a0.9-s0"]["status"] == "ok" and (run / "students" / "kl-T4-a0.9-s0.pt").exists()
    assert runs["kl-T2-a0.9-s0"]["error"] == "loss became nan at epoch 0 step 3"  # a result, not retrained
    assert (baseline.read_bytes(), baseline.stat().st_mtime_ns) == before


def test_a_run_with_students_failed_by_a_data_error_is_unfinished_and_keeps_the_others(tmp_path):
    cfg = _cfg(tmp_path)
    path = runs.run_dir(cfg)
    ok = {**TEACHER_ROW, "run_id": "baseline-s0", "config_id": "baseline", "kind": "baseline"}
    os.makedirs(os.path.join(path, "students"))
    open(os.path.join(path, "students", "baseline-s0.pt"), "wb").close()
    spec = cfg.students()[1]
    diverged = distill.failed_row(cfg, spec, "loss became nan at epoch 0 step 3")
    unreadable = {**distill.failed_row(cfg, spec, "dataset: cannot decode image a/3.jpg", retry=True),
                  "run_id": "other"}
    write_report(path, [TEACHER_ROW, ok, diverged, unreadable], _identity(cfg))
    assert runs.finished_run(path, _identity(cfg)) is None
    assert [r["run_id"] for r in runs.kept_rows(path, _identity(cfg))] == ["baseline-s0", spec.run_id]
    note = runs.unfinished_note([TEACHER_ROW, ok, diverged, unreadable])
    assert note.startswith("1 of 3 students failed from a data or I/O error (first: other: dataset: cannot decode")
    with pytest.raises(UserError, match="temperatures"):  # an unfinished run of another grid is not completed
        runs.kept_rows(path, _identity(DistillConfig(store="s.zarr", report_root=str(tmp_path), run_name="fixed",
                                                        temperatures=(2.0,))))
    os.remove(os.path.join(path, "students", "baseline-s0.pt"))  # a trained student without its checkpoint
    assert [r["run_id"] for r in runs.kept_rows(path, _identity(cfg))] == [spec.run_id]
    write_report(path, [TEACHER_ROW, ok, diverged], _identity(cfg))  # a divergence is a result: finished
    assert runs.finished_run(path, _identity(cfg)) == path and runs.kept_rows(path, _identity(cfg)) is None


def test_a_finished_run_that_lacks_students_of_the_grid_is_completed_not_reused(tmp_path):
    """A report written before a store with views also trained its other label-only students (baseline-plain,
    baseline-nomix) is not reprinted as finished: its rows are kept and the students it lacks are trained."""
    from pipeline.grid import store_baselines

    cfg = _cfg(tmp_path)
    path = runs.run_dir(cfg)
    os.makedirs(os.path.join(path, "students"))
    rows = [TEACHER_ROW]
    for spec in cfg.students():  # the grid as it was: one baseline
        open(os.path.join(path, "students", f"{spec.run_id}.pt"), "wb").close()
        rows.append({**TEACHER_ROW, "run_id": spec.run_id, "config_id": spec.config_id, "kind": "student"})
    write_report(path, rows, _identity(cfg))
    today = [s.run_id for s in cfg.students()]
    now = [s.run_id for s in cfg.students(store_baselines(4, True))]
    assert runs.finished_run(path, _identity(cfg), today) == path and runs.kept_rows(path, _identity(cfg), today) is None
    assert runs.finished_run(path, _identity(cfg), now) is None
    assert [r["run_id"] for r in runs.kept_rows(path, _identity(cfg), now)] == today
    todo = distill.groups(cfg, skip=set(today), baselines=store_baselines(4, True))
    assert [s.run_id for g in todo for s in g] == ["baseline-plain-s0", "baseline-nomix-s0"]
    assert runs.resume_line(path, runs.kept_rows(path, _identity(cfg), now), todo) == (
        f"completing the unfinished run in {path}: training the 2 students it has no row for, keeping the other 2")
