"""Training and evaluation loops shared by the teacher and the students.

A *group* of models trains in one pass over the data: each batch is loaded,
augmented and moved to the device once, then every model in the group takes
its step with its own optimizer, schedule, loss and temperature. The teacher
is simply a group of one trained on hard labels.

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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.augment import Augmenter
from pipeline.config import AugmentConfig, ModelConfig, OptimConfig, StudentSpec
from pipeline.data import Split
from pipeline.errors import UserError
from pipeline.loader import SoftTargetLoader
from pipeline.losses import distillation_loss
from pipeline.models import build_model

log = logging.getLogger(__name__)

# nn.Module construction draws from torch's global RNG; the lock keeps two
# groups built in concurrent threads from interleaving their draws.
_INIT_LOCK = threading.Lock()

Progress = Callable[[str, int, int, dict], None]  # (group label, epoch, epochs, metrics)


def build_seeded(cfg: ModelConfig, shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg, shape, num_classes)


def make_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_schedule(opt: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int):
    """The lr schedule, stepped once per optimizer step; None when the lr stays constant.

    Every length is converted from epochs to steps here. A warm-up is a LinearLR from
    ``lr / (warm-up steps + 1)`` up to ``lr``, chained in front of the main schedule with SequentialLR;
    the main schedule then runs over the epochs left. OneCycle brings its own warm-up (see OptimConfig).
    """
    lrs = torch.optim.lr_scheduler
    spe = max(steps_per_epoch, 1)
    total, warmup = cfg.epochs * spe, cfg.warmup_epochs * spe
    if cfg.schedule == "onecycle":
        # OneCycle divides by the length of each phase, so each needs whole steps: at least 2 rising
        # (its first step is the starting lr) and 1 falling. Only tiny runs are ever clamped.
        if total < 3:
            raise UserError("schedule", f"onecycle needs at least 3 optimizer steps, this run has {total}",
                            "train for more epochs, lower --batch-size, or use --schedule cosine")
        rising = min(max(warmup if warmup else round(0.3 * total), 2), total - 1)
        # cycle_momentum=False: OneCycle would otherwise overwrite the configured momentum (or Adam's
        # beta1) with its own 0.85-0.95 cycle, silently turning momentum on for plain SGD.
        return lrs.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total,
                              pct_start=rising / total, cycle_momentum=False)
    if cfg.schedule == "cosine":
        main = lrs.CosineAnnealingLR(opt, T_max=total - warmup)
    elif cfg.schedule == "step":
        # Decays at epochs step_size, 2*step_size, ... of the whole run, so a warm-up does not shift them;
        # the main schedule starts counting when the warm-up ends, hence the offset.
        decays = range(cfg.step_size, cfg.epochs, cfg.step_size)
        main = lrs.MultiStepLR(opt, milestones=[e * spe - warmup for e in decays], gamma=cfg.gamma)
    else:
        main = None
    if not warmup:
        return main
    ramp = lrs.LinearLR(opt, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return ramp if main is None else lrs.SequentialLR(opt, [ramp, main], milestones=[warmup])


@dataclass
class Trainee:
    """One model being trained, with everything that is its own."""

    spec: StudentSpec
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: object | None
    best_acc: float = -1.0
    best_epoch: int = -1
    best_state: dict | None = None
    history: list[dict] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    failed: str | None = None
    schedule_steps: int = 0
    peak_acc: float = -1.0  # best val accuracy so far, for early stopping (best_acc follows `select`)
    stale_epochs: int = 0  # epochs since peak_acc last improved
    stopped_epoch: int | None = None  # the epoch after which early stopping ended this trainee

    @property
    def name(self) -> str:
        return self.spec.run_id

    @property
    def active(self) -> bool:
        return self.failed is None and self.stopped_epoch is None


@dataclass
class TrainResult:
    spec: StudentSpec
    model: nn.Module | None  # the selected checkpoint loaded, None if training failed
    best_epoch: int
    val_acc: float
    history: list[dict]
    seconds: float
    failed: str | None = None
    step_losses: list[float] = field(default_factory=list)
    stopped_epoch: int | None = None  # set when early stopping ended training after this epoch


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 512) -> Iterator[torch.Tensor]:
    """Raw logits (T = 1) in order, one (b, C) CPU tensor per batch."""
    model.eval()
    pin = device.type == "cuda"
    for s in range(0, x.shape[0], batch_size):
        xb = x[s:s + batch_size]
        if pin:
            xb = xb.pin_memory()
        yield model(xb.to(device, non_blocking=pin)).float().cpu()


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, device: torch.device, teacher_logits: torch.Tensor | None = None) -> dict:
    """Accuracy, NLL and (if teacher logits are given) top-1 agreement, all at T = 1."""
    logits = torch.cat(list(predict(model, split.x, device)))  # (N, C)
    pred = logits.argmax(1)
    out = {"acc": float((pred == split.y).float().mean()), "nll": float(F.cross_entropy(logits, split.y))}
    if teacher_logits is not None:
        out["agreement"] = float((pred == teacher_logits.argmax(1)).float().mean())
    return out


def train_group(specs: list[StudentSpec], model_cfg: ModelConfig, optim: OptimConfig, augment: AugmentConfig,
                loader: SoftTargetLoader, val: Split, shape: tuple[int, int, int], num_classes: int,
                device: torch.device, select: str = "best", label: str = "group",
                progress: Progress | None = None, teacher: nn.Module | None = None) -> list[TrainResult]:
    """Train every spec in one pass per epoch; return each selected checkpoint.

    Soft targets come from the loader (stored logits) unless ``teacher`` is
    given: then it runs on every batch, after augmentation ("online" KD, kept
    as the reference that offline KD is measured against).

    A student whose loss goes non-finite is marked failed and dropped from the
    pass; the others carry on. Likewise with ``optim.patience``, a student whose
    val accuracy has not improved for that many epochs stops, and the others
    carry on.
    """
    if teacher is not None:
        teacher = teacher.to(device).eval()
    start = time.perf_counter()
    trainees = []
    # The schedule is sized by the loader's batch count; with worker processes an epoch can yield a
    # few extra partial batches, and OneCycle refuses to step past its end, so steps beyond it are skipped.
    schedule_total = optim.epochs * max(len(loader), 1)
    for spec in specs:
        model = build_seeded(model_cfg, shape, num_classes, spec.seed).to(device)
        own = optim if spec.lr is None else dataclasses.replace(optim, lr=spec.lr)
        opt = make_optimizer(model.parameters(), own)
        trainees.append(Trainee(spec, model, opt, make_schedule(opt, own, len(loader))))
    augmenter = Augmenter(augment)
    # Augmentation is drawn once per batch for the whole group, seeded by the group's first student.
    gen = torch.Generator().manual_seed(specs[0].seed)
    for epoch in range(optim.epochs):
        active = [t for t in trainees if t.active]
        if not active:
            break
        for t in active:
            t.model.train()
        sums = {t.name: 0.0 for t in active}
        steps = 0
        for batch in loader.epoch(epoch):
            x = augmenter(batch.x, gen) if augmenter.enabled else batch.x
            b = type(batch)(x, batch.y, batch.logits, batch.rows).to(device)
            if teacher is not None:
                with torch.no_grad():
                    b.logits = teacher(b.x).float()  # (B, C)
            steps += 1
            for t in active:
                if t.failed is not None:
                    continue
                out = t.model(b.x)  # (B, C)
                loss = distillation_loss(out, b.logits, b.y, t.spec.loss, t.spec.temperature, t.spec.alpha,
                                         t.spec.beta)
                if not torch.isfinite(loss):
                    t.failed = f"loss became {float(loss.detach())} at epoch {epoch} step {steps}"
                    log.warning("%s failed: %s", t.name, t.failed)
                    continue
                t.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if optim.clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(t.model.parameters(), optim.clip_grad_norm)
                t.optimizer.step()
                if t.schedule is not None and t.schedule_steps < schedule_total:
                    t.schedule.step()
                    t.schedule_steps += 1
                value = float(loss.detach())
                sums[t.name] += value
                t.step_losses.append(value)
        for t in active:
            if t.failed is not None:
                continue
            metrics = evaluate(t.model, val, device)
            row = {"epoch": epoch, "train_loss": sums[t.name] / max(steps, 1), "val_acc": metrics["acc"],
                   "val_nll": metrics["nll"]}
            t.history.append(row)
            if select == "last" or metrics["acc"] > t.best_acc:
                t.best_acc, t.best_epoch = metrics["acc"], epoch
                t.best_state = copy.deepcopy(t.model.state_dict())
            if metrics["acc"] > t.peak_acc:
                t.peak_acc, t.stale_epochs = metrics["acc"], 0
            else:
                t.stale_epochs += 1
                if optim.patience is not None and t.stale_epochs >= optim.patience:
                    t.stopped_epoch = epoch
                    log.info("%s stopped early after epoch %d: no val improvement for %d epochs", t.name, epoch,
                             t.stale_epochs)
        if progress is not None:
            best = max((t.best_acc for t in trainees if t.failed is None), default=math.nan)
            progress(label, epoch + 1, optim.epochs, {"best_val_acc": best, "active": len(active)})
    seconds = time.perf_counter() - start
    results = []
    for t in trainees:
        if t.failed is None and t.best_state is not None:
            t.model.load_state_dict(t.best_state)
            t.model.eval()
            results.append(TrainResult(t.spec, t.model, t.best_epoch, t.best_acc, t.history, seconds,
                                       step_losses=t.step_losses, stopped_epoch=t.stopped_epoch))
        else:
            results.append(TrainResult(t.spec, None, -1, math.nan, t.history, seconds, t.failed or "no epoch ran",
                                       step_losses=t.step_losses))
    return results


def logits_all(model: nn.Module, x: torch.Tensor, device: torch.device) -> np.ndarray:
    return torch.cat(list(predict(model, x, device))).numpy()
