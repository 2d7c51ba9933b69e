"""The label mask (pipeline/data/labels.py): which train rows keep their label for the students, seeded and
stratified; the store's record of it; stage 2 training the students on every row and the baseline on the
labelled ones."""
from __future__ import annotations

import dataclasses

import os

import numpy as np
import pytest
import torch
import zarr

from pipeline import distill
from pipeline.compat import check_fingerprints
from pipeline.config import DataConfig, DistillConfig, ModelConfig, OptimConfig
from pipeline.data import load_dataset
from pipeline.data.labels import choose_labelled, choose_transfer, label_mask
from pipeline.errors import StoreError, UserError
from pipeline.names import NO_LABEL
from pipeline.store import FORMAT_VERSION, SoftTargetStore
from tests.conftest import build_store, cli_fails

CLASSES = [str(c) for c in range(4)]
Y = np.repeat(np.arange(4), [10, 20, 30, 40])  # (100,) classes of 10, 20, 30 and 40 rows


def test_per_class_keeps_exactly_k_of_every_class_seeded_and_nested():
    a = choose_labelled(Y, fraction=None, per_class=5, seed=0, class_names=CLASSES)
    assert np.bincount(Y[a]).tolist() == [5, 5, 5, 5]
    assert np.array_equal(a, choose_labelled(Y, fraction=None, per_class=5, seed=0, class_names=CLASSES))
    assert not np.array_equal(a, choose_labelled(Y, fraction=None, per_class=5, seed=1, class_names=CLASSES))
    three = choose_labelled(Y, fraction=None, per_class=3, seed=0, class_names=CLASSES)
    assert (three <= a).all()  # a smaller labelled set is a subset of a larger one with the same seed


def test_fraction_keeps_the_floor_per_class_at_least_one_and_everything_at_one():
    a = choose_labelled(Y, fraction=0.25, per_class=None, seed=0, class_names=CLASSES)
    assert np.bincount(Y[a]).tolist() == [2, 5, 7, 10]  # floor(0.25 * n_c)
    b = choose_labelled(Y, fraction=0.05, per_class=None, seed=0, class_names=CLASSES)
    assert np.bincount(Y[b]).tolist() == [1, 1, 1, 2]  # never below one per class
    assert choose_labelled(Y, fraction=1.0, per_class=None, seed=0, class_names=CLASSES).all()
    assert choose_labelled(Y, fraction=None, per_class=None, seed=0, class_names=CLASSES).all()


def test_rows_without_a_label_are_never_chosen_and_the_transfer_share_is_seeded_and_nested():
    y = np.concatenate([Y, np.full(50, NO_LABEL)])
    a = choose_labelled(y, fraction=None, per_class=2, seed=0, class_names=CLASSES)
    assert a.sum() == 8 and not a[100:].any()
    half = choose_transfer(~a, fraction=0.5, seed=0)
    assert half.sum() == round(0.5 * (~a).sum()) and (half <= ~a).all()
    assert (choose_transfer(~a, fraction=0.25, seed=0) <= half).all()
    assert not choose_transfer(~a, fraction=0.0, seed=0).any()  # 0: the students train on the labelled rows alone


def test_too_few_labels_for_the_classes_are_refused_naming_the_option():
    with pytest.raises(UserError) as e:
        choose_labelled(Y, fraction=0.03, per_class=None, seed=0, class_names=CLASSES)  # keeps 3 < 4 classes
    assert e.value.field == "labelled_fraction" and "fewer than the 4 classes" in str(e.value)
    with pytest.raises(UserError) as e:
        choose_labelled(Y, fraction=None, per_class=11, seed=0, class_names=CLASSES)
    assert e.value.field == "labelled_per_class" and "'0' has 10 train samples" in str(e.value)


