"""Stacked students on mixed views (MixUp/CutMix) and unlabelled rows: the same students as the per-student loop.

The stacked loss takes the batch's λ-weighted hard term and its unlabelled rows (label ``NO_LABEL``) as each
student's own objective does; tests/test_stacking.py holds the stack's other equivalences.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from pipeline import teacher
from pipeline.config import AugmentConfig, DataConfig, MixConfig, ModelConfig, OptimConfig
from pipeline.data import Split, load_dataset
from pipeline.grid import StudentSpec
from pipeline.loader import SoftTargetLoader
from pipeline.losses import distillation_loss, weighted_distillation_loss
from pipeline.names import NO_LABEL, SOFT_LOSSES
from pipeline.stacking import stack_students
from pipeline.stacking.optim import lr_table
from pipeline.stacking.stack import StackedStudents, loss_weights
from pipeline.store import SoftTargetStore
from pipeline.student_group import fit_group, student_objective
from pipeline.train import build_seeded, build_trainee, collect_results, evaluate, run_epochs
from tests.conftest import small_teacher_config
from tests.test_stacking import COMMON, OPTIMIZERS, RTOL, STEPS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


def specs() -> list[StudentSpec]:
    """The baseline, every soft loss (one with beta, one with its own lr) and the patient recipe's pure KD (α = 1)."""
    return [StudentSpec(loss="hard", temperature=1.0, alpha=0.0, beta=None, seed=0),
            StudentSpec(loss="kl", temperature=4.0, alpha=0.9, beta=None, seed=0),
            StudentSpec(loss="soft_ce", temperature=2.0, alpha=0.7, beta=None, seed=1, lr=1e-3),
            StudentSpec(loss="mse", temperature=1.0, alpha=0.5, beta=0.25, seed=0),
            StudentSpec(loss="kl", temperature=2.0, alpha=1.0, beta=None, seed=2)]


# --- the loss: vectorised over students, against each student's distillation_loss --------------------


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Logits (S, B, K), teacher logits (B, K), labels (B,) and mix of every kind of row.

    Rows: labelled mixed with labelled; unlabelled with labelled; labelled with unlabelled; two unlabelled;
    unmixed labelled (λ = 1); unmixed unlabelled.
    """
    g = torch.Generator().manual_seed(0)
    out = torch.randn(len(specs()), 6, 5, generator=g) * 2  # (S, B, K)
    soft = torch.randn(6, 5, generator=g) * 3  # (B, K)
    labels = torch.tensor([0, NO_LABEL, 2, NO_LABEL, 3, NO_LABEL])
    partners = torch.tensor([1, 4, NO_LABEL, NO_LABEL, 3, NO_LABEL])
    lam = torch.tensor([0.7, 0.4, 0.55, 0.3, 1.0, 1.0])
    return out, soft, labels, (partners, lam)


@pytest.mark.parametrize("mixed", [True, False], ids=["mixed", "plain"])
@pytest.mark.parametrize("unlabelled_weight", [1.0, 0.3, 0.0])
def test_the_vectorised_loss_equals_each_students_own(mixed, unlabelled_weight):
    out, soft, labels, mix = batch()
    mix = mix if mixed else None
    weights = loss_weights(specs(), CPU)

    def one(logits: torch.Tensor, w: dict) -> torch.Tensor:
        return weighted_distillation_loss(logits, soft, labels, mix, unlabelled_weight=unlabelled_weight, **w)

    assert set(weights["soft_weights"]) == set(SOFT_LOSSES)  # every soft loss, next to the baseline
    stacked = out.clone().requires_grad_()
    got = torch.func.vmap(one, in_dims=(0, 0))(stacked, weights)  # (S,)
    got.sum().backward()
    for i, s in enumerate(specs()):
        logits = out[i].clone().requires_grad_()
        want = distillation_loss(logits, soft, labels, s.loss, s.temperature, s.alpha, s.beta, mix=mix,
                                 unlabelled_weight=unlabelled_weight)
        want.backward()
        torch.testing.assert_close(got[i], want.detach(), rtol=1e-6, atol=1e-7, msg=s.run_id)
        torch.testing.assert_close(stacked.grad[i], logits.grad, rtol=1e-6, atol=1e-7, msg=s.run_id)


def test_a_mix_of_two_unlabelled_samples_has_no_hard_term():
    out, soft, labels, (partners, lam) = batch()
    rows = torch.tensor([3, 5])  # two unlabelled samples mixed; one unlabelled, unmixed
    weights = loss_weights(specs()[:1], CPU)  # the label-only baseline: the hard term alone
    logits = out[:1, rows].clone().requires_grad_()  # (1, 2, K)
    got = torch.func.vmap(lambda o, w: weighted_distillation_loss(o, None, labels[rows], (partners[rows], lam[rows]),
                                                                  **w))(logits, weights)
    got.sum().backward()
    assert got.item() == 0.0 and not logits.grad.any()


# --- training: a stack on a store of MixUp/CutMix views, against the per-student loop ----------------


def assert_same_students(together, alone) -> None:
    """The first 50 step losses agree to RTOL, as in tests/test_stacking.py, and so do the final weights.

    A pure KL student's (α = 1) loss is an exact 0 at a perfect match: as it falls (here from 0.05 to 0.006),
    the same absolute rounding of its sum over classes is ever more of its value (up to 3.6e-5 relative,
    2.5e-7 absolute). Its losses agree to RTOL of its first one; trained on soft_ce, whose gradient is KL's but
    whose value keeps the teacher's entropy, the same student agrees to 3e-7 relative.
    """
    for b, s in zip(together, alone):
        assert b.failed == s.failed, b.name
        assert len(b.step_losses) == len(s.step_losses), b.name
        n = min(STEPS, len(s.step_losses))
        pure_kl = b.name.startswith("kl-") and "-a1-" in b.name
        atol = RTOL * abs(s.step_losses[0]) if pure_kl else 0.0
        np.testing.assert_allclose(b.step_losses[:n], s.step_losses[:n], rtol=RTOL, atol=atol, err_msg=b.name)
        for (name, p), q in zip(b.model.state_dict().items(), s.model.state_dict().values()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=f"{b.name} {name}")


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory) -> str:
    """A float32 digits store of 400 train samples and 3 views (`--views 3 --view-mix mixup,cutmix`)."""
    root = str(tmp_path_factory.mktemp("stacking-mixed"))
    cfg = small_teacher_config(root, data=DataConfig(train_limit=400), optim=OptimConfig(epochs=1), views=3,
                               view_mix=MixConfig(ops=("mixup", "cutmix")), encoding="float32")
    p = teacher.plan(cfg)
    return teacher.publish(p, teacher.train(p))


@pytest.fixture(scope="module")
def ds(mixed_store):
    return load_dataset(SoftTargetStore(mixed_store).meta.data_cfg())


def with_unlabelled_rows(split: Split) -> Split:
    """``split`` with every third sample's label dropped (``NO_LABEL``): partners lose theirs too."""
    y = split.y.clone()
    y[::3] = NO_LABEL
    return split.with_labels(y)


