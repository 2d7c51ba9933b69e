"""Stage 2 in the library: store/dataset refusals, and the teacher is never built."""
from __future__ import annotations

import dataclasses
import logging
import os

import pytest

from pipeline import distill, models, runs
from pipeline.config import DataConfig, DistillConfig, ModelConfig, OptimConfig
from pipeline.errors import StoreError
from pipeline.store import SoftTargetStore
from tests.conftest import build_store, flip_byte, shard_file


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
        distill.plan(_cfg(digits_store, tmp_path, data=data))
    assert e.value.field == field


def test_wrong_class_count_is_refused(store_copy, tmp_path):
    import zarr

    g = zarr.open_group(store_copy, mode="r+")
    d = dict(g.attrs["dataset"])
    d["num_classes"] = 11
    g.attrs["dataset"] = d
    with pytest.raises(StoreError) as e:
        distill.plan(_cfg(store_copy, tmp_path))
    assert e.value.field == "num_classes"


def test_wrong_dataset_name_is_refused(tmp_path, digits_store):
    other = build_store(str(tmp_path), data=DataConfig(name="digits", train_limit=400))
    import zarr

    g = zarr.open_group(other, mode="r+")
    d = dict(g.attrs["dataset"])
    d["name"] = "mnist"
    g.attrs["dataset"] = d
    with pytest.raises(StoreError) as e:
        distill.plan(_cfg(other, tmp_path, data=DataConfig(train_limit=400)))
    assert e.value.field == "dataset"


def test_corrupt_store_is_refused_before_training(store_copy, tmp_path):
    flip_byte(shard_file(store_copy), at=0.2, mask=0x10)
    with pytest.raises(StoreError, match="train/logits"):
        distill.plan(_cfg(store_copy, tmp_path))


def test_students_train_without_the_teacher(tmp_path, monkeypatch, caplog):
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
    p = distill.plan(cfg)
    with caplog.at_level(logging.INFO, logger="pipeline.student_group"):
        rows = distill.train_students(p, cfg.students())
    # --batch auto on a CPU: three small students of one seed train as one stack.
    assert "batched: one stacked cnn of 3 students" in caplog.text
    # One to time the architecture when the plan opens the store, then baseline + 2 temperatures;
    # never the mlp teacher.
    assert built == ["cnn", "cnn", "cnn", "cnn"]
    assert [r["run_id"] for r in rows] == ["baseline-s0", "kl-T1-a0.9-s0", "kl-T4-a0.9-s0"]
    for r in rows:
        assert r["status"] == "ok" and 0.3 < r["test_acc"] <= 1 and 0 <= r["agreement"] <= 1
        assert os.path.exists(r["checkpoint"])
        # Leaderboard columns, and what `kd export` needs to rebuild the student.
        assert r["params"] == models.count_parameters(real(ModelConfig(arch="cnn", width=4), (1, 8, 8), 10))
        assert r["size_mb"] > r["params"] * 4 / 1e6  # parameters plus BatchNorm buffers
        assert 0 < r["latency_ms"] < 1000 and r["latency_ms"] == p.student_latency_ms
        assert (r["arch"], r["width"], r["input_shape"], r["num_classes"]) == ("cnn", 4, [1, 8, 8], 10)
        assert r["epochs_trained"] == 2 and r["stopped_epoch"] is None
    row = p.teacher_row()
    assert row["test_acc"] == SoftTargetStore(store).attrs["teacher"]["test_acc"]
    # The teacher is never built here: size estimated from its parameter count, latency not measured.
    assert row["params"] == (64 * 64 + 64) + (64 * 64 + 64) + (64 * 10 + 10)  # the mlp-64 teacher, by hand
    assert row["size_mb"] == pytest.approx(row["params"] * 4 / 1e6) and row["size_mb_estimated"] is True
    assert row["latency_ms"] is None and row["width"] == 64


def test_the_batch_option_reaches_fit_group(digits_store, tmp_path, monkeypatch):
    seen = []

    def spy(specs, **kwargs):
        seen.append(kwargs["batched"])
        return []

    monkeypatch.setattr(distill, "fit_group", spy)
    p = distill.plan(_cfg(digits_store, tmp_path))
    for mode in ("auto", "on", "off"):
        plan = dataclasses.replace(p, cfg=dataclasses.replace(p.cfg, batch=mode))
        assert distill.train_students(plan, plan.cfg.students()) == []
    assert seen == [None, True, False]
    assert DistillConfig(store="s.zarr").group_size > 1  # grouping (and so batching) is the default


