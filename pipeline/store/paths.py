"""Where a store lives: a local folder (optionally written as a ``file://`` URL) or an fsspec URL."""
from __future__ import annotations

import os

from pipeline.errors import UserError

FILE_SCHEME = "file://"


def is_url(path: str) -> bool:
    return "://" in path


def local_path(path: str) -> str | None:
    """The filesystem path of a local location (plain or ``file://``); None for a remote URL."""
    if path.startswith(FILE_SCHEME):
        return path[len(FILE_SCHEME):]
    return None if is_url(path) else path


def join(root: str, name: str) -> str:
    """``root``/``name`` for local paths and URLs; ``name`` may not escape ``root``."""
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise UserError("store", f"store name {name!r} escapes its root", "use a plain name inside --store-root")
    return f"{root.rstrip('/')}/{name}"


def zarr_store(path: str, *, read_only: bool, storage_options: dict | None = None):
    """The Zarr storage backend for ``path``: a LocalStore on disk, an FsspecStore for remote URLs."""
    from zarr.storage import FsspecStore, LocalStore

    local = local_path(path)
    if local is None:
        return FsspecStore.from_url(path, storage_options=storage_options or {}, read_only=read_only)
    return LocalStore(local, read_only=read_only)


def exists(path: str, storage_options: dict | None = None) -> bool:
    """Whether a Zarr group is at ``path``; an unreachable remote location is a user error, not False."""
    local = local_path(path)
    if local is not None:
        return os.path.exists(os.path.join(local, "zarr.json"))
    import fsspec

    try:
        fs, p = fsspec.core.url_to_fs(path, **(storage_options or {}))
        return fs.exists(f"{p.rstrip('/')}/zarr.json")
    except (OSError, ValueError, ImportError) as exc:  # bad credentials, unreachable endpoint, unknown protocol
        raise UserError("store", f"cannot reach {path!r} ({type(exc).__name__}: {str(exc)[:160]})",
                        "check the URL and --storage-options / credentials") from None
