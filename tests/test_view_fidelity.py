"""Teacher views: replayable augmentations stored per sample, replayed exactly in stage 2."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from pipeline import distill, teacher, view_fidelity
from pipeline.augment import Augmenter
from pipeline.config import AugmentConfig, DistillConfig, ModelConfig, OptimConfig
from pipeline.data import load_dataset
from pipeline.errors import StoreError, UserError
from pipeline.loader import SoftTargetLoader
from pipeline.store import SoftTargetStore
from pipeline.view_fidelity import verify_views
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


@pytest.fixture(scope="module")
def bf16_store(views_store, tmp_path_factory):
    """The views store's teacher, its logits pass run under CPU bfloat16 autocast (as a GPU's runs under CUDA's)."""
    root = str(tmp_path_factory.mktemp("bf16"))
    ckpt = SoftTargetStore(views_store).meta.teacher.checkpoint
    p = teacher.plan(small_teacher_config(root, views=3, view_augment=AUG, encoding="float32", checkpoint=ckpt))
    assert p.pass_precision == "float32"  # a CPU pass computes in float32 unless told otherwise
    p = dataclasses.replace(p, precision="bfloat16")
    return teacher.publish(p, teacher.load(p))


def _recorded_as(store: str, precision: str | None):
    """Rewrite ``teacher.precision`` in place (None: a version 3 store, which did not record it)."""
    g = zarr.open_group(store, mode="r+")
    attrs = dict(g.attrs)
    if precision is None:
        attrs["teacher"] = {k: v for k, v in attrs["teacher"].items() if k != "precision"}
        attrs["format_version"] = 3
    else:
        attrs["teacher"] = {**attrs["teacher"], "precision": precision}
    g.attrs.put(attrs)


def test_a_bfloat16_store_passes_only_with_its_precision_recorded(views_store, bf16_store, tmp_path):
    assert SoftTargetStore(views_store).meta.teacher.precision == "float32"
    s = SoftTargetStore(bf16_store)
    assert s.meta.teacher.precision == "bfloat16"
    # The same teacher and views; bfloat16 really moved the logits, beyond the float32 tolerance.
    f32, b16 = SoftTargetStore(views_store).read_views("train"), s.read_views("train")
    assert np.abs(b16 - f32).max() > 1e-3
    ok = verify_views(s, samples=16)
    assert ok["views"] == 3 and ok["precision"] == "bfloat16" and ok["max_abs_diff"] > 1e-3
    # The same logits recorded as float32 are rejected: the recorded precision is what lets them pass.
    copy = str(tmp_path / "as-float32.zarr")
    shutil.copytree(bf16_store, copy)
    _recorded_as(copy, "float32")
    with pytest.raises(StoreError) as e:
        verify_views(SoftTargetStore(copy), samples=16)
    assert e.value.field == "views" and "float32 compute tolerance" in str(e.value)
    # A version 3 store records no precision: one written on the CPU (device: cpu) is held to float32, any
    # other to the widest, bfloat16.
    _recorded_as(copy, None)
    assert SoftTargetStore(copy).meta.format_version == 3
    with pytest.raises(StoreError):
        verify_views(SoftTargetStore(copy), samples=16)
    g = zarr.open_group(copy, mode="r+")
    g.attrs.put({**dict(g.attrs), "teacher": {**g.attrs["teacher"], "config": {**g.attrs["teacher"]["config"],
                                                                                 "device": "auto"}}})
    assert verify_views(SoftTargetStore(copy), samples=16)["precision"] == "bfloat16 (unrecorded, assumed)"


def test_the_bfloat16_tolerance_still_catches_a_wrong_replay(bf16_store):
    """A redrawn view moves this teacher's logits far beyond the bfloat16 bound, not just beyond float32's."""
    s = SoftTargetStore(bf16_store)
    assert view_fidelity.tolerance(s)[2] == 2.0**-3  # 1/8 of each row's largest logit
    with pytest.raises(StoreError) as e:
        verify_views(s, samples=16, replay_seed=s.meta.views.seed + 1)
    assert e.value.field == "views" and "does not reproduce" in str(e.value)
    # Not a near miss: a bound 8x as wide still catches it.
    wide = {**view_fidelity.COMPUTE_TOLERANCE, "bfloat16": 8 * view_fidelity.COMPUTE_TOLERANCE["bfloat16"]}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(view_fidelity, "COMPUTE_TOLERANCE", wide)
        with pytest.raises(StoreError):
            verify_views(s, samples=16, replay_seed=s.meta.views.seed + 1)
