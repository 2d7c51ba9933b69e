"""Up-front checks of the places a run will write to, so a wrong path fails before any work.

Each check raises a one-line :class:`~pipeline.errors.UserError` naming the option; nothing is
created here (folders are made when something is written into them).
"""
from __future__ import annotations

import os

from pipeline.errors import UserError
from pipeline.store.paths import local_path


def check_output_folder(path: str, *, field: str, fix: str = "pass a folder path") -> None:
    """``path`` is a folder that exists or can be created, and can be written: not a file, nor under one."""
    probe = os.path.abspath(path)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise UserError(field, f"{path!r} is a file, not a folder", fix)
    # The nearest part of the path that exists must be a writable folder, or makedirs fails later.
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise UserError(field, f"{path!r} cannot be created: {probe!r} is a file", fix)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(field, f"{path!r} cannot be written: {probe!r} is not writable", fix)


def check_store_root(root: str, storage_options: dict | None, *, field: str = "store_root") -> None:
    """A local store root passes :func:`check_output_folder`; a URL root must be reachable now."""
    local = local_path(root)
    if local is not None:
        check_output_folder(local, field=field, fix="pass a folder or URL for stores, e.g. data/stores")
        return
    import fsspec

    try:
        fs, p = fsspec.core.url_to_fs(root, **(storage_options or {}))
        # A listing reaches the server (``exists`` swallows connection errors on some backends); a root
        # that is not there yet is fine, it is created on the first write.
        fs.ls(p, detail=False)
    except FileNotFoundError:
        pass
    except Exception as exc:  # fsspec backends raise anything: bad endpoint, credentials, unknown protocol
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise UserError(field, f"cannot reach {root!r} ({type(exc).__name__}: {first})",
                        "check the URL, the network and --storage-options / credentials") from None
