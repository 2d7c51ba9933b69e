"""The ResNet-teacher -> MobileNet-student preset: its configs, and one real (tiny) run of it."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from flows.cli import distill_config, parse_args, student_namespace, teacher_config
from pipeline import distill, teacher
from pipeline.config import DistillConfig, TeacherConfig
from pipeline.presets import PRESETS
from pipeline.serialize import from_dict
from pipeline.store import SoftTargetStore


def _args(*argv):
    return parse_args(["run", *argv])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_config(name):
    """Each section is a partial config (unknown fields would be ignored by from_dict, so check names too)."""
    from flows.cli import preset_defaults

    preset = PRESETS[name]
    assert set(preset) <= {"teacher", "distill"}
    from_dict(TeacherConfig, preset.get("teacher", {}))
    from_dict(DistillConfig, {**preset.get("distill", {}), "store": "x.zarr"})
    assert preset_defaults(name)  # raises KeyError for a field without a `kd run` option


def test_preset_sets_the_classic_recipe():
    a = _args("--preset", "resnet-mobilenet-cifar10")
    t = teacher_config(a)
    d = distill_config(student_namespace(a), "x.zarr")
    assert (t.data.name, t.model.arch, d.model.arch) == ("cifar10", "resnet18", "mobilenet_v3_small")
    assert t.optim.name == "sgd" and t.optim.nesterov and t.optim.warmup_epochs == 1
    assert d.optim.name == "sgd" and d.optim.lr == 0.05 and d.seeds == (0, 1, 2)


def test_explicit_options_beat_the_preset():
    a = _args("--preset", "resnet-mobilenet-cifar10", "--epochs", "2", "--student-arch", "cnn")
    assert teacher_config(a).optim.epochs == 2
    assert distill_config(student_namespace(a), "x.zarr").model.arch == "cnn"


def _folder(root, *, seed: int, colours, per_class: int, size: tuple[int, int], suffix: str, **save) -> str:
    """Two noisy single-colour classes of ``per_class`` images each, ``size`` (H, W), under ``root``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, colour in enumerate(colours):
        d = root / f"class{k}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(rng.normal(colour, 40, size=(*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}{suffix}", **save)
    return str(root)


@pytest.fixture
def image_folder(tmp_path):
    return _folder(tmp_path / "imgs", seed=0, colours=((200, 30, 30), (30, 30, 200)), per_class=16, size=(32, 32),
                   suffix=".png")


@pytest.mark.slow
def test_preset_architectures_run_end_to_end(image_folder, tmp_path):
    """resnet18 teacher -> store -> mobilenet_v3_small students, on 32x32 RGB images like CIFAR-10's."""
    torch.set_num_threads(1)  # two threads make these small convolutions much slower on 2 cores
    a = _args("--preset", "resnet-mobilenet-cifar10", "--dataset", f"imagefolder:{image_folder}", "--epochs", "1",
              "--warmup-epochs", "0",
              "--student-epochs", "1", "--batch-size", "16", "--seeds", "0", "--store-root", str(tmp_path / "s"),
              "--checkpoint-root", str(tmp_path / "c"), "--report-root", str(tmp_path / "r"), "--device", "cpu")
    p = teacher.plan(teacher_config(a))
    store = teacher.publish(p, teacher.train(p))
    cfg = distill_config(student_namespace(a), store)
    rows = distill.train_students(distill.plan(cfg), cfg.students())
    assert [r["status"] for r in rows] == ["ok"] * 3 and all(r["arch"] == "mobilenet_v3_small" for r in rows)
    assert os.path.exists(rows[0]["checkpoint"])


@pytest.fixture
def photo_folder(tmp_path):
    return _folder(tmp_path / "photos", seed=1, colours=((200, 40, 40), (40, 40, 200)), per_class=10, size=(72, 80),
                   suffix=".jpg", quality=90)


def test_imagefolder_preset_sets_the_recipe():
    t = teacher_config(_args("--preset", "resnet-mobilenet-imagefolder"))
    assert t.data.name.startswith("imagefolder:") and 160 <= t.data.image_size <= 224
    assert t.data.train_transform == ("random-resized-crop", "hflip") and t.model.arch == "resnet18"
    assert t.views > 1 and t.view_augment.ops == ("crop", "flip")  # RandomResizedCrop views, stored and replayed


@pytest.mark.slow
def test_imagefolder_preset_runs_end_to_end_at_64px(photo_folder, tmp_path):
    """resnet18 -> mobilenet_v3_small on a generated folder at 64 px: the teacher trains on RandomResizedCrop drawn
    per sample, and stores 8 views (RandomResizedCrop boxes, flips) that the students replay."""
    torch.set_num_threads(1)
    a = _args("--preset", "resnet-mobilenet-imagefolder", "--dataset", f"imagefolder:{photo_folder}",
              "--image-size", "64", "--epochs", "1", "--warmup-epochs", "0", "--student-epochs", "1",
              "--batch-size", "8", "--seeds", "0", "--temperatures", "4", "--workers", "0",
              "--store-root", str(tmp_path / "s"), "--checkpoint-root", str(tmp_path / "c"),
              "--report-root", str(tmp_path / "r"), "--device", "cpu")
    p = teacher.plan(teacher_config(a))
    assert p.dataset.input_shape == (3, 64, 64)
    store = teacher.publish(p, teacher.train(p))
    cfg = distill_config(student_namespace(a), store)
    plan = distill.plan(cfg)
    store_data = SoftTargetStore(store).meta.data_cfg()
    assert store_data.train_transform == ("random-resized-crop", "hflip")  # the teacher's training transforms
    assert plan.store.views == 8 and plan.dataset.preprocess.train_ops == ()  # the students train on the views
    rows = distill.train_students(plan, cfg.students())
    assert [r["status"] for r in rows] == ["ok"] * 2 and all(r["arch"] == "mobilenet_v3_small" for r in rows)
    assert rows[0]["input_shape"] == [3, 64, 64]
