"""``--arch``: where a model comes from and what it is called, parsed and checked without building it.

The model registry itself is :data:`pipeline.models.SOURCES`; this module reads only the names
(:mod:`pipeline.names`), and torchvision's list of classifiers when a name may be one, so the configs that
check ``--arch`` on construction import no torch.
"""
from __future__ import annotations

import difflib

from pipeline.errors import UserError
from pipeline.names import BUILTIN_ARCHS, MODEL_SOURCES


def _torchvision_archs() -> list[str]:
    # Imported here, not at the top: torchvision takes seconds to import, and `kd --help` or
    # `kd inspect` never build a model.
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def parse_arch(arch: str) -> tuple[str, str]:
    """``--arch`` -> (source, name): ``cnn`` -> ("builtin", "cnn"), ``timm:resnet18`` -> ("timm", "resnet18"),
    ``py:pkg.mod:fn`` -> ("py", "pkg.mod:fn"), ``file:PATH`` -> ("file", PATH)."""
    source, sep, name = arch.partition(":")
    if not sep:
        return "builtin", arch
    if source not in MODEL_SOURCES or source == "builtin":
        raise UserError("arch", f"unknown model source {source!r} in {arch!r}",
                        "use a built-in name, or torchvision:NAME, timm:NAME, py:package.module:function or file:PATH")
    if not name:
        raise UserError("arch", f"{arch!r} names no model", f"pass e.g. {source}:{_SOURCE_EXAMPLES[source]}")
    return source, name


_SOURCE_EXAMPLES = {"torchvision": "resnet18", "timm": "resnet18", "py": "my_models.nets:make_net",
                    "file": "teacher.pt2"}


def check_arch(name: str) -> None:
    """Refuse an architecture that is neither built in nor a torchvision classifier, suggesting near misses.

    Names with a source prefix are checked for their form only here (configs are also rebuilt from a store's
    record, where a factory or a file need not exist); :func:`pipeline.models.check_source` checks the rest
    before any work.
    """
    source, bare = parse_arch(name)
    if source == "torchvision":
        if bare not in _torchvision_archs():
            close = difflib.get_close_matches(bare, _torchvision_archs(), n=3)
            raise UserError("arch", f"unknown torchvision model {bare!r}",
                            f"did you mean {', '.join('torchvision:' + c for c in close)}?" if close
                            else "pass a name from torchvision.models.list_models()")
        return
    if source == "py":
        module, sep, fn = bare.rpartition(":")
        if not sep or not module or not fn.isidentifier():
            raise UserError("arch", f"{name!r} is not py:package.module:function",
                            "pass e.g. py:my_models.nets:make_net (a function returning an nn.Module)")
        return
    if source != "builtin":
        return
    if name in BUILTIN_ARCHS or name in _torchvision_archs():
        return
    close = difflib.get_close_matches(name, list(BUILTIN_ARCHS) + _torchvision_archs(), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"use {', '.join(BUILTIN_ARCHS)} or a torchvision model name"
    raise UserError("arch", f"unknown architecture {name!r}", hint)
