"""The store's group attributes as types: :class:`StoreMeta` and its nested records.

The attributes are plain JSON (docs/store-format.md's attribute table documents
every field). Nothing else reads or writes them as dicts: the writer builds
them with :meth:`StoreMeta.to_attrs` and every reader gets a
:meth:`StoreMeta.from_attrs`, which checks each field's presence and type and
names the first bad one as a dotted path (``teacher.test_acc``) in a one-line
:class:`~pipeline.errors.StoreError`.

A field that is ``None`` is absent from the attributes (``completed_at`` before
the store is complete, ``views.seed`` for a clean-view store). Snapshots of
configs (``data_config``, ``teacher.config``, ``views.augment``) stay JSON
objects, since a store outlives the config classes that wrote it; the
``*_cfg()`` methods rebuild the typed config on demand.
"""
from __future__ import annotations

import datetime as dt
import functools
import json
import platform
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, cast

from pipeline.config import AugmentConfig, DataConfig, MixConfig, ModelConfig
from pipeline.errors import StoreError, UserError
from pipeline.names import MODEL_SOURCES, PRECISIONS
from pipeline.serialize import from_dict

# 2: a views axis (N, V, C) on every logits array. 3: a manifest of per-shard content hashes, and each split's
# row count in its layout (the shape every array must have). 4: teacher.precision, the precision the logits were
# computed in (version 3 stores are still read: their precision is unknown, see pipeline.view_fidelity). 5: the teacher's
# model source, its pretrained weights (what named them, their sha256), its preprocessing and its class map
# (version 4 stores are still read: a bare-named model from scratch, no preprocessing, no class map).
# 6: dataset.labels, the train rows the students see labelled and unlabelled (version 5 and older stores are still
# read: every train row labelled, none unlabelled).
FORMAT_VERSION = 6
SUPPORTED_VERSIONS = (3, 4, 5, 6)
REWRITE = "the store's attributes are damaged or from another version; rewrite it with `kd teacher`"
_ABSENT = object()


def _problem(path: str, problem: str) -> StoreError:
    return StoreError(path, problem, REWRITE)


@functools.cache
def _hints(tp: type) -> dict[str, Any]:
    """The resolved field annotations of a record class (resolving them took a tenth of opening a store)."""
    return typing.get_type_hints(tp)


