"""The flows' parameters as Prefect's run form shows them: every field with the default the CLI uses.

Prefect derives a deployment's parameter schema from the flow's signature, and its UI pre-fills the run
form from that schema. Left to pydantic, a nested config is a ``$ref`` to one shared definition holding
the class's own field defaults, and a ``default_factory`` default is not in the schema at all. The
students' ``model`` would then be pre-filled from ``ModelConfig``'s class default (width 32, as big as
the teacher), not from ``student_model()`` (width 8) that `kd distill` uses. So each parameter carries
its own schema here: pydantic's, with every ``$ref`` inlined and every field's default set from the
config that the CLI would build, all the way down to the leaves, and its help text as the description.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from typing import Annotated, Any

from pydantic import TypeAdapter, WithJsonSchema

from flows.options import defaults
from flows.runners import RunnerConfig
from pipeline.config import DistillConfig, TeacherConfig
from pipeline.serialize import config_class


def _inline(node: Any, defs: dict) -> Any:
    """``node`` with every ``{"$ref": "#/$defs/X", …}`` replaced by a copy of X (its siblings kept)."""
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _inline({**target, **siblings}, defs)
    return {k: _inline(v, defs) for k, v in node.items()}


def _object_schema(prop: dict) -> dict:
    """The object branch of a property (``DataConfig | None`` is an ``anyOf`` of the object and null)."""
    for branch in prop.get("anyOf", ()):
        if branch.get("type") == "object" and "properties" in branch:
            return branch
    return prop


def _json(annotation: Any, value: Any) -> Any:
    return TypeAdapter(annotation).dump_python(value, mode="json")


def _set_defaults(schema: dict, cls: type, values: dict[str, Any]) -> None:
    """Give each property of ``cls``'s object ``schema`` its default from ``values`` (field name -> value;
    absent: required) and its help text, descending into nested configs with their own values."""
    types = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        prop = schema["properties"][f.name]
        prop["description"] = f.metadata.get("help", prop.get("description", ""))
        if f.name not in values or values[f.name] is dataclasses.MISSING:
            continue
        value = values[f.name]
        prop["default"] = _json(types[f.name], value)
        sub = config_class(types[f.name])
        if sub is not None:  # None (e.g. "the store's data") leaves the nested fields at their class defaults
            inner = defaults(sub) if value is None else {g.name: getattr(value, g.name)
                                                         for g in dataclasses.fields(sub)}
            _set_defaults(_object_schema(prop), sub, inner)


def form_schema(cls: type, default: Any = None) -> dict:
    """The JSON schema of a ``cls`` parameter, self-contained, whose defaults are ``default``'s values (or
    each field's own default where ``default`` is None)."""
    schema = TypeAdapter(cls).json_schema()
    schema = _inline(schema, schema.pop("$defs", {}))
    values = defaults(cls) if default is None else {f.name: getattr(default, f.name)
                                                    for f in dataclasses.fields(cls)}
    _set_defaults(schema, cls, values)
    if default is not None:
        schema["default"] = _json(cls, default)
    return schema


def run_form(cls: type, default: Any = None) -> Any:
    """``cls`` annotated with :func:`form_schema`: what a flow's parameter is declared as. Validation is
    unchanged (the dataclass itself); only the schema that Prefect shows differs."""
    return Annotated[cls, WithJsonSchema(form_schema(cls, default))]


FROM_TEACHER = "from-teacher"  # the pipeline's students train on the store its teacher flow returns

TeacherParameter = run_form(TeacherConfig, TeacherConfig())
DistillParameter = run_form(DistillConfig)
PipelineDistillParameter = run_form(DistillConfig, DistillConfig(store=FROM_TEACHER))
RunnerParameter = run_form(RunnerConfig, RunnerConfig())
