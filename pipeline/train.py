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
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_schedule(opt: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * max(steps_per_epoch, 1))
    return None


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

    @property
    def name(self) -> str:
        return self.spec.run_id


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
    pass; the others carry on.
    """
    if teacher is not None:
        teacher = teacher.to(device).eval()
    start = time.perf_counter()
    trainees = []
    for spec in specs:
        model = build_seeded(model_cfg, shape, num_classes, spec.seed).to(device)
        opt = make_optimizer(model.parameters(), optim if spec.lr is None else dataclasses.replace(optim, lr=spec.lr))
        trainees.append(Trainee(spec, model, opt, make_schedule(opt, optim, len(loader))))
    augmenter = Augmenter(augment)
    # Augmentation is drawn once per batch for the whole group, seeded by the group's first student.
    gen = torch.Generator().manual_seed(specs[0].seed)
    for epoch in range(optim.epochs):
        active = [t for t in trainees if t.failed is None]
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
                t.optimizer.step()
                if t.schedule is not None:
                    t.schedule.step()
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
                                       step_losses=t.step_losses))
        else:
            results.append(TrainResult(t.spec, None, -1, math.nan, t.history, seconds, t.failed or "no epoch ran",
                                       step_losses=t.step_losses))
    return results


def logits_all(model: nn.Module, x: torch.Tensor, device: torch.device) -> np.ndarray:
    return torch.cat(list(predict(model, x, device))).numpy()
