"""What the ``kd`` commands that run flows print: by default Prefect's warnings and errors, one
progress bar per running task (on a terminal), then the result; ``--verbose`` adds Prefect's INFO lines.

The quiet default is set in ``flows/__init__.py``, before Prefect is imported. Only the console
handler's level changes: the run loggers still send every line to Prefect's backend (the UI's logs).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from flows import CONSOLE_LEVEL, QUIET_LEVEL
from pipeline.config import option


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
