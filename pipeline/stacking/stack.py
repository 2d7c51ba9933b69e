"""Students of one architecture trained as one batched model.

Stacking S students turns S small models into one wide one: each batch takes
one forward and backward and one optimizer step over the stacked parameters
(:mod:`pipeline.stacking.optim`), instead of S of each. The forward is
:mod:`pipeline.stacking.grouped`'s natively grouped layers for plain sequential models
(mlp, cnn), else ``torch.func.functional_call`` under ``torch.func.vmap``. For the small students
distillation produces, per-operation overhead (Python, dispatch, GPU kernel
launches) dominates a step, so a stack costs far less than S separate steps.

- Every student's parameters are one row of a flat (S, N) tensor; the
  stacked per-tensor views the model sees and their gradients are views into
  it and into a flat gradient, so the optimizer and per-student clipping work
  on whole rows.
- Buffers (BatchNorm running statistics) are stacked per student and updated
  in place by the vectorised forward: each student keeps its own statistics.
- Dropout draws independent masks per student (``randomness="different"``).
- Loss choice, temperature, alpha and beta are per-student tensors
  (:func:`pipeline.losses.weighted_distillation_loss`), so the label-only
  baseline and every soft loss share one stack. The batch's mix of mixed
  views (the λ-weighted hard term) and its unlabelled rows (soft term only,
  weighted by ``unlabelled_weight``) are shared by every student.
- A student whose loss goes non-finite is masked out of the update on the
  device, in the same step: its NaN never reaches its own parameters or
  anyone else's. Losses stay on the device until the caller reads them.

A model that cannot be vectorised raises :class:`BatchingUnsupported`
when the stack is built (a probe step on two samples), and the group falls
back to training the students one by one (:func:`pipeline.stacking.stack_students`).
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.func import functional_call, vmap

from pipeline.config import OptimConfig
from pipeline.grid import StudentSpec
from pipeline.losses import hard_term_weight, weighted_distillation_loss
from pipeline.names import NO_LABEL
import pipeline.stacking.grouped as grouped
from pipeline.stacking.optim import StackedOptimizer, clip_per_student


# The per-tensor views of the flat gradient are strided like the parameters they belong to; torch's
# gradient accumulation warns that such a layout may be slower, but accumulating into them in place
# is what puts every gradient in one (S, N) tensor.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


# The batch's mixed labels: (partner labels (B,), λ (B,)) for mixed views (pipeline.views), else None.
Mix = tuple[torch.Tensor, torch.Tensor] | None


def _loss_of_logits(out: torch.Tensor, soft: torch.Tensor | None, labels: torch.Tensor, mix: Mix, weights: dict,
                    unlabelled_weight: float) -> torch.Tensor:
    return weighted_distillation_loss(out, soft, labels, mix, unlabelled_weight=unlabelled_weight, **weights)


# (S, B, K) logits, shared soft targets, labels and mix, (S,) weights, one unlabelled weight -> (S,) losses.
_LOSSES = vmap(_loss_of_logits, in_dims=(0, None, None, None, 0, None))


class BatchingUnsupported(Exception):
    """The students' model cannot be trained as one stack; the message says why."""


def loss_weights(specs: list[StudentSpec], device: torch.device) -> dict:
    """Each student's temperature, soft-loss weights and hard weight, as (S,) float32 tensors."""
    def column(values: list[float]) -> torch.Tensor:
        # Built from Python floats (float64) and rounded once, as the per-student loss rounds its scalars.
        return torch.tensor(values, dtype=torch.float32, device=device)

    soft_kinds = sorted({s.loss for s in specs if not s.is_baseline})
    return {
        "temperature": column([s.temperature for s in specs]),
        "soft_weights": {k: column([s.alpha if s.loss == k else 0.0 for s in specs]) for k in soft_kinds},
        "hard_weight": column([hard_term_weight(s.loss, s.alpha, s.beta) for s in specs]),
    }


