"""Rebuilding a model from a checkpoint: the one place a state dict is read back.

Checkpoints are plain state dicts read with ``weights_only=True``, so loading
one can never run code. Every failure is a one-line :class:`UserError` naming
the field the caller passes, so the CLI shows the user what to fix.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.checksums import sha256_file
from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.models import build_model
from pipeline.store import SoftTargetStore


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
        net.load_state_dict(state)
    except Exception as exc:  # a missing or truncated file, a pickle, a state dict of another architecture
        raise UserError(field, f"cannot load {path!r} into {model.arch} width {model.width} "
                        f"({(str(exc).splitlines() or [type(exc).__name__])[0][:160]})", fix) from None
    return net.eval()


def load_store_teacher(store: SoftTargetStore, *, field: str = "checkpoint",
                       fix: str = "restore it to check views") -> nn.Module:
    """The teacher a store records, from its checkpoint (weights only, sha256 checked against the store)."""
    t = store.meta.teacher
    return load_model(t.checkpoint, model=t.model_cfg(), input_shape=store.meta.dataset.input_shape,
                      num_classes=store.num_classes, sha256=t.checkpoint_sha256, field=field, fix=fix,
                      outputs=t.outputs, class_map=t.class_map)
