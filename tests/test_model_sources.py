"""Model sources checked against the libraries themselves: for a torchvision model (weights by enum, from
torchvision's cache), a timm model (weights from a file, and from timm's hub cache), a user's factory and a
torch.export program, the store's clean-view logits equal what that library's own evaluation pipeline gives on
the same image files (torchvision's ``weights.transforms()``, timm's ``create_transform(**resolve_data_config())``,
on PIL images), within 1e-4, in float32 on the CPU. Every model has random weights saved to local files: no network.
"""
from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from pipeline import teacher
from pipeline.config import DataConfig, ModelConfig, OptimConfig, TeacherConfig
from pipeline.data.folder import read_manifest
from pipeline.names import SPLITS
from pipeline.store import SoftTargetStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATOL = 1e-4


def photos(root, classes, *, n=6, seed=0) -> str:
    """``n`` RGB photos per class, of two sizes and aspect ratios (so every resize and crop matters)."""
    rng = np.random.default_rng(seed)
    for k, cls in enumerate(classes):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(n):
            w, h = (96, 72) if i % 2 else (70, 90)
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            arr[..., k % 3] //= 2
            Image.fromarray(arr).save(os.path.join(root, cls, f"{i:02d}.png"))
    return str(root)


def write_store(tmp_path, folder, model: ModelConfig, **kw) -> str:
    cfg = TeacherConfig(data=DataConfig(name=f"imagefolder:{folder}"), model=model, encoding="float32", device="cpu",
                        store_root=str(tmp_path / "stores"), checkpoint_root=str(tmp_path / "ckpt"),
                        optim=OptimConfig(epochs=1), **kw)
    p = teacher.plan(cfg)
    return teacher.publish(p, teacher.train(p))


def stored_and_files(path: str, folder: str) -> tuple[np.ndarray, list[Image.Image]]:
    """Every split's stored clean-view logits (N, C), and the image files they were computed from (as PIL RGB
    images, the way torchvision's ImageFolder opens them), in the same order."""
    store = SoftTargetStore(path)
    files = [p for p, _ in read_manifest(store.meta.dataset.files)]
    logits = np.concatenate([store.read_logits(s) for s in SPLITS])
    ids = np.concatenate([np.asarray(store.ids(s)) for s in SPLITS])
    images = [Image.open(os.path.join(folder, files[i])).convert("RGB") for i in ids]
    return logits, images


def reference(model: torch.nn.Module, transform, images: list[Image.Image]) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.stack([transform(im) for im in images])).numpy()


def assert_close(stored: np.ndarray, ref: np.ndarray) -> None:
    assert stored.shape == ref.shape
    diff = float(np.abs(stored - ref).max())
    assert diff <= ATOL, f"max |stored - reference| = {diff:.3g} (logits up to {float(np.abs(ref).max()):.3g})"


def test_torchvision_enum_weights_from_the_cache_match_weights_transforms(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    os.makedirs(os.path.dirname(cached))
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), cached)  # random weights where torchvision caches them
    folder = photos(tmp_path / "photos", ["goldfish", "tench"])
    path = write_store(tmp_path, folder, ModelConfig(arch="torchvision:resnet18", weights="IMAGENET1K_V1"), as_is=True)
    stored, images = stored_and_files(path, folder)
    ref_model = torchvision.models.resnet18(weights=weights)  # torchvision's own loading, from its cache
    categories = weights.meta["categories"]
    ref = reference(ref_model, weights.transforms(), images)[:, [categories.index("goldfish"), categories.index("tench")]]
    assert_close(stored, ref)
    meta = SoftTargetStore(path).meta
    assert meta.teacher.source == "torchvision" and meta.teacher.weights == "IMAGENET1K_V1"
    assert meta.teacher.class_map == (categories.index("goldfish"), categories.index("tench"))
    assert meta.teacher.preprocessing["resize"] == 256 and meta.teacher.preprocessing["crop"] == 224
    assert meta.transform["model"]["mean"] == list(weights.transforms().mean)


