"""Optimizers and learning-rate schedules, built from an OptimConfig."""
from __future__ import annotations

import torch

from pipeline.config import OptimConfig
from pipeline.errors import UserError


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
