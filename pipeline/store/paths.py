"""Where a store lives: a local folder (optionally written as a ``file://`` URL) or an fsspec URL."""
from __future__ import annotations

import functools
import os

from pipeline.errors import StoreError, UserError

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
    """The Zarr storage backend for ``path``: a contained LocalStore on disk, an FsspecStore for remote URLs."""
    from zarr.storage import FsspecStore

    local = local_path(path)
    if local is None:
        return FsspecStore.from_url(path, storage_options=storage_options or {}, read_only=read_only)
    return _contained_store_class()(local, read_only=read_only)


@functools.cache
def _contained_store_class():
    """A LocalStore that refuses to read through a link leaving its root (built lazily: zarr loads late)."""
    from zarr.storage import LocalStore

    class ContainedLocalStore(LocalStore):
        """Every key is resolved (symlinks followed) before it is read, and must stay inside the store.

        Otherwise a store could be made to read, and echo in an error message, any file the reader may
        open (``train/zarr.json -> /etc/passwd``). Nothing outside the store is ever opened.
        """

        def _check(self, key: str) -> None:
            check_contained(str(self.root), key)

        async def get(self, key, prototype=None, byte_range=None):
            self._check(key)
            return await super().get(key, prototype, byte_range)

        async def get_partial_values(self, prototype, key_ranges):
            key_ranges = list(key_ranges)
            for key, _ in key_ranges:
                self._check(key)
            return await super().get_partial_values(prototype, key_ranges)

    return ContainedLocalStore


def check_contained(root: str, key: str) -> None:
    """Refuse ``key`` under the local store ``root`` if a symlink takes it outside the store."""
    base = os.path.realpath(root)
    target = os.path.realpath(os.path.join(root, key))
    if target != base and not target.startswith(base + os.sep):
        raise StoreError(key, "is a link that leaves the store; refused (its target is never read)",
                         "the store was tampered with; rewrite it with `kd teacher`")


def staging_path(path: str, identity: str) -> str:
    """Where a local store is written before it is published under ``path`` by one atomic rename.

    Named by the content's identity, so a different teacher or layout never reuses (or deletes) another's
    unfinished copy, and without the ``.zarr`` suffix, so listings never show it as a store.
    """
    return f"{path.rstrip('/')}.partial-{identity[:12]}"


def exists(path: str, storage_options: dict | None = None) -> bool:
    """Whether a Zarr group is at ``path``; an unreachable remote location is a user error, not False."""
    local = local_path(path)
    if local is not None:
        return os.path.exists(os.path.join(local, "zarr.json"))
    import fsspec

    try:
        fs, p = fsspec.core.url_to_fs(path, **(storage_options or {}))
        return fs.exists(f"{p.rstrip('/')}/zarr.json")
    except Exception as exc:  # fsspec backends raise anything: bad endpoint, credentials, unknown protocol
        raise unreachable("store", path, exc) from None


def unreachable(field: str, url: str, exc: BaseException) -> UserError:
    """The one line for a remote location that cannot be reached or read (any backend's exception)."""
    first = (str(exc).strip().splitlines() or [""])[0][:160]
    return UserError(field, f"cannot reach {url!r} ({type(exc).__name__}: {first})",
                     "check the URL, the network and --storage-options / credentials")
