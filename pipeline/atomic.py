"""Files written atomically: a temporary file beside the target, synced, then renamed into place.

Every file the pipeline publishes (reports, checkpoints, exports, caches) goes through here, so a reader
sees the old file or the whole new one, never a truncated one, and a full disk is one line naming the file.
"""
from __future__ import annotations

import os
from collections.abc import Callable

from pipeline.errors import disk_full


def write_atomic(path: str, write: Callable[[str], object], *, field: str = "report_root") -> None:
    """Call ``write(tmp)`` to write a temporary file beside ``path``, then rename it into place.

    A reader sees the old file or the whole new one, never a truncated one: a failed write (a full
    disk) leaves ``path`` as it was and removes the temporary file. A full disk is a one-line
    :class:`~pipeline.errors.DiskFullError` naming ``path`` and ``field``, the option that chose its folder.
    """
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # on disk before the rename makes it visible
        os.replace(tmp, path)
    except OSError as exc:
        error = disk_full(exc, path, field=field)
        if error is None:
            raise
        raise error from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    """:func:`write_atomic` for a text file."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    write_atomic(path, write)
