"""Real-augmentation and mixed teacher views: drawn per (seed, id, view), stored, replayed bit for bit."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch

from pipeline import distill, teacher, views
from pipeline.augment import Augmenter
from pipeline.config import AugmentConfig, DataConfig, DistillConfig, MixConfig, ModelConfig, OptimConfig
from pipeline.data import load_dataset
from pipeline.errors import StoreError, UserError
from pipeline.loader import SoftTargetLoader
from pipeline.store import SoftTargetStore
from pipeline.view_fidelity import verify_views
from tests.conftest import small_teacher_config

REAL = AugmentConfig(ops=("crop", "flip", "jitter"), crop_scale=(0.3, 1.0))
MIX = MixConfig(ops=("mixup", "cutmix"), prob=0.6)
VIEWS = 4


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory):
    """A float32 digits store of 4 views: crops, flips, colour jitter, and MixUp/CutMix with partners."""
    root = str(tmp_path_factory.mktemp("mixed"))
    cfg = small_teacher_config(root, data=DataConfig(train_limit=300), optim=OptimConfig(epochs=1),
                               views=VIEWS, view_augment=REAL, view_mix=MIX, encoding="float32")
    p = teacher.plan(cfg)
    return teacher.publish(p, teacher.train(p))


def _split(store: SoftTargetStore, name: str = "train"):
    return load_dataset(store.meta.data_cfg()).splits[name]


def test_views_store_named_columns_and_draws_per_seed_id_view(mixed_store):
    s = SoftTargetStore(mixed_store)
    names = s.meta.views.params
    assert names == ("flip", "crop_top", "crop_left", "crop_height", "crop_width", "brightness", "contrast",
                     "saturation", "mix", "partner", "lam", "box_top", "box_left", "box_height", "box_width")
    assert s.meta.views.mix_cfg() == MIX and s.meta.views.replay()[0] == REAL
    params = s.view_params("train")  # (N, V, P)
    assert params.shape == (300, VIEWS, len(names))
    col = {c: i for i, c in enumerate(names)}
    clean = params[:, 0]
    assert np.all(clean[:, col["partner"]] == -1) and np.all(clean[:, col["lam"]] == 1)
    assert np.all(clean[:, col["crop_height"]] == 8) and np.all(clean[:, col["brightness"]] == 1)
    later = params[:, 1:]
    assert (later[..., col["crop_height"]] < 8).any() and (later[..., col["brightness"]] != 1).any()
    assert (later[..., col["mix"]] == 1).any() and (later[..., col["mix"]] == 2).any()
    assert (later[..., col["mix"]] == 0).any()  # some views are augmented but not mixed
    # A pure function of (seed, id, view): any subset of the samples, in any order, draws the same rows.
    ds = load_dataset(s.meta.data_cfg())
    split = ds.splits["train"]
    partners = views.Partners(split, "train")
    pick = torch.tensor([250, 3, 77])
    again = views.draw_rows(REAL, MIX, ids=split.ids[pick], view=2, seed=s.meta.views.seed, size=(8, 8),
                               partners=partners)
    np.testing.assert_array_equal(again, params[pick.numpy(), 2])


def test_partners_come_from_the_same_split_and_another_class(mixed_store):
    s = SoftTargetStore(mixed_store)
    col = {c: i for i, c in enumerate(s.meta.views.params)}
    ids_by_split = {name: set(s.ids(name).tolist()) for name in ("train", "val", "test")}
    for name in ("train", "val", "test"):
        params, labels, ids = s.view_params(name), s.labels(name), s.ids(name)
        mixed = params[..., col["mix"]] > 0  # (N, V)
        partner = params[..., col["partner"]][mixed].astype(np.int64)
        assert len(partner) and set(partner.tolist()) <= ids_by_split[name]  # never another split
        label_of = dict(zip(ids.tolist(), labels.tolist()))
        own = np.broadcast_to(labels[:, None], mixed.shape)[mixed]
        assert all(label_of[p] != y for p, y in zip(partner.tolist(), own.tolist()))
        lam = params[..., col["lam"]][mixed]
        assert np.all((lam >= 0) & (lam <= 1))
    # CutMix's λ is exactly the share of the image its box leaves to the sample.
    params = s.view_params("train")
    cut = params[..., col["mix"]] == 2
    box = params[..., col["box_height"]][cut] * params[..., col["box_width"]][cut]
    np.testing.assert_allclose(params[..., col["lam"]][cut], 1 - box / 64, atol=1e-6)


@pytest.fixture(scope="module")
def epoch_by_row(mixed_store):
    """Row -> (pixels, logits, partner label, λ) of epoch 0, read with 0 and with 2 DataLoader workers."""
    s = SoftTargetStore(mixed_store)
    split = _split(s)
    out = {}
    for workers in (0, 2):
        loader = SoftTargetLoader(split, 64, seed=3, store=s, workers=workers, cache_mb=0 if workers else 1000)
        seen = {}
        for b in loader.epoch(0):
            for i, r in enumerate(b.rows.tolist()):
                seen[r] = (b.x[i], b.logits[i], b.mix[0][i], b.mix[1][i])
        out[workers] = seen
    return out


def test_replayed_pixels_bit_identical_with_0_and_2_workers(mixed_store, epoch_by_row):
    s = SoftTargetStore(mixed_store)
    split = _split(s)
    zero, two = epoch_by_row[0], epoch_by_row[2]
    assert sorted(zero) == sorted(two) == list(range(300))
    for r in zero:
        for a, b in zip(zero[r], two[r]):
            assert torch.equal(a, b), r
    # ... and they are the pixels the stored rows describe, with the label term's mix.
    loader = SoftTargetLoader(split, 64, seed=3, store=s)
    rows = np.arange(300)
    picked = loader.views_for(rows, 0)
    params = s.view_params("train")[rows, picked]  # (N, P)
    partners = views.Partners(split, "train")
    expected = views.view_pixels(split.x, params, s.meta.views.params, partners)
    assert all(torch.equal(zero[r][0], expected[r]) for r in rows)
    every = s.read_views("train")
    assert all(torch.equal(zero[r][1], torch.from_numpy(every[r, picked[r]])) for r in rows)
    col = {c: i for i, c in enumerate(s.meta.views.params)}
    mixed = params[:, col["mix"]] > 0
    assert mixed.any() and (~mixed).any()
    for r in rows:
        partner_y, lam = zero[r][2], zero[r][3]
        if mixed[r]:
            pid = int(params[r, col["partner"]])
            assert int(partner_y) == int(split.y[split.ids == pid]) and float(lam) == params[r, col["lam"]]
        else:
            assert int(partner_y) == int(split.y[r]) and float(lam) == 1.0
    # A mixed view really is a blend: not the sample's own transformed pixels.
    r = int(np.nonzero(mixed)[0][0])
    own_only = views.apply_rows(split.x[r:r + 1], params[r:r + 1, :col["mix"]], s.meta.views.params[:col["mix"]])
    assert not torch.equal(zero[r][0], own_only[0])


def test_verify_views_covers_mixed_views_and_catches_a_wrong_replay(mixed_store):
    s = SoftTargetStore(mixed_store)
    ok = verify_views(s, samples=24)
    assert ok["views"] == VIEWS and ok["mixed_views"] > 0 and ok["max_abs_diff"] < 1e-3
    with pytest.raises(StoreError) as e:
        verify_views(s, samples=24, replay_seed=s.meta.views.seed + 1)
    assert e.value.field == "views" and "does not reproduce" in str(e.value)


def test_distilling_from_mixed_views_uses_the_mixed_labels(mixed_store, tmp_path, caplog):
    cfg = DistillConfig(store=mixed_store, model=ModelConfig("cnn", 4), optim=OptimConfig(epochs=1, lr=1e-2),
                        temperatures=(1.0,), alphas=(1.0,), report_root=str(tmp_path), device="cpu")
    with caplog.at_level(logging.INFO, logger="pipeline.student_group"):
        rows = distill.train_students(distill.plan(cfg), cfg.students())
    assert [r["status"] for r in rows] == ["ok", "ok"]
    # One group of two small students, batched on a CPU: the stacked step takes the λ-weighted hard term.
    assert "batched: one stacked cnn of 2 students" in caplog.text


def test_a_student_trains_the_same_alone_or_in_a_mixed_view_group(mixed_store):
    """Replayed mixed views, λ-weighted labels and the shared batch stream leave nothing for group mates to
    change: a student ends bit-identical alone and beside two others in the per-student loop (a stack gives the
    same students to float rounding: tests/test_stacking_mixed.py)."""
    from pipeline.grid import StudentSpec
    from pipeline.student_group import fit_group

    store = SoftTargetStore(mixed_store)
    ds = load_dataset(store.meta.data_cfg())

    def run(temperatures):
        loader = SoftTargetLoader(ds.splits["train"], 64, seed=0, store=store)
        specs = [StudentSpec(loss="kl", temperature=t, alpha=1.0, beta=None, seed=0) for t in temperatures]
        return fit_group(specs, model_cfg=ModelConfig("cnn", 4), optim=OptimConfig(epochs=2, lr=1e-2),
                         augment=AugmentConfig(), loader=loader, val=ds.splits["val"], input_shape=ds.input_shape,
                         num_classes=ds.num_classes, device=torch.device("cpu"), batched=False)

    (alone,), together = run([2.0]), run([1.0, 2.0, 4.0])
    assert alone.step_losses == together[1].step_losses
    for a, b in zip(alone.model.state_dict().values(), together[1].model.state_dict().values()):
        assert torch.equal(a, b)
    assert together[0].step_losses != together[1].step_losses  # the temperatures really differ


def _tamper(src: str, dst, value: float) -> tuple[str, int, int]:
    """Copy the store and point one mixed train view's partner at ``value``; returns (path, sample id, view)."""
    import zarr

    path = str(dst / "tampered.zarr")
    shutil.copytree(src, path)
    s = SoftTargetStore(path)
    col = s.meta.views.params.index("partner")
    params = s.view_params("train")
    r, v = (int(i[0]) for i in np.nonzero(params[..., s.meta.views.params.index("mix")] > 0))
    params[r, v, col] = value
    arr = zarr.open_group(path, mode="r+")["train"]["view_params"]
    arr[r] = params[r]
    return path, int(s.ids("train")[r]), v


