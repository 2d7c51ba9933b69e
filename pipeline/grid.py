"""The distillation grid: the students a :class:`~pipeline.config.DistillConfig` trains, one
:class:`StudentSpec` per point and seed, and the ids their runs, checkpoints and leaderboard rows are named by.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.names import SOFT_LOSSES, TEMPERATURE_FREE_LOSSES
from pipeline.validation import check, check_choice

# What a label-only student trains on, from a store with teacher views: ``views``, the recipe's views as stored
# (mixed ones with the λ-weighted hard term; the only baseline of a store without views); ``plain``, the clean
# view 0 alone (the plain recipe, no stored views); ``nomix``, the recipe's views without their mixing (each
# sample's own transformed view with its own label).
BASELINE_DATA = ("views", "plain", "nomix")


def store_baselines(views: int, mixed: bool) -> tuple[str, ...]:
    """The label-only students a store's views call for: with views, the plain recipe too, and with mixed views
    the views without mixing as well, so that "Δ vs base" is measured against the best of them
    (:func:`pipeline.report.leaderboard`), never against a recipe's weakened baseline alone."""
    if views <= 1:
        return ("views",)
    return ("views", "plain", "nomix") if mixed else ("views", "plain")


def baselines_of(store, mode: str = "offline") -> tuple[str, ...]:
    """:func:`store_baselines` of a :class:`~pipeline.store.SoftTargetStore` read in ``mode``. Online KD reads no
    stored view (the teacher reruns on the clean images): its one baseline is the plain recipe already."""
    return store_baselines(store.views if mode == "offline" else 1, store.meta.views.mix is not None)


def _num(v: float) -> str:
    """Short form of a number for ids (``2.0`` -> ``2``), exact whenever ``:g`` would round it."""
    short = f"{v:g}"
    return short if float(short) == v else repr(float(v))


@dataclass(frozen=True)
class StudentSpec:
    """One point of the distillation grid (one student, one seed).

    ``loss`` is ``hard`` for the label-only baseline. ``beta`` of ``None``
    means the hard-label weight is ``1 - alpha``. ``data`` says which of a store's views a label-only
    student trains on (:data:`BASELINE_DATA`); every other student trains on the recipe's views.
    """

    loss: str
    temperature: float
    alpha: float
    beta: float | None
    seed: int
    lr: float | None = None  # overrides the optimizer's lr for this student (an lr sweep)
    data: str = "views"

    def __post_init__(self) -> None:
        check_choice(self.loss, SOFT_LOSSES + ("hard",), "loss")
        check(math.isfinite(self.temperature) and self.temperature > 0, "temperature",
              f"must be > 0, got {self.temperature}", "use e.g. 4")
        check(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}", "use e.g. 0.9")
        check(self.beta is None or (math.isfinite(self.beta) and self.beta >= 0), "beta",
              f"must be >= 0, got {self.beta}", "omit it to use 1 - alpha")
        check(self.lr is None or (math.isfinite(self.lr) and self.lr > 0), "lr", f"must be > 0, got {self.lr}",
              "use e.g. 1e-3")
        check_choice(self.data, BASELINE_DATA, "data")
        check(self.is_baseline or self.data == "views", "data", f"is {self.data!r} for a {self.loss} student",
              "only a label-only (hard) student trains on other data than the recipe's views")

    @property
    def is_baseline(self) -> bool:
        return self.loss == "hard"

    @property
    def uses_temperature(self) -> bool:
        """Whether T shapes this student's targets (not for the baseline, nor for logit matching)."""
        return not self.is_baseline and self.loss not in TEMPERATURE_FREE_LOSSES

    @property
    def config_id(self) -> str:
        """Identifies the configuration across seeds; every hyperparameter is in it."""
        lr = "" if self.lr is None else f"-lr{_num(self.lr)}"
        if self.is_baseline:
            return "baseline" + ("" if self.data == "views" else f"-{self.data}") + lr
        beta = "" if self.beta is None else f"-b{_num(self.beta)}"
        temperature = f"-T{_num(self.temperature)}" if self.uses_temperature else ""
        return f"{self.loss}{temperature}-a{_num(self.alpha)}{beta}{lr}"

    @property
    def run_id(self) -> str:
        return f"{self.config_id}-s{self.seed}"


def student_grid(*, losses: tuple[str, ...], temperatures: tuple[float, ...], alphas: tuple[float, ...],
                 beta: float | None, seeds: tuple[int, ...], lrs: tuple[float, ...],
                 baselines: tuple[str, ...] = ("views",)) -> list[StudentSpec]:
    """The label-only baselines (one per ``baselines``, :func:`store_baselines`) plus every (loss, T, alpha)
    point, for every seed (and every lr of a sweep)."""
    specs: list[StudentSpec] = []
    for lr in lrs or (None,):
        lr = None if lr is None else float(lr)
        for seed in seeds:
            specs += [StudentSpec(loss="hard", temperature=1.0, alpha=0.0, beta=None, seed=seed, lr=lr, data=d)
                      for d in baselines]
            for loss in losses:
                # A loss that ignores T is trained once: one student per T would be the same run repeated.
                for t in (1.0,) if loss in TEMPERATURE_FREE_LOSSES else temperatures:
                    for a in alphas:
                        specs.append(StudentSpec(loss=loss, temperature=float(t), alpha=float(a),
                                                 beta=beta, seed=seed, lr=lr))
    return specs
