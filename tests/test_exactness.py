"""Offline KD from a float32 store reproduces online KD (teacher run every step), step by step."""
from __future__ import annotations

import statistics

import numpy as np
import pytest

from pipeline import distill
from pipeline.config import DistillConfig, ModelConfig, OptimConfig
from pipeline.errors import UserError


def _cfg(store, tmp_path, mode, **kw):
    base = dict(store=store, model=ModelConfig(arch="cnn", width=4), optim=OptimConfig(epochs=3, lr=1e-2),
                temperatures=(4.0,), report_root=str(tmp_path), device="cpu", mode=mode, run_name=mode)
    base.update(kw)
    return DistillConfig(**base)


def _steps(cfg, tmp_path):
    p = distill.plan(cfg)
    rows = distill.train_students(p, cfg.students()[1:])
    assert rows[0]["status"] == "ok"
    from pipeline.loader import SoftTargetLoader
    from pipeline.student_group import fit_group

    loader = SoftTargetLoader(p.dataset.splits["train"], cfg.optim.batch_size, seed=0,
                              store=None if cfg.mode == "online" else p.store, chunk_rows=p.store.chunk_rows("train"))
    (r,) = fit_group(cfg.students()[1:], model_cfg=cfg.model, optim=cfg.optim, augment=cfg.augment, loader=loader,
                     val=p.dataset.splits["val"], input_shape=p.dataset.input_shape,
                     num_classes=p.dataset.num_classes, device=distill.resolve_device("cpu"),
                     teacher=distill.load_teacher(p.store) if cfg.mode == "online" else None)
    return r


def test_float32_store_matches_online_kd_for_50_steps(digits_store, tmp_path):
    offline = _steps(_cfg(digits_store, tmp_path, "offline"), tmp_path)
    online = _steps(_cfg(digits_store, tmp_path, "online"), tmp_path)
    assert len(offline.step_losses) >= 50
    diff = np.abs(np.array(offline.step_losses[:50]) - np.array(online.step_losses[:50]))
    assert diff.max() <= 1e-6, diff.max()


def test_float16_accuracy_within_float32_seed_spread(tmp_path):
    from tests.conftest import build_store

    accs = {}
    for enc in ("float32", "float16"):
        store = build_store(str(tmp_path / enc), encoding=enc)
        cfg = _cfg(store, tmp_path, "offline", seeds=(0, 1, 2), run_name=enc)
        rows = distill.train_students(distill.plan(cfg), [s for s in cfg.students() if not s.is_baseline])
        accs[enc] = [r["test_acc"] for r in rows]
    mean32, sd32 = statistics.fmean(accs["float32"]), statistics.stdev(accs["float32"])
    # Same teacher weights, logits rounded to half precision: the mean lands inside float32's seed spread.
    assert abs(statistics.fmean(accs["float16"]) - mean32) <= max(2 * sd32, 0.01), accs


def test_online_mode_needs_the_recorded_checkpoint(store_copy, tmp_path):
    import zarr

    g = zarr.open_group(store_copy, mode="r+")
    t = dict(g.attrs["teacher"])
    t["checkpoint"] = str(tmp_path / "gone.pt")
    g.attrs["teacher"] = t
    with pytest.raises(UserError) as e:
        distill.plan(_cfg(store_copy, tmp_path, "online"))
    assert e.value.field == "mode"
