"""A group of small students on a store of mixed teacher views (MixUp/CutMix): stacked against the per-student loop.

Until the stacked loss took the λ-weighted hard term, such a group always fell back to the per-student loop (on real
digits, `--preset patient` spent about 90 minutes of stage 2 on 6 small students there). The store is a real
digits teacher's, 4 views per sample, every view after the clean one mixed with a partner (as the patient recipe
mixes them); the students are the small cnn of the digits runs. Both sides are whole ``fit_group`` calls (build,
probe, training, validation every epoch), rounds interleaved; so are the training epochs alone (stacked, and the
per-student loop's), and the epochs' reading alone (replaying the mixed views), which every side pays.
"""
from __future__ import annotations

import shutil

import pytest
import torch

import benchlib as B
from pipeline import teacher
from pipeline.config import AugmentConfig, MixConfig, ModelConfig, OptimConfig
from pipeline.data import load_dataset
from pipeline.grid import StudentSpec
from pipeline.loader import SoftTargetLoader
from pipeline.stacking import stack_students
from pipeline.stacking.cost import flops_per_sample
from pipeline.store import SoftTargetStore
from pipeline.student_group import fit_group, student_objective
from pipeline.augment import Augmenter
from pipeline.train import build_trainee, train_one_epoch
from tests.conftest import small_teacher_config

DEV = B.device()
STUDENT = ModelConfig(arch="cnn", width=4)  # 0.05 MFLOP per sample on digits: a small student
EPOCHS = 3
BATCH = 64
# The label-only baseline and pure distillation (α = 1, the patient recipe's) at five temperatures: 6 students.
SPECS = [StudentSpec(loss="hard", temperature=1.0, alpha=0.0, beta=None, seed=0)] + \
        [StudentSpec(loss="kl", temperature=t, alpha=1.0, beta=None, seed=0) for t in (1.0, 2.0, 3.0, 4.0, 8.0)]


@pytest.fixture
def mixed_store():
    root = B.tmp_dir("stacking-mixed")
    cfg = small_teacher_config(str(root), optim=OptimConfig(epochs=1), views=4,
                               view_mix=MixConfig(ops=("mixup", "cutmix"), prob=1.0), device=DEV.type)
    p = teacher.plan(cfg)
    yield teacher.publish(p, teacher.train(p))
    shutil.rmtree(root, ignore_errors=True)


def test_stacking_mixed_views(mixed_store):
    begun = B.begin()
    store = SoftTargetStore(mixed_store)
    ds = load_dataset(store.meta.data_cfg())
    loader = SoftTargetLoader(ds.splits["train"], BATCH, seed=0, store=store)
    assert loader.mixed_views
    optim = OptimConfig(name="adam", lr=3e-3, epochs=EPOCHS, batch_size=BATCH, schedule="cosine", select="last")

    def trainees():
        return [build_trainee(name=s.run_id, objective=student_objective(s), seed=s.seed, model_cfg=STUDENT,
                              optim=optim, input_shape=ds.input_shape, num_classes=ds.num_classes, device=DEV,
                              steps_per_epoch=len(loader)) for s in SPECS]

    # What `--batch auto` decides for this group: the cost model, as for any group (no longer "mixed views").
    stacked, alone = trainees(), trainees()
    stack, why = stack_students(stacked, specs=SPECS, configs=[optim] * len(SPECS), loader=loader, device=DEV,
                                input_shape=ds.input_shape, num_classes=ds.num_classes, arch=STUDENT.arch,
                                only_where_it_pays=True)
    assert stack is not None, why
    plain = dict(augmenter=Augmenter(AugmentConfig()), generator=torch.Generator().manual_seed(0), device=DEV)

    def stacked_epochs() -> None:
        for epoch in range(EPOCHS):
            stack.train_one_epoch(trainees=stacked, loader=loader, epoch=epoch, **plain)

    def loop_epochs() -> None:
        for epoch in range(EPOCHS):
            train_one_epoch(trainees=alone, loader=loader, epoch=epoch, **plain)

    def reading() -> None:
        for epoch in range(EPOCHS):
            for _ in loader.epoch(epoch):
                pass

    def run(batched: bool) -> None:
        results = fit_group(SPECS, model_cfg=STUDENT, optim=optim, augment=AugmentConfig(), loader=loader,
                            val=ds.splits["val"], input_shape=ds.input_shape, num_classes=ds.num_classes,
                            device=DEV, batched=batched)
        assert all(r.failed is None and len(r.step_losses) == EPOCHS * len(loader) for r in results)

    times = B.interleaved({"stacked": lambda: run(True), "loop": lambda: run(False), "stacked_epochs": stacked_epochs,
                           "loop_epochs": loop_epochs, "reading": reading}, min_reps=5, max_reps=15, budget_s=60)
    r = B.ratio(times["stacked"], times["loop"])
    epochs = B.ratio(times["stacked_epochs"], times["loop_epochs"])
    B.record("stacking_mixed_views", [
        B.figure(f"stacked group of {len(SPECS)} / per-student loop, mixed views", r, "< 1", r < 1,
                 per_round=B.rounds(times["stacked"], times["loop"])),
        B.figure("training only: stacked epochs / per-student loop epochs", epochs, "reported", None,
                 per_round=B.rounds(times["stacked_epochs"], times["loop_epochs"])),
        B.figure("reading the epochs alone / per-student loop", B.ratio(times["reading"], times["loop"]), "reported",
                 None, per_round=B.rounds(times["reading"], times["loop"])),
        B.figure("stacked group wall time", B.med(times["stacked"]), "reported", None, " s",
                 per_round=times["stacked"]),
        B.figure("per-student loop wall time", B.med(times["loop"]), "reported", None, " s",
                 per_round=times["loop"]),
    ], {"config": {"dataset": "digits (1×8×8, 10 classes), real", "train": len(ds.splits["train"]),
                   "val": len(ds.splits["val"]), "batch": BATCH, "epochs": EPOCHS,
                   "steps": EPOCHS * len(loader), "store": "4 views, every view after the clean one MixUp or CutMix",
                   "student": f"{STUDENT.arch} width {STUDENT.width}", "students": [s.run_id for s in SPECS],
                   "optimizer": "adam, cosine", "stacked": "fit_group(batched=True)",
                   "loop": "fit_group(batched=False), the same group"},
        "flops_per_sample": flops_per_sample(alone[0].model, ds.input_shape),
        "automatic_choice": why, "torch_threads": torch.get_num_threads(),
        "times_s": times, "median_s": {k: B.med(v) for k, v in times.items()},
        "spread": {k: B.spread(v) for k, v in times.items()}}, begun)
