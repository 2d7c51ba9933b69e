"""How a config enters provenance keys and the names of stores and runs, compatibly with those already written.

A store's provenance key and name, and a run's name, hash its configs. An option added after a key was first
defined is left out of it while it changes nothing the key's first definition covered (at its default), so the
stores and runs of unchanged configs keep their keys and names when an option is added.
"""
from __future__ import annotations

import re
from dataclasses import asdict

from pipeline.architectures import parse_arch

# The configs (pipeline.config) call in here with themselves: their types are not imported, so the two
# modules do not import each other.

# DataConfig fields added after its key was first defined, with the value that leaves each out of the key.
DATA_ADDED = {"image_size": None, "train_transform": (), "model_preprocessing": None, "labelled_fraction": None,
              "labelled_per_class": None, "unlabelled": None, "transfer_fraction": 1.0}
# The unlabelled-data fields: left out of a report's snapshot too while unset, so earlier runs keep their identity.
LABEL_FIELDS = ("labelled_fraction", "labelled_per_class", "unlabelled", "transfer_fraction")
# Those that choose the students' label mask alone (no sample changes): stage 2 may apply them to any store.
MASK_OPTIONS = ("labelled_fraction", "labelled_per_class", "transfer_fraction")
MODEL_FIRST = ("arch", "width")  # ModelConfig's first key; its later fields are left out while None
OPTIM_ADDED = ("backbone_lr", "freeze_epochs")  # OptimConfig's fine-tuning fields, left out while None


def data_key(cfg) -> dict:
    """The config as a provenance key hashes it. Fields added after the key was first defined are left
    out while they change nothing the key's first definition did not cover (at their defaults, or for
    EXIF orientation, off or without effect), so the stores of an unchanged dataset keep their keys (and
    names), and an image folder read upright gets stores of its own."""
    out = {k: v for k, v in asdict(cfg).items() if k not in DATA_ADDED or v != DATA_ADDED[k]}
    if not cfg.applies_exif:
        del out["exif_orientation"]
    return out


def data_snapshot(cfg) -> dict:
    """The config as a report records it (run identities): every field, EXIF orientation only where it
    applies, so reports written before the option compare equal."""
    out = {k: v for k, v in asdict(cfg).items() if k not in LABEL_FIELDS or v != DATA_ADDED[k]}
    if not cfg.applies_exif:
        del out["exif_orientation"]
    return out


def model_key(cfg) -> dict:
    """The config as provenance keys and run names hash it: fields added after ``arch`` and ``width`` are
    left out at their defaults, so the stores and runs of unchanged configs keep their keys and names."""
    return {k: v for k, v in asdict(cfg).items() if k in MODEL_FIRST or v is not None}


def optim_key(cfg) -> dict:
    """As provenance keys and run names hash it: the fine-tuning fields are left out while unset."""
    return {k: v for k, v in asdict(cfg).items() if k not in OPTIM_ADDED or v is not None}


def model_slug(cfg) -> str:
    """The model as it reads in store and report names: the arch, with anything not plain replaced."""
    source, name = parse_arch(cfg.arch)
    if source == "builtin":
        return cfg.arch
    if source == "file":
        name = name.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    elif source == "py":
        name = name.rsplit(":", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{source}-{name}").strip("_.")
