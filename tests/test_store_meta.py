"""The store's attributes as a type: documented by docs/store-format.md, round-tripped, refused field by field."""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing

import pytest
import zarr

from pipeline.errors import StoreError
from pipeline.store import FORMAT_VERSION, SoftTargetStore, StoreMeta

STORE_FORMAT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "store-format.md")


def field_paths(cls: type, prefix: str = "") -> set[str]:
    """Every leaf field of a record as the format reference names it: ``teacher.arch``, ``layout.<split>.chunk_rows``,
    ``lineage[].store``. Config snapshots (plain JSON objects) are leaves."""
    paths = set()
    for name, tp in typing.get_type_hints(cls).items():
        path = f"{prefix}{name}"
        optional = isinstance(tp, types.UnionType)  # X | None
        inner = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp
        origin, args = typing.get_origin(inner), typing.get_args(inner)
        if dataclasses.is_dataclass(inner):
            paths |= field_paths(inner, f"{path}.")
        elif origin is dict and dataclasses.is_dataclass(args[1]):
            paths |= field_paths(args[1], f"{path}.<split>.")
        elif origin is tuple and dataclasses.is_dataclass(args[0]):
            paths |= field_paths(args[0], f"{path}[].")
        else:
            paths.add(path)
    return paths


def documented_attributes() -> set[str]:
    """The names in the first column of docs/store-format.md's group-attribute table."""
    text = open(STORE_FORMAT, encoding="utf-8").read()
    table = text[text.index("Group attributes"):].split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("|")][2:]  # after the header and its rule
    assert rows, "the group-attribute table of docs/store-format.md is empty"
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])}


def test_the_format_reference_documents_every_attribute_and_no_other():
    fields, documented = field_paths(StoreMeta), documented_attributes()
    assert fields - documented == set(), "fields of StoreMeta missing from docs/store-format.md's attribute table"
    assert documented - fields == set(), "docs/store-format.md's attribute table names fields StoreMeta does not have"


def test_the_format_reference_names_the_current_version():
    title = open(STORE_FORMAT, encoding="utf-8").readline()
    assert title.strip() == f"# Store format (`format_version` {FORMAT_VERSION})", title


def test_round_trip_on_a_real_store(digits_store):
    attrs = dict(zarr.open_group(digits_store, mode="r").attrs)
    meta = StoreMeta.from_attrs(attrs)
    assert StoreMeta.from_attrs(meta.to_attrs()) == meta
    assert meta.to_attrs() == attrs  # the typed record writes back exactly what is on disk
    assert SoftTargetStore(digits_store).meta == meta
    assert meta.complete and meta.completed_at is not None and meta.views.count == 1 and meta.lineage == ()
    assert set(meta.dataset.splits) == set(meta.layout) == {"train", "val", "test"}


def _damage(store: str, edit) -> StoreError:
    """The error opening ``store`` with its attributes changed by ``edit``; the attributes are restored after."""
    g = zarr.open_group(store, mode="r+")
    original = dict(g.attrs)
    damaged = copy.deepcopy(original)
    edit(damaged)
    g.attrs.put(damaged)
    try:
        with pytest.raises(StoreError) as e:
            SoftTargetStore(store)
    finally:
        g.attrs.put(original)
    assert "\n" not in str(e.value)  # one line, never a KeyError/TypeError traceback
    return e.value


def test_removed_attribute_is_named(store_copy):
    err = _damage(store_copy, lambda a: a["teacher"].pop("test_acc"))
    assert err.field == "teacher.test_acc" and "missing" in err.problem


def test_mistyped_attributes_are_named(store_copy):
    err = _damage(store_copy, lambda a: a["dataset"]["splits"]["val"].update(size="270"))
    assert err.field == "dataset.splits.val.size" and "expected int" in err.problem
    err = _damage(store_copy, lambda a: a.update(complete="yes"))
    assert err.field == "complete" and "expected bool" in err.problem
    err = _damage(store_copy, lambda a: a.update(lineage=[{"store": "x", "provenance_key": "k", "teacher": "cnn"}]))
    assert err.field == "lineage[0].test_acc"
    err = _damage(store_copy, lambda a: a.update(views={"count": 2}))
    assert err.field.startswith("views.") and "count" in err.problem


