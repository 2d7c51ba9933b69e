"""End to end through real Prefect flows on Prefect's temporary server."""
from __future__ import annotations

import contextlib
import io
import json
import os

import pytest

from flows.cli import main
from pipeline.config import DistillConfig, ModelConfig, OptimConfig
from pipeline.store import SoftTargetStore
from tests.conftest import small_teacher_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _kd(*argv: str) -> list[str]:
    """Run the CLI in-process; its stdout lines. (Not capsys: Prefect's log handler may bind to
    whatever stderr is current when it is configured, and capsys closes its stream after the test.)"""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(list(argv))
    return buf.getvalue().strip().splitlines()


def test_make_distill_path_end_to_end(tmp_path):
    """`kd run`: teacher flow → store → distill flow over 4 temperatures → leaderboard and report."""
    root = str(tmp_path)
    argv = ("run", "--epochs", "3", "--width", "8", "--store-root", f"{root}/stores",
            "--checkpoint-root", f"{root}/ckpt", "--student-width", "4", "--student-epochs", "3",
            "--temperatures", "1", "2", "4", "8", "--report-root", f"{root}/reports", "--run-name", "e2e",
            "--device", "cpu")
    out = _kd(*argv)
    assert out[-1] == f"report: {root}/reports/e2e"
    # The scheduled-pipeline case: same teacher, same grid -> nothing is retrained, the report is reused.
    written = os.path.getmtime(f"{root}/reports/e2e/leaderboard.json")
    again = _kd(*argv)
    assert again[-1] == out[-1] and os.path.getmtime(f"{root}/reports/e2e/leaderboard.json") == written
    board = json.load(open(f"{root}/reports/e2e/leaderboard.json"))["leaderboard"]
    assert [e["config_id"] for e in board][:2] == ["teacher", "baseline"]
    assert {e["temperature"] for e in board if e["kind"] == "student"} == {1.0, 2.0, 4.0, 8.0}
    assert all(e["failed"] == 0 for e in board)
    assert os.path.getsize(f"{root}/reports/e2e/accuracy_vs_temperature.png") > 1000
    assert "| teacher |" in "\n".join(out)

    # A second run with the same teacher config reuses the store: no retraining, same file.
    store = f"{root}/stores/" + os.listdir(f"{root}/stores")[0]
    created = SoftTargetStore(store).attrs["created_at"]
    ckpt_mtime = os.path.getmtime(SoftTargetStore(store).attrs["teacher"]["checkpoint"])
    out = _kd("teacher", "--epochs", "3", "--width", "8", "--store-root", f"{root}/stores",
              "--checkpoint-root", f"{root}/ckpt", "--device", "cpu")
    assert out[-1] == f"store: {store}"
    assert SoftTargetStore(store).attrs["created_at"] == created
    assert os.path.getmtime(SoftTargetStore(store).attrs["teacher"]["checkpoint"]) == ckpt_mtime


def test_distill_flow_reports_a_failed_student_and_finishes(digits_store, tmp_path):
    from flows.distill_flow import distill_flow

    cfg = DistillConfig(store=digits_store, model=ModelConfig(arch="mlp", width=32),
                        optim=OptimConfig(epochs=2, lr=1e-2), temperatures=(2.0,), lrs=(1e-2, 1e30),
                        report_root=str(tmp_path), run_name="partial", device="cpu")
    state = distill_flow(cfg, return_state=True)
    assert state.is_completed()
    rows = json.load(open(tmp_path / "partial" / "leaderboard.json"))["runs"]
    status = {r["run_id"]: r["status"] for r in rows}
    assert status["baseline-lr0.01-s0"] == "ok" and status["kl-T2-a0.9-lr0.01-s0"] == "ok"
    assert status["baseline-lr1e+30-s0"] == "failed" and status["kl-T2-a0.9-lr1e+30-s0"] == "failed"
    assert "Failed runs" in open(tmp_path / "partial" / "report.md").read()
    # Each trained student's test score is its own checkpoint's, whichever of its group failed.
    import torch

    from pipeline.data import load_dataset
    from pipeline.models import build_model
    from pipeline.train import evaluate

    ds = load_dataset(SoftTargetStore(digits_store).meta.data_cfg())
    students = [r for r in rows if r["status"] == "ok" and r["kind"] != "teacher"]
    assert len(students) == 2
    for r in students:
        model = build_model(cfg.model, ds.input_shape, ds.num_classes)
        model.load_state_dict(torch.load(tmp_path / "partial" / "students" / f"{r['run_id']}.pt", weights_only=True))
        assert evaluate(model, ds.splits["test"], torch.device("cpu"))["acc"] == r["test_acc"], r["run_id"]