def test_the_mask_hides_labels_without_changing_the_dataset():
    ds = load_dataset(DataConfig(train_limit=200, labelled_per_class=3))
    train = ds.splits["train"]
    mask = label_mask(train, DataConfig(train_limit=200, labelled_per_class=3), ds.class_names)
    assert mask.num_labelled == 30 and mask.num_unlabelled == 170 and mask.active
    hidden = mask.hidden(train).y.numpy()
    assert (hidden[~mask.labelled] == NO_LABEL).all() and np.array_equal(hidden[mask.labelled],
                                                                          train.y.numpy()[mask.labelled])
    assert (train.y.numpy() >= 0).all()  # the dataset (what the store holds and fingerprints) keeps every label
    full = load_dataset(DataConfig(train_limit=200))
    assert train.fingerprint() == full.splits["train"].fingerprint()


# --- the store and stage 2 ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def per_class_store(tmp_path_factory) -> str:
    torch.set_num_threads(1)
    root = str(tmp_path_factory.mktemp("labels"))
    return build_store(root, data=DataConfig(train_limit=300, labelled_per_class=5), optim=OptimConfig(epochs=1))


def _distill_cfg(store, tmp_path, **kw) -> DistillConfig:
    kw = {"temperatures": (4.0,), **kw}
    return DistillConfig(store=store, model=ModelConfig(arch="cnn", width=4), optim=OptimConfig(epochs=1),
                         report_root=str(tmp_path / "reports"), device="cpu", **kw)


def test_the_store_records_the_mask_its_counts_and_fingerprint(per_class_store):
    store = SoftTargetStore(per_class_store)
    meta = store.meta
    assert meta.format_version == FORMAT_VERSION == 6
    assert (meta.dataset.labels.labelled, meta.dataset.labels.unlabelled) == (50, 250)
    ds = load_dataset(meta.data_cfg())
    mask = label_mask(ds.splits["train"], meta.data_cfg(), ds.class_names)
    assert meta.dataset.labels.fingerprint == ds.splits["train"].subset(mask.rows("unlabelled")).fingerprint()
    assert (store.labels("train") >= 0).all()  # the teacher's true labels, all of them
    assert check_fingerprints(store).startswith("checked against the data")


def test_inspect_shows_the_mask_and_verify_checks_it(per_class_store, capsys):
    from flows.cli import main

    main(["inspect", per_class_store, "--verify"])
    out = capsys.readouterr().out
    assert "train rows for the students: 50 labelled, 250 unlabelled" in out
    assert "fingerprints:     checked against the data" in out


def test_a_damaged_label_record_is_refused_by_stage2_and_verify(per_class_store, tmp_path):
    import shutil

    copy = str(tmp_path / "copy.zarr")
    shutil.copytree(per_class_store, copy)
    g = zarr.open_group(copy, mode="r+")
    attrs = dict(g.attrs)
    attrs["dataset"] = {**attrs["dataset"], "labels": {**attrs["dataset"]["labels"], "fingerprint": "0" * 64}}
    g.attrs.put(attrs)
    with pytest.raises(StoreError) as e:
        distill.plan(_distill_cfg(copy, tmp_path))
    assert e.value.field == "dataset.labels.fingerprint"
    with pytest.raises(StoreError):
        check_fingerprints(SoftTargetStore(copy))


def test_stage2_baseline_trains_on_the_labelled_rows_and_students_on_every_row_labels_hidden(
        per_class_store, tmp_path, monkeypatch):
    seen = []
    real = distill.fit_group

    def spy(specs, *, loader, **kw):
        ys = torch.cat([b.y for b in loader.epoch(0)])
        seen.append(([s.run_id for s in specs], len(loader), ys, kw["unlabelled_weight"]))
        return real(specs, loader=loader, **kw)

    monkeypatch.setattr(distill, "fit_group", spy)
    cfg = _distill_cfg(per_class_store, tmp_path, unlabelled_weight=0.5)
    plan = distill.plan(cfg)
    (group,) = distill.groups(cfg)
    reported = []
    rows = distill.train_students(plan, group, progress=lambda label, e, n, m: reported.append((e, n)))
    assert [r["status"] for r in rows] == ["ok", "ok"] and [r["run_id"] for r in rows] == [s.run_id for s in group]
    assert reported == [(1, 2), (2, 2)]  # one epoch per pass, counted on as one bar
    by_id = {ids[0]: (n, ys, w) for ids, n, ys, w in seen}
    base_steps, ys, _ = by_id["baseline-s0"]
    # The labelled rows alone, 6 times each an epoch: the 300 rows, so the steps, of the students' epoch.
    assert len(ys) == 300 and (ys >= 0).all()
    n, ys, w = by_id["kl-T4-a0.9-s0"]
    assert len(ys) == 300 and int((ys == NO_LABEL).sum()) == 250 and w == 0.5 and base_steps == n
    assert plan.report_meta()["labelled"] == 50 and plan.report_meta()["unlabelled"] == 250


