"""Training and evaluation, laid out like torchvision's classification reference.

:func:`train_one_epoch` is one pass over the data and :func:`evaluate` scores a model on a split.
:func:`run_epochs` is the loop around them: one epoch, then validate-and-select and early stop for
each trainee. :func:`fit_teacher` trains the teacher through it on hard labels: build the trainee,
run the epochs, collect the result.

Several trainees can share one pass over the data: each batch is loaded, augmented and moved to the
device once, and every trainee takes its own step in turn (the per-student loop). A group of students
may instead hand the loop a :class:`Stack`, which trains the whole group as one model
(:mod:`pipeline.student_group` decides, :mod:`pipeline.stacking` implements it); this module never
imports that package, and the teacher never enters it.

Checkpoints are selected on the validation split (best or last); the test
split is only ever evaluated, never used to choose.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.augment import Augmenter
from pipeline import finetune
from pipeline.config import AugmentConfig, ModelConfig, OptimConfig
from pipeline.data import Split
from pipeline.loader import Batch, BatchReader, SoftTargetLoader, ordered_batches, read_batches, row_batches
from pipeline.losses import distillation_loss
from pipeline.metrics import expected_calibration_error
from pipeline.models import build_model
from pipeline.optim import make_optimizer, make_schedule
from pipeline.precision import inference, prepare, to_input
from pipeline.rng import TrainRng, draws_random, own_rng, seeded

log = logging.getLogger(__name__)

# (group label, epoch, epochs, metrics): best_val_acc (a fraction), training (trainees still training after this
# epoch's early stops and failures) of trainees (the group's size).
Progress = Callable[[str, int, int, dict], None]
# (model logits (B, C), teacher logits (B, C) or None, labels (B,), mixed labels or None) -> scalar loss;
# mixed labels are (partner labels (B,), λ (B,)) for batches of mixed views (pipeline.views).
Mix = tuple[torch.Tensor, torch.Tensor] | None
Objective = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, Mix], torch.Tensor]


def build_seeded(cfg: ModelConfig, shape: tuple[int, int, int], num_classes: int, *, seed: int,
                 **kwargs) -> nn.Module:
    """:func:`pipeline.models.build_model` (``kwargs`` passed on) with its random initialisation seeded."""
    with seeded(seed):
        return build_model(cfg, shape, num_classes, **kwargs)


def label_objective(out: torch.Tensor, soft: torch.Tensor | None, labels: torch.Tensor,
                    mix: Mix = None) -> torch.Tensor:
    """Cross-entropy against the true labels: how the teacher learns (it has no teacher of its own)."""
    del soft
    return distillation_loss(out, None, labels, "hard", 1.0, 0.0, mix=mix)


@dataclass
class Trainee:
    """One model being trained, with everything that is its own."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: object | None
    # The schedule is sized by the loader's batch count; with worker processes an epoch can yield a
    # few extra partial batches, and OneCycle refuses to step past its end, so steps beyond it are skipped.
    schedule_steps_left: int
    objective: Objective
    best_acc: float = -1.0
    best_epoch: int = -1
    best_state: dict | None = None
    history: list[dict] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    failed: str | None = None
    peak_acc: float = -1.0  # best val accuracy so far, for early stopping (best_acc follows `select`)
    stale_epochs: int = 0  # epochs since peak_acc last improved
    stopped_epoch: int | None = None  # the epoch after which early stopping ended this trainee
    rng: TrainRng | None = None  # its own dropout stream, seeded by its seed; None for a model that draws none

    @property
    def active(self) -> bool:
        return self.failed is None and self.stopped_epoch is None


@dataclass
class TrainResult:
    name: str
    model: nn.Module | None  # the selected checkpoint loaded, None if training failed
    best_epoch: int
    val_acc: float
    history: list[dict]
    seconds: float
    failed: str | None
    step_losses: list[float]
    stopped_epoch: int | None  # set when early stopping ended training after this epoch