def test_distill_flow_fails_only_when_every_student_fails(digits_store, tmp_path):
    from flows.distill_flow import distill_flow

    cfg = DistillConfig(store=digits_store, model=ModelConfig(arch="mlp", width=32),
                        optim=OptimConfig(epochs=1, lr=1e30), temperatures=(2.0,), report_root=str(tmp_path),
                        run_name="allfail", device="cpu", group_size=2)
    state = distill_flow(cfg, return_state=True)
    assert state.is_failed() and "every student failed" in state.message


def test_teacher_flow_publishes_a_store(tmp_path):
    from flows.teacher_flow import teacher_flow

    store = teacher_flow(small_teacher_config(str(tmp_path)))
    assert SoftTargetStore(store).attrs["complete"] is True


def test_a_user_error_is_never_retried_and_ends_as_one_line(tmp_path):
    """The tasks' retry policy retries a transient failure, never a UserError; a flow that fails on one
    gives the CLI's one-line exit-2 error, not 'run failed'."""
    from prefect import flow, task

    from flows.cli import _finish
    from flows.retries import IO_RETRIES
    from flows.teacher_flow import teacher_flow
    from pipeline.errors import UserError

    calls: list[str] = []

    @task(**{**IO_RETRIES, "retry_delay_seconds": 0})
    def fails_with(kind: str) -> None:
        calls.append(kind)
        raise UserError("checkpoint", "cannot load it") if kind == "user" else OSError("connection reset")

    @flow
    def once(kind: str) -> None:
        fails_with(kind)

    assert once("user", return_state=True).is_failed() and calls == ["user"]
    assert once("io", return_state=True).is_failed() and calls == ["user"] + ["io"] * 3

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    state = teacher_flow(small_teacher_config(str(tmp_path), checkpoint=str(junk)), return_state=True)
    with pytest.raises(UserError) as e:
        _finish(state)
    assert e.value.field == "checkpoint"


def test_kd_teacher_warns_in_one_line_about_a_teacher_at_chance(tmp_path):
    """A teacher that learnt nothing (lr 1e-9: its initial weights, 10% on digits' 10 classes) is said to be one."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        out = _kd("teacher", "--epochs", "1", "--lr", "1e-9", "--train-limit", "300", "--width", "4", "--device",
                  "cpu", "--store-root", str(tmp_path / "stores"), "--checkpoint-root", str(tmp_path / "ckpt"))
    assert out[-1].startswith("store: ")
    warned = [line for line in err.getvalue().splitlines() if line.startswith("warning: ")]
    assert warned == ["warning: the teacher is at chance level (10.00% on 10 classes, chance 10.00%; test NLL 2.327): "
                      "it learnt nothing to distil, and no student comparison with it means anything. Train it "
                      "longer (--epochs), lower --lr, or check the data."], err.getvalue()


def test_kd_run_with_a_labelled_share_and_kd_distill_with_another(tmp_path):
    """`kd run --labelled-per-class 5`: the report says what the students saw; `kd distill` applies another mask
    to the same store (no new teacher)."""
    root = str(tmp_path)
    common = ("--report-root", f"{root}/reports", "--device", "cpu")
    out = _kd("run", "--epochs", "1", "--width", "4", "--student-width", "4", "--train-limit", "300",
              "--labelled-per-class", "5", "--temperatures", "4", "--checkpoint-root", f"{root}/ckpt",
              "--store-root", f"{root}/stores", "--run-name", "five", *common)
    assert "train rows: 50 labelled, 250 unlabelled" in " ".join(out)
    meta = json.load(open(f"{root}/reports/five/leaderboard.json"))["meta"]
    assert (meta["labelled"], meta["unlabelled"]) == (50, 250)
    (name,) = os.listdir(f"{root}/stores")
    store = f"{root}/stores/{name}"
    assert SoftTargetStore(store).meta.dataset.labels.labelled == 50
    out = _kd("distill", "--store", store, "--labelled-per-class", "3", "--epochs", "1", "--width", "4",
              "--temperatures", "4", "--run-name", "three", *common)
    meta = json.load(open(f"{root}/reports/three/leaderboard.json"))["meta"]
    assert (meta["labelled"], meta["unlabelled"]) == (30, 270) and os.listdir(f"{root}/stores") == [name]
