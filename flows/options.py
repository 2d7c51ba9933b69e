"""Command-line options generated from the config dataclasses, and configs built back from them.

A config class is walked field by field (see :func:`pipeline.fields.option` for what a field
carries): each plain field becomes one option, each nested config a group of options, and the
parsed values become a nested dict that :func:`pipeline.serialize.from_dict` turns back into the
config, the dataclass filling in whatever was not given. Types map to argparse as: ``bool`` ->
``--x/--no-x``; ``int``/``float``/``str`` -> one value; ``int | None``/``float | None`` -> a number
or ``off``; ``tuple[X, ...]`` -> several values (or one joined by the field's separator);
``dict`` -> a JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pipeline.serialize import config_class

OFF = "off"  # what an optional number takes to switch it off (None)


@dataclass(frozen=True)
class Option:
    """One command-line option, generated from one config field."""

    path: tuple[str, ...]  # field names from the top config down, e.g. ("optim", "lr")
    flag: str  # e.g. "--student-lr"
    group: str  # title of its argparse group
    help: str
    default: Any  # the config's default, shown in --help (MISSING: a required option)
    default_text: str | None = None  # how the default reads where the value alone would not say it
    suppress: bool = False  # absent from the parsed namespace unless given (the config's default applies)
    inherit: bool = True  # see pipeline.fields.option
    kwargs: dict = dataclasses.field(default_factory=dict)  # argparse's type, nargs, choices, action, metavar
    separator: str | None = None  # a tuple given as one argument, joined by this
    choices: tuple | None = None
    off: bool = False  # a number that "off" sets to None

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


def _number_or_off(cast: type) -> Any:
    def parse(text: str) -> Any:
        if text.lower() in (OFF, "none"):
            return None
        try:
            return cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number or {OFF!r}: {text!r}") from None

    parse.__name__ = cast.__name__  # argparse names the type in its errors
    return parse


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _joined(cast: type, separator: str) -> Any:
    def parse(text: str) -> tuple:
        return tuple(cast(v) for v in text.split(separator) if v)

    parse.__name__ = cast.__name__
    return parse


def config_options(cls: type, *, group: str, prefixes: dict[str, str] | None = None,
                   skip: Iterable[str] = ()) -> list[Option]:
    """The options of every command-line field of ``cls``; its own fields go in ``group``.

    ``prefixes`` puts a prefix in front of a nested config's flags (``{"optim": "student-"}``);
    ``skip`` leaves top-level fields out. An optional nested config whose default is None (``data``
    of ``kd distill``) is given by its first option alone: that one defaults to None and the others
    are absent unless given, so a caller can tell which were.
    """
    return list(_walk(cls, defaults(cls), group=group, path=(), prefix="", prefixes=prefixes or {},
                      skip=set(skip), optional=False))


def defaults(cls: type) -> dict[str, Any]:
    """Each field's default value (nested configs as instances)."""
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(cls)}


def _walk(cls: type, current: dict[str, Any], *, group: str, path: tuple[str, ...], prefix: str,
          prefixes: dict[str, str], skip: set[str], optional: bool, optional_text: str | None = None):
    types = typing.get_type_hints(cls)
    first = True
    for f in dataclasses.fields(cls):
        meta, default = f.metadata, current[f.name]
        if f.name in skip or not meta["cli"]:
            continue
        sub = config_class(types[f.name])
        if sub is not None:
            sub_values = defaults(sub) if default is None else {g.name: getattr(default, g.name)
                                                                for g in dataclasses.fields(sub)}
            yield from _walk(sub, sub_values, group=meta["help"], path=(*path, f.name),
                             prefix=prefix + prefixes.get(f.name, "") + meta["prefix"], prefixes={}, skip=set(),
                             optional=default is None, optional_text=meta["default_text"])
            continue
        flag = "--" + prefix + (meta["flag"] or f.name).replace("_", "-")
        opt = Option(path=(*path, f.name), flag=flag, group=group, help=meta["help"], default=default,
                     default_text=meta["default_text"], inherit=meta["inherit"], separator=meta["separator"],
                     choices=meta["choices"], **_parsing(types[f.name], meta))
        if optional:
            opt = dataclasses.replace(opt, default=None, default_text=optional_text) if first else \
                dataclasses.replace(opt, suppress=True)
        first = False
        yield opt


