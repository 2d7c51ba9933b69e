"""Stacked students (pipeline/stacking/): one stacked step gives the same students as separate runs."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import AugmentConfig, ModelConfig, OptimConfig
from pipeline.data import Split, load_dataset
from pipeline.grid import StudentSpec
from pipeline.loader import SoftTargetLoader
from pipeline.names import OPTIMIZERS as OPTIMIZER_NAMES
from pipeline.optim import make_optimizer, make_schedule
from pipeline.stacking.optim import StackedOptimizer, clip_per_student, lr_table
from pipeline.store import SoftTargetStore
from pipeline.student_group import fit_group
from pipeline.train import evaluate
from tests.conftest import DIGITS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
STEPS = 50  # the first 50 step losses of every student are compared
RTOL = 1e-5

# Optimizers with clipping, weight decay and a warm-up in front of a schedule; each lr is one where
# training is not chaotic on digits (RMSprop at 1e-2 amplifies a last-bit difference a thousandfold in
# ten steps even between two thread counts of the same per-student loop, so nothing could be compared).
# The stack and the loop differ by float rounding only (grouped kernels sum in another order), but a
# ReLU whose input lands within that rounding of zero passes its gradient in one and blocks it in the
# other. RMSprop divides each gradient by its running RMS, so such a flip moves a step by far more than
# rounding: at lr 1e-3 the cnn baseline met one at step 38 (a first-block pre-activation of 3e-7 in the
# loop, -3e-8 in the stack; the first BN bias's gradient then differed by 10%, the step loss by 1.1e-5
# two steps later). Its update is torch's operation for operation (test_stacked_optimizer_equals_torch_
# per_student); at lr 5e-4 no such flip occurs in the first 50 steps.
OPTIMIZERS = {
    "sgd-nesterov": OptimConfig(name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "adam": OptimConfig(name="adam", lr=3e-3, weight_decay=1e-4),
    "adamw": OptimConfig(name="adamw", lr=3e-3, weight_decay=1e-2),
    "rmsprop": OptimConfig(name="rmsprop", lr=5e-4, momentum=0.9),
}
# 2 epochs of 25 steps (400 samples, 16 a step): a warm-up over the first epoch, then cosine.
COMMON = dict(epochs=2, batch_size=16, schedule="cosine", warmup_epochs=1, clip_grad_norm=0.5, select="last")


@pytest.fixture(scope="module")
def ds():
    return load_dataset(DIGITS)


@pytest.fixture(scope="module")
def train(ds) -> Split:
    return ds.splits["train"].head(400)


def grid(seed: int = 0) -> list[StudentSpec]:
    """Every loss kind in one group, one with its own lr, one with beta, two seeds (different inits)."""
    return [StudentSpec(loss="hard", temperature=1.0, alpha=0.0, beta=None, seed=seed),
            StudentSpec(loss="kl", temperature=4.0, alpha=0.9, beta=None, seed=seed),
            StudentSpec(loss="soft_ce", temperature=2.0, alpha=0.7, beta=None, seed=seed + 1, lr=1e-3),
            StudentSpec(loss="mse", temperature=1.0, alpha=0.5, beta=0.25, seed=seed)]


def fit(ds, store, specs, *, model, optim, batched, train: Split):
    # Data order is seeded by the loader, not by each student, so every run sees the same batches.
    loader = SoftTargetLoader(train, optim.batch_size, seed=0, store=store)
    return fit_group(specs, model_cfg=model, optim=optim, augment=AugmentConfig(), loader=loader,
                     val=ds.splits["val"], input_shape=ds.input_shape, num_classes=ds.num_classes, device=CPU,
                     batched=batched)


def assert_same_steps(together, alone) -> None:
    for b, s in zip(together, alone):
        assert b.failed == s.failed, b.name
        assert len(b.step_losses) == len(s.step_losses), b.name
        n = min(STEPS, len(s.step_losses))
        np.testing.assert_allclose(b.step_losses[:n], s.step_losses[:n], rtol=RTOL, atol=0, err_msg=b.name)


@pytest.mark.parametrize("arch", [ModelConfig(arch="mlp", width=32), ModelConfig(arch="cnn", width=4)],
                         ids=["mlp", "cnn"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_batched_group_matches_separate_runs(digits_store, ds, train, arch, name, caplog):
    store = SoftTargetStore(digits_store)
    optim = dataclasses.replace(OPTIMIZERS[name], **COMMON)
    with caplog.at_level(logging.INFO, logger="pipeline.student_group"):
        together = fit(ds, store, grid(), model=arch, optim=optim, batched=True, train=train)
    assert f"batched: one stacked {arch.arch} of 4 students" in caplog.text
    # The per-student loop: bit-identical to each student trained alone (tests/test_train.py).
    alone = fit(ds, store, grid(), model=arch, optim=optim, batched=False, train=train)
    assert len(alone[0].step_losses) == STEPS
    assert_same_steps(together, alone)
    # Each selected checkpoint is an ordinary module holding its own student's weights and statistics.
    for b in together:
        assert evaluate(b.model, ds.splits["val"], CPU)["acc"] == b.val_acc


def test_a_torchvision_group_matches_separate_runs(digits_store, ds, train, monkeypatch):
    # squeezenet1_1: fire modules whose expand branches are concatenated along channels, which a
    # stack must keep per student. Its dropout is switched off here (p = 0) in both runs, since a
    # stack draws each student's masks from another stream than the loop does.
    from pipeline import train as train_module

    build = train_module.build_model

    def without_dropout(cfg, shape, num_classes):
        model = build(cfg, shape, num_classes)
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        return model

    monkeypatch.setattr(train_module, "build_model", without_dropout)
    store = SoftTargetStore(digits_store)
    optim = OptimConfig(name="sgd", lr=1e-2, momentum=0.9, batch_size=8, epochs=1, schedule="none",
                        clip_grad_norm=1.0, select="last")
    specs = [grid()[0], dataclasses.replace(grid()[2], lr=3e-3)]
    model = ModelConfig(arch="squeezenet1_1")
    together = fit(ds, store, specs, model=model, optim=optim, batched=True, train=train)
    alone = fit(ds, store, specs, model=model, optim=optim, batched=False, train=train)
    assert len(alone[0].step_losses) == STEPS
    assert_same_steps(together, alone)


def test_a_diverging_student_is_masked_out_and_fails_alone(digits_store, ds, train):
    store = SoftTargetStore(digits_store)
    optim = dataclasses.replace(OPTIMIZERS["adam"], **COMMON)
    model = ModelConfig(arch="cnn", width=4)
    silly = StudentSpec(loss="kl", temperature=4.0, alpha=0.9, beta=None, seed=0, lr=1e30)
    specs = [grid()[0], silly, grid()[1]]
    together = fit(ds, store, specs, model=model, optim=optim, batched=True, train=train)
    alone = fit(ds, store, specs, model=model, optim=optim, batched=False, train=train)
    assert together[1].model is None and together[1].failed == alone[1].failed  # same step, same message
    assert "loss became" in together[1].failed
    assert_same_steps(together, alone)  # the others never saw its NaN
    assert all(math.isfinite(v) for r in (together[0], together[2]) for v in r.step_losses)


def test_early_stopping_drops_a_student_from_the_stack(ds, train):
    frozen = StudentSpec(loss="hard", temperature=1.0, alpha=0.0, beta=None, seed=0, lr=1e-12)
    learner = StudentSpec(loss="hard", temperature=1.0, alpha=0.0, beta=None, seed=1)
    optim = OptimConfig(epochs=3, lr=1e-2, batch_size=16, patience=1)
    mlp = ModelConfig(arch="mlp", width=32)
    together = fit(ds, None, [frozen, learner], model=mlp, optim=optim, batched=True, train=train)
    alone = fit(ds, None, [learner], model=mlp, optim=optim, batched=False, train=train)
    assert together[0].stopped_epoch == 1 and len(together[0].history) == 2
    assert_same_steps(together[1:], alone)  # the stack carried on without it
    # select="best" (the default) per student: the same epochs scored alike, the same checkpoint chosen.
    assert [h["val_acc"] for h in together[1].history] == [h["val_acc"] for h in alone[0].history]
    assert (together[1].best_epoch, together[1].val_acc) == (alone[0].best_epoch, alone[0].val_acc)
    assert evaluate(together[1].model, ds.splits["val"], CPU)["acc"] == together[1].val_acc


class ItemGate(nn.Module):
    """Data-dependent control flow (``.item()``): runs as a module, cannot be vectorised."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum().item() > -1e30 else -x


