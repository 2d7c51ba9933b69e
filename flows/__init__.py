"""Prefect flows: thin orchestration over ``pipeline/``.

Prefect reads its settings at import, so the defaults that keep runs local,
quiet and fast are set here, before any flow module imports it: state under
``data/prefect`` (later runs skip the database migrations), no telemetry, and
a console that shows Prefect's warnings and errors but not its INFO lines
(flow/task run states, server start/stop, per-epoch lines): those still reach
Prefect's backend and UI through its API log handler, which this leaves alone,
and ``kd … --verbose`` brings them back (``flows/console.py``).
Anything already set in the environment wins.
"""
import os

CONSOLE_LEVEL = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"  # Prefect's console handler only (logging.yml)

os.environ.setdefault("PREFECT_HOME", os.path.abspath(os.path.join("data", "prefect")))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault(CONSOLE_LEVEL, "WARNING")
QUIET_LEVEL = os.environ[CONSOLE_LEVEL]  # what the console goes back to without --verbose
os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)  # its SQLite database cannot create the folder
