"""A group of students trained in one pass over the data: stacked, or one by one.

Each batch is loaded, augmented and moved to the device once for the whole group. Students of one
architecture then train as one stack (:mod:`pipeline.stacking`): one vectorised step for the whole
group, each student with its own optimizer state, schedule and objective. Where the model cannot be
stacked (or batching is off) every student takes its own step in turn, through the plain loop of
:mod:`pipeline.train`, which drives both.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline import stacking
from pipeline.config import AugmentConfig, ModelConfig, OptimConfig
from pipeline.data import Split
from pipeline.grid import StudentSpec
from pipeline.loader import SoftTargetLoader
from pipeline.losses import distillation_loss
from pipeline.train import Mix, Objective, Progress, TrainResult, build_trainee, collect_results, run_epochs

log = logging.getLogger(__name__)


@dataclass
class StudentResult(TrainResult):
    spec: StudentSpec = field(kw_only=True)


def student_objective(spec: StudentSpec, unlabelled_weight: float = 1.0) -> Objective:
    """The distillation loss of one grid point (label-only for the baseline). ``unlabelled_weight``: the weight of
    an unlabelled row's soft term (labels NO_LABEL, whose hard term is 0) relative to a labelled row's."""
    def objective(out: torch.Tensor, soft: torch.Tensor | None, labels: torch.Tensor, mix: Mix = None) -> torch.Tensor:
        return distillation_loss(out, soft, labels, spec.loss, spec.temperature, spec.alpha, spec.beta, mix=mix,
                                 unlabelled_weight=unlabelled_weight)

    return objective


def fit_group(specs: list[StudentSpec], *, model_cfg: ModelConfig, optim: OptimConfig, augment: AugmentConfig,
              loader: SoftTargetLoader, val: Split, input_shape: tuple[int, int, int], num_classes: int,
              device: torch.device, label: str = "group", progress: Progress | None = None,
              teacher: nn.Module | None = None, batched: bool | None = None,
              unlabelled_weight: float = 1.0) -> list[StudentResult]:
    """Train every student of ``specs`` in one pass per epoch; return each selected checkpoint, in order.

    Soft targets come from the loader (stored logits) unless ``teacher`` is
    given: then it runs on every batch, after augmentation ("online" KD, kept
    as the reference that offline KD is measured against). Data order and
    augmentation are seeded by the first spec's seed, each model's init by its own.

    A group of two or more students trains as one stack
    (:func:`pipeline.stacking.stack_students`) when the architecture vectorises and, with
    ``batched=None`` (automatic), when it pays on the device: always on a GPU,
    for small students on a CPU (see ``pipeline.stacking.cost``). ``True`` stacks
    whenever the model vectorises, ``False`` never. Otherwise the students take
    their steps one by one (the per-student loop); the choice is logged. Both
    give the same students up to float rounding (tests/test_stacking.py).

    A student whose loss goes non-finite fails alone; likewise with
    ``optim.patience``, a student whose val accuracy stops improving stops
    alone. The checkpoint is chosen by ``optim.select``.

    ``unlabelled_weight`` weights the soft term of the loader's unlabelled rows (label NO_LABEL), in the stack as in
    the per-student loop.
    """
    if teacher is not None:
        teacher = teacher.to(device).eval()
    start = time.perf_counter()
    configs = [optim if s.lr is None else dataclasses.replace(optim, lr=s.lr) for s in specs]
    trainees = [build_trainee(name=s.run_id, objective=student_objective(s, unlabelled_weight), seed=s.seed,
                              model_cfg=model_cfg, optim=cfg, input_shape=input_shape, num_classes=num_classes,
                              device=device, steps_per_epoch=len(loader))
                for s, cfg in zip(specs, configs)]
    stack, why = None, "batching is off"
    if batched is not False:
        stack, why = stacking.stack_students(trainees, specs=specs, configs=configs, loader=loader, device=device,
                                             input_shape=input_shape, num_classes=num_classes, arch=model_cfg.arch,
                                             only_where_it_pays=batched is None, unlabelled_weight=unlabelled_weight)
    log.info("%s: %s: %s", label, "batched" if stack is not None else "per-student loop", why)
    run_epochs(trainees, loader=loader, val=val, optim=optim, augment=augment, seed=specs[0].seed, device=device,
               label=label, progress=progress, teacher=teacher, stack=stack)
    results = collect_results(trainees, seconds=time.perf_counter() - start)
    return [StudentResult(**vars(r), spec=s) for r, s in zip(results, specs)]