def test_a_partner_missing_from_the_split_is_refused_on_read(mixed_store, tmp_path):
    s = SoftTargetStore(mixed_store)
    val_id = int(s.ids("val")[0])  # a real sample, but of another split
    path, sample, view = _tamper(mixed_store, tmp_path, float(val_id))
    with pytest.raises(StoreError) as e:
        SoftTargetStore(path).view_params("train")
    assert e.value.field == "train/view_params"
    assert f"view {view} of sample id {sample} names partner {val_id}" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(StoreError):  # stage 2 refuses it before training
        distill.plan(DistillConfig(store=path, device="cpu", report_root=str(tmp_path)))
    with pytest.raises(StoreError):
        SoftTargetStore(path).verify()


def test_mixing_a_single_class_split_is_one_line(capsys, tmp_path):
    from flows.cli import main

    with pytest.raises(SystemExit) as e:
        main(["teacher", "--train-limit", "1", "--views", "2", "--view-mix", "mixup", "--store-root",
              str(tmp_path / "s"), "--checkpoint-root", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: view_mix: mixup mixes a sample with a partner of another class, but the train "
                          "split has a single class")
    assert not (tmp_path / "s").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("kwargs,field", [
    ({"views": 1, "view_mix": MixConfig(ops=("mixup",))}, "view_mix"),
])
def test_mix_needs_views(kwargs, field):
    from pipeline.config import TeacherConfig

    with pytest.raises(UserError) as e:
        TeacherConfig(**kwargs)
    assert e.value.field == field


@pytest.mark.parametrize("build,field", [
    (lambda: MixConfig(ops=("blend",)), "view_mix"),
    (lambda: MixConfig(ops=("mixup", "mixup")), "view_mix"),
    (lambda: MixConfig(ops=("mixup",), prob=0.0), "mix_prob"),
    (lambda: MixConfig(ops=("cutmix",), cutmix_alpha=0.0), "cutmix_alpha"),
    (lambda: AugmentConfig(ops=("crop",), crop_scale=(0.5,)), "crop_scale"),
    (lambda: AugmentConfig(ops=("crop",), crop_scale=(0.9, 0.5)), "crop_scale"),
    (lambda: AugmentConfig(ops=("crop",), crop_ratio=(0.0, 1.0)), "crop_ratio"),
    (lambda: AugmentConfig(ops=("jitter",), jitter=1.5), "jitter"),
])
def test_bad_view_settings_name_their_field(build, field):
    with pytest.raises(UserError) as e:
        build()
    assert e.value.field == field


def test_old_view_ops_keep_their_four_columns_and_draws():
    """Stores of translate/flip/rotate views keep [dx, dy, flip, angle], drawn as before crop and jitter existed."""
    aug = AugmentConfig(ops=("translate", "flip", "rotate"))
    assert views.columns(aug, MixConfig()) == Augmenter.PARAM_NAMES
    ids = torch.arange(10, 30)
    rows = views.draw_rows(aug, MixConfig(), ids=ids, view=3, seed=5, size=(8, 8), partners=None)
    np.testing.assert_array_equal(rows, Augmenter.params_array(Augmenter(aug).view_params(ids, torch.full_like(ids, 3),
                                                                                             5)))
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(views.apply_rows(x, rows, Augmenter.PARAM_NAMES),
                       Augmenter(aug).replay(x, ids, torch.full_like(ids, 3), seed=5))


def test_training_augmentation_takes_crop_and_jitter():
    aug = Augmenter(AugmentConfig(ops=("crop", "jitter")))
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and not torch.equal(a, x)
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(1)))  # seeded: the same draws, the same pixels


