"""Stage 2 in the library: store/dataset refusals, and the teacher is never built."""
from __future__ import annotations

import os

import pytest

from pipeline import distill, models
from pipeline.config import DataConfig, DistillConfig, ModelConfig, OptimConfig
from pipeline.errors import StoreError
from pipeline.store import SoftTargetStore
from tests.conftest import build_store


def _cfg(store, tmp_path, **kw):
    base = dict(store=store, model=ModelConfig(arch="cnn", width=4), optim=OptimConfig(epochs=2, lr=1e-2),
                temperatures=(1.0, 4.0), report_root=str(tmp_path / "reports"), device="cpu")
    base.update(kw)
    return DistillConfig(**base)


@pytest.mark.parametrize("data, field", [
    (DataConfig(split_seed=1), "splits.train.fingerprint"),
    (DataConfig(train_limit=500), "splits.train.size"),
    (DataConfig(val_fraction=0.2), "splits.train.size"),
])
def test_store_from_other_data_is_refused(digits_store, tmp_path, data, field):
    with pytest.raises(StoreError) as e:
        distill.DistillPlan(_cfg(digits_store, tmp_path, data=data))
    assert e.value.field == field


def test_wrong_class_count_is_refused(store_copy, tmp_path):
    import zarr

    g = zarr.open_group(store_copy, mode="r+")
    d = dict(g.attrs["dataset"])
    d["num_classes"] = 11
    g.attrs["dataset"] = d
    with pytest.raises(StoreError) as e:
        distill.DistillPlan(_cfg(store_copy, tmp_path))
    assert e.value.field == "num_classes"


def test_wrong_dataset_name_is_refused(tmp_path, digits_store):
    other = build_store(str(tmp_path), data=DataConfig(name="digits", train_limit=400))
    import zarr

    g = zarr.open_group(other, mode="r+")
    d = dict(g.attrs["dataset"])
    d["name"] = "mnist"
    g.attrs["dataset"] = d
    with pytest.raises(StoreError) as e:
        distill.DistillPlan(_cfg(other, tmp_path, data=DataConfig(train_limit=400)))
    assert e.value.field == "dataset"


def test_corrupt_store_is_refused_before_training(store_copy, tmp_path):
    d = os.path.join(store_copy, "train", "logits", "c")
    f = os.path.join(d, os.listdir(d)[0], "0")
    raw = bytearray(open(f, "rb").read())
    raw[50] ^= 0x10
    open(f, "wb").write(bytes(raw))
    with pytest.raises(StoreError, match="train/logits"):
        distill.DistillPlan(_cfg(store_copy, tmp_path))


def test_students_train_without_the_teacher(tmp_path, monkeypatch):
    # An mlp-64 teacher whose checkpoint is then deleted: stage 2 cannot build or run it.
    from tests.conftest import small_teacher_config
    from pipeline import teacher

    p = teacher.plan(small_teacher_config(str(tmp_path), model=ModelConfig(arch="mlp", width=64)))
    store = teacher.publish(p, teacher.train(p))
    os.remove(p.checkpoint_path)
    built = []
    real = models.build_model

    def spy(cfg, shape, n):
        built.append(cfg.arch)
        return real(cfg, shape, n)

    monkeypatch.setattr("pipeline.train.build_model", spy)
    cfg = _cfg(store, tmp_path)
    rows = distill.train_students(cfg, cfg.students(), str(tmp_path / "run"))
    assert built == ["cnn", "cnn", "cnn"]  # baseline + 2 temperatures, never the mlp teacher
    assert [r["run_id"] for r in rows] == ["baseline-s0", "kl-T1-a0.9-s0", "kl-T4-a0.9-s0"]
    for r in rows:
        assert r["status"] == "ok" and 0.3 < r["test_acc"] <= 1 and 0 <= r["agreement"] <= 1
        assert os.path.exists(r["checkpoint"])
    row = distill.plan(cfg).teacher_row()
    assert row["test_acc"] == SoftTargetStore(store).attrs["teacher"]["test_acc"]
    distill.release(cfg)


def test_groups_cut_the_grid(digits_store, tmp_path):
    cfg = _cfg(digits_store, tmp_path, temperatures=(1.0, 2.0, 4.0, 8.0), group_size=2)
    assert [len(g) for g in distill.groups(cfg)] == [2, 2, 1]
    assert sum(distill.groups(cfg), []) == cfg.students()


def test_run_dir_rejects_paths(digits_store, tmp_path):
    from pipeline.errors import UserError

    with pytest.raises(UserError):
        distill.run_dir(_cfg(digits_store, tmp_path, run_name="../x"))
    assert distill.run_dir(_cfg(digits_store, tmp_path, run_name="r1")).endswith("reports/r1")
