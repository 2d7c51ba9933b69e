"""The fidelity check for stores with teacher views: replay, rerun the teacher, compare.

This is the only place stage 2 may touch the teacher, and it is optional
(`kd inspect --verify-views N`, `kd distill --verify-views N`). It reruns the
teacher, loaded from the checkpoint the store records, on the replayed views
of N random training samples and fails loudly if any logit differs from the
stored one by more than the encoding's rounding.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline import view_ops
from pipeline.checkpoints import load_store_teacher
from pipeline.data import store_dataset
from pipeline.errors import StoreError
from pipeline.store import SoftTargetStore, parse_encoding
from pipeline.train import predict

# float16 keeps 11 significant bits: a relative error up to 2^-11, plus slack for a different
# convolution algorithm on another machine. float32 only differs by summation order.
TOLERANCE = {"float16": (2.0**-10, 1e-3), "float32": (1e-5, 1e-4)}


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
    kind, _ = parse_encoding(store.encoding)
    if kind == "topk":
        raise StoreError("encoding", "views of a topk store are approximations and cannot be compared exactly",
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
    partners = view_ops.Partners(split, "train") if "partner" in names else None
    if replay_seed is None:  # the stored parameters, as stage 2 replays them
        params = np.stack([store.view_params("train", int(r), int(r) + 1)[0] for r in rows])  # (S, V, P)
    else:  # redrawn from another seed
        params = np.stack([view_ops.draw_rows(augment, store.meta.views.mix_cfg(), ids=ids, view=v, seed=replay_seed,
                                              size=(clean.shape[-2], clean.shape[-1]), partners=partners)
                           for v in range(store.views)], axis=1)
    rel, abs_ = TOLERANCE[kind]
    worst = 0.0
    for view in range(store.views):
        xv = view_ops.view_pixels(clean, params[:, view], names, partners)  # mixed views fetch their partners
        fresh = torch.cat(list(predict(model, xv, torch.device("cpu")))).numpy()  # (S, C)
        err = np.abs(fresh - stored[:, view]) - rel * np.abs(stored[:, view])  # (S, C)
        worst = max(worst, float(np.abs(fresh - stored[:, view]).max()))
        bad = np.nonzero((err > abs_).any(axis=1))[0]
        if len(bad):
            i = int(bad[0])
            raise StoreError("views", f"view {view} of sample id {int(ids[i])} does not reproduce the stored logits "
                             f"(max |diff| {float(np.abs(fresh[i] - stored[i, view]).max()):.4g}; "
                             f"{len(bad)}/{len(rows)} samples differ)",
                             "the replayed transform is not the one the teacher scored; do not train on this store")
    mixed = int((params[..., names.index("mix")] > 0).sum()) if "mix" in names else 0
    return {"samples": len(rows), "views": store.views, "mixed_views": mixed, "max_abs_diff": worst}