class StackedStudents:
    """S models of one architecture trained as one; row i of every stacked tensor is student i."""

    def __init__(self, models: list[nn.Module], *, specs: list[StudentSpec], optim: OptimConfig,
                 lrs: torch.Tensor, device: torch.device, input_shape: tuple[int, int, int],
                 num_classes: int, use_grouped: bool = True, unlabelled_weight: float = 1.0) -> None:
        """``lrs`` is the (steps + 1, S) float64 learning-rate table (see :func:`pipeline.stacking.optim.lr_table`).

        A plain sequential model runs in :mod:`pipeline.stacking.grouped`'s native grouped form (unless
        ``use_grouped`` is False), any other under ``vmap``; :attr:`engine` says which, and why.
        ``unlabelled_weight`` weights the soft term of unlabelled rows (``NO_LABEL``) for every student.
        """
        if len({type(m) for m in models}) != 1 or len({tuple(m.state_dict()) for m in models}) != 1:
            raise BatchingUnsupported("the models differ in architecture")
        self.base = copy.deepcopy(models[0]).to("meta").train()  # the structure only; weights come per call
        for m in self.base.modules():
            # An in-place activation on a batched view costs vmap copies of whole activations in the backward
            # (CopySlices); out of place it computes the same values, faster.
            if getattr(m, "inplace", False) is True:
                m.inplace = False
        self.names = [n for n, _ in self.base.named_parameters()]
        self.shapes = [p.shape for _, p in self.base.named_parameters()]
        self.clip = optim.clip_grad_norm
        with torch.no_grad():
            flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models])
            per_model = [dict(m.named_buffers()) for m in models]  # once each: mobilenet has 102 buffers
            self.buffers = {n: torch.stack([b[n].detach() for b in per_model]).clone()
                            for n, _ in self.base.named_buffers()}
        self.optimizer = StackedOptimizer(flat.to(device), optim)
        self.lrs = lrs.to(device)
        self.weights = loss_weights(specs, device)
        self.unlabelled_weight = float(unlabelled_weight)
        self.live = torch.ones(len(models), 1, dtype=torch.bool, device=device)  # (S, 1)
        self._views()
        why_not = grouped.why_not_grouped(models[0]) if use_grouped else "grouped layers are off"
        self.grouped = why_not is None
        self.engine = "grouped layers" if self.grouped else f"vmap ({why_not})"
        if self.grouped:
            self.loss = self._grouped_loss
        else:
            self.loss = vmap(self._student_loss, in_dims=(0, 0, None, None, None, None, 0, None),
                             randomness="different")
        self._probe(device, input_shape, num_classes)

    @property
    def size(self) -> int:
        return self.optimizer.params.shape[0]

    def _views(self) -> None:
        """Per-tensor (S, *shape) leaves over the flat parameters, their gradients over one flat gradient."""
        flat = self.optimizer.params  # (S, N)
        self.grad = torch.zeros_like(flat)  # (S, N)
        self.params: dict[str, torch.Tensor] = {}
        start = 0
        for name, shape in zip(self.names, self.shapes):
            end = start + shape.numel()
            leaf = flat[:, start:end].view(len(flat), *shape).requires_grad_()
            # Backward accumulates into an existing .grad in place: the gradients land in self.grad.
            leaf.grad = self.grad[:, start:end].view(len(flat), *shape)
            self.params[name] = leaf
            start = end

    def _student_loss(self, params: dict, buffers: dict, x: torch.Tensor, soft: torch.Tensor | None,
                      labels: torch.Tensor, mix: Mix, weights: dict, unlabelled_weight: float) -> torch.Tensor:
        """One student's loss on the shared batch (vmap adds the student axis)."""
        out = functional_call(self.base, (params, buffers), (x,))  # (B, C)
        return _loss_of_logits(out, soft, labels, mix, weights, unlabelled_weight)

    def _grouped_loss(self, params: dict, buffers: dict, x: torch.Tensor, soft: torch.Tensor | None,
                      labels: torch.Tensor, mix: Mix, weights: dict, unlabelled_weight: float) -> torch.Tensor:
        """Every student's loss on the shared batch, (S,): one grouped forward, the losses vectorised."""
        out = grouped.forward(self.base, params, buffers, x, students=self.size, training=True)  # (S, B, K)
        return _LOSSES(out, soft, labels, mix, weights, unlabelled_weight)

    def _probe(self, device: torch.device, input_shape: tuple[int, int, int], num_classes: int) -> None:
        """One forward and backward on two samples, on copies of the buffers: does the model vectorise?

        The probe's batch is mixed and has an unlabelled row, so it also takes the loss's every path.
        """
        x = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)  # (2, C, H, W)
        soft = torch.zeros(2, num_classes, device=device) if self.weights["soft_weights"] else None  # (2, K)
        labels = torch.tensor([0, NO_LABEL], dtype=torch.int64, device=device)  # (2,)
        mix = (torch.tensor([NO_LABEL, 0], device=device), torch.tensor([0.5, 0.5], device=device))  # (2,), (2,)
        buffers = {k: v.clone() for k, v in self.buffers.items()}
        devices = [device] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):  # dropout in the probe must not move the global RNG
                losses = self.loss(self.params, buffers, x, soft, labels, mix, self.weights,
                                   self.unlabelled_weight)  # (S,)
                torch.autograd.grad(losses.sum(), list(self.params.values()), allow_unused=True)
        except Exception as e:  # any failure to vectorise means: train this group one by one
            raise BatchingUnsupported(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e

    def step(self, x: torch.Tensor, soft: torch.Tensor | None, labels: torch.Tensor, mix: Mix = None) -> torch.Tensor:
        """One training step of every student on batch ``x`` (B, C, H, W); returns the (S,) losses, on the device.

        ``labels`` (B,) may hold unlabelled rows (``NO_LABEL``); ``mix`` is the batch's (partner labels (B,),
        λ (B,)) when its views are mixed. A student whose loss is not finite is masked out of this update and
        every later one.
        """
        lr = self.lrs[min(self.optimizer.steps, len(self.lrs) - 1)]  # (S,) after that many schedule steps
        self.grad.zero_()
        with torch.enable_grad():
            losses = self.loss(self.params, self.buffers, x, soft, labels, mix, self.weights,
                               self.unlabelled_weight)  # (S,)
            losses.sum().backward()  # students are independent: row i of the gradient is student i's own
        with torch.no_grad():
            self.live &= torch.isfinite(losses)[:, None]
            if self.clip is not None:
                clip_per_student(self.grad, self.clip)
            self.optimizer.step(self.grad, lr=lr, live=self.live)
        return losses.detach()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Every student's eval-mode logits on batch ``x`` (B, C, H, W): (S, B, K), one vectorised forward.

        BatchNorm reads each student's own running statistics, as the student's module does in eval mode.
        """
        if self.grouped:
            return grouped.forward(self.base, self.params, self.buffers, x, students=self.size, training=False)

        def logits(params: dict, buffers: dict) -> torch.Tensor:
            return functional_call(self.base, (params, buffers), (x,))  # (B, K)

        self.base.eval()
        try:
            return vmap(logits)(self.params, self.buffers)
        finally:
            self.base.train()

    def keep(self, rows: list[int]) -> None:
        """Continue with the students in ``rows`` only (the others stopped or failed)."""
        if rows == list(range(self.size)):
            return
        idx = torch.tensor(rows, device=self.live.device)
        with torch.no_grad():
            self.optimizer.keep(self.optimizer.params[idx], idx)
            self.buffers = {k: v[idx] for k, v in self.buffers.items()}
        self.lrs = self.lrs[:, idx]
        self.live = self.live[idx]
        self.weights = {k: ({n: w[idx] for n, w in v.items()} if isinstance(v, dict) else v[idx])
                        for k, v in self.weights.items()}
        self._views()

    @torch.no_grad()
    def write_back(self, row: int, model: nn.Module) -> None:
        """Copy student ``row``'s parameters and buffers into ``model``, an ordinary module of the same architecture."""
        for name, p in model.named_parameters():
            p.copy_(self.params[name][row])
        for name, b in model.named_buffers():
            b.copy_(self.buffers[name][row])