def test_a_model_that_does_not_vectorise_falls_back_to_the_loop(ds, train, monkeypatch, caplog):
    from pipeline import architectures, models

    # Registered as a built-in for this test only: in the model registry and in the names
    # architectures.check_arch accepts (monkeypatch restores both).
    monkeypatch.setitem(models.MODELS, "gated", lambda cfg, shape, n: nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(shape), n), ItemGate()))
    monkeypatch.setattr(architectures, "BUILTIN_ARCHS", (*architectures.BUILTIN_ARCHS, "gated"))
    specs = [StudentSpec(loss="hard", temperature=1.0, alpha=0.0, beta=None, seed=s) for s in (0, 1)]
    optim = OptimConfig(epochs=1)
    with caplog.at_level(logging.INFO, logger="pipeline.student_group"):
        auto = fit(ds, None, specs, model=ModelConfig(arch="gated"), optim=optim, batched=True, train=train)
    assert "per-student loop: gated does not batch" in caplog.text
    loop = fit(ds, None, specs, model=ModelConfig(arch="gated"), optim=optim, batched=False, train=train)
    for a, b in zip(auto, loop):
        assert a.step_losses == b.step_losses  # it is the per-student loop, bit for bit


def test_on_a_cpu_only_small_students_are_batched(caplog):
    specs = [StudentSpec(loss="hard", temperature=1.0, alpha=0.0, beta=None, seed=s) for s in (0, 1)]
    split = Split.from_tensors(torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,)), torch.arange(8))
    for width, path in ((2, "batched"), (16, "per-student loop")):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pipeline.student_group"):
            fit_group(specs, model_cfg=ModelConfig(arch="cnn", width=width), optim=OptimConfig(epochs=1, batch_size=8),
                      augment=AugmentConfig(), loader=SoftTargetLoader(split, 8, seed=0), val=split,
                      input_shape=(3, 32, 32), num_classes=10, device=CPU)
        assert f"group: {path}:" in caplog.text
    assert "compute-bound on a CPU" in caplog.text


