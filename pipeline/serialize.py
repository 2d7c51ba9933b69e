"""Configs as plain data and back: :func:`to_dict` / :func:`from_dict` (store attributes, prefect.yaml's
parameters, presets), and :func:`config_hash`, the hash that names stores and keys their provenance."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import asdict, fields
from typing import Any, TypeVar

C = TypeVar("C")


def config_hash(*parts: object) -> str:
    """A short, stable hash of dataclasses / JSON-able values (for names and provenance)."""
    payload = json.dumps([to_dict(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def to_dict(obj: object) -> object:
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)  # type: ignore[arg-type]
    return obj


def from_dict(cls: type[C], data: dict) -> C:
    """Rebuild a (nested) config dataclass from :func:`to_dict` output, e.g. store attributes.

    Keys that are not fields are ignored and missing fields take their defaults, so partial dicts
    (prefect.yaml's parameters, presets, stores written before a field existed) read back too.
    """
    types = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        sub = config_class(types[f.name])
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)  # type: ignore[call-arg]


def config_class(annotation: Any) -> type | None:
    """The config dataclass a field holds (``DataConfig | None`` -> ``DataConfig``), or None for a plain value."""
    for t in typing.get_args(annotation) or (annotation,):
        if dataclasses.is_dataclass(t):
            return t  # type: ignore[return-value]
    return None
