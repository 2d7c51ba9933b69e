"""Rebuilding a model from a checkpoint: the one place a state dict is read back.

Checkpoints are plain state dicts read with ``weights_only=True``, so loading
one can never run code. Every failure is a one-line :class:`UserError` naming
the field the caller passes, so the CLI shows the user what to fix.
"""
from __future__ import annotations

import io
import pickle
import re

import torch
from torch import nn

from pipeline.atomic import write_atomic
from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.file_hash import sha256_file
from pipeline.models import build_model
from pipeline.store import SoftTargetStore


DAMAGED = "pass a checkpoint written by torch.save; a truncated or damaged file cannot be loaded"


def load_model(path: str, *, model: ModelConfig, input_shape: tuple[int, int, int], num_classes: int,
               sha256: str | None = None, field: str = "checkpoint", fix: str = "", outputs: int | None = None,
               class_map: tuple[int, ...] | None = None) -> nn.Module:
    """Build ``model`` and load the weights at ``path`` (safetensors, or a state dict read with
    ``weights_only=True``); in eval mode, on the CPU. A ``file:`` model is its own checkpoint: ``path`` is the
    file, loaded whole. ``outputs``/``class_map``: a teacher used as it is (see :func:`pipeline.models.build_model`).

    With ``sha256``, the file must have that checksum (the one a store recorded), else nothing is loaded.
    """
    if sha256 is not None:
        try:
            same = sha256_file(path) == sha256
        except OSError:
            same = False
        if not same:
            raise UserError(field, f"the checkpoint {path!r} is missing or changed (its sha256 is not the "
                            "recorded one)", fix)
    if model.source == "file":
        return build_model(model, input_shape, num_classes, class_map=class_map).eval()
    net = build_model(model, input_shape, num_classes, pretrained=False, outputs=outputs, class_map=class_map)
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        called = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if called is None:  # not a pickle torch can read at all: damaged, or not a checkpoint
            why = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
            raise UserError(field, f"cannot read {path!r} as a checkpoint ("
                            f"{why.group(1).strip() if why else _first_sentence(exc)})", DAMAGED) from None
        # An object weights_only refuses to build: loading it unrestricted would call this.
        raise UserError(field, f"{path!r} is not a plain state dict: it holds pickled objects (it would call "
                        f"{called.group(1)}), so it was not loaded", "pass a checkpoint saved as "
                        "torch.save(model.state_dict(), PATH), from a source you trust") from None
    except Exception as exc:  # a missing, truncated or damaged file
        raise UserError(field, f"cannot read {path!r} as a checkpoint ({_first_sentence(exc)})", DAMAGED) from None
    if not isinstance(state, dict):
        raise UserError(field, f"{path!r} holds a {type(state).__name__}, not a state dict",
                        "pass a checkpoint saved as torch.save(model.state_dict(), PATH)")
    try:
        net.load_state_dict(state)
    except Exception as exc:  # a state dict of another architecture or width
        raise UserError(field, f"cannot load {path!r} into {model.arch} width {model.width} "
                        f"({_first_sentence(exc)})", fix) from None
    return net.eval()


def _first_sentence(exc: BaseException, limit: int = 160) -> str:
    """The start of an exception's message for a one-line error: its lines joined, cut after a whole word."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " …"


def save_state_dict(model: nn.Module, path: str, *, field: str) -> None:
    """Write ``model``'s state dict to ``path`` atomically: never a half-written checkpoint under its name, nor a
    temporary file left behind. A full disk is one line naming ``field``, the option that chose the folder.

    Serialised in memory first, then written by Python: torch's own file writer reports a full disk as an
    opaque stream error, without its errno.
    """
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())

    write_atomic(path, write, field=field)


def load_store_teacher(store: SoftTargetStore, *, field: str = "checkpoint",
                       fix: str = "restore it to check views") -> nn.Module:
    """The teacher a store records, from its checkpoint (weights only, sha256 checked against the store)."""
    t = store.meta.teacher
    return load_model(t.checkpoint, model=t.model_cfg(), input_shape=store.meta.dataset.input_shape,
                      num_classes=store.num_classes, sha256=t.checkpoint_sha256, field=field, fix=fix,
                      outputs=t.outputs, class_map=t.class_map)