def loader_of(ds, store: str, *, unlabelled: bool) -> SoftTargetLoader:
    train = ds.splits["train"]
    return SoftTargetLoader(with_unlabelled_rows(train) if unlabelled else train, COMMON["batch_size"], seed=0,
                            store=SoftTargetStore(store))


def test_the_store_mixes_every_kind_of_pair(ds, mixed_store):
    """The batches below hold MixUp and CutMix views, labelled and unlabelled samples mixed in every pairing."""
    store = SoftTargetStore(mixed_store)
    col = {c: i for i, c in enumerate(store.meta.views.params)}
    ops = store.view_params("train")[..., col["mix"]]  # (N, V)
    assert (ops == 1).any() and (ops == 2).any()
    loader = loader_of(ds, mixed_store, unlabelled=True)
    assert loader.mixed_views
    pairs = set()
    for epoch in range(COMMON["epochs"]):
        for b in loader.epoch(epoch):
            partners, lam = b.mix
            mixed = lam < 1
            pairs |= set(zip((b.y[mixed] == NO_LABEL).tolist(), (partners[mixed] == NO_LABEL).tolist()))
    assert pairs == {(False, False), (False, True), (True, False), (True, True)}


@pytest.mark.parametrize("unlabelled", [False, True], ids=["labelled", "unlabelled-rows"])
@pytest.mark.parametrize("arch", [ModelConfig(arch="mlp", width=32), ModelConfig(arch="cnn", width=4)],
                         ids=["mlp", "cnn"])
def test_a_mixed_view_group_batches_and_matches_separate_runs(ds, mixed_store, arch, unlabelled, caplog):
    optim = dataclasses.replace(OPTIMIZERS["adam"], **COMMON)

    def fit(batched: bool):
        return fit_group(specs(), model_cfg=arch, optim=optim, augment=AugmentConfig(),
                         loader=loader_of(ds, mixed_store, unlabelled=unlabelled), val=ds.splits["val"],
                         input_shape=ds.input_shape, num_classes=ds.num_classes, device=CPU, batched=batched)

    with caplog.at_level(logging.INFO, logger="pipeline.student_group"):
        together = fit(True)
    assert f"batched: one stacked {arch.arch} of 5 students, grouped layers" in caplog.text
    alone = fit(False)
    assert len(alone[0].step_losses) == STEPS
    assert_same_students(together, alone)
    for b in together:
        assert evaluate(b.model, ds.splits["val"], CPU)["acc"] == b.val_acc


def test_on_a_cpu_the_cost_model_decides_for_a_mixed_view_group(ds, mixed_store):
    """`--batch auto`: a mixed-view group is stacked where any group would be, and only there."""
    loader = loader_of(ds, mixed_store, unlabelled=False)
    optim = OptimConfig(epochs=1, batch_size=16)
    for width, stacked in ((4, True), (32, False)):  # 0.05 and 3.0 MFLOP per sample on digits
        model = ModelConfig(arch="cnn", width=width)
        trainees = [build_trainee(name=s.run_id, objective=student_objective(s), seed=s.seed, model_cfg=model,
                                  optim=optim, input_shape=ds.input_shape, num_classes=ds.num_classes, device=CPU,
                                  steps_per_epoch=len(loader)) for s in specs()]
        group, why = stack_students(trainees, specs=specs(), configs=[optim] * len(trainees), loader=loader,
                                    device=CPU, input_shape=ds.input_shape, num_classes=ds.num_classes, arch="cnn",
                                    only_where_it_pays=True)
        assert (group is not None) == stacked, why
        assert why.startswith("one stacked cnn of 5") if stacked else "compute-bound on a CPU" in why


