"""Listing the stores under a root folder or URL (`kd stores`)."""
from __future__ import annotations

import os

from pipeline.errors import UserError
from pipeline.store.paths import local_path, unreachable


def find_stores(root: str, storage_options: dict | None = None) -> list[str]:
    """Paths of the ``*.zarr`` stores directly under ``root`` (local or URL)."""
    local = local_path(root)
    if local is not None:
        if not os.path.isdir(local):
            raise UserError("root", f"{root!r} is not a directory", "pass the folder given as --store-root")
        return sorted(os.path.join(root, d) for d in os.listdir(local) if d.endswith(".zarr"))
    import fsspec

    protocol = root.split("://", 1)[0]
    try:
        fs, p = fsspec.core.url_to_fs(root, **(storage_options or {}))
        fs.invalidate_cache(p)  # fsspec caches listings per process: stores written since would be missed
        entries = fs.ls(p, detail=False)
    except OSError as exc:  # FileNotFoundError (no such prefix/bucket), PermissionError (credentials)
        raise UserError("root", f"cannot list {root!r} ({type(exc).__name__}: {str(exc)[:120]})",
                        "pass the URL given as --store-root, with its --storage-options") from None
    except Exception as exc:  # fsspec backends raise anything: an unreachable endpoint, an unknown protocol
        raise unreachable("root", root, exc) from None
    return sorted(f"{protocol}://{e.rstrip('/')}" for e in entries if e.rstrip("/").endswith(".zarr"))
