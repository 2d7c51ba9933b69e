"""An honest baseline for every recipe: a store with teacher views also trains label-only students on the plain
recipe (view 0 alone) and on the views without their mixing, and "Δ vs base" is measured against the best of
them on val. A store without views keeps its one baseline."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from pipeline import distill, report, views
from pipeline.config import DataConfig, DistillConfig, MixConfig, ModelConfig, OptimConfig
from pipeline.data import load_dataset
from pipeline.errors import UserError
from pipeline.grid import StudentSpec, store_baselines
from pipeline.loader import SoftTargetLoader
from pipeline.store import SoftTargetStore
from tests.conftest import build_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory) -> str:
    """`kd teacher --views 3 --view-mix mixup` on 300 train digits: every view after the clean one mixed."""
    return build_store(str(tmp_path_factory.mktemp("mixed3")), data=DataConfig(train_limit=300),
                       views=3, view_mix=MixConfig(ops=("mixup",), prob=1.0), encoding="float32")


def test_label_only_ids_name_what_they_see_and_the_default_keeps_todays():
    base = dict(loss="hard", temperature=1.0, alpha=0.0, beta=None, seed=2)
    assert StudentSpec(**base).run_id == "baseline-s2"
    assert StudentSpec(**base, data="plain").run_id == "baseline-plain-s2"
    assert StudentSpec(**base, data="nomix", lr=0.1).run_id == "baseline-nomix-lr0.1-s2"
    assert store_baselines(1, False) == ("views",)
    assert store_baselines(4, False) == ("views", "plain")  # unmixed views: "nomix" would be "views" again
    assert store_baselines(4, True) == ("views", "plain", "nomix")
    with pytest.raises(UserError) as e:
        StudentSpec(loss="kl", temperature=2.0, alpha=0.9, beta=None, seed=0, data="plain")
    assert e.value.field == "data"
    cfg = DistillConfig(store="x.zarr", temperatures=(2.0,))
    assert [s.run_id for s in cfg.students()] == ["baseline-s0", "kl-T2-a0.9-s0"]
    assert [s.run_id for s in cfg.students(store_baselines(3, True))] == [
        "baseline-s0", "baseline-plain-s0", "baseline-nomix-s0", "kl-T2-a0.9-s0"]


def _epoch(store: SoftTargetStore, view_data: str) -> tuple[SoftTargetLoader, list]:
    split = load_dataset(store.meta.data_cfg()).splits["train"]
    loader = SoftTargetLoader(split, 64, seed=1, store=store, view_data=view_data)
    return loader, list(loader.epoch(0))


def test_the_loader_serves_the_clean_view_alone_or_the_views_without_their_mixing(mixed_store):
    store = SoftTargetStore(mixed_store)
    split = load_dataset(store.meta.data_cfg()).splits["train"]
    names = store.meta.views.params
    own = names[:names.index("mix")]  # the transform's columns, without the mix
    params, every = store.view_params("train"), store.read_views("train")  # (N, V, P), (N, V, C)
    _, mixed = _epoch(store, "views")
    loader, plain = _epoch(store, "plain")
    assert not loader.mixed_views and loader.views_for(np.arange(300), 5).max() == 0
    loader, unmixed = _epoch(store, "nomix")
    assert not loader.mixed_views  # a stack may train it: no λ-weighted hard term
    chosen = loader.views_for(np.arange(300), 0)
    assert (chosen > 0).any()
    differ = 0
    for m, p, u in zip(mixed, plain, unmixed):
        rows = p.rows.numpy()
        assert torch.equal(m.rows, p.rows) and torch.equal(p.rows, u.rows)  # one order: same seed, same epoch
        assert m.mix is not None and p.mix is None and u.mix is None
        assert torch.equal(p.x, split.batch(rows)) and torch.equal(p.logits, torch.from_numpy(every[rows, 0]))
        picked = params[rows, chosen[rows]]  # (B, P)
        assert torch.equal(u.x, views.apply_rows(split.batch(rows), picked[:, :len(own)], own))
        assert torch.equal(u.logits, torch.from_numpy(every[rows, chosen[rows]]))
        differ += int((~torch.isclose(u.x, m.x)).flatten(1).any(1).sum())
    assert differ > 100  # every view after the clean one is mixed: those pixels differ from the unmixed ones


def _train(cfg: DistillConfig) -> tuple[distill.DistillPlan, list[dict]]:
    plan = distill.plan(cfg)
    rows = [plan.teacher_row()]
    for group in distill.groups(cfg, baselines=plan.baselines):
        rows += distill.train_students(plan, group)
    return plan, rows


def test_a_patient_like_run_reports_three_label_only_rows_and_its_gain_over_the_best_on_val(mixed_store, tmp_path):
    cfg = DistillConfig(store=mixed_store, model=ModelConfig("cnn", 4), optim=OptimConfig(epochs=2, lr=1e-2),
                        temperatures=(2.0,), alphas=(1.0,), seeds=(0, 1), report_root=str(tmp_path), run_name="p",
                        device="cpu")
    plan, rows = _train(cfg)
    assert plan.baselines == ("views", "plain", "nomix")
    # Per seed: the recipe's views (the baseline beside the student), then a pass of its own for each other one.
    assert distill.group_names(cfg, baselines=plan.baselines) == [
        "seed 0: 2 students", "baseline-plain-s0", "baseline-nomix-s0",
        "seed 1: 2 students", "baseline-plain-s1", "baseline-nomix-s1"]
    assert all(r["status"] == "ok" for r in rows)
    paths = report.write_report(plan.run_dir, rows, plan.report_meta())
    board = report.read_report(plan.run_dir)["leaderboard"]
    label_only = {e["config_id"]: e for e in board if e["kind"] == "baseline"}
    assert set(label_only) == {"baseline", "baseline-plain", "baseline-nomix"}
    val = {c: statistics.fmean(r["val_acc"] for r in rows if r["config_id"] == c) for c in label_only}
    best = max(val, key=val.get)  # on val: the first of a tie, in grid order (dicts keep it)
    base = report.reference_baseline(board)
    assert base["config_id"] == best and base["reference"] is True
    student = next(e for e in board if e["kind"] == "student")
    test = statistics.fmean(r["test_acc"] for r in rows if r["config_id"] == student["config_id"])
    assert student["gain_vs_baseline"] == pytest.approx(test - label_only[best]["test_acc_mean"])
    note = f"Δ vs base: against {best}, the best label-only student on val"
    assert note in open(paths["md"]).read()
    assert note in report.leaderboard_text(report.read_report(plan.run_dir), 120).replace("\n", " ")


def test_a_store_without_views_trains_and_reports_as_before(digits_store, tmp_path):
    cfg = DistillConfig(store=digits_store, model=ModelConfig("cnn", 4), optim=OptimConfig(epochs=1),
                        temperatures=(2.0,), seeds=(0, 1), report_root=str(tmp_path), run_name="plain", device="cpu")
    plan = distill.plan(cfg)
    assert plan.baselines == ("views",) and plan.students() == cfg.students()
    assert [s.run_id for s in plan.students()] == ["baseline-s0", "kl-T2-a0.9-s0", "baseline-s1", "kl-T2-a0.9-s1"]
    assert distill.groups(cfg, baselines=plan.baselines) == distill.groups(cfg)
    assert distill.group_names(cfg, baselines=plan.baselines) == ["seed 0: 2 students", "seed 1: 2 students"]
    rows = [plan.teacher_row()] + [r for g in distill.groups(cfg) for r in distill.train_students(plan, g)]
    assert not any("data" in r for r in rows)
    board = report.leaderboard(rows)
    assert [e["config_id"] for e in board][:2] == ["teacher", "baseline"]
    assert not any({"reference", "data"} & set(e) for e in board)
    assert report.reference_baseline(board)["config_id"] == "baseline" and report.baseline_note(board) is None
    student = next(e for e in board if e["kind"] == "student")
    assert math.isclose(student["gain_vs_baseline"], student["test_acc_mean"] - board[1]["test_acc_mean"])