def fit_weighted(ds, mixed_store, *, optim: OptimConfig, unlabelled_weight: float, batched: bool):
    """:func:`pipeline.student_group.fit_group` with unlabelled rows weighted by ``unlabelled_weight``: each
    student's objective and the stack weight them alike."""
    loader = loader_of(ds, mixed_store, unlabelled=True)
    cnn = ModelConfig(arch="cnn", width=4)
    configs = [optim if s.lr is None else dataclasses.replace(optim, lr=s.lr) for s in specs()]

    def objective(s: StudentSpec):
        return lambda out, soft, labels, mix=None: distillation_loss(
            out, soft, labels, s.loss, s.temperature, s.alpha, s.beta, mix=mix, unlabelled_weight=unlabelled_weight)

    trainees = [build_trainee(name=s.run_id, objective=objective(s), seed=s.seed, model_cfg=cnn, optim=c,
                              input_shape=ds.input_shape, num_classes=ds.num_classes, device=CPU,
                              steps_per_epoch=len(loader)) for s, c in zip(specs(), configs)]
    stack = None
    if batched:
        stack, why = stack_students(trainees, specs=specs(), configs=configs, loader=loader, device=CPU,
                                    input_shape=ds.input_shape, num_classes=ds.num_classes, arch="cnn",
                                    only_where_it_pays=False, unlabelled_weight=unlabelled_weight)
        assert stack is not None, why
    run_epochs(trainees, loader=loader, val=ds.splits["val"], optim=optim, augment=AugmentConfig(), seed=0,
               device=CPU, label="group", stack=stack)
    return collect_results(trainees, seconds=0.0)


@pytest.mark.parametrize("unlabelled_weight", [0.3, 2.0])
def test_weighted_unlabelled_rows_batch_and_match_separate_runs(ds, mixed_store, unlabelled_weight):
    optim = dataclasses.replace(OPTIMIZERS["sgd-nesterov"], **COMMON)
    together = fit_weighted(ds, mixed_store, optim=optim, unlabelled_weight=unlabelled_weight, batched=True)
    alone = fit_weighted(ds, mixed_store, optim=optim, unlabelled_weight=unlabelled_weight, batched=False)
    assert len(alone[0].step_losses) == STEPS
    assert_same_students(together, alone)
    # The weight reaches the stack: the same students with unlabelled rows at weight 1 train otherwise.
    plain = fit_weighted(ds, mixed_store, optim=optim, unlabelled_weight=1.0, batched=True)
    assert not np.allclose(plain[1].step_losses, together[1].step_losses, rtol=1e-3)


@pytest.mark.parametrize("arch", [ModelConfig(arch="mlp", width=16), ModelConfig(arch="cnn", width=4)],
                         ids=["mlp", "cnn"])
def test_the_grouped_form_and_vmap_train_the_same_stack_on_mixed_views(ds, arch):
    """Both engines of a stack take the mix and the unlabelled rows alike (vmap serves the models that are not
    plain sequential ones)."""
    train = with_unlabelled_rows(ds.splits["train"])
    optim = dataclasses.replace(OPTIMIZERS["adam"], batch_size=16, epochs=1, clip_grad_norm=0.5)
    g = torch.Generator().manual_seed(0)
    soft = torch.randn(len(train), ds.num_classes, generator=g) * 3  # (N, K)
    partners = train.y[torch.randperm(len(train), generator=g)]  # (N,), unlabelled ones among them
    lam = torch.where(torch.rand(len(train), generator=g) < 0.5, torch.rand(len(train), generator=g), 1.0)  # (N,)

    def stack(use_grouped: bool) -> StackedStudents:
        models = [build_seeded(arch, ds.input_shape, ds.num_classes, seed=s.seed) for s in specs()]
        return StackedStudents(models, specs=specs(), optim=optim, lrs=lr_table([optim] * 5, 20), device=CPU,
                               input_shape=ds.input_shape, num_classes=ds.num_classes, use_grouped=use_grouped,
                               unlabelled_weight=0.5)

    grouped, vmapped = stack(True), stack(False)
    assert grouped.engine == "grouped layers" and vmapped.engine.startswith("vmap")
    x = train.x
    for step in range(20):
        rows = slice(step * 16, (step + 1) * 16)
        mix = (partners[rows], lam[rows])
        a = grouped.step(x[rows], soft[rows], train.y[rows], mix)
        b = vmapped.step(x[rows], soft[rows], train.y[rows], mix)
        torch.testing.assert_close(a, b, rtol=RTOL, atol=0)
    torch.testing.assert_close(grouped.optimizer.params, vmapped.optimizer.params, rtol=1e-4, atol=1e-6)