# --- the stacked optimizer step against torch's own, tensor by tensor ------------------------------


def optimizer_variants() -> dict[str, OptimConfig]:
    """Every optimizer the config offers, with and without momentum (and Nesterov's, for SGD) and weight decay.

    Adam and AdamW take no momentum (their betas are fixed); every other combination is here, so an optimizer
    added to the config without a stacked form fails below.
    """
    variants = {}
    for name in OPTIMIZER_NAMES:
        momenta = [(None, False)] if name in ("adam", "adamw") else [(0.0, False), (0.9, False)]
        if name == "sgd":
            momenta.append((0.9, True))
        for (momentum, nesterov), decay in itertools.product(momenta, (0.0, 0.1)):
            kw = {} if momentum is None else {"momentum": momentum, "nesterov": nesterov}
            label = name + ("" if momentum is None else f"-momentum{momentum:g}") + ("-nesterov" if nesterov else "")
            variants[f"{label}-wd{decay:g}"] = OptimConfig(name=name, weight_decay=decay, **kw)
    return variants


def test_every_optimizer_variant_is_compared():
    names = {cfg.name for cfg in optimizer_variants().values()}
    assert names == set(OPTIMIZER_NAMES) and len(optimizer_variants()) == 14


@pytest.mark.parametrize("cfg", list(optimizer_variants().values()), ids=list(optimizer_variants()))
def test_stacked_optimizer_equals_torch_per_student(cfg):
    configs = [dataclasses.replace(cfg, lr=lr, epochs=3, schedule="cosine", warmup_epochs=1)
               for lr in (1e-2, 3e-3, 1e-1)]
    g = torch.Generator().manual_seed(0)
    init = torch.randn(3, 40, generator=g)  # (S, N)
    flat = init.clone()
    stacked = StackedOptimizer(flat, configs[0])
    lrs = lr_table(configs, steps_per_epoch=4)
    params = [nn.Parameter(init[i].clone()) for i in range(3)]
    opts = [make_optimizer([p], c) for p, c in zip(params, configs)]
    schedules = [make_schedule(o, c, 4) for o, c in zip(opts, configs)]
    live = torch.ones(3, 1, dtype=torch.bool)
    for step in range(12):
        grad = torch.randn(3, 40, generator=g)
        for p, o, s, row in zip(params, opts, schedules, grad):
            p.grad = row.clone()
            torch.nn.utils.clip_grad_norm_([p], 1.0)
            o.step()
            s.step()
        clip_per_student(grad, 1.0)
        stacked.step(grad, lr=lrs[step], live=live)
    # An update torch writes as one addcdiv (Adam, AdamW, RMSprop without momentum) is the same operations
    # here, bit for bit; the others round torch's fused multiply-add (add_ with alpha) in two steps.
    exact = cfg.name in ("adam", "adamw") or (cfg.name == "rmsprop" and cfg.momentum == 0)
    for i, p in enumerate(params):
        if exact:
            assert torch.equal(flat[i], p.detach()), f"student {i}"
        torch.testing.assert_close(flat[i], p.detach(), rtol=1e-6, atol=1e-6)


