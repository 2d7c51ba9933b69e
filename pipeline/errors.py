"""User-facing errors.

Anything the user can fix (a wrong path, a bad temperature, a store written
from other data) is raised as :class:`UserError`. The CLI prints it as one line
and exits 2; it never shows a traceback for these.
"""
from __future__ import annotations

import errno
import functools
import os


class UserError(Exception):
    """An error caused by input the user controls.

    ``field`` names the offending parameter, option or store attribute;
    ``fix`` tells the user what to do about it.
    """

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        msg = f"{self.field}: {self.problem}"
        if self.fix:
            msg += f" ({self.fix})"
        return msg


class StoreError(UserError):
    """A soft-target store is missing, incomplete, corrupt or does not match."""


class DiskFullError(UserError):
    """A write failed because its disk (or quota, or file-size limit) is full: nothing was published, and
    rerunning the same command once there is room resumes or redoes the work."""


# ENOSPC: the device is full; EDQUOT: the user's quota is; EFBIG: a file-size limit (RLIMIT_FSIZE) was hit.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def disk_full(exc: BaseException, where: str, *, field: str) -> DiskFullError | None:
    """The one-line error for ``exc`` when it is a write that found no space (``where``: what was written, if
    the error does not name its file), else None."""
    if not isinstance(exc, OSError) or exc.errno not in NO_SPACE:
        return None
    return DiskFullError(field, f"no space left writing {exc.filename or where} ({os.strerror(exc.errno)})",
                         f"free some space, or pass another --{field.replace('_', '-')}, and run the same command "
                         "again")


def disk_full_is_a_user_error(field: str, where):
    """Decorate a function that writes under ``--field``: a full disk is a one-line :class:`DiskFullError`
    (``where(*args, **kwargs)`` names what was being written), any other error passes unchanged."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except OSError as exc:
                error = disk_full(exc, where(*args, **kwargs), field=field)
                if error is None:
                    raise
                raise error from None
        return wrapped
    return decorate
