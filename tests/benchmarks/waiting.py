"""A split whose reads cost waiting, not CPU (the worker-balance benchmark).

A module of its own, importing little: forkserver workers import the module of the dataset they are
handed, and the benchmark times scheduling, not imports.
"""
from __future__ import annotations

import time

import torch

from pipeline.data import Split

SHAPE = (3, 32, 32)


class WaitingSplit(Split):
    """A split whose reads wait ``wait_s`` per image and return zeros (3, 32, 32): reading that costs no CPU,
    as if every DataLoader worker had a core of its own (a GPU host), whatever this machine's cores."""

    wait_s = 0.001

    def batch(self, rows, **kwargs) -> torch.Tensor:
        time.sleep(self.wait_s * len(rows))
        return torch.zeros(len(rows), *SHAPE)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int]:  # map-style, for a plain DataLoader
        return self.batch([row])[0], 0


def waiting_split(n: int) -> WaitingSplit:
    """``n`` rows of :class:`WaitingSplit`."""
    base = Split.from_tensors(torch.zeros(n, 1, 1, 1), torch.zeros(n, dtype=torch.int64), torch.arange(n))
    return WaitingSplit(source=base.source, index=base.index, y=base.y, ids=base.ids, preprocess=base.preprocess)