# --- views replayed at a student's own resolution ---------------------------------------------------------------


def test_a_crop_view_at_the_students_size_is_one_resized_crop_of_the_teachers_pixels():
    """At another size than the store's, a view is its recorded box resampled once, straight to the student's
    size; the clean view is one resize (what the student's input hook does to val and test); at the store's size
    nothing changes."""
    from torchvision.transforms.v2 import functional as F

    names = views.columns(AugmentConfig(ops=("crop", "flip")), MixConfig())
    x = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))  # the teacher's pixels, 40 px
    rows = np.array([[0, 0, 0, 40, 40], [0, 3, 5, 20, 30], [1, 11, 2, 29, 17]], dtype=np.float32)  # flip, box
    out = views.apply_rows(x, rows, names, size=(24, 24))
    assert out.shape == (3, 3, 24, 24)
    assert torch.equal(out[0], F.resize(x, [24, 24], antialias=True)[0])
    assert torch.equal(out[1], F.resized_crop(x[1], 3, 5, 20, 30, size=[24, 24], antialias=True))
    assert torch.equal(out[2], F.horizontal_flip(F.resized_crop(x[2], 11, 2, 29, 17, size=[24, 24], antialias=True)))
    # Not the teacher's view resized again: that resamples twice.
    twice = F.resize(views.apply_rows(x, rows, names), [24, 24], antialias=True)
    assert not torch.equal(out[1], twice[1])
    # At the store's size, the view is the teacher's, bit for bit.
    assert torch.equal(views.apply_rows(x, rows, names, size=(40, 40)), views.apply_rows(x, rows, names))


