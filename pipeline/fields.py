"""Config fields that carry their command line: :func:`option` keeps each field's help text, choices and flag
with the field itself, so ``flows/options.py`` generates every ``kd`` option from the configs and an option is
declared once, in ``pipeline/config.py``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

STORAGE_OPTIONS_HELP = 'JSON object passed to fsspec for URL stores, e.g. \'{"anon": false}\''


def option(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None, help: str,
           choices: tuple[str, ...] | None = None, flag: str | None = None, metavar: str | None = None,
           default_text: str | None = None, separator: str | None = None, prefix: str = "", inherit: bool = True,
           cli: bool = True) -> Any:
    """A config field with what the command line needs to know about it (kept in ``field.metadata``).

    ``help``: the option's help text; for a nested config, the title of its option group.
    ``choices``: the values allowed (the same tuple the field is validated against).
    ``flag``: the option's name when it is not the field's (``name`` -> ``dataset``), without ``--``.
    ``metavar``: the placeholder shown in ``--help``. ``default_text``: how the default reads in ``--help``
    where the value alone would not say it (e.g. ``None`` meaning "the split seed").
    ``separator``: a tuple given as one argument joined by it (``--augment translate,flip``); otherwise
    tuples take several arguments (``--temperatures 1 2 4``).
    ``prefix``: for a nested config, put in front of each of its flags (``view-`` -> ``--view-augment``).
    ``inherit=False``: in ``kd run`` the students keep their own default for this field instead of
    following the teacher's value (model size, lr, epochs).
    ``cli=False``: not a command-line option (set by the flows themselves).
    """
    metadata = {"help": help, "choices": choices, "flag": flag, "metavar": metavar, "default_text": default_text,
                "separator": separator, "prefix": prefix, "inherit": inherit, "cli": cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