def test_unknown_format_version_is_refused_before_the_fields(store_copy):
    err = _damage(store_copy, lambda a: (a.pop("teacher"), a.update(format_version=1)))
    assert err.field == "format_version"


def test_teacher_precision_is_required_from_version_4_and_checked(store_copy):
    err = _damage(store_copy, lambda a: a["teacher"].pop("precision"))
    assert err.field == "teacher.precision" and "missing" in err.problem
    err = _damage(store_copy, lambda a: a["teacher"].update(precision="float64"))
    assert err.field == "teacher.precision" and "float64" in err.problem


def test_a_version_3_store_is_read_without_a_precision(store_copy):
    g = zarr.open_group(store_copy, mode="r+")
    attrs = dict(g.attrs)
    assert attrs["format_version"] == FORMAT_VERSION == 6 and attrs["teacher"]["precision"] == "float32"
    attrs["format_version"] = 3
    attrs["dataset"] = {k: v for k, v in attrs["dataset"].items() if k != "labels"}
    attrs["teacher"] = {k: v for k, v in attrs["teacher"].items() if k not in ("precision", "source")}
    g.attrs.put(attrs)
    meta = SoftTargetStore(store_copy).meta
    assert meta.format_version == 3 and meta.teacher.precision is None
    assert meta.to_attrs() == attrs  # read back exactly as it is on disk


def test_teacher_source_is_required_from_version_5_and_checked(store_copy):
    err = _damage(store_copy, lambda a: a["teacher"].pop("source"))
    assert err.field == "teacher.source" and "missing" in err.problem
    err = _damage(store_copy, lambda a: a["teacher"].update(source="url"))
    assert err.field == "teacher.source" and "url" in err.problem
    err = _damage(store_copy, lambda a: a["teacher"].update(class_map=[0, 1]))  # without teacher.outputs
    assert err.field == "teacher.class_map"


def test_a_version_4_store_is_read_as_a_builtin_teacher(store_copy):
    g = zarr.open_group(store_copy, mode="r+")
    attrs = dict(g.attrs)
    assert attrs["teacher"]["source"] == "builtin"
    attrs["format_version"] = 4
    attrs["teacher"] = {k: v for k, v in attrs["teacher"].items() if k != "source"}
    attrs["dataset"] = {k: v for k, v in attrs["dataset"].items() if k != "labels"}
    g.attrs.put(attrs)
    meta = SoftTargetStore(store_copy).meta
    assert meta.format_version == 4 and meta.teacher.source is None and meta.teacher.class_map is None
    assert meta.to_attrs() == attrs


def test_the_label_mask_is_required_from_version_6_and_checked(store_copy):
    err = _damage(store_copy, lambda a: a["dataset"].pop("labels"))
    assert err.field == "dataset.labels" and "missing" in err.problem
    err = _damage(store_copy, lambda a: a["dataset"]["labels"].update(unlabelled=10**6))
    assert err.field == "dataset.labels" and "exceed" in err.problem
    err = _damage(store_copy, lambda a: a["dataset"]["labels"].update(labelled="all"))
    assert err.field == "dataset.labels.labelled"


def test_a_version_5_store_is_read_with_every_train_row_labelled(store_copy, tmp_path):
    from pipeline import distill
    from pipeline.config import DistillConfig, ModelConfig

    g = zarr.open_group(store_copy, mode="r+")
    attrs = dict(g.attrs)
    assert attrs["dataset"]["labels"]["unlabelled"] == 0
    attrs["format_version"] = 5
    attrs["dataset"] = {k: v for k, v in attrs["dataset"].items() if k != "labels"}
    g.attrs.put(attrs)
    meta = SoftTargetStore(store_copy).meta
    assert meta.format_version == 5 and meta.dataset.labels is None and meta.to_attrs() == attrs
    plan = distill.plan(DistillConfig(store=store_copy, model=ModelConfig(arch="cnn", width=4), device="cpu",
                                      temperatures=(4.0,), report_root=str(tmp_path / "r")))
    assert plan.label_counts() == {"labelled": meta.dataset.splits["train"].size, "unlabelled": 0}
