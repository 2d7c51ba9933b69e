"""Two runs of one stage 2 on one machine are bit-identical: every leaderboard metric and every student's weights,
students with dropout included, whether they train stacked or in the per-student loop.

Dropout draws its masks from torch's global RNG, which nothing else seeds: each student (or stack) trains under its
own stream seeded by its seed (pipeline.rng.TrainRng), whatever ran before it in the process.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import textwrap

import pytest
import torch

from pipeline import distill, report
from pipeline.config import DataConfig, DistillConfig, ModelConfig, OptimConfig
from pipeline.grid import StudentSpec
from pipeline.student_group import fit_group
from pipeline.rng import draws_random
from tests.conftest import build_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NETS = """
from torch import nn


def dropout_mlp(num_classes):
    # A plain nn.Sequential: a stack of these trains as grouped layers.
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, num_classes))


class Wrapped(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.body = dropout_mlp(num_classes)

    def forward(self, x):
        return self.body(x)


def dropout_module(num_classes):
    # Not a plain nn.Sequential: a stack of these trains under vmap (randomness="different").
    return Wrapped(num_classes)
"""

# Everything a leaderboard entry holds that the run computed from training; latency is a timing, not a result.
TIMINGS = ("latency_ms", "latency_busy")


@pytest.fixture(scope="module")
def views_store(tmp_path_factory) -> str:
    """Two teacher views (no mixing) on 300 train digits: the students and the recipe's baseline share a pass
    (stacked), and the plain recipe's baseline takes one of its own (a lone student: the per-student loop)."""
    return build_store(str(tmp_path_factory.mktemp("views2")), data=DataConfig(train_limit=300), views=2,
                       optim=OptimConfig(epochs=2), encoding="float32")


@pytest.fixture
def nets(tmp_path, monkeypatch) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "dropout_nets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))


def _run(store: str, root: str, arch: str) -> tuple[dict, dict[str, dict[str, torch.Tensor]], list[str]]:
    """Stage 2 as the distill flow's tasks run it: (leaderboard.json, each student's saved state dict, the log)."""
    cfg = DistillConfig(store=store, model=ModelConfig(arch), optim=OptimConfig(epochs=2, lr=1e-2),
                        temperatures=(2.0,), seeds=(0,), report_root=root, run_name="r", device="cpu", batch="on")
    plan = distill.plan(cfg)
    rows = [plan.teacher_row()]
    for group in distill.groups(cfg, baselines=plan.baselines):
        rows += distill.train_students(plan, group)
    report.write_report(plan.run_dir, rows, plan.report_meta())
    with open(os.path.join(plan.run_dir, report.LEADERBOARD)) as f:
        saved = json.load(f)
    states = {r["run_id"]: torch.load(r["checkpoint"], weights_only=True) for r in rows if r["kind"] != "teacher"}
    return saved, states, [s.run_id for s in plan.students()]


def _results(saved: dict) -> tuple[list[dict], list[dict]]:
    """The leaderboard and the runs without timings and the paths that name the report folder."""
    board = [{k: v for k, v in e.items() if k not in TIMINGS} for e in saved["leaderboard"]]
    runs = [{k: v for k, v in r.items() if k not in TIMINGS + ("seconds", "checkpoint")} for r in saved["runs"]]
    return board, runs


@pytest.mark.parametrize("arch", ["py:dropout_nets:dropout_mlp", "py:dropout_nets:dropout_module"])
def test_two_runs_are_bit_identical_with_dropout_students_stacked_and_alone(views_store, nets, tmp_path, arch,
                                                                             caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="pipeline.student_group"):
        first, first_states, ids = _run(views_store, str(tmp_path / "a"), arch)
    assert ids == ["baseline-s0", "baseline-plain-s0", "kl-T2-a0.9-s0"]
    # The recipe's baseline and the student trained as one stack; the plain recipe's baseline alone.
    engine = "grouped layers" if arch.endswith("mlp") else "vmap"
    assert f"baseline-s0,kl-T2-a0.9-s0: batched: one stacked {arch} of 2 students, {engine}" in caplog.text
    assert "baseline-plain-s0: per-student loop: a single student" in caplog.text
    torch.manual_seed(12345)  # whatever the global RNG holds between runs, nothing changes
    torch.rand(7)
    second, second_states, _ = _run(views_store, str(tmp_path / "b"), arch)
    assert _results(first) == _results(second)
    assert all(r["status"] == "ok" for r in first["runs"])
    assert first_states.keys() == second_states.keys() == {"baseline-s0", "baseline-plain-s0", "kl-T2-a0.9-s0"}
    for run_id, state in first_states.items():
        for name, tensor in state.items():
            assert torch.equal(tensor, second_states[run_id][name]), (run_id, name)


def test_a_dropout_student_trains_the_same_alone_or_beside_others_in_the_loop(views_store, nets):
    """Its dropout stream is its own: group mates stepping between its steps draw from theirs, not from it."""
    from pipeline.data import load_dataset
    from pipeline.loader import SoftTargetLoader
    from pipeline.config import AugmentConfig
    from pipeline.store import SoftTargetStore

    store = SoftTargetStore(views_store)
    ds = load_dataset(store.meta.data_cfg())
    model = ModelConfig("py:dropout_nets:dropout_mlp")

    def run(temperatures):
        loader = SoftTargetLoader(ds.splits["train"], 64, seed=0, store=store)
        specs = [StudentSpec(loss="kl", temperature=t, alpha=0.9, beta=None, seed=0) for t in temperatures]
        return fit_group(specs, model_cfg=model, optim=OptimConfig(epochs=2, lr=1e-2), augment=AugmentConfig(),
                         loader=loader, val=ds.splits["val"], input_shape=ds.input_shape,
                         num_classes=ds.num_classes, device=torch.device("cpu"), batched=False)

    (alone,), together = run([2.0]), run([1.0, 2.0, 4.0])
    assert draws_random(alone.model)
    assert alone.step_losses == together[1].step_losses
    for a, b in zip(alone.model.state_dict().values(), together[1].model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_kd_distill_twice_through_the_flow_is_bit_identical(views_store, nets, tmp_path):
    """`kd distill` twice (Prefect's thread runner: the groups train concurrently): the same leaderboard and
    weights."""
    from flows.cli import main

    def kd(root: str) -> tuple[dict, dict]:
        with contextlib.redirect_stdout(io.StringIO()):
            main(["distill", "--store", views_store, "--arch", "py:dropout_nets:dropout_mlp", "--epochs", "2", "--lr", "0.01",
                  "--temperatures", "2", "4", "--seeds", "0", "1", "--report-root", root, "--run-name", "r",
                  "--device", "cpu", "--batch", "on"])
        with open(os.path.join(root, "r", report.LEADERBOARD)) as f:
            saved = json.load(f)
        return saved, {r["run_id"]: torch.load(r["checkpoint"], weights_only=True) for r in saved["runs"]
                       if r["kind"] != "teacher"}

    (first, a), (second, b) = kd(str(tmp_path / "a")), kd(str(tmp_path / "b"))
    assert _results(first) == _results(second) and a.keys() == b.keys() and len(a) == 8
    for run_id in a:
        assert all(torch.equal(a[run_id][k], b[run_id][k]) for k in a[run_id]), run_id
