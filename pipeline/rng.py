"""torch's global RNG, shared by every thread that builds or trains a model.

Module construction, dropout's masks (and stochastic depth's) and torchvision v2's random transforms all draw
from torch's global generator, which nothing seeds as a whole. Every use of it in building and training goes
through this module, under one lock: :func:`seeded` runs code under a seeded fork of it (restored after), and
:class:`TrainRng` is one trainee's own stream of it, swapped in around each of its steps. Groups built or
trained in concurrent threads (Prefect's thread runner) therefore never interleave their draws nor draw from one
another's streams, and a student with dropout trains the same on every run of its configuration. A stacked group
draws every student's masks at once from its first student's stream, so a dropout student's masks (not its recipe)
depend on the group it trains in (``group_size``, ``--batch``); in the per-student loop each has its own.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterable, Iterator

import torch
from torch import nn

# Reentrant: a seeded build may run inside code that already holds it.
RNG_LOCK = threading.RLock()


@contextlib.contextmanager
def seeded(seed: int | None, devices: Iterable[torch.device | int] = ()) -> Iterator[None]:
    """Inside: torch's global RNG seeded by ``seed`` (None: left as it is), under the lock; restored after,
    with the RNG of the CUDA ``devices`` too."""
    with RNG_LOCK, torch.random.fork_rng(devices=list(devices)):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def draws_random(model: nn.Module) -> bool:
    """Whether ``model`` draws random numbers in training mode: dropout (any ``nn.Dropout*``), or stochastic depth
    (torchvision's ``StochasticDepth``, timm's ``DropPath``)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) or type(m).__name__ in ("StochasticDepth", "DropPath")
               for m in model.modules())


class TrainRng:
    """One trainee's (or one stack's) own stream of torch's global RNG, seeded by its seed: what its dropout masks
    draw from, the same on every run whatever trains beside it."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.cuda = device if device.type == "cuda" else None
        with seeded(seed, [self.cuda] if self.cuda else []):
            self._state = self._get()

    def _get(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.get_rng_state(), None if self.cuda is None else torch.cuda.get_rng_state(self.cuda)

    def _set(self, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if self.cuda is not None:
            torch.cuda.set_rng_state(state[1], self.cuda)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Inside: the global RNG is this stream, under the lock (the global state is restored after)."""
        with RNG_LOCK:
            saved = self._get()
            self._set(self._state)
            try:
                yield
            finally:
                self._state = self._get()
                self._set(saved)


def own_rng(rng: TrainRng | None) -> contextlib.AbstractContextManager:
    """``rng.active()``, or nothing for a model that draws no random numbers (``rng`` None)."""
    return contextlib.nullcontext() if rng is None else rng.active()
