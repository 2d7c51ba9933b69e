"""A pretrained model's classes matched, by name, to the dataset's: the class map of a teacher used as it is.

The model's class names come from ``--model-classes`` (a text file, one name per line, or a comma-separated
list, in output order), else from its weights: a torchvision enum's ``meta["categories"]``, or, for timm
weights trained on ImageNet, its synset ids (``n01440764``, the names of ImageNet's own class folders) and
descriptions (``tench``). Names are compared ignoring case, ``_``, ``-`` and repeated spaces. Every dataset
class must match exactly one model output; the map (model output of each dataset class, in the dataset's
order) is recorded in the store, and the teacher's logits are those outputs.
"""
from __future__ import annotations

import os
import re

from pipeline.architectures import parse_arch
from pipeline.config import ModelConfig
from pipeline.errors import UserError


def normal(name: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", name)).strip().lower()


def given_names(spec: str) -> list[str]:
    """``--model-classes``: a file of one name per line, or a comma-separated list."""
    if os.path.isfile(spec):
        try:
            with open(spec, encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError("model_classes", f"cannot read {spec!r} ({exc})", "pass a UTF-8 text file") from None
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise UserError("model_classes", f"{spec!r} names no class", "one name per line, in the model's output order")
    return names


def model_names(cfg: ModelConfig) -> list[tuple[str, ...]] | None:
    """Each model output's names (aliases), in output order; None when they are not known."""
    if cfg.model_classes is not None:
        return [(n,) for n in given_names(cfg.model_classes)]
    source, name = parse_arch(cfg.arch)
    if cfg.weights is None:
        return None
    from pipeline.preprocessing import is_weights_file, torchvision_enum

    if source == "torchvision" and not is_weights_file(cfg.weights):
        return [(c,) for c in torchvision_enum(name, cfg.weights, field="weights").meta["categories"]]
    if source == "timm" and not is_weights_file(cfg.weights):
        return _timm_imagenet_names(name)
    return None


def _timm_imagenet_names(name: str) -> list[tuple[str, ...]] | None:
    import timm
    from timm.data import ImageNetInfo, infer_imagenet_subset

    cfg = timm.models.get_pretrained_cfg(name)
    subset = infer_imagenet_subset(cfg.to_dict()) if cfg is not None else None
    if not subset:
        return None
    info = ImageNetInfo(subset)
    return [(synset, *[d.strip() for d in info.index_to_description(i).split(",")])
            for i, synset in enumerate(info.label_names())]


def class_map(dataset: list[str], model: list[tuple[str, ...]]) -> tuple[int, ...]:
    """The model output of each dataset class; refused in one line naming the classes that do not match."""
    index: dict[str, list[int]] = {}
    for i, aliases in enumerate(model):
        for alias in {normal(a) for a in aliases}:
            index.setdefault(alias, []).append(i)
    missing = [c for c in dataset if not index.get(normal(c))]
    if missing:
        shown = ", ".join(repr(c) for c in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        examples = ", ".join(repr(a[0]) for a in model[:3])
        are = "class {} is" if len(missing) == 1 else "classes {} are"
        raise UserError("model_classes", f"the dataset's {are.format(shown)} not among the model's {len(model)} "
                        f"classes (e.g. {examples})", "rename the class folders, pass --model-classes FILE, or "
                        "fine-tune instead of --as-is")
    ambiguous = [c for c in dataset if len(index[normal(c)]) > 1]
    if ambiguous:
        c = ambiguous[0]
        raise UserError("model_classes", f"the dataset's class {c!r} matches {len(index[normal(c)])} of the model's "
                        f"outputs ({', '.join(map(str, index[normal(c)]))})",
                        "pass --model-classes FILE naming each output once")
    out = tuple(index[normal(c)][0] for c in dataset)
    if len(set(out)) != len(out):
        raise UserError("model_classes", "two of the dataset's classes match the same model output",
                        "pass --model-classes FILE naming each output once")
    return out
