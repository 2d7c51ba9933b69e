"""Fine-tuning a pretrained teacher: a new head for the dataset's classes, a lower backbone lr, the backbone frozen
for the first epochs; and students starting from pretrained weights."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torchvision

from pipeline import finetune, teacher
from pipeline.config import DataConfig, ModelConfig, OptimConfig, TeacherConfig
from pipeline.models import build_model
from pipeline.store import SoftTargetStore
from tests.test_model_sources import photos

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def cached_resnet18(tmp_path, monkeypatch) -> dict[str, torch.Tensor]:
    """Random resnet18 weights where torchvision caches IMAGENET1K_V1 (no network)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    os.makedirs(os.path.dirname(path))
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, path)
    return state


SMALL = dict(resize=40, crop=32)  # the enum's mean and std, at a size a CPU trains in seconds


def test_the_head_is_replaced_and_the_backbone_keeps_the_pretrained_weights(cached_resnet18):
    net = build_model(ModelConfig(arch="torchvision:resnet18", weights="IMAGENET1K_V1", **SMALL), (3, 32, 32), 5)
    assert net.fc.out_features == 5
    assert torch.equal(net.layer4[1].conv2.weight, cached_resnet18["layer4.1.conv2.weight"])
    assert not torch.equal(net.fc.weight[:5], cached_resnet18["fc.weight"][:5])


def test_frozen_epochs_train_the_head_alone_then_the_backbone_at_its_own_lr(cached_resnet18):
    optim = OptimConfig(name="sgd", lr=0.1, momentum=0.0, epochs=3, freeze_epochs=1, backbone_lr=0.01)
    net = build_model(ModelConfig(arch="torchvision:resnet18", weights="IMAGENET1K_V1", **SMALL), (3, 32, 32), 2)
    groups = finetune.param_groups(net, optim)
    assert [g["lr"] for g in groups] == [0.1, 0.01] and groups[0]["params"] == [net.fc.weight, net.fc.bias]
    opt = torch.optim.SGD(groups, lr=optim.lr)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])

    def step(epoch: int) -> tuple[bool, bool]:
        finetune.freeze_backbone(net, optim, epoch)
        head, conv = net.fc.weight.detach().clone(), net.conv1.weight.detach().clone()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        return not torch.equal(head, net.fc.weight), not torch.equal(conv, net.conv1.weight)

    assert step(0) == (True, False)  # frozen: the head moves, the backbone does not
    assert step(1) == (True, True)


def test_a_fine_tuned_teacher_is_recorded_with_its_weights(tmp_path, cached_resnet18):
    folder = photos(tmp_path / "photos", ["a", "b"])
    cfg = TeacherConfig(data=DataConfig(name=f"imagefolder:{folder}"), device="cpu", encoding="float32",
                        model=ModelConfig(arch="torchvision:resnet18", weights="IMAGENET1K_V1", **SMALL),
                        optim=OptimConfig(name="sgd", lr=0.01, epochs=2, batch_size=4, freeze_epochs=1,
                                          backbone_lr=0.001),
                        store_root=str(tmp_path / "stores"), checkpoint_root=str(tmp_path / "ckpt"))
    p = teacher.plan(cfg)
    path = teacher.publish(p, teacher.train(p))
    t = SoftTargetStore(path).meta.teacher
    assert t.source == "torchvision" and t.weights == "IMAGENET1K_V1" and t.trained_here and t.class_map is None
    assert t.preprocessing["mean"] == [0.485, 0.456, 0.406] and t.preprocessing["crop"] == 32
    reloaded = teacher.load(p)  # the checkpoint is the fine-tuned model, with its 2-class head
    assert reloaded.fc.out_features == 2
    assert not torch.equal(reloaded.conv1.weight, cached_resnet18["conv1.weight"])  # trained after the frozen epoch
    # Other pretrained weights are another teacher: another provenance key, another store.
    torch.save({k: v + 1e-3 if v.is_floating_point() else v for k, v in cached_resnet18.items()},
               os.path.join(torch.hub.get_dir(), "checkpoints", "resnet18-f37072fd.pth"))
    assert teacher.plan(cfg).provenance_key != p.provenance_key
    assert np.isfinite(SoftTargetStore(path).read_logits("test")).all()


def test_the_finetune_preset_and_its_offline_demo_plan_without_network(tmp_path, monkeypatch):
    """`make finetune-demo`'s command: the preset with CPU-sized overrides, on a generated folder and stand-in
    weights in a local torch cache, plans (weights found, preprocessing resolved) with no network."""
    from experiments.finetune_demo import write_photos, write_stand_ins
    from flows.cli import distill_config, parse_args, student_namespace, teacher_config

    write_photos(str(tmp_path / "photos"), n=6)
    write_stand_ins(str(tmp_path / "torch"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    a = parse_args(["run", "--preset", "finetune", "--dataset", f"imagefolder:{tmp_path / 'photos'}",
                    "--arch", "torchvision:resnet18", "--weights", "IMAGENET1K_V1", "--resize", "72", "--crop", "64",
                    "--epochs", "2", "--student-arch", "torchvision:mobilenet_v3_small", "--student-crop", "64",
                    "--store-root", str(tmp_path / "stores"), "--checkpoint-root", str(tmp_path / "ckpt")])
    t = teacher_config(a)
    assert t.optim.freeze_epochs == 1 and t.optim.backbone_lr == 0.001 and t.views == 8
    d = distill_config(student_namespace(a), "x.zarr")
    assert d.model.weights == "IMAGENET1K_V1" and d.model.crop == 64 and d.optim.freeze_epochs is None
    p = teacher.plan(t)
    assert p.cfg.data.model_preprocessing.crop == 64 and p.cfg.data.model_preprocessing.mean == (0.485, 0.456, 0.406)
    assert p.source.weights == "IMAGENET1K_V1" and os.path.basename(p.store_path).startswith(
        "imagefolder_") and "-torchvision-resnet18-" in p.store_path


def test_weights_with_as_many_classes_as_the_data_keep_their_head_and_others_get_a_new_one(tmp_path):
    """As docs/reference.md says: a fresh head only when the pretrained one has another number of classes; with as
    many it is kept (e.g. a model fine-tuned on these classes before), and is still the head fine-tuning trains."""
    from safetensors.torch import save_file

    torch.manual_seed(2)
    pretrained = torchvision.models.resnet18(num_classes=2).state_dict()
    save_file(pretrained, str(tmp_path / "two.safetensors"))
    cfg = ModelConfig(arch="torchvision:resnet18", weights=str(tmp_path / "two.safetensors"),
                      preprocessing="IMAGENET1K_V1", **SMALL)
    kept = build_model(cfg, (3, 32, 32), 2)
    assert torch.equal(kept.fc.weight, pretrained["fc.weight"]) and torch.equal(kept.fc.bias, pretrained["fc.bias"])
    assert finetune.param_groups(kept, OptimConfig(backbone_lr=0.01))[0]["params"] == [kept.fc.weight, kept.fc.bias]
    fresh = build_model(cfg, (3, 32, 32), 3)
    assert fresh.fc.out_features == 3 and torch.equal(fresh.layer1[0].conv1.weight, pretrained["layer1.0.conv1.weight"])