def test_a_masked_row_keeps_its_parameters_bit_for_bit():
    flat = torch.randn(2, 5)
    before = flat.clone()
    opt = StackedOptimizer(flat, OptimConfig(name="adamw", weight_decay=0.1))
    grad = torch.randn(2, 5)
    grad[1] = math.nan
    opt.step(grad, lr=torch.tensor([1e-2, 1e-2], dtype=torch.float64), live=torch.tensor([[True], [False]]))
    assert torch.equal(flat[1], before[1]) and not torch.equal(flat[0], before[0])
    assert torch.isfinite(flat).all()


def test_lr_table_follows_each_students_schedule():
    warm = OptimConfig(lr=1.0, epochs=3, schedule="none", warmup_epochs=1)
    table = lr_table([warm, dataclasses.replace(warm, lr=0.5)], steps_per_epoch=4)
    assert table.shape == (13, 2) and table.dtype == torch.float64
    assert table[:, 0].tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8] + [1.0] * 9)
    assert table[:, 1].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4] + [0.5] * 9)


@pytest.mark.parametrize("use_grouped", [True, False], ids=["grouped", "vmap"])
def test_a_stack_scores_each_student_as_its_own_module_does(ds, train, use_grouped):
    """Validation of a stack: one vectorised eval-mode forward gives every student's module's logits.

    BatchNorm must read each student's own running statistics (trained apart here, so they differ).
    """
    from pipeline.stacking.stack import StackedStudents
    from pipeline.stacking.trainer import GroupTrainer
    from pipeline.train import build_trainee, label_objective, predict

    specs = [StudentSpec(loss="hard", temperature=1.0, alpha=0.0, beta=None, seed=s) for s in range(3)]
    optim = OptimConfig(name="sgd", lr=0.05, momentum=0.9, batch_size=16, epochs=1)
    cnn = ModelConfig(arch="cnn", width=4)
    trainees = [build_trainee(name=str(s.seed), objective=label_objective, seed=s.seed, model_cfg=cnn, optim=optim,
                              input_shape=ds.input_shape, num_classes=ds.num_classes, device=CPU, steps_per_epoch=5)
                for s in specs]
    stack = StackedStudents([t.model for t in trainees], specs=specs, optim=optim, lrs=lr_table([optim] * 3, 5),
                            device=CPU, input_shape=ds.input_shape, num_classes=ds.num_classes,
                            use_grouped=use_grouped)
    assert stack.grouped == use_grouped
    x = train.x[:64]  # (64, 1, 8, 8)
    for step in range(5):
        stack.step(x[step * 8:(step + 1) * 8], None, train.y[step * 8:(step + 1) * 8])
    val = ds.splits["val"]
    logits = stack.predict(val.x)  # (S, N, C)
    group = GroupTrainer(stack, trainees)
    scores = group.validate([trainees[2], trainees[0]], val, CPU)  # any rows, any order
    for row, got in zip([2, 0], scores):
        group.write_back(trainees[row])
        want = torch.cat(list(predict(trainees[row].model, val, CPU)))  # (N, C), the student's own module
        torch.testing.assert_close(logits[row], want, rtol=1e-5, atol=1e-5)
        plain = evaluate(trainees[row].model, val, CPU)
        assert got["acc"] == plain["acc"] and got["nll"] == pytest.approx(plain["nll"], rel=1e-5)
    assert not torch.allclose(logits[0], logits[2])  # the rows really are different students
    # The stack keeps training mode: batch statistics, not running ones, in its next step.
    assert stack.base.training