def test_timm_weights_file_match_timms_own_eval_transform(tmp_path):
    import timm
    from safetensors.torch import save_file
    from timm.data import create_transform, resolve_data_config

    torch.manual_seed(1)
    net = timm.create_model("resnet18", num_classes=2)
    save_file(net.state_dict(), str(tmp_path / "resnet18.safetensors"))
    folder = photos(tmp_path / "photos", ["cat", "dog"], seed=1)
    path = write_store(tmp_path, folder, ModelConfig(arch="timm:resnet18", weights=str(tmp_path / "resnet18.safetensors"),
                                                     model_classes="cat,dog"), as_is=True)
    stored, images = stored_and_files(path, folder)
    transform = create_transform(**resolve_data_config({}, model=net))  # bicubic, crop_pct 0.95: 235 then 224
    assert_close(stored, reference(net, transform, images))


def test_timm_pretrained_from_the_hub_cache_matches_and_maps_imagenet_folders(tmp_path, monkeypatch):
    import huggingface_hub.constants
    import timm
    from safetensors.torch import save_file
    from timm.data import create_transform, resolve_data_config

    cache = tmp_path / "hf"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    snapshot = cache / "models--timm--resnet18.a1_in1k" / "snapshots" / ("0" * 40)
    os.makedirs(snapshot)
    os.makedirs(cache / "models--timm--resnet18.a1_in1k" / "refs")
    (cache / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(2)
    save_file(timm.create_model("resnet18").state_dict(), str(snapshot / "model.safetensors"))
    folder = photos(tmp_path / "photos", ["n01443537", "n01440764"], seed=2)  # ImageNet's own folder names
    path = write_store(tmp_path, folder, ModelConfig(arch="timm:resnet18", weights="pretrained"), as_is=True)
    stored, images = stored_and_files(path, folder)
    ref_model = timm.create_model("resnet18", pretrained=True,
                                  pretrained_cfg_overlay={"file": str(snapshot / "model.safetensors")})
    ref = reference(ref_model, create_transform(**resolve_data_config({}, model=ref_model)), images)
    assert_close(stored, ref[:, [0, 1]])  # folders sorted: n01440764 (output 0), n01443537 (output 1)
    meta = SoftTargetStore(path).meta
    assert meta.teacher.weights == "timm/resnet18.a1_in1k" and meta.teacher.class_map == (0, 1)
    assert meta.teacher.class_map_names == ("n01440764", "n01443537")


FACTORY = """
import torch
import torchvision


def make(num_classes):
    torch.manual_seed(3)
    return torchvision.models.mobilenet_v3_small(num_classes=num_classes)
"""


def test_a_factory_with_an_enums_preprocessing_matches_its_transforms(tmp_path, monkeypatch):
    pkg = tmp_path / "code" / "team_models"
    os.makedirs(pkg)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    folder = photos(tmp_path / "photos", ["a", "b"], seed=3)
    weights = torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1
    path = write_store(tmp_path, folder, ModelConfig(arch="py:team_models.nets:make", model_classes="b,x,a",
                                                     preprocessing="MobileNet_V3_Small_Weights.IMAGENET1K_V1"),
                       as_is=True)
    stored, images = stored_and_files(path, folder)
    from team_models.nets import make

    assert_close(stored, reference(make(num_classes=3), weights.transforms(), images)[:, [2, 0]])  # a, b


def test_an_as_is_teacher_is_saved_so_online_mode_and_provenance_load_it(tmp_path, monkeypatch):
    """A teacher used as it is is never trained, but its weights are saved once as the store's checkpoint (sha256
    recorded): `--mode online` loads exactly the model that wrote the logits, and other weights are another
    provenance key."""
    import dataclasses

    from pipeline import distill
    from pipeline.config import DistillConfig
    from pipeline.data import store_dataset
    from pipeline.file_hash import sha256_file

    pkg = tmp_path / "code" / "team_models"
    os.makedirs(pkg)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    from team_models.nets import make

    torch.manual_seed(4)
    torch.save(make(num_classes=3).state_dict(), tmp_path / "theirs.pt")  # not the factory's own init
    folder = photos(tmp_path / "photos", ["a", "b"], seed=4)
    model = ModelConfig(arch="py:team_models.nets:make", weights=str(tmp_path / "theirs.pt"), model_classes="b,x,a",
                        resize=40, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    path = write_store(tmp_path, folder, model, as_is=True)
    store = SoftTargetStore(path)
    t = store.meta.teacher
    assert not t.trained_here and t.weights_sha256 == sha256_file(str(tmp_path / "theirs.pt"))
    assert os.path.isfile(t.checkpoint) and t.checkpoint_sha256 == sha256_file(t.checkpoint)
    online = distill.load_teacher(store)  # what --mode online scores batches with
    test = store_dataset(store.meta, store.meta.data_cfg()).splits["test"]
    with torch.no_grad():
        assert_close(store.read_logits("test"), online(test.batch(np.arange(len(test)))).numpy())
    cfg = DistillConfig(store=path, mode="online", model=ModelConfig("cnn", 4), optim=OptimConfig(epochs=1),
                        temperatures=(2.0,), alphas=(1.0,), seeds=(0,), device="cpu", report_root=str(tmp_path / "r"))
    rows = distill.train_students(distill.plan(cfg), cfg.students())
    assert [r["status"] for r in rows] == ["ok", "ok"]
    # Other weights for the same factory: another teacher, another provenance key.
    torch.save(make(num_classes=3).state_dict(), tmp_path / "other.pt")
    first = teacher.plan(TeacherConfig(data=DataConfig(name=f"imagefolder:{folder}"), model=model, as_is=True,
                                       device="cpu", store_root=str(tmp_path / "stores"),
                                       checkpoint_root=str(tmp_path / "ckpt")))
    other = teacher.plan(TeacherConfig(data=DataConfig(name=f"imagefolder:{folder}"), as_is=True, device="cpu",
                                       model=dataclasses.replace(model, weights=str(tmp_path / "other.pt")),
                                       store_root=str(tmp_path / "stores"), checkpoint_root=str(tmp_path / "ckpt")))
    assert first.provenance_key != other.provenance_key and first.store_path != other.store_path


def test_a_torch_export_program_matches_its_stated_preprocessing(tmp_path):
    from torchvision.transforms._presets import ImageClassification

    torch.manual_seed(4)
    net = torchvision.models.resnet18(num_classes=2).eval()
    program = torch.export.export(net, (torch.rand(2, 3, 64, 64),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "teacher.pt2"))
    folder = photos(tmp_path / "photos", ["a", "b"], seed=4)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    path = write_store(tmp_path, folder, ModelConfig(arch=f"file:{tmp_path / 'teacher.pt2'}", model_classes="a,b",
                                                     resize=72, crop=64, mean=mean, std=std))
    stored, images = stored_and_files(path, folder)
    transform = ImageClassification(crop_size=64, resize_size=72, mean=mean, std=std)  # what weights.transforms() is
    assert_close(stored, reference(net, transform, images))
    meta = SoftTargetStore(path).meta
    assert meta.teacher.source == "file" and meta.teacher.checkpoint == str(tmp_path / "teacher.pt2")
    assert not meta.teacher.trained_here


# --- bad input: one line naming the field and the fix, exit 2, and nothing written ---------------------------


def _teacher_fails(capsys, tmp_path, folder, *args) -> str:
    from tests.conftest import cli_fails

    err = cli_fails(capsys, "teacher", "--dataset", f"imagefolder:{folder}", "--device", "cpu",
                    "--store-root", str(tmp_path / "stores"), "--checkpoint-root", str(tmp_path / "ckpt"), *args)
    written = [f for d in ("stores", "ckpt") for _, _, fs in os.walk(tmp_path / d) for f in fs]
    assert written == [], written
    return err


def test_weights_of_another_architecture_are_refused_naming_the_key(capsys, tmp_path):
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "mobilenet.pt")
    folder = photos(tmp_path / "photos", ["a", "b"])
    err = _teacher_fails(capsys, tmp_path, folder, "--arch", "torchvision:resnet18", "--weights",
                         str(tmp_path / "mobilenet.pt"), "--preprocessing", "IMAGENET1K_V1")
    assert err.startswith("error: weights: ") and "key conv1.weight is missing" in err, err
    # A weights file for torchvision says nothing of its preprocessing: it must be stated.
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pt")
    err = _teacher_fails(capsys, tmp_path, folder, "--arch", "torchvision:resnet18", "--weights",
                         str(tmp_path / "resnet18.pt"))
    assert err.startswith("error: preprocessing: ") and "--preprocessing" in err, err


def test_no_cached_weights_without_download_is_refused(capsys, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    folder = photos(tmp_path / "photos", ["a", "b"])
    err = _teacher_fails(capsys, tmp_path, folder, "--arch", "torchvision:resnet18", "--weights", "IMAGENET1K_V1")
    assert "not in torchvision's cache" in err and "--download" in err, err
    err = _teacher_fails(capsys, tmp_path, folder, "--arch", "timm:resnet18", "--weights", "pretrained")
    assert "not in the Hugging Face cache" in err and "--download" in err, err
    err = _teacher_fails(capsys, tmp_path, folder, "--arch", "torchvision:resnet18", "--weights", "IMAGENET1K_V9")
    assert "IMAGENET1K_V1" in err, err  # the members that exist are named
    assert not os.path.exists(tmp_path / "empty-torch") and not os.path.exists(tmp_path / "empty-hf")


def test_a_missing_factory_or_one_returning_no_module_is_refused(capsys, tmp_path, monkeypatch):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "bad_factories.py").write_text("def number(num_classes):\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    folder = photos(tmp_path / "photos", ["a", "b"])
    err = _teacher_fails(capsys, tmp_path, folder, "--image-size", "32", "--arch", "py:no_such_package.nets:make")
    assert "cannot import" in err and "no_such_package" in err, err
    err = _teacher_fails(capsys, tmp_path, folder, "--image-size", "32", "--arch", "py:bad_factories:missing")
    assert "has no function 'missing'" in err, err
    err = _teacher_fails(capsys, tmp_path, folder, "--image-size", "32", "--arch", "py:bad_factories:number")
    assert "returned int, not a torch.nn.Module" in err, err
    err = _teacher_fails(capsys, tmp_path, folder, "--arch", "py:bad_factories")
    assert err.startswith("error: arch: ") and "py:package.module:function" in err, err


def test_a_program_exported_for_another_input_size_is_refused(capsys, tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2).eval()
    program = torch.export.export(net, (torch.rand(2, 3, 64, 64),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "t.pt2"))
    folder = photos(tmp_path / "photos", ["a", "b"])
    err = _teacher_fails(capsys, tmp_path, folder, "--arch", f"file:{tmp_path / 't.pt2'}", "--model-classes", "a,b",
                         "--image-size", "32")
    assert err.startswith("error: arch: ") and "(3, 32, 32)" in err and "torch.export.Dim" in err, err
    err = _teacher_fails(capsys, tmp_path, folder, "--arch", f"file:{tmp_path / 't.pt2'}", "--image-size", "64")
    assert err.startswith("error: model_classes: ") and "--model-classes" in err, err  # names unknown


def test_class_names_that_do_not_match_are_refused_naming_them(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    os.makedirs(os.path.dirname(cached))
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    folder = photos(tmp_path / "photos", ["goldfish", "spaceship"])
    err = _teacher_fails(capsys, tmp_path, folder, "--arch", "torchvision:resnet18", "--weights", "IMAGENET1K_V1",
                         "--as-is")
    assert err.startswith("error: model_classes: the dataset's class 'spaceship' is not among the model's 1000"), err
