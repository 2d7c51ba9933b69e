"""Students with their own preprocessing on a store written by a teacher with its own: the students read the
teacher's pixels (its resize and crop), have its stored views replayed at their own resolution (one resampling
from each recorded box) and normalise them for themselves; --verify-views reruns the teacher with its own
normalisation; stage 2 refuses a store whose recorded preprocessing it cannot reproduce, and data options that
contradict it."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
import torchvision
import zarr
from torchvision.transforms.v2 import functional as F

from pipeline import distill, teacher
from pipeline.config import AugmentConfig, DataConfig, DistillConfig, ModelConfig, OptimConfig, TeacherConfig
from pipeline.errors import StoreError, UserError
from pipeline.store import SoftTargetStore
from pipeline.view_fidelity import verify_views
from tests.test_model_sources import photos

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEACHER_MEAN, TEACHER_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STUDENT_MEAN, STUDENT_STD = (0.5, 0.5, 0.5), (0.25, 0.2, 0.3)


@pytest.fixture(scope="module")
def views_store(tmp_path_factory) -> tuple[str, str]:
    """A resnet18 teacher at 40 px (resized to 48, bicubic, ImageNet mean/std) trained one epoch, storing 3 views
    (RandomResizedCrop boxes and flips) of every image; and the folder."""
    root = tmp_path_factory.mktemp("teacher")
    folder = photos(root / "photos", ["a", "b"], n=8)
    cfg = TeacherConfig(data=DataConfig(name=f"imagefolder:{folder}"), device="cpu", encoding="float32",
                        model=ModelConfig(arch="torchvision:resnet18", resize=48, crop=40, interpolation="bicubic",
                                          mean=TEACHER_MEAN, std=TEACHER_STD),
                        optim=OptimConfig(epochs=1, batch_size=8), views=3,
                        view_augment=AugmentConfig(ops=("crop", "flip")),
                        store_root=str(root / "stores"), checkpoint_root=str(root / "ckpt"))
    p = teacher.plan(cfg)
    return teacher.publish(p, teacher.train(p)), folder


def test_the_store_records_the_teachers_preprocessing_and_verify_views_applies_it(views_store):
    path, _ = views_store
    store = SoftTargetStore(path)
    assert store.meta.transform["model"]["interpolation"] == "bicubic" and store.meta.transform["size"] == [40, 40]
    assert store.meta.teacher.preprocessing["mean"] == list(TEACHER_MEAN)
    assert verify_views(store, samples=4)["samples"] == 4
    # The same teacher without its normalisation scores other pixels: the check catches it.
    plain = teacher_without_hooks(store)
    with pytest.raises(StoreError, match="does not reproduce"):
        verify_views(store, samples=4, model=plain)


def teacher_without_hooks(store: SoftTargetStore) -> torch.nn.Module:
    from pipeline.checkpoints import load_store_teacher

    net = load_store_teacher(store)
    net._forward_pre_hooks.clear()
    return net


def test_students_resize_and_normalise_the_teachers_views_for_themselves(views_store, tmp_path):
    path, _ = views_store
    torch.manual_seed(5)
    weights = tmp_path / "mobilenet.safetensors"
    from safetensors.torch import save_file

    save_file(torchvision.models.mobilenet_v3_small().state_dict(), str(weights))  # a pretrained student (random)
    cfg = DistillConfig(store=path, model=ModelConfig(arch="torchvision:mobilenet_v3_small", weights=str(weights),
                                                      crop=32, mean=STUDENT_MEAN, std=STUDENT_STD),
                        optim=OptimConfig(epochs=1, batch_size=4), temperatures=(2.0,), seeds=(0,), device="cpu",
                        report_root=str(tmp_path / "reports"), run_name="run")
    p = distill.plan(cfg)
    ds = p.dataset
    assert ds.input_shape == (3, 40, 40) and ds.transform_hash == SoftTargetStore(path).meta.transform_hash
    # The pixels a student trains on: each view replayed from its recorded box straight at the student's 32 px
    # (one resampling), in [0, 1]; its hook only normalises them.
    loader = distill.student_loader(p, seed=0, device=torch.device("cpu"))
    b = next(iter(loader.epoch(0)))
    x = b.x
    assert x.shape[1:] == (3, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    rows = b.rows.numpy()
    params = p.store.view_params("train")[rows, loader.views_for(rows, 0)]  # (B, P): crop box, flip
    col = {c: i for i, c in enumerate(p.store.meta.views.params)}
    teachers = ds.splits["train"].batch(rows)  # (B, 3, 40, 40): the teacher's resize and crop
    for i in range(len(rows)):
        top, left, h, w = (int(params[i, col[c]]) for c in ("crop_top", "crop_left", "crop_height", "crop_width"))
        one = F.resized_crop(teachers[i], top, left, h, w, size=[32, 32], antialias=True)
        assert torch.equal(x[i], F.horizontal_flip(one) if params[i, col["flip"]] > 0.5 else one)
    from pipeline.train import build_seeded

    student = build_seeded(cfg.model, ds.input_shape, ds.num_classes, seed=0).eval()
    inner = build_seeded(cfg.model, ds.input_shape, ds.num_classes, seed=0).eval()
    inner._forward_pre_hooks.clear()
    with torch.no_grad():
        torch.testing.assert_close(student(x), inner(F.normalize(x, list(STUDENT_MEAN), list(STUDENT_STD))),
                                   atol=1e-6, rtol=0)
        # Val and test come at the store's 40 px: the hook resizes them once, then normalises.
        val = ds.splits["val"].batch(np.arange(len(ds.splits["val"])))
        mine = F.normalize(F.resize(val, [32, 32], antialias=True), list(STUDENT_MEAN), list(STUDENT_STD))
        torch.testing.assert_close(student(val), inner(mine), atol=1e-6, rtol=0)
    rows = distill.train_students(p, cfg.students())
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(np.isfinite(r["test_nll"]) for r in rows)
    assert rows[0]["model"]["crop"] == 32  # kd export rebuilds the student with its preprocessing


def test_data_options_that_contradict_the_stores_preprocessing_are_refused(views_store, tmp_path, capsys):
    path, folder = views_store
    with pytest.raises(UserError) as e:
        distill.plan(DistillConfig(store=path, data=DataConfig(name=f"imagefolder:{folder}", image_size=24),
                                   device="cpu", report_root=str(tmp_path / "r")))
    assert e.value.field == "image_size" and "crops 40 x 40" in str(e.value) and "\n" not in str(e.value)
    from tests.conftest import cli_fails

    err = cli_fails(capsys, "distill", "--store", path, "--dataset", f"imagefolder:{folder}", "--image-size", "24",
                    "--report-root", str(tmp_path / "r"))
    assert err.startswith("error: image_size: 24 contradicts the teacher's preprocessing"), err
    assert not os.path.exists(tmp_path / "r" / "run")


def _edited(path: str, copy: str, **preprocessing) -> str:
    shutil.copytree(path, copy)
    g = zarr.open_group(copy, mode="r+")
    attrs = dict(g.attrs)
    attrs["data_config"]["model_preprocessing"].update(preprocessing)
    g.attrs.put(attrs)
    return copy


def test_a_recorded_preprocessing_that_cannot_be_reproduced_is_refused(views_store, tmp_path):
    path, _ = views_store
    copy = _edited(path, str(tmp_path / "lanczos.zarr"), interpolation="lanczos")
    with pytest.raises(StoreError) as e:
        distill.plan(DistillConfig(store=copy, device="cpu", report_root=str(tmp_path / "r")))
    assert e.value.field == "data_config.interpolation" and "lanczos" in str(e.value)
    copy = _edited(path, str(tmp_path / "resize.zarr"), resize=56)  # the recorded transform says 48
    with pytest.raises(StoreError) as e:
        distill.plan(DistillConfig(store=copy, device="cpu", report_root=str(tmp_path / "r")))
    assert e.value.field == "transform_hash" and "56" in str(e.value)


def test_stacked_students_keep_their_own_preprocessing():
    """Students that resize and normalise their input train stacked under vmap (never as grouped layers, which
    would skip it), and a stack scores each exactly as the student alone."""
    from pipeline.stacking.stack import StackedStudents
    from pipeline.stacking.optim import lr_table
    from pipeline.grid import StudentSpec
    from pipeline.train import build_seeded

    cfg = ModelConfig(arch="cnn", width=4, crop=6, mean=(0.5,), std=(0.2,))
    students = [build_seeded(cfg, (1, 8, 8), 3, seed=s) for s in range(2)]
    specs = [StudentSpec(loss="kl", temperature=2.0, alpha=0.9, beta=None, seed=0),
             StudentSpec(loss="hard", temperature=1.0, alpha=0.0, beta=None, seed=0)]
    stack = StackedStudents(students, specs=specs, optim=OptimConfig(), lrs=lr_table([OptimConfig()] * 2, 5),
                            device=torch.device("cpu"), input_shape=(1, 8, 8), num_classes=3)
    assert stack.engine.startswith("vmap")
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        out = stack.predict(x)
        for i, s in enumerate(students):
            torch.testing.assert_close(out[i], s.eval()(x), atol=1e-5, rtol=0)