def test_translate_and_cutmix_views_at_half_resolution_scale_shifts_and_boxes():
    from torchvision.transforms.v2 import functional as F

    names = views.columns(AugmentConfig(ops=("translate", "rotate")), MixConfig(ops=("mixup", "cutmix")))
    assert names == ("dx", "dy", "angle", "mix", "partner", "lam", "box_top", "box_left", "box_height", "box_width")
    g = torch.Generator().manual_seed(1)
    x, partner = torch.rand(3, 3, 32, 32, generator=g), torch.rand(3, 3, 32, 32, generator=g)
    # dx, dy, angle | mix, partner, lam | CutMix box at 32 px
    rows = np.array([[4, -3, 0, 2, 7, 0.8125, 8, 5, 16, 11],  # CutMix: box (8, 5, 16, 11) -> (4, 3, 8, 5) at 16 px
                     [-6, 2, 10, 1, 9, 0.3, 0, 0, 0, 0],  # MixUp, rotated 10 degrees
                     [3, 0, 0, 0, -1, 1.0, 0, 0, 0, 0]], dtype=np.float32)  # neither: shift 3 -> 1.5 -> 2
    out = views.apply_rows(x, rows, names, partner, size=(16, 16))
    assert out.shape == (3, 3, 16, 16)
    small, small_partner = F.resize(x, [16, 16], antialias=True), F.resize(partner, [16, 16], antialias=True)

    def moved(img, dx, dy, angle=0.0):
        return F.affine(img, angle=angle, translate=[dx, dy], scale=1.0, shear=[0.0, 0.0])

    cut = moved(small[0], 2, -2)  # 4 -> 2, -3 -> -1.5 -> -2 (halves away from zero)
    cut[:, 4:12, 3:8] = moved(small_partner[0], 2, -2)[:, 4:12, 3:8]  # the box's edges scaled: rows 8..24 -> 4..12
    assert torch.equal(out[0], cut)
    torch.testing.assert_close(out[1], 0.3 * moved(small[1], -3, 1, 10.0) + 0.7 * moved(small_partner[1], -3, 1, 10.0),
                               rtol=0, atol=0)  # MixUp: λ as stored
    assert torch.equal(out[2], moved(small[2], 2, 0))
    assert views.scaled_box((8, 5, 16, 11), (0.5, 0.5)) == (4, 3, 8, 5)
    assert views.scaled_box((0, 31, 32, 1), (0.5, 0.5)) == (0, 16, 16, 0)  # edges stay inside the image