def _parse(tp: Any, value: Any, path: str) -> Any:
    """``value`` (decoded JSON) checked against the annotation ``tp`` and converted to it."""
    if value is _ABSENT:
        raise _problem(path, "missing from the store's attributes")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):  # X | None: the only unions in these records
        inner = next(a for a in args if a is not type(None))
        return None if value is None else _parse(inner, value, path)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise _problem(path, f"expected a JSON object, got {_shown(value)}")
        hints = _hints(tp)
        return tp(**{f.name: _parse(hints[f.name], value.get(f.name, None if _optional(hints[f.name]) else _ABSENT),
                                    f"{path}.{f.name}" if path else f.name)
                     for f in fields(tp)})
    if origin is tuple:  # tuple[X, ...]
        if not isinstance(value, list):
            raise _problem(path, f"expected a JSON list, got {_shown(value)}")
        return tuple(_parse(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:  # dict[str, X]: keyed by split name or package name
        if not isinstance(value, dict):
            raise _problem(path, f"expected a JSON object, got {_shown(value)}")
        return {k: _parse(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is dict:  # a config snapshot: any JSON object
        if not isinstance(value, dict):
            raise _problem(path, f"expected a JSON object, got {_shown(value)}")
        return _json(value)
    # bool is an int in Python, never in JSON: a flag is not a count, nor a count a flag.
    ok = {bool: lambda v: isinstance(v, bool), int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}[tp]
    if not ok(value):
        raise _problem(path, f"expected {tp.__name__}, got {_shown(value)}")
    return value


def _optional(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _json(value: dict) -> dict:
    """A private, JSON-normal copy (tuples become lists), so records compare equal to what they were read from."""
    return json.loads(json.dumps(value))


def _dump(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: _dump(v) for f in fields(value) if (v := getattr(value, f.name)) is not None}
    if isinstance(value, (tuple, list)):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


class _Record:
    """JSON conversion shared by every record below (field order is attribute order on disk)."""

    def to_attrs(self) -> dict:
        return _dump(self)

    @classmethod
    def from_attrs(cls, attrs: dict, at: str = ""):
        """Parse ``attrs``; ``at`` is this record's dotted path inside the group attributes, for errors."""
        return _parse(cls, attrs, at)


@dataclass(frozen=True)
class TeacherMeta(_Record):
    arch: str
    width: int
    params: int
    checkpoint: str
    checkpoint_sha256: str
    trained_here: bool
    config: dict  # the TeacherConfig as JSON, storage options removed
    val_acc: float
    test_acc: float
    val_nll: float
    test_nll: float
    # What the logits were computed in: "float32" (CPU), "bfloat16" or "float16" (CUDA autocast). Present from
    # format_version 4 on (StoreMeta checks it); None only in a version 3 store, which did not record it.
    precision: str | None = None
    # Where the model came from (format_version 5 on; None in older stores: "builtin"): its source
    # (pipeline.names.MODEL_SOURCES), the pretrained weights it started from (what named them: an enum, a hub id,
    # a path) and their sha256, its evaluation preprocessing (pipeline.preprocessing_spec.Preprocessing as JSON),
    # and, for a teacher used as it is, its own number of outputs and the class map: the output of each dataset
    # class, in the dataset's order, with the model's name for it.
    source: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    preprocessing: dict | None = None
    outputs: int | None = None
    class_map: tuple[int, ...] | None = None
    class_map_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", _json(self.config))
        if self.preprocessing is not None:
            object.__setattr__(self, "preprocessing", _json(self.preprocessing))
        if self.source is not None and self.source not in MODEL_SOURCES:
            raise _problem("teacher.source", f"expected one of {', '.join(MODEL_SOURCES)}, got {_shown(self.source)}")
        if (self.class_map is None) != (self.outputs is None) or (
                self.class_map is not None and not all(0 <= i < self.outputs for i in self.class_map)):  # type: ignore[operator]
            raise _problem("teacher.class_map", "must be present with teacher.outputs, each entry an output index")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise _problem("teacher.precision", f"expected one of {', '.join(PRECISIONS)}, got {_shown(self.precision)}")

    def model_cfg(self) -> ModelConfig:
        """The teacher's architecture, rebuilt from its recorded config."""
        model = _parse(dict, self.config.get("model", _ABSENT), "teacher.config.model")
        return cast(ModelConfig, from_dict(ModelConfig, model))

    @property
    def seed(self) -> int:
        """The seed the teacher was trained with."""
        return _parse(int, self.config.get("seed", _ABSENT), "teacher.config.seed")


@dataclass(frozen=True)
class SplitMeta(_Record):
    size: int
    # sha256 of the split's ids, labels and sample identities: pixels for in-memory and torchvision
    # datasets, relative paths and byte sizes for image folders (cheap: checked at every stage-2 start).
    fingerprint: str
    # Image folders only: sha256 over every file's sha256, in row order (hashed during the teacher pass;
    # `kd inspect --verify-data` checks it).
    content: str | None = None


@dataclass(frozen=True)
class LabelsMeta(_Record):
    """The train rows' label mask as the store was written for it (pipeline.data.labels): rebuilt from the
    recorded ``data_config`` (its labelled_fraction, labelled_per_class, unlabelled and transfer_fraction)."""

    labelled: int  # train rows whose label the students see
    unlabelled: int  # train rows the students learn from without a label (the transfer set)
    fingerprint: str  # Split.fingerprint of those unlabelled rows, in row order

    def __post_init__(self) -> None:
        if self.labelled < 0 or self.unlabelled < 0:
            raise _problem("dataset.labels", f"counts must be >= 0, got {self.labelled} and {self.unlabelled}")


@dataclass(frozen=True)
class DatasetMeta(_Record):
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    splits: dict[str, SplitMeta]
    # Image folders only: the listing (relative path, byte size), zlib + base64: names the first file that
    # changed when a fingerprint differs (pipeline.data.folder.read_manifest).
    files: str | None = None
    # The train split's label mask (format_version 6 on; None in older stores: every train row labelled).
    labels: LabelsMeta | None = None


@dataclass(frozen=True)
class ViewsMeta(_Record):
    """How many teacher views each sample has; when more than one, everything needed to replay them."""

    count: int
    seed: int | None = None
    augment: dict | None = None  # the AugmentConfig as JSON
    params: tuple[str, ...] | None = None  # the names of view_params' columns
    mix: dict | None = None  # the MixConfig as JSON, only for mixed views

    def __post_init__(self) -> None:
        for name in ("augment", "mix"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _json(getattr(self, name)))
        for name in ("seed", "augment", "params"):
            if (getattr(self, name) is None) != (self.count == 1):
                raise _problem(f"views.{name}", f"must be present exactly when views.count > 1 "
                                                f"(count is {self.count})")
        if self.mix is not None and self.count == 1:
            raise _problem("views.mix", "a clean-view store has no mixed views")
        if self.params is not None and len(set(self.params)) != len(self.params):
            raise _problem("views.params", f"names a column twice: {list(self.params)}")
        if self.params is not None and (self.mix is not None) != ("partner" in self.params):
            raise _problem("views.params", "must name the partner column exactly when the views are mixed")

    def replay(self) -> tuple[AugmentConfig, int]:
        """The augmentation and seed that redraw the stored views."""
        if self.seed is None or self.augment is None:
            raise StoreError("views", "this store holds the clean view only", "write it with --views K")
        return cast(AugmentConfig, from_dict(AugmentConfig, self.augment)), self.seed

    def mix_cfg(self) -> MixConfig:
        """How the views were mixed (no mix ops for a store without mixed views)."""
        return cast(MixConfig, from_dict(MixConfig, self.mix or {}))


@dataclass(frozen=True)
class LineageEntry(_Record):
    """One ancestor of a born-again teacher: the store its teacher was taught from."""

    store: str
    provenance_key: str
    teacher: str  # the ancestor teacher's architecture
    test_acc: float


@dataclass(frozen=True)
class LayoutMeta(_Record):
    rows: int  # N: the first dimension of every array of the split
    chunk_rows: int
    shard_rows: int


@dataclass(frozen=True)
class ManifestMeta(_Record):
    """Content hashes recorded at completion: what ``kd inspect --verify`` checks beyond the chunk CRCs."""

    algorithm: str  # "sha256" over each shard's decoded bytes (see pipeline.store.integrity.digest)
    arrays: dict[str, tuple[str, ...]]  # "<split>/<array>" -> one hex digest per shard (labels, ids: one)


@dataclass(frozen=True)
class Provenance(_Record):
    """What the producer of the logits records; :class:`StoreWriter` adds the rest of :class:`StoreMeta`."""

    created_at: str
    provenance_key: str
    teacher: TeacherMeta
    dataset: DatasetMeta
    data_config: dict  # the DataConfig as JSON: stage 2 rebuilds the same splits from it
    transform: dict
    transform_hash: str
    software: dict[str, str]
    views: ViewsMeta
    lineage: tuple[LineageEntry, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_config", _json(self.data_config))
        object.__setattr__(self, "transform", _json(self.transform))

    def data_cfg(self) -> DataConfig:
        """The data config the store was written from. A store written before ``exif_orientation`` existed read
        its images as stored (no EXIF transposition): its config reads back with the option off. One this pipeline
        cannot rebuild (a preprocessing it cannot reproduce) is refused naming the store's field."""
        try:
            return cast(DataConfig, from_dict(DataConfig, {"exif_orientation": False, **self.data_config}))
        except UserError as exc:
            raise StoreError(f"data_config.{exc.field}", f"the store's data cannot be reproduced here: {exc.problem}",
                             "rewrite the store with `kd teacher`, or use the pipeline version that wrote it") from None


@dataclass(frozen=True)
class StoreMeta(Provenance):
    """Every group attribute of a store, typed; see docs/store-format.md's attribute table."""

    format_version: int
    encoding: str
    complete: bool
    layout: dict[str, LayoutMeta]
    completed_at: str | None = None
    manifest: ManifestMeta | None = None  # recorded with `complete`; required once complete

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.format_version >= 4 and self.teacher.precision is None:
            raise _problem("teacher.precision", "missing from the store's attributes")
        if self.format_version >= 5 and self.teacher.source is None:
            raise _problem("teacher.source", "missing from the store's attributes")
        if self.format_version >= 6 and self.dataset.splits and self.dataset.labels is None:
            raise _problem("dataset.labels", "missing from the store's attributes")
        if self.complete and self.manifest is None:
            raise _problem("manifest", "missing from a complete store's attributes")

    @classmethod
    def from_attrs(cls, attrs: dict, at: str = "") -> StoreMeta:
        """Parse a store's group attributes; refuses an unknown ``format_version`` before anything else."""
        version = attrs.get("format_version") if isinstance(attrs, dict) else None
        if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
            shown = json.dumps(version, default=str)[:40]
            raise StoreError("format_version", f"store has version {shown}, this pipeline reads "
                             f"{', '.join(map(str, SUPPORTED_VERSIONS))}",
                             "rewrite the store with `kd teacher`, or use the pipeline version that wrote it")
        return _parse(cls, attrs, at)


def software_versions() -> dict[str, str]:
    import numcodecs
    import numpy as np
    import torch
    import zarr

    import pipeline

    return {
        "pipeline": pipeline.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
        "numpy": np.__version__,
    }


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