def predict(model: nn.Module, data: Split | torch.Tensor, device: torch.device, *, batch_size: int = 512,
            workers: int = 0, fast: bool = False, precision: str | None = None) -> Iterator[torch.Tensor]:
    """Raw logits (T = 1) in order, one (b, C) float32 CPU tensor per batch.

    ``data`` is a lazy split, read in order through a DataLoader (``workers`` processes decode its
    images, pinned on CUDA), or a tensor (B, C, H, W) already in memory. ``fast``: the teacher pass's
    mixed precision and channels_last on CUDA (:mod:`pipeline.precision`); logits leave as float32.
    ``precision``: overrides the device's autocast choice of a ``fast`` pass (:func:`pipeline.precision.compute_dtype`).
    """
    model = prepare(model, device, fast=fast)
    if isinstance(data, Split):
        batches = (x for x, _ in ordered_batches(data, row_batches(np.arange(len(data)), batch_size),
                                                 workers=workers, device=device))
    else:
        batches = (data[s:s + batch_size] for s in range(0, data.shape[0], batch_size))
    for xb in batches:
        x = _to_device(xb, device, fast=fast)
        with inference(device, fast=fast, precision=precision):
            out = model(x)
        yield out.float().cpu()


def _to_device(xb: torch.Tensor, device: torch.device, *, fast: bool) -> torch.Tensor:
    """A batch on ``device``: a CPU batch bound for CUDA is pinned first (if the reader has not) and copied
    without blocking; one the reader joined on the device already is only given the input memory format."""
    if device.type == "cuda" and xb.device.type == "cpu" and not xb.is_pinned():
        xb = xb.pin_memory()
    return to_input(xb, device, fast=fast)


def evaluate(model: nn.Module, split: Split, device: torch.device, *, teacher_logits: torch.Tensor | None = None,
             workers: int = 0, fast: bool = False) -> dict:
    """Accuracy, NLL, ECE and (if teacher logits are given) top-1 agreement, all at T = 1, over a DataLoader."""
    return evaluate_group([model], split, device, teacher_logits=teacher_logits, workers=workers, fast=fast)[0]


def evaluate_group(models: list[nn.Module], split: Split, device: torch.device, *,
                   teacher_logits: torch.Tensor | None = None, workers: int = 0, fast: bool = False,
                   batch_size: int = 512) -> list[dict]:
    """:func:`evaluate` of each of ``models`` on one read of ``split``: a group's test images are decoded once,
    by ``workers`` DataLoader processes, not once per student. Each model's logits (N, C) stay on the host
    until its metrics are computed, as for a single model."""
    if not models:
        return []
    models = [prepare(m, device, fast=fast) for m in models]
    outs: list[list[torch.Tensor]] = [[] for _ in models]
    batches = row_batches(np.arange(len(split)), batch_size)
    for xb, _ in ordered_batches(split, batches, workers=workers, device=device):
        x = _to_device(xb, device, fast=fast)  # (b, C, H, W)
        with inference(device, fast=fast):
            for out, m in zip(outs, models):
                out.append(m(x).float().cpu())  # (b, K)
    return [_metrics(torch.cat(out), split.y, teacher_logits) for out in outs]


def evaluate_splits(model: nn.Module, splits: dict[str, Split], device: torch.device, *, workers: int = 0,
                    fast: bool = False, batch_size: int = 512) -> dict[str, dict]:
    """:func:`evaluate` on several splits through one reader (DataLoader workers started once)."""
    model = prepare(model, device, fast=fast)
    items = [(name, rows) for name, s in splits.items() for rows in row_batches(np.arange(len(s)), batch_size)]
    outs: dict[str, list[torch.Tensor]] = {name: [] for name in splits}
    for (name, _), (xb, _) in zip(items, read_batches(splits, items, workers=workers, device=device), strict=True):
        outs[name].extend(predict(model, xb, device, batch_size=batch_size, fast=fast))
    return {name: _metrics(torch.cat(outs[name]), s.y, None) for name, s in splits.items()}


def _metrics(logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None) -> dict:
    """logits (N, C), labels (N,) -> accuracy, NLL, ECE and, with teacher logits (N, C), top-1 agreement."""
    pred = logits.argmax(1)
    out = {"acc": float((pred == y).float().mean()), "nll": float(F.cross_entropy(logits, y))}
    out["ece"] = expected_calibration_error(logits, y)
    if teacher_logits is not None:
        out["agreement"] = float((pred == teacher_logits.argmax(1)).float().mean())
    return out


