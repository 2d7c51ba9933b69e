"""A group of students as one stack, driven by the epoch loop of :mod:`pipeline.train`.

:func:`stack_students` decides whether a group trains stacked (and says why not), and builds a
:class:`GroupTrainer`. :func:`pipeline.train.run_epochs` drives it in place of the per-student loop: the
trainer takes the epoch's steps as one stack, scores val in one vectorised forward, and copies a
student's row into the student's own module only when that student's epoch is selected.
"""
from __future__ import annotations

import torch

from pipeline import finetune
from pipeline.augment import Augmenter
from pipeline.config import OptimConfig
from pipeline.data import Split
from pipeline.grid import StudentSpec
from pipeline.loader import BatchReader, SoftTargetLoader
from pipeline.stacking.cost import cpu_reason_not_to_batch
from pipeline.stacking.optim import lr_table
from pipeline.stacking.stack import BatchingUnsupported, StackedStudents
from pipeline.train import Trainee, prepare_batch, record_losses, validate_group


class GroupTrainer:
    """Trainees trained as one :class:`StackedStudents`: row i of the stack is ``rows[i]``.

    Implements :class:`pipeline.train.Stack`, the interface :func:`pipeline.train.run_epochs` drives.
    """

    def __init__(self, stack: StackedStudents, trainees: list[Trainee]) -> None:
        self.stack = stack
        self.rows = list(trainees)

    @property
    def engine(self) -> str:
        """How the stack runs its forward: grouped layers, or vmap and why."""
        return self.stack.engine

    def _row(self, trainee: Trainee) -> int:
        return next(i for i, t in enumerate(self.rows) if t is trainee)

    def train_one_epoch(self, *, trainees: list[Trainee], loader: SoftTargetLoader, epoch: int,
                        augmenter: Augmenter, generator: torch.Generator, device: torch.device,
                        teacher: torch.nn.Module | None = None) -> dict[str, float]:
        """:func:`pipeline.train.train_one_epoch` for the stack: ``trainees``, the rows still training (in row
        order), step together on every batch; the others leave the stack first. Returns each one's mean loss.

        The losses stay on the device during the pass and are read once at its end (no per-step
        synchronisation); a student whose loss went non-finite was already masked out of the update in
        that step, and is marked failed here, with the step where it happened.
        """
        training = {id(t) for t in trainees}
        self.stack.keep([i for i, t in enumerate(self.rows) if id(t) in training])
        self.rows = [t for t in self.rows if id(t) in training]
        losses = []
        for batch in loader.epoch(epoch):
            b = prepare_batch(batch, augmenter=augmenter, generator=generator, device=device, teacher=teacher)
            losses.append(self.stack.step(b.x, b.logits, b.y, b.mix))  # (S,)
        table = torch.stack(losses).cpu() if losses else torch.empty(0, len(self.rows))  # (steps, S)
        means = {}
        for t, column in zip(self.rows, table.T.tolist()):
            kept = record_losses(t, column, steps=list(range(1, len(column) + 1)), epoch=epoch)
            means[t.name] = sum(kept) / max(len(losses), 1)
        return means

    def validate(self, trainees: list[Trainee], split: Split, device: torch.device, *,
                 reader: BatchReader | None = None) -> list[dict]:
        """Each trainee's accuracy and NLL on ``split``, as :func:`pipeline.train.validate_group` computes them,
        every row scored from the stacked weights in one vectorised forward per batch."""
        rows = [self._row(t) for t in trainees]
        return validate_group([t.model for t in trainees], split, device, reader=reader,
                              forward=lambda x: self.stack.predict(x)[rows].float())  # (S, b, K)

    def write_back(self, trainee: Trainee) -> None:
        """Copy ``trainee``'s row (parameters and running statistics) into its own module."""
        self.stack.write_back(self._row(trainee), trainee.model)


def stack_students(trainees: list[Trainee], *, specs: list[StudentSpec], configs: list[OptimConfig],
                   loader: SoftTargetLoader, device: torch.device, input_shape: tuple[int, int, int],
                   num_classes: int, arch: str, only_where_it_pays: bool,
                   unlabelled_weight: float = 1.0) -> tuple[GroupTrainer | None, str]:
    """The group of ``trainees`` (``specs[i]``, ``configs[i]``: student i's spec and optimiser config, which
    differ in lr at most) as one stack, and what the log says of it; or None and why the students must
    take their steps one by one.

    A stack needs two or more students, one lr per student (no fine-tuning's parameter groups,
    :mod:`pipeline.finetune`), and a model that vectorises (a probe step when the stack is built).
    ``only_where_it_pays``: also refuse on a CPU where the students are too large to gain
    (:mod:`pipeline.stacking.cost`). Mixed views and unlabelled rows batch like any other: the stacked
    step takes the λ-weighted hard term (:func:`pipeline.losses.mixed_hard_loss`) and weights the soft
    term of unlabelled rows by ``unlabelled_weight``, as each student's objective must too.
    """
    if len(trainees) < 2:
        return None, "a single student"
    if finetune.applies(configs[0]):
        return None, "fine-tuning (--backbone-lr, --freeze-epochs) trains each student's own parameter groups"
    if only_where_it_pays and device.type == "cpu":
        why = cpu_reason_not_to_batch(trainees[0].model, input_shape)
        if why is not None:
            return None, why
    try:
        stack = StackedStudents([t.model for t in trainees], specs=specs, optim=configs[0],
                                lrs=lr_table(configs, len(loader)), device=device, input_shape=input_shape,
                                num_classes=num_classes, unlabelled_weight=unlabelled_weight)
    except BatchingUnsupported as e:
        return None, f"{arch} does not batch ({e})"
    return GroupTrainer(stack, trainees), f"one stacked {arch} of {len(trainees)} students, {stack.engine}"