def test_distill_applies_a_labelled_share_to_a_store_written_without_one(digits_store, tmp_path, capsys):
    from flows.cli import build_parser, distill_config

    a = build_parser().parse_args(["distill", "--store", digits_store, "--labelled-fraction", "0.1"])
    cfg = distill_config(a, digits_store)
    assert cfg.data is not None and cfg.data.labelled_fraction == 0.1 and cfg.data.name == "digits"
    plan = distill.plan(_distill_cfg(digits_store, tmp_path, data=cfg.data))
    counts = plan.label_counts()
    assert 0 < counts["labelled"] < counts["labelled"] + counts["unlabelled"] == len(plan.dataset.splits["train"])
    # Another dataset option than the mask still needs --dataset.
    assert cli_fails(capsys, "distill", "--store", digits_store, "--train-limit", "100").startswith("error: dataset")


@pytest.mark.parametrize("argv, field", [
    (("--labelled-fraction", "0"), "labelled_fraction"),
    (("--labelled-fraction", "1.5"), "labelled_fraction"),
    (("--labelled-per-class", "0"), "labelled_per_class"),
    (("--labelled-fraction", "0.001"), "labelled_fraction"),  # 1 of 1257 train samples: fewer than 10 classes
    (("--labelled-per-class", "500"), "labelled_per_class"),  # more than a class has
    (("--transfer-fraction", "-0.1"), "transfer_fraction"),
    (("--transfer-fraction", "1.5"), "transfer_fraction"),
])
def test_bad_label_options_are_one_line_and_write_nothing(capsys, tmp_path, argv, field):
    out = tmp_path / "out"
    err = cli_fails(capsys, "teacher", *argv, "--store-root", str(out / "s"), "--checkpoint-root", str(out / "c"),
                    "--device", "cpu")
    assert err.startswith(f"error: {field}: ")
    assert not any(files for _, _, files in os.walk(out))


def test_the_unlabelled_weight_reaches_the_students_loss():
    from pipeline.grid import StudentSpec
    from pipeline.student_group import student_objective

    spec = StudentSpec(loss="kl", temperature=4.0, alpha=0.9, beta=None, seed=0)
    g = torch.Generator().manual_seed(0)
    out, soft = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)  # (B, C) student and teacher
    unlabelled = torch.full((6,), NO_LABEL)
    one = student_objective(spec, 1.0)(out, soft, unlabelled)
    assert one > 0
    assert torch.allclose(student_objective(spec, 2.0)(out, soft, unlabelled), 2 * one)
    assert student_objective(spec, 0.0)(out, soft, unlabelled) == 0
    labelled = torch.arange(6) % 10  # labelled rows ignore the weight
    assert torch.equal(student_objective(spec, 0.0)(out, soft, labelled), student_objective(spec)(out, soft, labelled))


def test_a_stacked_group_weighs_unlabelled_rows_as_the_per_student_loop(per_class_store, tmp_path):
    """The stack takes --unlabelled-weight too: its step losses equal the loop's on rows with hidden labels."""
    from pipeline.student_group import fit_group

    cfg = _distill_cfg(per_class_store, tmp_path, temperatures=(1.0, 4.0), unlabelled_weight=0.5)
    plan = distill.plan(cfg)
    ds, mask = plan.dataset, plan.labels
    specs = [s for s in cfg.students() if not s.is_baseline]
    losses = {}
    for batched in (True, False):
        loader = distill.student_loader(plan, seed=0, device=torch.device("cpu"))
        results = fit_group(specs, model_cfg=cfg.model, optim=cfg.optim, augment=cfg.augment, loader=loader,
                            val=ds.splits["val"], input_shape=ds.input_shape, num_classes=ds.num_classes,
                            device=torch.device("cpu"), batched=batched, unlabelled_weight=0.5)
        losses[batched] = [r.step_losses for r in results]
    assert mask.num_unlabelled == 250
    np.testing.assert_allclose(np.array(losses[True]), np.array(losses[False]), rtol=1e-5)