def build_trainee(*, name: str, objective: Objective, seed: int, model_cfg: ModelConfig, optim: OptimConfig,
                  input_shape: tuple[int, int, int], num_classes: int, device: torch.device,
                  steps_per_epoch: int) -> Trainee:
    """A freshly initialised model (seeded) with its own optimizer and lr schedule."""
    model = build_seeded(model_cfg, input_shape, num_classes, seed=seed).to(device)
    opt = make_optimizer(finetune.param_groups(model, optim) if finetune.applies(optim) else model.parameters(), optim)
    return Trainee(name, model, opt, make_schedule(opt, optim, steps_per_epoch),
                   schedule_steps_left=optim.epochs * max(steps_per_epoch, 1), objective=objective,
                   rng=TrainRng(seed, device) if draws_random(model) else None)


def prepare_batch(batch: Batch, *, augmenter: Augmenter, generator: torch.Generator, device: torch.device,
                  teacher: nn.Module | None = None) -> Batch:
    """Augment once for every trainee, move to the device, and with an online teacher score the augmented images."""
    x = augmenter(batch.x, generator) if augmenter.enabled else batch.x
    b = Batch(x, batch.y, batch.logits, batch.rows, batch.mix).to(device)
    if teacher is not None:
        with torch.no_grad():
            b.logits = teacher(b.x).float()  # (B, C)
    return b


LOSS_READ_STEPS = 32  # steps between reads of the group's losses to the host: each read waits for the device


def train_one_epoch(*, trainees: list[Trainee], loader: SoftTargetLoader, epoch: int, augmenter: Augmenter,
                    generator: torch.Generator, device: torch.device, teacher: nn.Module | None = None,
                    clip_grad_norm: float | None = None) -> dict[str, float]:
    """One pass over ``loader``: every active trainee steps on every batch. Returns each one's mean loss.

    A trainee whose loss goes non-finite is marked failed, with the step where it happened, and skips the
    rest of the pass; the others carry on. Losses stay on the device and are read every
    :data:`LOSS_READ_STEPS` steps: reading each one (``float(loss)``, ``if not isfinite(loss)``) made the
    host wait for the device once per student per step, so a group's students could not queue their work
    behind one another. A failed student may take up to that many more (discarded) steps.
    """
    active = [t for t in trainees if t.active]
    for t in active:
        t.model.train()
    sums = {t.name: 0.0 for t in active}
    unread: dict[str, list[tuple[int, torch.Tensor]]] = {t.name: [] for t in active}  # (step, () loss on the device)
    steps = 0
    for batch in loader.epoch(epoch):
        b = prepare_batch(batch, augmenter=augmenter, generator=generator, device=device, teacher=teacher)
        steps += 1
        for t in active:
            if t.failed is not None:
                continue
            t.optimizer.zero_grad(set_to_none=True)
            with own_rng(t.rng):  # dropout's masks: drawn in the forward (kept for the backward, which draws none)
                out = t.model(b.x)  # (B, C)
            loss = t.objective(out, b.logits, b.y, b.mix)
            loss.backward()
            if clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(t.model.parameters(), clip_grad_norm)
            t.optimizer.step()
            if t.schedule is not None and t.schedule_steps_left > 0:
                t.schedule.step()
                t.schedule_steps_left -= 1
            unread[t.name].append((steps, loss.detach()))
        if steps % LOSS_READ_STEPS == 0:
            _read_losses(active, unread, sums, epoch=epoch)
    _read_losses(active, unread, sums, epoch=epoch)
    return {name: total / max(steps, 1) for name, total in sums.items()}


def _read_losses(active: list[Trainee], unread: dict[str, list[tuple[int, torch.Tensor]]], sums: dict[str, float],
                 *, epoch: int) -> None:
    """Move the losses of the last steps to the host (one copy per student), and fail a student at its first
    non-finite one: its step losses end before it, as if it had stopped there."""
    for t in active:
        if not unread[t.name]:
            continue
        at = [step for step, _ in unread[t.name]]
        values = torch.stack([loss for _, loss in unread[t.name]]).cpu().tolist()
        unread[t.name] = []
        if t.failed is None:
            sums[t.name] += sum(record_losses(t, values, steps=at, epoch=epoch))


def record_losses(t: Trainee, values: list[float], *, steps: list[int], epoch: int) -> list[float]:
    """Append a student's step losses (``values``, taken at ``steps`` of ``epoch``) to its record, up to the first
    non-finite one, which fails it with that step; returns the losses kept."""
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        t.failed = f"loss became {values[bad]} at epoch {epoch} step {steps[bad]}"
        log.warning("%s failed: %s", t.name, t.failed)
        values = values[:bad]
    t.step_losses.extend(values)
    return values


VAL_BATCH = 512  # images per validation forward


