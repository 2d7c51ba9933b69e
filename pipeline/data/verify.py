"""`kd inspect --verify-data`: check the data a store was written from, file contents included.

Stage 2 checks a dataset's cheap identity at every start (for image folders:
paths, sizes and labels). This reads every sample once more and compares the
full content hash the teacher pass recorded, so a file modified in place,
same name and same size, is caught too.
"""
from __future__ import annotations

from pipeline.data.registry import store_dataset
from pipeline.errors import StoreError


def verify_data(store) -> dict[str, str]:
    """Rebuild the store's data from its recorded config and compare every split's content; raise on a mismatch."""
    from pipeline.distill import check_compatible  # the identity checks of stage 2, first

    meta = store.meta
    ds = store_dataset(meta, cached=False)  # an image folder's listing compared first, before any image is read
    check_compatible(store, ds)
    out = {}
    for name, info in meta.dataset.splits.items():
        expected = info.content or info.fingerprint
        if ds.splits[name].content_hash() != expected:
            raise StoreError(f"dataset.splits.{name}.content", f"{name} contents differ from the store's although "
                             "every name and size matches: a file was modified in place",
                             "restore the data, or rerun `kd teacher` on it")
        out[name] = expected
    return out