def test_plain_sequential_students_take_the_grouped_form_and_others_vmap(ds):
    from pipeline.stacking.grouped import why_not_grouped
    from pipeline.train import build_seeded

    for arch in ("mlp", "cnn"):
        assert why_not_grouped(build_seeded(ModelConfig(arch=arch, width=4), ds.input_shape, 10, seed=0)) is None
    tv = build_seeded(ModelConfig(arch="squeezenet1_1"), ds.input_shape, 10, seed=0)
    assert "not a plain nn.Sequential" in why_not_grouped(tv)
    assert "layer 1: LayerNorm" in why_not_grouped(nn.Sequential(nn.Flatten(), nn.LayerNorm(64)))
    no_stats = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    assert "running statistics" in why_not_grouped(no_stats)


@pytest.mark.parametrize("arch", [ModelConfig(arch="mlp", width=16), ModelConfig(arch="cnn", width=4)],
                         ids=["mlp", "cnn"])
def test_the_grouped_form_and_vmap_train_the_same_stack(ds, train, arch):
    """The two engines of a stack compute the same students: step losses, weights and running statistics."""
    from pipeline.stacking.stack import StackedStudents
    from pipeline.train import build_seeded

    specs = grid()
    optim = dataclasses.replace(OPTIMIZERS["adam"], batch_size=16, epochs=1, clip_grad_norm=0.5)

    def stack(use_grouped: bool) -> StackedStudents:
        models = [build_seeded(arch, ds.input_shape, ds.num_classes, seed=s.seed) for s in specs]
        return StackedStudents(models, specs=specs, optim=optim, lrs=lr_table([optim] * 4, 20), device=CPU,
                               input_shape=ds.input_shape, num_classes=ds.num_classes, use_grouped=use_grouped)

    grouped, vmapped = stack(True), stack(False)
    assert grouped.engine == "grouped layers" and vmapped.engine.startswith("vmap")
    soft = torch.randn(len(train), ds.num_classes, generator=torch.Generator().manual_seed(0)) * 3  # (N, C)
    for step in range(20):
        rows = slice(step * 16, (step + 1) * 16)
        a = grouped.step(train.x[rows], soft[rows], train.y[rows])
        b = vmapped.step(train.x[rows], soft[rows], train.y[rows])
        torch.testing.assert_close(a, b, rtol=RTOL, atol=0)
    torch.testing.assert_close(grouped.optimizer.params, vmapped.optimizer.params, rtol=1e-4, atol=1e-6)
    for name, buf in grouped.buffers.items():
        torch.testing.assert_close(buf, vmapped.buffers[name], rtol=1e-4, atol=1e-6, msg=name)
