"""`kd inspect --verify-data`: check the data a store was written from, file contents included.

Stage 2 checks a dataset's cheap identity at every start (for image folders:
paths, sizes and labels). This reads every sample once more and compares the
full content hash the teacher pass recorded, so a file modified in place,
same name and same size, is caught too.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os

from pipeline.data.registry import store_dataset
from pipeline.store.paths import local_path
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
                             "every name and size matches: a file was modified in place "
                             f"({_named(ds.splits[name], store)})", "restore the data, or rerun `kd teacher` on it")
        out[name] = expected
    return out


def _completed(store) -> float:
    """When the store was completed: its metadata file's last write on a local disk (to the nanosecond), else
    the recorded time (to the second)."""
    local = local_path(store.path)
    if local is not None:
        with contextlib.suppress(OSError):
            return os.stat(os.path.join(local, "zarr.json")).st_mtime
    return dt.datetime.fromisoformat(store.meta.completed_at or store.meta.created_at).timestamp()


def _named(split, store) -> str:
    """Which files of ``split`` changed on disk since the store was completed, by their timestamps.

    The store records one content hash per split, not one per file, so the file itself cannot be proven;
    a file's status-change time (ctime) moves with any write to it and cannot be set back by the user,
    so the files whose ctime is after the store was completed are named (a copied folder names them all).
    """
    source = split.source
    if not hasattr(source, "root"):
        return "the store records one content hash per split, so the sample cannot be named"
    since = _completed(store)
    changed = []
    for i in split.index:
        rel = source.path(int(i))
        with contextlib.suppress(OSError):
            st = os.stat(os.path.join(source.root, rel))
            if max(st.st_mtime, st.st_ctime) > since:
                changed.append(rel)
    if not changed:
        return ("no file changed on disk since the store was written, by its timestamps; the store records one "
                "content hash per split, so the file cannot be named")
    more = f", and {len(changed) - 3} more" if len(changed) > 3 else ""
    return f"changed on disk since the store was written: {', '.join(changed[:3])}{more}"
