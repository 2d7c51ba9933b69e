"""Which train rows keep their label for the students: the label mask and the options that choose it.

Unlabelled rows are rows of the train split whose label the students never see. They come two ways:

- samples that have no label at all (``--unlabelled SOURCE``, appended to train with the label
  :data:`~pipeline.names.NO_LABEL`): the teacher trains on the labelled rows alone and scores every row;
- train rows outside a seeded, stratified labelled subset (``--labelled-fraction F`` or
  ``--labelled-per-class K``): the teacher still trains on every true label, and only the students are
  label-starved (Hinton et al.'s transfer set: a teacher trained on more labels than its students).

The selection is drawn per class from ``split_seed``: class ``c`` keeps the first ``k_c`` rows of one seeded
permutation of its rows, so a smaller labelled set is a subset of a larger one with the same seed. With a
fraction, ``k_c = max(1, floor(F * n_c))`` of the ``n_c`` rows of class ``c``; with a count, ``k_c = K``
exactly. ``--transfer-fraction T`` keeps the first ``max(1, round(T * m))`` (none at 0) of a seeded permutation
of the ``m`` unlabelled rows (nested the same way); the others are left out of the students' training.

Nothing here changes the dataset: its train split keeps its labels (true labels, NO_LABEL for samples that
have none), which is what the store holds and its fingerprints cover. Stage 2 hides the masked labels
(:meth:`LabelMask.hidden`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.data.dataset import Split
from pipeline.errors import UserError
from pipeline.names import NO_LABEL

LABEL_STREAM, TRANSFER_STREAM = 11, 12  # random streams of split_seed (the split itself uses scikit-learn's)


@dataclass(frozen=True)
class LabelMask:
    """Over the N rows of a train split: which keep their label for the students, and which they train on."""

    labelled: np.ndarray  # (N,) bool: rows whose label the students see
    kept: np.ndarray  # (N,) bool: rows the students train on (every labelled row, the kept unlabelled ones)
    has_label: np.ndarray  # (N,) bool: rows with a label at all (what the teacher may train on)

    @property
    def num_labelled(self) -> int:
        return int(self.labelled.sum())

    @property
    def num_unlabelled(self) -> int:
        """Unlabelled rows the students train on."""
        return int((self.kept & ~self.labelled).sum())

    @property
    def active(self) -> bool:
        """Whether the students see anything but every row with its label."""
        return bool(not self.labelled.all())

    def hidden(self, split: Split) -> Split:
        """``split`` with the labels the students may not see replaced by NO_LABEL."""
        y = split.y.numpy().copy()  # (N,)
        y[~self.labelled] = NO_LABEL
        return split.with_labels(torch.from_numpy(y))

    def rows(self, which: str) -> np.ndarray:
        """The row numbers of ``labelled``, ``kept``, ``unlabelled`` (kept, not labelled) or ``has_label``."""
        mask = {"labelled": self.labelled, "kept": self.kept, "unlabelled": self.kept & ~self.labelled,
                "has_label": self.has_label}[which]
        return np.flatnonzero(mask)

    def record(self, split: Split) -> dict:
        """What a store records of the mask: the counts and the fingerprint of the unlabelled rows the students
        train on (their ids, labels and identities, as :meth:`Split.fingerprint`)."""
        return {"labelled": self.num_labelled, "unlabelled": self.num_unlabelled,
                "fingerprint": split.subset(self.rows("unlabelled")).fingerprint()}


def choose_labelled(y: np.ndarray, *, fraction: float | None, per_class: int | None, seed: int,
                    class_names: list[str]) -> np.ndarray:
    """(N,) bool: the labelled subset of the rows with a label (``y`` >= 0), seeded and stratified (see the
    module docstring); every such row when neither option is given."""
    has_label = y != NO_LABEL
    if fraction is None and per_class is None:
        return has_label
    chosen = np.zeros(len(y), dtype=bool)
    total = int(has_label.sum())
    present = [c for c in range(len(class_names)) if (y == c).any()]
    if fraction is not None and int(np.floor(fraction * total)) < len(present):
        needed = len(present) / max(total, 1)
        raise UserError("labelled_fraction", f"{fraction:g} of {total} train samples keeps "
                        f"{int(np.floor(fraction * total))} labels, fewer than the {len(present)} classes",
                        f"pass --labelled-fraction {min(1.0, needed):.3g} or more, or --labelled-per-class 1")
    for c in present:
        rows = np.flatnonzero(y == c)
        if per_class is not None:
            if len(rows) < per_class:
                raise UserError("labelled_per_class", f"class {class_names[c]!r} has {len(rows)} train samples, "
                                f"fewer than {per_class}", "pass a smaller --labelled-per-class, or use "
                                "--labelled-fraction")
            k = per_class
        else:
            k = max(1, int(np.floor(fraction * len(rows))))  # type: ignore[operator]
        order = np.random.default_rng([seed, LABEL_STREAM, c]).permutation(len(rows))
        chosen[rows[order[:k]]] = True
    return chosen


def choose_transfer(unlabelled: np.ndarray, *, fraction: float, seed: int) -> np.ndarray:
    """(N,) bool: the seeded share ``fraction`` of the ``unlabelled`` rows ((N,) bool) the students keep."""
    if fraction >= 1.0:
        return unlabelled.copy()
    rows = np.flatnonzero(unlabelled)
    keep = np.zeros(len(unlabelled), dtype=bool)
    if len(rows) and fraction > 0:  # 0: none (the students train on the labelled rows alone)
        k = max(1, int(round(fraction * len(rows))))
        keep[rows[np.random.default_rng([seed, TRANSFER_STREAM]).permutation(len(rows))[:k]]] = True
    return keep


def label_mask(split: Split, cfg, class_names: list[str]) -> LabelMask:
    """The label mask of a train split under a data config's ``labelled_fraction``, ``labelled_per_class`` and
    ``transfer_fraction``; refuses a labelled set smaller than the number of classes."""
    y = split.y.numpy()  # (N,)
    has_label = y != NO_LABEL
    labelled = choose_labelled(y, fraction=cfg.labelled_fraction, per_class=cfg.labelled_per_class,
                               seed=cfg.split_seed, class_names=class_names)
    if labelled.sum() < len(class_names) and (cfg.labelled_fraction is not None or cfg.labelled_per_class
                                              is not None or not has_label.all()):
        field = next((k for k in ("labelled_per_class", "labelled_fraction") if getattr(cfg, k) is not None),
                     "train_limit")  # --unlabelled beside too few labelled samples: the limit cut them
        raise UserError(field, f"{int(labelled.sum())} labelled train samples, fewer than the {len(class_names)} "
                        "classes", "keep more labels (every class needs at least one labelled sample)")
    kept = labelled | choose_transfer(~labelled, fraction=cfg.transfer_fraction, seed=cfg.split_seed)
    return LabelMask(labelled=labelled, kept=kept, has_label=has_label)
