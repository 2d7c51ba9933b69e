"""Prefect flows: thin orchestration over ``pipeline/``.

Prefect reads its settings at import, so the defaults that keep runs local,
quiet and fast are set here, before any flow module imports it: state under
``data/prefect`` (later runs skip the database migrations) and no telemetry.
Anything already set in the environment wins.
"""
import os

os.environ.setdefault("PREFECT_HOME", os.path.abspath(os.path.join("data", "prefect")))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)  # its SQLite database cannot create the folder
