"""Teacher views: replayable augmentations stored per sample, replayed exactly in stage 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline import distill, teacher
from pipeline.augment import Augmenter
from pipeline.config import AugmentConfig, DistillConfig, ModelConfig, OptimConfig
from pipeline.data import load_dataset
from pipeline.errors import StoreError, UserError
from pipeline.loader import SoftTargetLoader
from pipeline.store import SoftTargetStore
from pipeline.views import verify_views
from tests.conftest import small_teacher_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUG = AugmentConfig(ops=("translate", "flip", "rotate"))


@pytest.fixture(scope="module")
def views_store(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("views"))
    p = teacher.plan(small_teacher_config(root, views=3, view_augment=AUG, encoding="float32"))
    return teacher.publish(p, teacher.train(p))


def test_store_holds_every_view_and_its_parameters(views_store):
    s = SoftTargetStore(views_store)
    assert s.views == 3 and s.read_views("train", 0, 5).shape == (5, 3, 10)
    params = s.view_params("train")  # (N, V, 4)
    assert np.all(params[:, 0] == 0)  # view 0 is the clean image
    assert np.abs(params[:, 1:, :2]).max() >= 1 and np.abs(params[:, 1:, 3]).max() > 0
    # What is stored is what replay draws: ids, views and seed determine it all.
    ids = torch.from_numpy(s.ids("train")[:20])
    drawn = Augmenter(AUG).view_params(ids, torch.full_like(ids, 2), s.attrs["views"]["seed"])
    np.testing.assert_array_equal(Augmenter.params_array(drawn), params[:20, 2])
    assert s.attrs["views"]["count"] == 3 and s.summary()["logits_bytes_per_view"] > 0


def test_replay_is_bit_identical_in_a_fresh_process():
    ids, views = torch.arange(100, 140), torch.arange(40) % 4
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    here = Augmenter(AUG).replay(x, ids, views, seed=11)
    code = ("import sys, torch; from pipeline.augment import Augmenter; from pipeline.config import AugmentConfig;"
            "x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0));"
            "out = Augmenter(AugmentConfig(ops=('translate', 'flip', 'rotate'))).replay("
            "x, torch.arange(100, 140), torch.arange(40) % 4, seed=11); torch.save(out, sys.argv[1])")
    path = os.path.join(ROOT, "data", "replay-check.pt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        subprocess.run([sys.executable, "-c", code, path], cwd=ROOT, check=True, timeout=120)
        assert torch.equal(torch.load(path, weights_only=True), here)
    finally:
        if os.path.exists(path):
            os.remove(path)


def _expected(split, rows, views, store):
    v = store.attrs["views"]
    return Augmenter(AUG).replay(split.x[rows], split.ids[rows], torch.from_numpy(views), v["seed"])


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_trains_on_the_view_the_teacher_scored(views_store, workers):
    s = SoftTargetStore(views_store)
    split = load_dataset(s.meta.data_cfg()).splits["train"]
    every = s.read_views("train")  # (N, V, C)
    loader = SoftTargetLoader(split, 64, seed=1, store=s, workers=workers, cache_mb=0 if workers else 1000)
    seen_views = set()
    for b in loader.epoch(0):
        rows = b.rows.numpy()
        views = loader.views_for(rows, 0)
        seen_views |= set(views.tolist())
        np.testing.assert_array_equal(b.logits.numpy(), every[rows, views])
        assert torch.equal(b.x, _expected(split, b.rows, views, s))  # pixels replayed bit for bit
    assert seen_views == {0, 1, 2}


def test_cycle_policy_visits_every_view(views_store):
    s = SoftTargetStore(views_store)
    split = load_dataset(s.meta.data_cfg()).splits["train"]
    loader = SoftTargetLoader(split, 64, seed=1, store=s, view_policy="cycle")
    rows = np.arange(10)
    assert {tuple(loader.views_for(rows, e)) for e in range(3)} == {tuple((rows + e) % 3) for e in range(3)}


def test_fidelity_check_passes_and_catches_a_wrong_replay(views_store):
    s = SoftTargetStore(views_store)
    ok = verify_views(s, samples=16)
    assert ok["views"] == 3 and ok["max_abs_diff"] < 1e-3
    with pytest.raises(StoreError) as e:
        verify_views(s, samples=16, replay_seed=s.attrs["views"]["seed"] + 1)
    assert e.value.field == "views" and "does not reproduce" in str(e.value)


def test_distilling_from_views(views_store, tmp_path):
    cfg = DistillConfig(store=views_store, model=ModelConfig("cnn", 4), optim=OptimConfig(epochs=2, lr=1e-2),
                        temperatures=(4.0,), report_root=str(tmp_path), device="cpu")
    rows = distill.train_students(distill.plan(cfg), cfg.students())
    assert all(r["status"] == "ok" for r in rows)
    with pytest.raises(UserError) as e:
        distill.plan(DistillConfig(store=views_store, augment=AugmentConfig(ops=("flip",))))
    assert e.value.field == "augment"


def test_inspect_verify_views(views_store, capsys):
    from flows.cli import main

    main(["inspect", views_store, "--verify-views", "8", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["views"] == 3 and info["verified_views"]["samples"] == 8