def test_a_student_at_half_the_stores_resolution_trains_on_views_made_at_its_size(mixed_store, tmp_path):
    """Stage 2 with a student cropping 4 px on 8 px digits views (crops, flips, jitter, MixUp, CutMix): its batches
    come at 4 px, each view made there from its recorded row in one resampling, so its input hook has nothing left
    to resize; it trains."""
    from pipeline.preprocessing import InputHook
    from pipeline.train import build_seeded

    s = SoftTargetStore(mixed_store)
    cfg = DistillConfig(store=mixed_store, model=ModelConfig("cnn", 4, crop=4), optim=OptimConfig(epochs=1, lr=1e-2),
                        temperatures=(2.0,), alphas=(1.0,), seeds=(0,), report_root=str(tmp_path), device="cpu")
    p = distill.plan(cfg)
    split = p.dataset.splits["train"]
    assert p.dataset.input_shape == (1, 8, 8)
    loader = distill.student_loader(p, seed=0, device=torch.device("cpu"))
    b = next(iter(loader.epoch(0)))
    assert b.x.shape == (64, 1, 4, 4)
    rows = b.rows.numpy()
    params = s.view_params("train")[rows, loader.views_for(rows, 0)]  # (B, P)
    teachers = views.view_pixels(split.batch(rows), params, s.meta.views.params, views.Partners(split, "train"))
    assert teachers.shape == (64, 1, 8, 8)
    assert torch.equal(b.x, views.view_pixels(split.batch(rows), params, s.meta.views.params,
                                              views.Partners(split, "train"), size=(4, 4)))
    # DataLoader workers replay at the student's size too, bit for bit.
    in_workers = SoftTargetLoader(split, 64, seed=0, store=s, workers=2, view_size=(4, 4), pin_memory=False)
    first = next(iter(in_workers.epoch(0)))
    assert torch.equal(first.rows, b.rows) and torch.equal(first.x, b.x)
    student = build_seeded(cfg.model, p.dataset.input_shape, p.dataset.num_classes, seed=0)
    (hook,) = [h for h in student._forward_pre_hooks.values() if isinstance(h, InputHook)]
    assert hook.size == tuple(b.x.shape[-2:])  # the hook resizes only what differs: nothing here
    result = distill.train_students(p, cfg.students())
    assert [r["status"] for r in result] == ["ok", "ok"] and all(np.isfinite(r["test_nll"]) for r in result)
