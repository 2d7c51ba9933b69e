"""Training and evaluation, laid out like torchvision's classification reference.

:func:`train_one_epoch` is one pass over the data and :func:`evaluate` scores a model on a split.
:func:`fit_group` and :func:`fit_teacher` are the two entry points, each a short recipe:
build the trainees, run the epochs (one epoch, then validate-and-select and early stop for
each trainee), collect the results.

A *group* of students trains in one pass over the data: each batch is loaded,
augmented and moved to the device once, then every model in the group takes
its step with its own optimizer, schedule and objective. The teacher takes its
own path, :func:`fit_teacher`: a single model trained on hard labels through
the same epoch loop.

Checkpoints are selected on the validation split (best or last); the test
split is only ever evaluated, never used to choose.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.augment import Augmenter
from pipeline.config import AugmentConfig, ModelConfig, OptimConfig, StudentSpec
from pipeline.data import Split
from pipeline.loader import Batch, SoftTargetLoader
from pipeline.losses import distillation_loss
from pipeline.metrics import expected_calibration_error
from pipeline.models import build_model
from pipeline.optim import make_optimizer, make_schedule

log = logging.getLogger(__name__)

# nn.Module construction draws from torch's global RNG; the lock keeps two
# groups built in concurrent threads from interleaving their draws.
_INIT_LOCK = threading.Lock()

Progress = Callable[[str, int, int, dict], None]  # (group label, epoch, epochs, metrics)
# (model logits (B, C), teacher logits (B, C) or None, labels (B,), mixed labels or None) -> scalar loss;
# mixed labels are (partner labels (B,), λ (B,)) for batches of mixed views (pipeline.view_ops).
Mix = tuple[torch.Tensor, torch.Tensor] | None
Objective = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, Mix], torch.Tensor]


def build_seeded(cfg: ModelConfig, shape: tuple[int, int, int], num_classes: int, *, seed: int) -> nn.Module:
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg, shape, num_classes)


def student_objective(spec: StudentSpec) -> Objective:
    """The distillation loss of one grid point (label-only for the baseline)."""
    def objective(out: torch.Tensor, soft: torch.Tensor | None, labels: torch.Tensor, mix: Mix = None) -> torch.Tensor:
        return distillation_loss(out, soft, labels, spec.loss, spec.temperature, spec.alpha, spec.beta, mix=mix)

    return objective


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


@dataclass
class StudentResult(TrainResult):
    spec: StudentSpec = field(kw_only=True)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device, *,
            batch_size: int = 512) -> Iterator[torch.Tensor]:
    """Raw logits (T = 1) in order, one (b, C) CPU tensor per batch."""
    model.eval()
    pin = device.type == "cuda"
    for s in range(0, x.shape[0], batch_size):
        xb = x[s:s + batch_size]
        if pin:
            xb = xb.pin_memory()
        yield model(xb.to(device, non_blocking=pin)).float().cpu()


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, device: torch.device, *,
             teacher_logits: torch.Tensor | None = None) -> dict:
    """Accuracy, NLL, ECE and (if teacher logits are given) top-1 agreement, all at T = 1."""
    logits = torch.cat(list(predict(model, split.x, device)))  # (N, C)
    pred = logits.argmax(1)
    out = {"acc": float((pred == split.y).float().mean()), "nll": float(F.cross_entropy(logits, split.y))}
    out["ece"] = expected_calibration_error(logits, split.y)
    if teacher_logits is not None:
        out["agreement"] = float((pred == teacher_logits.argmax(1)).float().mean())
    return out


def build_trainee(*, name: str, objective: Objective, seed: int, model_cfg: ModelConfig, optim: OptimConfig,
                  input_shape: tuple[int, int, int], num_classes: int, device: torch.device,
                  steps_per_epoch: int) -> Trainee:
    """A freshly initialised model (seeded) with its own optimizer and lr schedule."""
    model = build_seeded(model_cfg, input_shape, num_classes, seed=seed).to(device)
    opt = make_optimizer(model.parameters(), optim)
    return Trainee(name, model, opt, make_schedule(opt, optim, steps_per_epoch),
                   schedule_steps_left=optim.epochs * max(steps_per_epoch, 1), objective=objective)


def prepare_batch(batch: Batch, *, augmenter: Augmenter, generator: torch.Generator, device: torch.device,
                  teacher: nn.Module | None = None) -> Batch:
    """Augment once for every trainee, move to the device, and with an online teacher score the augmented images."""
    x = augmenter(batch.x, generator) if augmenter.enabled else batch.x
    b = Batch(x, batch.y, batch.logits, batch.rows, batch.mix).to(device)
    if teacher is not None:
        with torch.no_grad():
            b.logits = teacher(b.x).float()  # (B, C)
    return b


def train_one_epoch(*, trainees: list[Trainee], loader: SoftTargetLoader, epoch: int, augmenter: Augmenter,
                    generator: torch.Generator, device: torch.device, teacher: nn.Module | None = None,
                    clip_grad_norm: float | None = None) -> dict[str, float]:
    """One pass over ``loader``: every active trainee steps on every batch. Returns each one's mean loss.

    A trainee whose loss goes non-finite is marked failed and skips the rest of
    the pass; the others carry on.
    """
    active = [t for t in trainees if t.active]
    for t in active:
        t.model.train()
    sums = {t.name: 0.0 for t in active}
    steps = 0
    for batch in loader.epoch(epoch):
        b = prepare_batch(batch, augmenter=augmenter, generator=generator, device=device, teacher=teacher)
        steps += 1
        for t in active:
            if t.failed is not None:
                continue
            out = t.model(b.x)  # (B, C)
            loss = t.objective(out, b.logits, b.y, b.mix)
            if not torch.isfinite(loss):
                t.failed = f"loss became {float(loss.detach())} at epoch {epoch} step {steps}"
                log.warning("%s failed: %s", t.name, t.failed)
                continue
            t.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(t.model.parameters(), clip_grad_norm)
            t.optimizer.step()
            if t.schedule is not None and t.schedule_steps_left > 0:
                t.schedule.step()
                t.schedule_steps_left -= 1
            value = float(loss.detach())
            sums[t.name] += value
            t.step_losses.append(value)
    return {name: total / max(steps, 1) for name, total in sums.items()}


def validate_and_select(t: Trainee, *, val: Split, device: torch.device, epoch: int, train_loss: float,
                        select: str) -> float:
    """Score ``t`` on val, record the epoch in its history, keep its checkpoint if selected; return val accuracy."""
    metrics = evaluate(t.model, val, device)
    t.history.append({"epoch": epoch, "train_loss": train_loss, "val_acc": metrics["acc"],
                      "val_nll": metrics["nll"]})
    if select == "last" or metrics["acc"] > t.best_acc:
        t.best_acc, t.best_epoch = metrics["acc"], epoch
        t.best_state = copy.deepcopy(t.model.state_dict())
    return metrics["acc"]


def early_stop(t: Trainee, *, epoch: int, val_acc: float, patience: int | None) -> None:
    """Stop ``t`` once its val accuracy has not beaten its peak for ``patience`` epochs (None: never)."""
    if val_acc > t.peak_acc:
        t.peak_acc, t.stale_epochs = val_acc, 0
        return
    t.stale_epochs += 1
    if patience is not None and t.stale_epochs >= patience:
        t.stopped_epoch = epoch
        log.info("%s stopped early after epoch %d: no val improvement for %d epochs", t.name, epoch, t.stale_epochs)


def run_epochs(trainees: list[Trainee], *, loader: SoftTargetLoader, val: Split, optim: OptimConfig,
               augment: AugmentConfig, seed: int, device: torch.device, label: str,
               progress: Progress | None = None, teacher: nn.Module | None = None) -> None:
    """Train ``trainees`` together for ``optim.epochs`` epochs, or until none is active.

    Augmentation is drawn once per batch for the whole group, from a generator
    seeded by ``seed``.
    """
    augmenter = Augmenter(augment)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(optim.epochs):
        active = [t for t in trainees if t.active]
        if not active:
            break
        losses = train_one_epoch(trainees=active, loader=loader, epoch=epoch, augmenter=augmenter,
                                 generator=generator, device=device, teacher=teacher,
                                 clip_grad_norm=optim.clip_grad_norm)
        for t in active:
            if t.failed is not None:
                continue
            acc = validate_and_select(t, val=val, device=device, epoch=epoch, train_loss=losses[t.name],
                                      select=optim.select)
            early_stop(t, epoch=epoch, val_acc=acc, patience=optim.patience)
        if progress is not None:
            best = max((t.best_acc for t in trainees if t.failed is None), default=math.nan)
            progress(label, epoch + 1, optim.epochs, {"best_val_acc": best, "active": len(active)})


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


def fit_group(specs: list[StudentSpec], *, model_cfg: ModelConfig, optim: OptimConfig, augment: AugmentConfig,
              loader: SoftTargetLoader, val: Split, input_shape: tuple[int, int, int], num_classes: int,
              device: torch.device, label: str = "group", progress: Progress | None = None,
              teacher: nn.Module | None = None) -> list[StudentResult]:
    """Train every student of ``specs`` in one pass per epoch; return each selected checkpoint, in order.

    Soft targets come from the loader (stored logits) unless ``teacher`` is
    given: then it runs on every batch, after augmentation ("online" KD, kept
    as the reference that offline KD is measured against). Data order and
    augmentation are seeded by the first spec's seed, each model's init by its own.

    A student whose loss goes non-finite fails alone; likewise with
    ``optim.patience``, a student whose val accuracy stops improving stops
    alone. The checkpoint is chosen by ``optim.select``.
    """
    if teacher is not None:
        teacher = teacher.to(device).eval()
    start = time.perf_counter()
    trainees = [build_trainee(name=s.run_id, objective=student_objective(s), seed=s.seed, model_cfg=model_cfg,
                              optim=optim if s.lr is None else dataclasses.replace(optim, lr=s.lr),
                              input_shape=input_shape, num_classes=num_classes, device=device,
                              steps_per_epoch=len(loader))
                for s in specs]
    run_epochs(trainees, loader=loader, val=val, optim=optim, augment=augment, seed=specs[0].seed, device=device,
               label=label, progress=progress, teacher=teacher)
    results = collect_results(trainees, seconds=time.perf_counter() - start)
    return [StudentResult(**vars(r), spec=s) for r, s in zip(results, specs)]


def fit_teacher(*, model_cfg: ModelConfig, optim: OptimConfig, augment: AugmentConfig, train: Split, val: Split,
                input_shape: tuple[int, int, int], num_classes: int, device: torch.device, seed: int,
                progress: Progress | None = None) -> TrainResult:
    """Train the teacher on hard labels alone; ``seed`` fixes its init, data order and augmentation.

    Its loss going non-finite is reported in the result (``failed``), as for a student.
    """
    loader = SoftTargetLoader(train, optim.batch_size, seed=seed)  # labels only: no store
    start = time.perf_counter()
    trainee = build_trainee(name="teacher", objective=label_objective, seed=seed, model_cfg=model_cfg, optim=optim,
                            input_shape=input_shape, num_classes=num_classes, device=device,
                            steps_per_epoch=len(loader))
    run_epochs([trainee], loader=loader, val=val, optim=optim, augment=augment, seed=seed, device=device,
               label="teacher", progress=progress)
    (result,) = collect_results([trainee], seconds=time.perf_counter() - start)
    return result