def test_groups_cut_the_grid(digits_store, tmp_path):
    cfg = _cfg(digits_store, tmp_path, temperatures=(1.0, 2.0, 4.0, 8.0), group_size=2)
    assert [len(g) for g in distill.groups(cfg)] == [2, 2, 1]
    assert sum(distill.groups(cfg), []) == cfg.students()
    # Seeds never share a group (a group shares its data order): 3 seeds x 2 runs in groups of 6.
    multi = _cfg(digits_store, tmp_path, temperatures=(4.0,), seeds=(0, 1, 2), group_size=6)
    assert [{s.seed for s in g} for g in distill.groups(multi)] == [{0}, {1}, {2}]


def test_groups_are_named_for_what_they_train(digits_store, tmp_path):
    """Not after their first student: a progress bar named "baseline-s0" tracked five students."""
    cfg = _cfg(digits_store, tmp_path, temperatures=(1.0, 2.0, 4.0, 8.0), seeds=(0, 1))
    assert distill.group_names(cfg) == ["seed 0: 5 students", "seed 1: 5 students"]
    split = _cfg(digits_store, tmp_path, temperatures=(1.0, 2.0, 4.0, 8.0), group_size=2)
    assert distill.group_names(split) == ["seed 0: students 1-2 of 5", "seed 0: students 3-4 of 5", "kl-T8-a0.9-s0"]
    assert len(distill.group_names(split)) == len(distill.groups(split))


def test_run_dir_rejects_paths(digits_store, tmp_path):
    from pipeline.errors import UserError

    with pytest.raises(UserError):
        runs.run_dir(_cfg(digits_store, tmp_path, run_name="../x"))
    assert runs.run_dir(_cfg(digits_store, tmp_path, run_name="r1")).endswith("reports/r1")


def test_a_store_with_label_noise_refuses_clean_data(tmp_path):
    from pipeline.data import load_dataset
    from tests.conftest import small_teacher_config
    from pipeline import teacher

    noisy = DataConfig(label_noise=0.2)
    p = teacher.plan(small_teacher_config(str(tmp_path), data=noisy, model=ModelConfig(arch="mlp", width=16),
                                          optim=OptimConfig(epochs=1)))
    store = teacher.publish(p, teacher.train(p))
    s = SoftTargetStore(store)
    assert s.attrs["data_config"]["label_noise"] == 0.2  # recorded in provenance
    clean = load_dataset(DataConfig())
    # The store holds the labels that were trained on: the noisy ones; val and test stay true.
    assert (s.labels("train") != clean.splits["train"].y.numpy()).mean() == pytest.approx(0.2, abs=0.05)
    for split in ("val", "test"):
        assert (s.labels(split) == clean.splits[split].y.numpy()).all()
    with pytest.raises(StoreError) as e:
        distill.plan(_cfg(store, tmp_path, data=DataConfig()))
    assert e.value.field == "splits.train.fingerprint"
    # Without --dataset the data is rebuilt from the store's data_config, noise included: accepted.
    plan = distill.plan(_cfg(store, tmp_path))
    assert plan.data_cfg == noisy
    assert (plan.dataset.splits["train"].y.numpy() == s.labels("train")).all()


def test_a_store_contradicting_its_own_size_says_which_number_is_which(store_copy, tmp_path):
    import zarr

    g = zarr.open_group(store_copy, mode="r+")
    d = dict(g.attrs["dataset"])
    d["splits"] = {**d["splits"], "train": {**d["splits"]["train"], "size": 1256}}
    g.attrs["dataset"] = d
    with pytest.raises(StoreError) as e:
        distill.plan(_cfg(store_copy, tmp_path))
    # The store's own contract check (at open, before the data is compared) names both numbers.
    assert e.value.field == "dataset.splits.train.size"
    assert "1256 disagrees with layout.train.rows 1257" in e.value.problem


def test_mse_is_trained_once_per_alpha_and_seed(digits_store, tmp_path):
    """`--losses kl mse --temperatures 1 4`: MSE ignores T, so one MSE student, shown with T as "—"."""
    from pipeline.report import leaderboard, markdown

    cfg = _cfg(digits_store, tmp_path, losses=("kl", "mse"), optim=OptimConfig(epochs=1))
    p = distill.plan(cfg)
    rows = [p.teacher_row()] + distill.train_students(p, cfg.students())
    assert [r["run_id"] for r in rows[1:]] == ["baseline-s0", "kl-T1-a0.9-s0", "kl-T4-a0.9-s0", "mse-a0.9-s0"]
    mse = rows[-1]
    assert (mse["loss"], mse["temperature"], mse["alpha"], mse["status"]) == ("mse", None, 0.9, "ok")
    line = next(ln for ln in markdown(leaderboard(rows)).splitlines() if ln.startswith("| mse-a0.9 |"))
    assert line.startswith("| mse-a0.9 | mse | — | 0.9 |")
