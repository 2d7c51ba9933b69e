"""When a Prefect task may retry: a transient failure (I/O, a flaky remote store), never a user error.

A :class:`~pipeline.errors.UserError` (a checkpoint that does not load, a store from other data) fails the
same way every time: retrying it only delays the one-line error, and repeats its side effects.
"""
from __future__ import annotations

from pipeline.errors import UserError


def not_a_user_error(task, task_run, state) -> bool:
    """Prefect's ``retry_condition_fn``: retry unless the task raised a UserError."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return not isinstance(exc, UserError)


IO_RETRIES = {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": not_a_user_error}