def test_kd_distill_and_kd_run_refuse_bad_label_options_in_one_line(digits_store, capsys, tmp_path):
    reports = tmp_path / "reports"
    err = cli_fails(capsys, "distill", "--store", digits_store, "--labelled-fraction", "0.001", "--report-root",
                    str(reports), "--device", "cpu")
    assert err.startswith("error: labelled_fraction: ") and "fewer than the 10 classes" in err
    err = cli_fails(capsys, "distill", "--store", digits_store, "--labelled-per-class", "5", "--labelled-fraction",
                    "0.5", "--report-root", str(reports))
    assert err.startswith("error: labelled_fraction: ") and "pass one of them" in err
    assert cli_fails(capsys, "distill", "--store", digits_store, "--unlabelled-weight", "-1").startswith(
        "error: unlabelled_weight: ")
    err = cli_fails(capsys, "run", "--labelled-per-class", "0", "--store-root", str(tmp_path / "s"),
                    "--report-root", str(reports), "--checkpoint-root", str(tmp_path / "c"))
    assert err.startswith("error: --labelled-per-class (teacher): must be at least 1")
    assert not any(files for _, _, files in os.walk(tmp_path))


def test_mixed_views_hide_the_partners_labels_too(tmp_path):
    """On a store of mixed views, a partner whose label the students may not see brings NO_LABEL to the λ-weighted
    hard term (which then drops its share), not its true label."""
    from pipeline.config import AugmentConfig, MixConfig

    torch.set_num_threads(1)
    store = build_store(str(tmp_path), data=DataConfig(train_limit=200, labelled_per_class=3),
                        optim=OptimConfig(epochs=1), views=2, view_augment=AugmentConfig(ops=("flip",)),
                        view_mix=MixConfig(ops=("mixup",), prob=1.0))
    plan = distill.plan(_distill_cfg(store, tmp_path))
    mask, train = plan.labels, plan.dataset.splits["train"]
    hidden = mask.hidden(train).y
    loader = distill.student_loader(plan, seed=0, device=torch.device("cpu"))
    loader.view_policy = "cycle"  # epoch 1: every row's view 1, the mixed one
    partners_seen = []
    for b in loader.epoch(1):
        partner_y, _ = b.mix  # (B,) partner labels, (B,) λ
        assert torch.equal(b.y, hidden[b.rows])
        partners_seen.append(partner_y)
    partner_y = torch.cat(partners_seen)
    assert (partner_y == NO_LABEL).sum() > 100 and (partner_y >= 0).sum() > 0  # most partners are unlabelled rows
    assert set(partner_y.tolist()) <= set(hidden.tolist())


def test_no_transfer_set_trains_baseline_and_students_together_on_the_labelled_rows(per_class_store, tmp_path):
    """``--transfer-fraction 0``: the students keep the labelled rows alone, the baseline's rows: one pass for both,
    the students' soft targets read as ever."""
    store = SoftTargetStore(per_class_store)
    data = dataclasses.replace(store.meta.data_cfg(), transfer_fraction=0.0)
    plan = distill.plan(_distill_cfg(per_class_store, tmp_path, data=data))
    assert plan.label_counts() == {"labelled": 50, "unlabelled": 0}
    (group,) = distill.groups(plan.cfg)
    parts = distill._by_rows(group, plan.labels)
    assert len(parts) == 1 and int(parts[0][0].sum()) == 50
    rows = distill.train_students(plan, group)
    assert [r["status"] for r in rows] == ["ok", "ok"]
