"""pipeline.config: every validation names its field; the student grid; dict round trips."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pytest

from pipeline.config import (
    AugmentConfig,
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimConfig,
    TeacherConfig,
)
from pipeline.errors import UserError
from pipeline.grid import StudentSpec
from pipeline.names import SOFT_LOSSES, TEMPERATURE_FREE_LOSSES
from pipeline.serialize import config_hash, from_dict, to_dict

NAN = float("nan")
INF = float("inf")


def refused(field: str, make):
    with pytest.raises(UserError) as exc:
        make()
    assert exc.value.field == field, f"expected field {field!r}, got {exc.value.field!r}: {exc.value}"
    assert str(exc.value).startswith(f"{field}: ")
    return exc.value


def spec(**kw) -> StudentSpec:
    args = {"loss": "kl", "temperature": 4.0, "alpha": 0.9, "beta": None, "seed": 0}
    args.update(kw)
    return StudentSpec(**args)


def distill(**kw) -> DistillConfig:
    return DistillConfig(store="s.zarr", **kw)


# --- temperature / alpha / beta / loss -----------------------------------------------------------


@pytest.mark.parametrize("temp", [0, 0.0, -1, -1e-9, NAN, INF, -INF])
def test_bad_temperature(temp):
    err = refused("temperature", lambda: spec(temperature=temp))
    assert err.fix
    refused("temperature", lambda: distill(temperatures=(2.0, temp)))


@pytest.mark.parametrize("alpha", [-0.1, 1.0000001, 2, NAN])
def test_bad_alpha(alpha):
    refused("alpha", lambda: spec(alpha=alpha))
    refused("alpha", lambda: distill(alphas=(alpha,)))


@pytest.mark.parametrize("beta", [-1e-6, -1, NAN, INF])
def test_bad_beta(beta):
    refused("beta", lambda: spec(beta=beta))
    refused("beta", lambda: distill(beta=beta))


@pytest.mark.parametrize("loss", ["KL", "kld", "ce", ""])
def test_unknown_loss(loss):
    refused("loss", lambda: spec(loss=loss))
    refused("loss", lambda: distill(losses=(loss,)))


def test_boundary_values_are_accepted():
    spec(alpha=0.0)
    spec(alpha=1.0)
    spec(beta=0.0)
    spec(beta=5.0)
    spec(temperature=1e-3)
    spec(temperature=100.0)
    spec(loss="hard")
    for loss in SOFT_LOSSES:
        spec(loss=loss)


# --- optimizer -----------------------------------------------------------------------------------


@pytest.mark.parametrize("field,kw", [
    ("optimizer", {"name": "sgdd"}),
    ("optimizer", {"name": "Adam"}),
    ("schedule", {"schedule": "linear"}),
    ("schedule", {"schedule": "OneCycle"}),
    ("select", {"select": "worst"}),
    ("epochs", {"epochs": 0}),
    ("epochs", {"epochs": -3}),
    ("lr", {"lr": 0}),
    ("lr", {"lr": -1e-3}),
    ("lr", {"lr": NAN}),
    ("lr", {"lr": INF}),
    ("momentum", {"momentum": 1.0}),
    ("momentum", {"momentum": -0.1}),
    ("weight_decay", {"weight_decay": -1e-4}),
    ("batch_size", {"batch_size": 0}),
])
def test_bad_optim(field, kw):
    refused(field, lambda: OptimConfig(**kw))


def test_good_optim():
    for name in ("sgd", "adam", "adamw", "rmsprop"):
        OptimConfig(name=name, schedule="none", select="last", epochs=1, lr=1e-5)


@pytest.mark.parametrize("field,kw", [
    ("nesterov", {"nesterov": True}),  # adam
    ("nesterov", {"nesterov": True, "name": "rmsprop"}),
    ("nesterov", {"nesterov": True, "name": "sgd", "momentum": 0.0}),
    ("step_size", {"step_size": 0}),
    ("step_size", {"step_size": -2}),
    ("gamma", {"gamma": 0.0}),
    ("gamma", {"gamma": -0.1}),
    ("gamma", {"gamma": 1.5}),
    ("gamma", {"gamma": NAN}),
    ("warmup_epochs", {"warmup_epochs": -1}),
    ("warmup_epochs", {"warmup_epochs": 5, "epochs": 5}),  # nothing left after the warm-up
    ("warmup_epochs", {"warmup_epochs": 9, "epochs": 5}),
    ("warmup_epochs", {"schedule": "step", "step_size": 3, "warmup_epochs": 3}),  # would swallow the first decay
    ("clip_grad_norm", {"clip_grad_norm": 0.0}),
    ("clip_grad_norm", {"clip_grad_norm": -1.0}),
    ("clip_grad_norm", {"clip_grad_norm": NAN}),
    ("clip_grad_norm", {"clip_grad_norm": INF}),
    ("patience", {"patience": 0}),
    ("patience", {"patience": -3}),
])
def test_bad_new_optim_options(field, kw):
    err = refused(field, lambda: OptimConfig(**kw))
    assert err.fix


def test_good_new_optim_options():
    OptimConfig(name="sgd", nesterov=True, momentum=0.9)
    for schedule in ("none", "cosine", "step", "onecycle"):
        OptimConfig(schedule=schedule, epochs=5, warmup_epochs=2, step_size=3, gamma=0.5)
        OptimConfig(schedule=schedule, epochs=5, warmup_epochs=0)
    OptimConfig(schedule="step", step_size=40, epochs=5)  # never decays: allowed, like torch
    OptimConfig(gamma=1.0, clip_grad_norm=1e-3, patience=1)
    assert OptimConfig().clip_grad_norm is None and OptimConfig().patience is None  # both off by default


@pytest.mark.parametrize("field,kw", [
    ("label_noise", {"label_noise": -0.1}),
    ("label_noise", {"label_noise": 1.0}),
    ("label_noise", {"label_noise": NAN}),
    ("noise_seed", {"label_noise": 0.2, "noise_seed": -1}),
    ("noise_seed", {"noise_seed": 3}),  # a seed without noise would only change the data's hash
])
def test_bad_label_noise(field, kw):
    refused(field, lambda: DataConfig(**kw))


def test_label_noise_seed_defaults_to_split_seed_and_is_hashed():
    assert DataConfig(label_noise=0.2, split_seed=4).effective_noise_seed == 4
    assert DataConfig(label_noise=0.2, split_seed=4, noise_seed=9).effective_noise_seed == 9
    # Noise is part of the provenance: the data config is hashed into the store's key.
    assert config_hash(DataConfig(label_noise=0.2)) != config_hash(DataConfig())
    assert config_hash(DataConfig(label_noise=0.2)) != config_hash(DataConfig(label_noise=0.2, noise_seed=1))


def test_new_fields_round_trip_through_json():
    data = DataConfig(label_noise=0.3, noise_seed=5)
    optim = OptimConfig(name="sgd", nesterov=True, schedule="step", step_size=4, gamma=0.5, warmup_epochs=2,
                        clip_grad_norm=2.5, patience=3, epochs=10)
    for cfg in (data, optim):
        assert from_dict(type(cfg), json.loads(json.dumps(to_dict(cfg)))) == cfg
    # Stores written before these fields existed still read back, with the defaults (no noise, old behaviour).
    old = {k: v for k, v in to_dict(OptimConfig()).items()  # type: ignore[union-attr]
           if k not in ("nesterov", "step_size", "gamma", "warmup_epochs", "clip_grad_norm", "patience")}
    assert from_dict(OptimConfig, old) == OptimConfig()


# --- teacher / data / model / augment ------------------------------------------------------------


def test_bad_encoding_is_refused_by_the_teachers_plan_before_any_data_is_read(tmp_path):
    from pipeline import teacher

    for name in ("int8", "bfloat16"):
        cfg = TeacherConfig(encoding=name, data=DataConfig(name="imagefolder:" + str(tmp_path / "missing")))
        refused("encoding", lambda: teacher.plan(cfg))  # the missing folder is not looked at first


def test_bad_teacher_seed_and_roots():
    refused("seed", lambda: TeacherConfig(seed=-1))
    refused("store_root", lambda: TeacherConfig(store_root=""))
    refused("checkpoint_root", lambda: TeacherConfig(checkpoint_root=""))


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:0", ""])
def test_bad_device(device):
    refused("device", lambda: TeacherConfig(device=device))
    refused("device", lambda: distill(device=device))


@pytest.mark.parametrize("ops", [("blur",), ("flip", "Flip"), ("translate", "")])
def test_bad_augment_op(ops):
    err = refused("augment", lambda: AugmentConfig(ops=ops))
    assert "translate" in err.fix


@pytest.mark.parametrize("ops,transform", [(("crop",), ("random-resized-crop",)), (("translate", "flip"), ("hflip",))])
def test_a_crop_or_flip_asked_per_batch_and_per_sample_is_refused(ops, transform):
    data = DataConfig(name="imagefolder:x", image_size=32, train_transform=transform)
    err = refused("augment", lambda: TeacherConfig(data=data, augment=AugmentConfig(ops=ops)))
    assert transform[0] in err.problem
    TeacherConfig(data=data, augment=AugmentConfig(ops=("translate", "rotate")))  # other ops combine


def test_bad_translate():
    refused("translate", lambda: AugmentConfig(ops=("translate",), translate=-1))


@pytest.mark.parametrize("field,kw", [
    ("dataset", {"name": ""}),
    ("val_fraction", {"val_fraction": 0.0}),
    ("val_fraction", {"val_fraction": 0.5}),
    ("test_fraction", {"test_fraction": -0.1}),
    ("test_fraction", {"test_fraction": 0.6}),
    ("train_limit", {"train_limit": 0}),
    ("train_limit", {"train_limit": -5}),
    ("split_seed", {"split_seed": -1}),
])
def test_bad_data(field, kw):
    refused(field, lambda: DataConfig(**kw))


def test_bad_width():
    refused("width", lambda: ModelConfig(arch="mlp", width=0))


# --- distill grid --------------------------------------------------------------------------------


@pytest.mark.parametrize("field,kw", [
    ("store", {"store": ""}),
    ("group_size", {"group_size": 0}),
    ("group_size", {"group_size": -1}),
    ("batch", {"batch": "yes"}),
    ("cache_mb", {"cache_mb": -1.0}),
    ("temperatures", {"temperatures": ()}),
    ("alphas", {"alphas": ()}),
    ("losses", {"losses": ()}),
    ("seeds", {"seeds": ()}),
    ("seeds", {"seeds": (0, 1, 0)}),
    ("seeds", {"seeds": (0, -1)}),
    ("run_name", {"run_name": "a/b"}),
    ("run_name", {"run_name": ".."}),
    ("run_name", {"run_name": ""}),
    ("report_root", {"report_root": ""}),
])
def test_bad_distill(field, kw):
    kw = {"store": "s.zarr", **kw}
    refused(field, lambda: DistillConfig(**kw))


def test_students_grid():
    cfg = distill(temperatures=(1.0, 2.0, 4.0), alphas=(0.5, 0.9), losses=("kl", "mse"), seeds=(0, 1, 2))
    students = cfg.students()
    # Per seed: the baseline, kl at every (T, alpha), and mse once per alpha (it ignores T).
    assert len(students) == 3 * (1 + 3 * 2 + 2) == 27
    for seed in (0, 1, 2):
        mine = [s for s in students if s.seed == seed]
        assert len(mine) == 9
        baselines = [s for s in mine if s.is_baseline]
        assert len(baselines) == 1 and baselines[0].config_id == "baseline"
        grid = {(s.loss, s.temperature, s.alpha) for s in mine if s.loss == "kl"}
        assert grid == set(itertools.product(("kl",), (1.0, 2.0, 4.0), (0.5, 0.9)))
        mse = [s for s in mine if s.loss == "mse"]
        assert [(s.alpha, s.uses_temperature, s.config_id) for s in mse] == \
            [(0.5, False, "mse-a0.5"), (0.9, False, "mse-a0.9")]
        assert all(s.beta is None for s in mine)
    run_ids = [s.run_id for s in students]
    assert len(set(run_ids)) == len(run_ids)
    # A config_id names one configuration across seeds: 9 of them, each with every seed once.
    by_config: dict[str, list[int]] = {}
    for s in students:
        by_config.setdefault(s.config_id, []).append(s.seed)
    assert len(by_config) == 9
    assert all(sorted(seeds) == [0, 1, 2] for seeds in by_config.values())


def test_temperature_free_losses_ignore_t():
    """The losses trained once per alpha really do not depend on T, and the others do."""
    import torch

    from pipeline.losses import SOFT_LOSSES as LOSSES

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    for name, loss in LOSSES.items():
        same = torch.equal(loss(s, t, 1.0), loss(s, t, 4.0))
        assert same == (name in TEMPERATURE_FREE_LOSSES), name
    # Every temperature is still validated, even when only a T-free loss is trained.
    refused("temperature", lambda: distill(losses=("mse",), temperatures=(0.0,)))


def test_default_grid():
    cfg = distill()
    ids = [s.run_id for s in cfg.students()]
    assert ids == ["baseline-s0", "kl-T1-a0.9-s0", "kl-T2-a0.9-s0", "kl-T4-a0.9-s0", "kl-T8-a0.9-s0"]


def test_beta_is_carried_into_specs_and_ids():
    cfg = distill(temperatures=(2.0,), alphas=(1.0,), beta=0.5)
    students = cfg.students()
    assert [s.config_id for s in students] == ["baseline", "kl-T2-a1-b0.5"]
    assert students[1].beta == 0.5


def test_temperatures_are_floats_in_specs():
    cfg = distill(temperatures=(1, 3), alphas=(1,))
    soft = [s for s in cfg.students() if not s.is_baseline]
    assert all(isinstance(s.temperature, float) and isinstance(s.alpha, float) for s in soft)


@pytest.mark.parametrize("temps", [
    (1.0, 2.0, 4.0, 8.0),
    (0.5, 1.5, 2.5),
    (2.0, 2.0000001),  # "%g" alone would print both as "2"
    (0.1234567, 0.1234568),
    (1e-7, 1.0000001e-7),
])
def test_runs_differing_only_in_temperature_never_collide(temps):
    cfg = distill(temperatures=temps, alphas=(0.9,), losses=("kl", "soft_ce"), seeds=(0, 1))
    students = cfg.students()
    run_ids = [s.run_id for s in students]
    assert len(set(run_ids)) == len(run_ids)
    config_ids = {s.config_id for s in students}
    assert len(config_ids) == 1 + 2 * len(temps)


def test_runs_differing_only_in_alpha_or_beta_never_collide():
    cfg = distill(temperatures=(4.0,), alphas=(0.9, 0.9000001), seeds=(0,))
    ids = [s.run_id for s in cfg.students()]
    assert len(set(ids)) == len(ids)
    a = spec(beta=0.3).run_id
    b = spec(beta=0.3000001).run_id
    assert a != b


def test_config_id_keeps_short_form_for_ordinary_values():
    assert spec(temperature=4.0, alpha=0.9).config_id == "kl-T4-a0.9"
    assert spec(temperature=0.5, alpha=0.0, beta=1.0, loss="soft_ce").config_id == "soft_ce-T0.5-a0-b1"
    assert spec(seed=3).run_id == "kl-T4-a0.9-s3"
    assert spec(loss="hard", seed=2).run_id == "baseline-s2"


@pytest.mark.parametrize("field,kw", [
    ("temperatures", {"temperatures": (2.0, 4.0, 2.0)}),
    ("temperatures", {"temperatures": (2, 2.0)}),
    ("alphas", {"alphas": (0.9, 0.9)}),
    ("losses", {"losses": ("kl", "kl")}),
    ("losses", {"losses": ("hard",)}),  # would duplicate the baseline's run ids
])
def test_grid_that_would_repeat_a_run_is_refused(field, kw):
    refused(field, lambda: distill(**kw))


# --- dict round trips and hashes -----------------------------------------------------------------


def _teacher() -> TeacherConfig:
    return TeacherConfig(
        data=DataConfig(name="digits", val_fraction=0.2, test_fraction=0.1, split_seed=3, train_limit=500),
        model=ModelConfig(arch="mlp", width=12),
        optim=OptimConfig(name="sgd", lr=0.05, momentum=0.8, weight_decay=5e-4, epochs=3, batch_size=32,
                          schedule="none", select="last"),
        augment=AugmentConfig(ops=("translate", "flip"), translate=2, rotate_degrees=5.0),
        seed=7,
        checkpoint=None,
        store_root="/tmp/stores",
        checkpoint_root="/tmp/ckpt",
        encoding="float32",
        device="cpu",
    )


def test_teacher_config_round_trips_through_dict():
    cfg = _teacher()
    d = to_dict(cfg)
    assert isinstance(d, dict) and d["data"]["split_seed"] == 3 and d["augment"]["ops"] == ("translate", "flip")
    back = from_dict(TeacherConfig, d)
    assert back == cfg
    assert isinstance(back.data, DataConfig) and isinstance(back.augment, AugmentConfig)


def test_teacher_config_round_trips_through_json():
    cfg = _teacher()
    back = from_dict(TeacherConfig, json.loads(json.dumps(to_dict(cfg))))
    assert back == cfg
    assert back.augment.ops == ("translate", "flip")  # JSON lists come back as tuples


def test_default_configs_round_trip():
    assert from_dict(TeacherConfig, to_dict(TeacherConfig())) == TeacherConfig()
    assert from_dict(DataConfig, to_dict(DataConfig())) == DataConfig()
    d = distill(temperatures=(1.0, 3.0), seeds=(0, 1), beta=0.2, data=DataConfig(train_limit=10))
    assert from_dict(DistillConfig, json.loads(json.dumps(to_dict(d)))) == d


def test_from_dict_validates():
    d = to_dict(_teacher())
    d["optim"]["lr"] = 0
    refused("lr", lambda: from_dict(TeacherConfig, d))


def test_from_dict_ignores_unknown_keys_and_uses_defaults_for_missing():
    d = {"name": "digits", "split_seed": 4, "something_new": 1}
    assert from_dict(DataConfig, d) == DataConfig(split_seed=4)


def test_config_hash_is_stable_and_sensitive():
    assert config_hash(_teacher()) == config_hash(_teacher())
    assert config_hash(_teacher()) != config_hash(TeacherConfig())
    assert config_hash(DataConfig(split_seed=0)) != config_hash(DataConfig(split_seed=1))
    assert len(config_hash(DataConfig())) == 64


def test_configs_are_frozen():
    cfg = DataConfig()
    with pytest.raises(Exception):
        cfg.split_seed = 1  # type: ignore[misc]
    assert math.isclose(cfg.val_fraction, 0.15)


# --- the schema ----------------------------------------------------------------------------------


# What pipeline.config is built from: modules that, like it, import no torch (`kd --help` imports the configs).
CONFIG_LEAVES = {"pipeline.errors", "pipeline.names", "pipeline.fields", "pipeline.architectures",
                 "pipeline.validation", "pipeline.grid", "pipeline.config_keys", "pipeline.preprocessing_spec"}


def imports_of(module_name: str) -> tuple[set[str], set[str]]:
    """(every module the file imports, anywhere but under ``if TYPE_CHECKING:``; those imported at its top level)."""
    import ast
    import importlib

    tree = ast.parse(open(importlib.import_module(module_name).__file__).read())
    hints = {id(n) for block in ast.walk(tree)
             if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING" for n in ast.walk(block)}

    def names(nodes) -> set[str]:
        return {n.module for n in nodes if isinstance(n, ast.ImportFrom) and id(n) not in hints} | {
            a.name for n in nodes if isinstance(n, ast.Import) and id(n) not in hints for a in n.names}

    return names(ast.walk(tree)), names(tree.body)


def test_config_is_a_leaf():
    """pipeline.config imports nothing from the pipeline but the leaves it is built from, anywhere in the file;
    those import nothing else from the pipeline (pipeline.config only for type hints: no cycle), nor
    torch or numpy at their top level; and building configs imports no other pipeline module, nor torch."""
    import subprocess
    import sys

    def pipeline_modules(names: set[str]) -> set[str]:
        return {m for m in names if m.split(".")[0] == "pipeline"}

    assert pipeline_modules(imports_of("pipeline.config")[0]) <= CONFIG_LEAVES
    for leaf in CONFIG_LEAVES:
        anywhere, top = imports_of(leaf)
        assert pipeline_modules(anywhere) <= CONFIG_LEAVES, leaf
        assert not {m.split(".")[0] for m in top} & {"torch", "torchvision", "numpy"}, leaf
    code = "import sys, pipeline.config as c; c.ModelConfig(); c.TeacherConfig(); c.DistillConfig(store='s'); " \
           "print(sorted(m for m in sys.modules if m.startswith('pipeline')), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{sorted(CONFIG_LEAVES | {'pipeline', 'pipeline.config'})} False"


def test_stage_defaults_are_the_named_constructors():
    from pipeline.config import student_model, student_optim, teacher_model, teacher_optim

    assert (TeacherConfig().model, TeacherConfig().optim) == (teacher_model(), teacher_optim())
    assert (distill().model, distill().optim) == (student_model(), student_optim())
    assert (teacher_model(), teacher_optim().epochs) == (ModelConfig(arch="cnn", width=32), 20)
    assert (student_model(), student_optim().epochs) == (ModelConfig(arch="cnn", width=8), 30)
    # In `kd run` a student option left out follows the teacher's value unless its field says inherit=False;
    # so the defaults of the inherited fields must be the same on both sides.
    for cls, teacher_default, student_default in ((OptimConfig, teacher_optim(), student_optim()),
                                                  (ModelConfig, teacher_model(), student_model())):
        for f in dataclasses.fields(cls):
            if f.metadata["inherit"]:
                assert getattr(teacher_default, f.name) == getattr(student_default, f.name), f.name


@pytest.mark.parametrize("cls", [DataConfig, ModelConfig, OptimConfig, AugmentConfig, TeacherConfig, DistillConfig])
def test_every_field_is_an_option_with_help(cls):
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} is not declared with option(help=...)"
        choices = f.metadata["choices"]
        assert choices is None or (isinstance(choices, tuple) and all(isinstance(c, str) for c in choices))