def val_reader(split: Split, device: torch.device, *, workers: int, batch_size: int = VAL_BATCH,
               persistent: bool = True) -> BatchReader:
    """The reader of ``split`` that validation iterates after every epoch: with ``workers``, their processes are
    started once for the whole run (``persistent``), not once per epoch."""
    items = [("", rows) for rows in row_batches(np.arange(len(split)), batch_size)]
    return BatchReader({"": split}, items, workers=workers, device=device, persistent=persistent)


def validate_group(models: list[nn.Module], split: Split, device: torch.device, *,
                   forward: Callable[[torch.Tensor], torch.Tensor] | None = None, batch_size: int = VAL_BATCH,
                   workers: int = 0, reader: BatchReader | None = None) -> list[dict]:
    """Each model's accuracy and NLL on ``split`` (as :func:`evaluate` computes them), the split read once for all,
    by ``workers`` DataLoader processes (0: in this process), or by ``reader`` (:func:`val_reader`, whose
    workers serve every epoch).

    ``forward`` maps a batch (b, C, H, W) to every model's logits at once, (S, b, K), in place of calling each
    model: a stack's, from its stacked weights. Only each sample's prediction and NLL are kept, not its
    logits: S students on a 1000-class val stay small.
    """
    if not models:
        return []
    if forward is None:
        models = [prepare(m, device, fast=False) for m in models]
    preds: list[list[torch.Tensor]] = [[] for _ in models]
    nlls: list[list[torch.Tensor]] = [[] for _ in models]
    if reader is None:
        reader = val_reader(split, device, workers=workers, batch_size=batch_size, persistent=False)
    for (_, rows_b), (xb, _) in zip(reader.items, reader, strict=True):
        x, y = _to_device(xb, device, fast=False), split.y[rows_b].to(device)  # (b, C, H, W), (b,)
        with torch.no_grad():
            if forward is not None:
                logits = forward(x)  # (S, b, K)
            else:
                logits = torch.stack([m(x).float() for m in models])  # (S, b, K)
            nll = F.cross_entropy(logits.transpose(1, 2), y.expand(len(logits), -1), reduction="none")  # (S, b)
            pred = logits.argmax(2)  # (S, b)
        pred, nll = pred.cpu(), nll.cpu()  # one copy to the host per batch for the whole group
        for i in range(len(models)):
            preds[i].append(pred[i])
            nlls[i].append(nll[i])
    return [{"acc": float((torch.cat(p) == split.y).float().mean()), "nll": float(torch.cat(n).mean())}
            for p, n in zip(preds, nlls)]


def record_epoch(t: Trainee, *, metrics: dict, epoch: int, train_loss: float, select: str) -> bool:
    """Record the epoch's val scores in ``t``'s history; True if this epoch's checkpoint is the one to keep."""
    t.history.append({"epoch": epoch, "train_loss": train_loss, "val_acc": metrics["acc"],
                      "val_nll": metrics["nll"]})
    if select == "last" or metrics["acc"] > t.best_acc:
        t.best_acc, t.best_epoch = metrics["acc"], epoch
        return True
    return False


def early_stop(t: Trainee, *, epoch: int, val_acc: float, patience: int | None) -> None:
    """Stop ``t`` once its val accuracy has not beaten its peak for ``patience`` epochs (None: never)."""
    if val_acc > t.peak_acc:
        t.peak_acc, t.stale_epochs = val_acc, 0
        return
    t.stale_epochs += 1
    if patience is not None and t.stale_epochs >= patience:
        t.stopped_epoch = epoch
        log.info("%s stopped early after epoch %d: no val improvement for %d epochs", t.name, epoch, t.stale_epochs)


class Stack(Protocol):
    """A group that trains as one model in place of the per-student loop (:class:`pipeline.stacking.GroupTrainer`).

    :func:`run_epochs` drives it as it drives the loop: it trains an epoch of the trainees still training,
    scores them on val, and copies a trainee's own weights into its module when its epoch is selected.
    """

    def train_one_epoch(self, *, trainees: list[Trainee], loader: SoftTargetLoader, epoch: int,
                        augmenter: Augmenter, generator: torch.Generator, device: torch.device,
                        teacher: nn.Module | None) -> dict[str, float]: ...

    def validate(self, trainees: list[Trainee], split: Split, device: torch.device, *,
                 reader: BatchReader) -> list[dict]: ...

    def write_back(self, trainee: Trainee) -> None: ...


