"""User-facing errors.

Anything the user can fix (a wrong path, a bad temperature, a store written
from other data) is raised as :class:`UserError`. The CLI prints it as one line
and exits 2; it never shows a traceback for these.
"""
from __future__ import annotations


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
