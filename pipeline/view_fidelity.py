"""The fidelity check for stores with teacher views: replay, rerun the teacher, compare.

This is the only place stage 2 may touch the teacher, and it is optional
(`kd inspect --verify-views N`, `kd distill --verify-views N`). It reruns the
teacher, loaded from the checkpoint the store records, on the replayed views
of N random training samples and fails loudly if any logit differs from the
stored one by more than the encoding's rounding plus the rounding of the
precision the teacher pass computed in (``teacher.precision``).
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline import views
from pipeline.checkpoints import load_store_teacher
from pipeline.data import store_dataset
from pipeline.errors import StoreError
from pipeline.store import SoftTargetStore
from pipeline.train import predict

# The compute precision's rounding, relative to the row's largest |logit| (the float32 rerun's). Under autocast
# every convolution and linear layer rounds its inputs and weights to p significant bits (unit roundoff u = 2^-p:
# bfloat16 2^-8, float16 2^-11), accumulates in float32 and keeps its output in the low precision. Each layer so
# adds an error of order u relative to the scale of the terms it sums, not to each output: a logit near zero is a
# sum of large terms and inherits their error. Through L layers independent roundings add like a random walk,
# ~sqrt(L)·u (4.5u for resnet18's ~20), and an eval-mode BatchNorm multiplies them again where a channel is a small
# deviation from a large running mean (the mean cancels, its rounding stays). Measured against a float32 rerun on
# CPU autocast: the test suite's 3-epoch digits CNN is off by up to 13u (bfloat16) and 10u (float16) of its row
# scale, a resnet18 at 64 px by 3u (not measured under CUDA autocast, whose kernels differ from the CPU's).
# 32u leaves at least 2.5x above the worst of these: 1/8 of the
# row's largest logit for bfloat16, 1/64 for float16. A wrong replay scores another image and moves the logits of
# a trained teacher by a large fraction of their scale (~2.4x it for the suite's 3-view digits store, twenty times
# the bfloat16 bound); only a teacher whose logits barely depend on its input can hide one inside this bound.
COMPUTE_TOLERANCE = {"float32": 0.0, "float16": 32 * 2.0**-11, "bfloat16": 32 * 2.0**-8}


def computed_in(store: SoftTargetStore) -> str:
    """The precision the store's logits were computed in: recorded from format_version 4 on.

    A version 3 store did not record it. One written with ``device: cpu`` (its recorded teacher config) ran in
    float32, as every CPU pass does. Any other (``cuda``, or ``auto`` on a machine we cannot know) is taken as the
    widest, bfloat16: assuming float32 would reject every store a GPU wrote, a false alarm telling users not to
    train on a good store, while the bfloat16 bound still catches a wrong replay of a trained teacher (see above).
    """
    recorded = store.meta.teacher.precision
    if recorded is not None:
        return recorded
    return "float32" if store.meta.teacher.config.get("device") == "cpu" else "bfloat16"


def tolerance(store: SoftTargetStore) -> tuple[float, float, float]:
    """(relative to each stored logit, absolute, relative to the row's largest |logit|) for ``store``'s logits."""
    rel, abs_ = store.codec.tolerance  # the encoding's rounding of each stored logit
    return rel, abs_, COMPUTE_TOLERANCE[computed_in(store)]


def verify_views(store: SoftTargetStore, samples: int = 32, seed: int = 0, model: torch.nn.Module | None = None,
                 replay_seed: int | None = None) -> dict:
    """Rerun the teacher on replayed views of ``samples`` random train rows; raise on any mismatch.

    Views are rebuilt from their stored parameters, as stage 2 rebuilds them (mixed views with their
    stored partner, λ and box). ``replay_seed`` redraws them from another seed instead (for tests that
    prove a wrong replay is caught).
    """
    if store.views == 1:
        raise StoreError("views", "this store holds the clean view only; there is nothing to replay",
                         "write it with `kd teacher --views K`")
    if store.codec.tolerance is None:
        raise StoreError("encoding", f"views of a {store.encoding} store are approximations and cannot be compared "
                         "exactly",
                         "check views on a float16/float32 store")
    augment, _ = store.meta.views.replay()
    ds = store_dataset(store.meta)
    split = ds.splits["train"]
    rows = np.sort(np.random.default_rng(seed).choice(len(split), size=min(samples, len(split)), replace=False))
    model = model if model is not None else load_store_teacher(store)
    stored = np.stack([store.read_views("train", int(r), int(r) + 1)[0] for r in rows])  # (S, V, C)
    ids = split.ids[torch.from_numpy(rows)]
    clean = split.batch(rows)  # (S, C, H, W): only the sampled rows are read
    names = store.meta.views.params or ()
    partners = views.Partners(split, "train") if "partner" in names else None
    if replay_seed is None:  # the stored parameters, as stage 2 replays them
        params = np.stack([store.view_params("train", int(r), int(r) + 1)[0] for r in rows])  # (S, V, P)
    else:  # redrawn from another seed
        params = np.stack([views.draw_rows(augment, store.meta.views.mix_cfg(), ids=ids, view=v, seed=replay_seed,
                                              size=(clean.shape[-2], clean.shape[-1]), partners=partners)
                           for v in range(store.views)], axis=1)
    rel, abs_, rel_row = tolerance(store)
    worst = 0.0
    for view in range(store.views):
        xv = views.view_pixels(clean, params[:, view], names, partners)  # mixed views fetch their partners
        fresh = torch.cat(list(predict(model, xv, torch.device("cpu")))).numpy()  # (S, C)
        scale = np.abs(fresh).max(axis=1, keepdims=True)  # (S, 1): each row's largest |logit|, in float32
        err = np.abs(fresh - stored[:, view]) - rel * np.abs(stored[:, view]) - rel_row * scale  # (S, C)
        worst = max(worst, float(np.abs(fresh - stored[:, view]).max()))
        bad = np.nonzero((err > abs_).any(axis=1))[0]
        if len(bad):
            i = int(bad[0])
            raise StoreError("views", f"view {view} of sample id {int(ids[i])} does not reproduce the stored logits "
                             f"(max |diff| {float(np.abs(fresh[i] - stored[i, view]).max()):.4g}; "
                             f"{len(bad)}/{len(rows)} samples differ beyond the {store.encoding} encoding and "
                             f"{computed_in(store)} compute tolerance)",
                             "the replayed transform is not the one the teacher scored; do not train on this store")
    mixed = int((params[..., names.index("mix")] > 0).sum()) if "mix" in names else 0
    return {"samples": len(rows), "views": store.views, "mixed_views": mixed, "max_abs_diff": worst,
            "precision": computed_in(store) + ("" if store.meta.teacher.precision else " (unrecorded, assumed)")}
