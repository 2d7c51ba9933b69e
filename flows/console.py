"""What the ``kd`` commands that run flows print: by default Prefect's warnings and errors, one
progress bar per running task (on a terminal), then the result; ``--verbose`` adds Prefect's INFO lines.

The quiet default is set in ``flows/__init__.py``, before Prefect is imported. Only the console
handler's level changes: the run loggers still send every line to Prefect's backend (the UI's logs).
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

from flows import CONSOLE_LEVEL, QUIET_LEVEL
from pipeline.errors import UserError
from pipeline.fields import option


@dataclass(frozen=True)
class ConsoleConfig:
    verbose: bool = option(False, help="also print Prefect's INFO lines: flow and task run states, the temporary "
                                       "server starting and stopping, one line per task per epoch")


def apply(cfg: ConsoleConfig) -> None:
    """Set Prefect's console level for ``cfg``; call it before the flow runs."""
    level = "NOTSET" if cfg.verbose else QUIET_LEVEL  # NOTSET: Prefect's own default, everything its loggers pass
    if os.environ.get(CONSOLE_LEVEL) == level:
        return
    os.environ[CONSOLE_LEVEL] = level  # also what Dask workers and other child processes inherit
    if "prefect" in sys.modules:
        from prefect.logging.configuration import PROCESS_LOGGING_CONFIG, setup_logging

        # Prefect configures logging once, reading the level then; if that already happened in this
        # process (in-process callers, tests), redo it: incrementally, so only levels change.
        if PROCESS_LOGGING_CONFIG:
            setup_logging()


class UserErrorsOffConsole(logging.Filter):
    """Keeps Prefect's reports of a user error off the console: the task's and the flow's tracebacks, and the
    failed run's final state. The command prints the error once, in one line, as it exits with 2; Prefect's
    backend (the UI's logs) still receives every record.

    Prefect names the run on each record (``task_run_id``/``flow_run_id``, from its log adapters): a run whose
    exception was a user error has its "Finished in state Failed(…)" line dropped too, nothing else. A task with
    retries whose retry condition refuses a user error logs no record of the exception at all: its final line is
    recognised by the exception it names.
    """

    def __init__(self) -> None:
        super().__init__()
        self.failed_runs: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        run = getattr(record, "task_run_id", None) or getattr(record, "flow_run_id", None)
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            if run is not None:
                self.failed_runs.add(str(run))
            return False
        if not record.getMessage().startswith("Finished in state"):
            return True
        return not ((run is not None and str(run) in self.failed_runs) or _names_a_user_error(record.getMessage()))


def _names_a_user_error(message: str) -> bool:
    """Whether a failed state's message is Prefect's "… encountered an exception <UserError class>: …"."""
    classes, names = [UserError], set()
    while classes:
        cls = classes.pop()
        names.add(cls.__name__)
        classes.extend(cls.__subclasses__())
    return any(f"exception {name}: " in message for name in names)


def hide_user_errors() -> None:
    """Add :class:`UserErrorsOffConsole` to Prefect's console handlers (once); call it after Prefect is imported,
    which sets them up, and before a flow runs."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for handler in {h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}:
        if not any(isinstance(f, UserErrorsOffConsole) for f in handler.filters):
            handler.addFilter(UserErrorsOffConsole())