def _parsing(annotation: Any, meta: Any) -> dict:
    """How argparse reads a field of this type: ``kwargs`` (and ``off``) of its Option."""
    args = typing.get_args(annotation)
    nullable = type(None) in args
    base = next(a for a in args if a is not type(None)) if nullable else annotation
    kwargs: dict[str, Any] = {"metavar": meta["metavar"]}
    if base is bool:
        return {"kwargs": {**kwargs, "action": argparse.BooleanOptionalAction}}
    if base is dict:
        return {"kwargs": {**kwargs, "type": json_object}}
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        if meta["separator"]:  # its choices are checked by the config, whose error names the field
            return {"kwargs": {**kwargs, "type": _joined(item, meta["separator"])}}
        return {"kwargs": {**kwargs, "type": item, "nargs": "+", "choices": meta["choices"]}}
    if nullable and base in (int, float):
        return {"kwargs": {**kwargs, "type": _number_or_off(base)}, "off": True}
    return {"kwargs": {**kwargs, "type": base, "choices": meta["choices"]}}


def _shown(opt: Option) -> str | None:
    """The default as --help shows it; None: not shown."""
    value = opt.default
    if opt.default_text is not None:
        return opt.default_text
    if isinstance(value, tuple):
        return opt.separator.join(value) or "none" if opt.separator else str(list(value))
    if value is None:
        return OFF if opt.off else None
    return None if value is dataclasses.MISSING else str(value)


def _help_text(opt: Option) -> str:
    """The option's help with its default, shown once (escaped for argparse's %-formatting)."""
    text = opt.help
    if opt.separator and opt.choices:
        text += f": any of {opt.separator.join(opt.choices)}"
    shown = _shown(opt)
    if shown is not None:
        text += f" (default: {shown})"
    return text.replace("%", "%%")


def add_options(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """Add ``options`` to ``parser``, one argument group per group title (in order of appearance)."""
    groups: dict[str, Any] = {}
    for opt in options:
        if opt.group not in groups:
            groups[opt.group] = parser.add_argument_group(opt.group)
        default = argparse.SUPPRESS if opt.suppress else opt.default
        required = opt.default is dataclasses.MISSING
        kwargs = {k: v for k, v in opt.kwargs.items() if v is not None}
        action = groups[opt.group].add_argument(opt.flag, dest=opt.dest, required=required,
                                **({} if required else {"default": default}), **kwargs)
        action.help = _help_text(opt)  # set after: BooleanOptionalAction would append its own default


def values(namespace: argparse.Namespace, options: Iterable[Option]) -> dict:
    """The given options as a nested dict of field values (what ``from_dict`` takes)."""
    out: dict = {}
    for opt in options:
        if hasattr(namespace, opt.dest):
            node = out
            for name in opt.path[:-1]:
                node = node.setdefault(name, {})
            node[opt.path[-1]] = getattr(namespace, opt.dest)
    return out


def dests(settings: dict, options: Iterable[Option]) -> dict[str, Any]:
    """A nested dict of field values (a preset) as the argparse destinations of ``options``."""
    by_path = {opt.path: opt.dest for opt in options}
    flat: dict[str, Any] = {}

    def walk(node: dict, path: tuple[str, ...]) -> None:
        for name, value in node.items():
            if (*path, name) in by_path:
                flat[by_path[(*path, name)]] = value
            elif isinstance(value, dict):
                walk(value, (*path, name))
            else:
                raise KeyError(f"no option for {'.'.join((*path, name))}")

    walk(settings, ())
    return flat