def run_epochs(trainees: list[Trainee], *, loader: SoftTargetLoader, val: Split, optim: OptimConfig,
               augment: AugmentConfig, seed: int, device: torch.device, label: str,
               progress: Progress | None = None, teacher: nn.Module | None = None,
               stack: Stack | None = None) -> None:
    """Train ``trainees`` together for ``optim.epochs`` epochs, or until none is active.

    Augmentation is drawn once per batch for the whole group, from a generator
    seeded by ``seed``. Each epoch every active trainee steps on every batch
    (:func:`train_one_epoch`), or ``stack``, built over ``trainees``, steps them
    as one model. After each epoch the group is validated on one read of val
    and each trainee's checkpoint is selected on its own.
    """
    augmenter = Augmenter(augment)
    generator = torch.Generator().manual_seed(seed)
    # Validation reads val once per epoch for the whole group, through as many workers as the training loader
    # (in this process it would decode a 50,000-image val set on one core every epoch), started once.
    with contextlib.closing(val_reader(val, device, workers=loader.workers)) as reader:
        for epoch in range(optim.epochs):
            active = [t for t in trainees if t.active]
            if not active:
                break
            for t in active:
                finetune.freeze_backbone(t.model, optim, epoch)
            if stack is None:
                losses = train_one_epoch(trainees=active, loader=loader, epoch=epoch, augmenter=augmenter,
                                         generator=generator, device=device, teacher=teacher,
                                         clip_grad_norm=optim.clip_grad_norm)
            else:
                losses = stack.train_one_epoch(trainees=active, loader=loader, epoch=epoch, augmenter=augmenter,
                                               generator=generator, device=device, teacher=teacher)
            scored = [t for t in active if t.failed is None]
            if stack is None:
                scores = validate_group([t.model for t in scored], val, device, reader=reader)
            else:
                scores = stack.validate(scored, val, device, reader=reader)
            for t, metrics in zip(scored, scores):
                if record_epoch(t, metrics=metrics, epoch=epoch, train_loss=losses[t.name], select=optim.select):
                    if stack is not None:  # a stack trains its own copy of the weights
                        stack.write_back(t)
                    t.best_state = copy.deepcopy(t.model.state_dict())
                early_stop(t, epoch=epoch, val_acc=metrics["acc"], patience=optim.patience)
            if progress is not None:
                best = max((t.best_acc for t in trainees if t.failed is None), default=math.nan)
                progress(label, epoch + 1, optim.epochs, {"best_val_acc": best,
                                                          "training": sum(t.active for t in trainees),
                                                          "trainees": len(trainees)})


def collect_results(trainees: list[Trainee], *, seconds: float) -> list[TrainResult]:
    """Each trainee's selected checkpoint, loaded and in eval mode; a failed one (or one that never ran) has none."""
    results = []
    for t in trainees:
        if t.failed is None and t.best_state is not None:
            t.model.load_state_dict(t.best_state)
            t.model.eval()
            results.append(TrainResult(t.name, t.model, t.best_epoch, t.best_acc, t.history, seconds, None,
                                       t.step_losses, t.stopped_epoch))
        else:
            results.append(TrainResult(t.name, None, -1, math.nan, t.history, seconds, t.failed or "no epoch ran",
                                       t.step_losses, None))
    return results


def fit_teacher(*, model_cfg: ModelConfig, optim: OptimConfig, augment: AugmentConfig, train: Split, val: Split,
                input_shape: tuple[int, int, int], num_classes: int, device: torch.device, seed: int,
                progress: Progress | None = None, workers: int = 0) -> TrainResult:
    """Train the teacher on hard labels alone; ``seed`` fixes its init, data order and augmentation.

    Its loss going non-finite is reported in the result (``failed``), as for a student.
    """
    loader = SoftTargetLoader(train, optim.batch_size, seed=seed, workers=workers,  # labels only: no store
                              pin_memory=device.type == "cuda")
    start = time.perf_counter()
    trainee = build_trainee(name="teacher", objective=label_objective, seed=seed, model_cfg=model_cfg, optim=optim,
                            input_shape=input_shape, num_classes=num_classes, device=device,
                            steps_per_epoch=len(loader))
    run_epochs([trainee], loader=loader, val=val, optim=optim, augment=augment, seed=seed, device=device,
               label="teacher", progress=progress)
    (result,) = collect_results([trainee], seconds=time.perf_counter() - start)
    return result
