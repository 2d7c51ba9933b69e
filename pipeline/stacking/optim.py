"""One optimizer step for a stack of students, equal to each student's own torch optimizer step.

Every student's parameters live in one row of a flat ``(S, N)`` tensor (S students, N parameters
each), so a step is a handful of kernels whatever the number of students or parameter tensors.
The update mirrors torch's single-tensor implementations of SGD (momentum, Nesterov), Adam, AdamW
and RMSprop operation by operation, with the learning rate as a per-student column: a learning
rate sweep and each student's schedule (warm-up included) are just different columns of
:func:`lr_table`.

A student can be masked out of a step (its loss went non-finite): its parameters are left
exactly as they were, whatever NaN its gradients hold, and no operation mixes rows, so nothing
leaks into the other students. Masked students never come back (a failure is final), so all live
students share one step count.
"""
from __future__ import annotations

import torch

from pipeline.config import OptimConfig
from pipeline.optim import make_optimizer, make_schedule

# torch's defaults for the optimizers make_optimizer builds
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
RMSPROP_ALPHA = 0.99
RMSPROP_EPS = 1e-8
CLIP_EPS = 1e-6  # what torch.nn.utils.clip_grad_norm_ adds to the norm


def lr_table(configs: list[OptimConfig], steps_per_epoch: int) -> torch.Tensor:
    """(T + 1, S) float64: row t is each student's lr after t schedule steps, T = epochs * steps per epoch.

    Each column comes from the student's own torch optimizer and schedule (``make_optimizer`` and
    ``make_schedule`` on a stand-in parameter), stepped exactly as the per-student loop steps them,
    so every schedule, warm-up and per-student lr is reproduced without re-deriving it.
    """
    columns = []
    for cfg in configs:
        opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
        schedule = make_schedule(opt, cfg, steps_per_epoch)
        steps = cfg.epochs * max(steps_per_epoch, 1)
        lrs = [opt.param_groups[0]["lr"]]
        for _ in range(steps):
            opt.step()  # no gradient: changes nothing, but keeps the schedule's step-order check quiet
            if schedule is not None:
                schedule.step()
            lrs.append(opt.param_groups[0]["lr"])
        columns.append(lrs)
    return torch.tensor(columns, dtype=torch.float64).T.contiguous()


def clip_per_student(grad: torch.Tensor, max_norm: float) -> None:
    """Scale each row of ``grad`` (S, N) so its L2 norm is at most ``max_norm``, as clip_grad_norm_ does per model."""
    norms = torch.linalg.vector_norm(grad, dim=1, keepdim=True)  # (S, 1)
    grad.mul_((max_norm / (norms + CLIP_EPS)).clamp(max=1.0))


class StackedOptimizer:
    """The optimizer of ``cfg.name`` over a flat (S, N) parameter tensor, one student per row.

    Updates run in place on persistent buffers (on a CPU, fresh temporaries of a large model's size
    cost page faults on every step). The optimizer state of a masked row may take in junk: the
    row's student is failed for good and dropped at the end of the epoch.
    """

    def __init__(self, params: torch.Tensor, cfg: OptimConfig) -> None:
        self.params, self.cfg = params, cfg  # (S, N)
        self.steps = 0  # optimizer steps taken by every live student
        names = {"adam": ("exp_avg", "exp_avg_sq"), "adamw": ("exp_avg", "exp_avg_sq"),
                 "rmsprop": ("square_avg", "momentum_buffer") if cfg.momentum > 0 else ("square_avg",),
                 "sgd": ("momentum_buffer",) if cfg.momentum != 0 else ()}[cfg.name]
        self.state = {name: torch.zeros_like(params) for name in names}
        self.scratch = (torch.empty_like(params), torch.empty_like(params))  # (S, N) each

    def keep(self, params: torch.Tensor, rows: torch.Tensor) -> None:
        """Continue with the students in ``rows`` only; ``params`` is the new flat parameter tensor."""
        self.params = params
        self.state = {k: v[rows] for k, v in self.state.items()}
        self.scratch = (torch.empty_like(params), torch.empty_like(params))

    @torch.no_grad()
    def step(self, grad: torch.Tensor, *, lr: torch.Tensor, live: torch.Tensor) -> None:
        """Update the rows where ``live`` (S, 1) is true with gradient ``grad`` (S, N) and learning rate ``lr`` (S,).

        ``grad`` is used as scratch. ``lr`` is float64 so that every scalar derived from it is computed
        in double precision and rounded once, as torch does with its Python-float learning rate.
        """
        self.steps += 1
        cfg, p, g, st = self.cfg, self.params, grad, self.state
        update, denom = self.scratch
        lr = lr[:, None]  # (S, 1)
        neg_lr = (-lr).float()
        if cfg.weight_decay != 0 and cfg.name != "adamw":
            g.add_(p, alpha=cfg.weight_decay)
        if cfg.name == "sgd":
            if cfg.momentum != 0:
                buf = st["momentum_buffer"]
                if self.steps == 1:
                    buf.copy_(g)  # torch's SGD starts the buffer at the first gradient
                else:
                    buf.mul_(cfg.momentum).add_(g)
                g = g.add_(buf, alpha=cfg.momentum) if cfg.nesterov else buf
            torch.mul(g, neg_lr, out=update)
        elif cfg.name in ("adam", "adamw"):
            beta1, beta2 = ADAM_BETAS
            if cfg.name == "adamw" and cfg.weight_decay != 0:
                p.mul_(torch.where(live, (1 - lr * cfg.weight_decay).float(), 1.0))
            st["exp_avg"].lerp_(g, 1 - beta1)
            st["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            bias_correction1 = 1 - beta1 ** self.steps
            bias_correction2_sqrt = (1 - beta2 ** self.steps) ** 0.5
            torch.sqrt(st["exp_avg_sq"], out=denom).div_(bias_correction2_sqrt).add_(ADAM_EPS)
            torch.mul(st["exp_avg"], (-(lr / bias_correction1)).float(), out=update).div_(denom)
        else:  # rmsprop
            st["square_avg"].mul_(RMSPROP_ALPHA).addcmul_(g, g, value=1 - RMSPROP_ALPHA)
            avg = torch.sqrt(st["square_avg"], out=denom).add_(RMSPROP_EPS)
            if cfg.momentum > 0:
                torch.mul(st["momentum_buffer"].mul_(cfg.momentum).addcdiv_(g, avg), neg_lr, out=update)
            else:
                torch.mul(g, neg_lr, out=update).div_(avg)
        # A masked row adds an exact zero: its parameters stay bit for bit, NaN in its update or not.
        p.add_(update.masked_fill_(~live, 0.0))
