"""What makes a run findable in Prefect's UI: its name, its tags, and its report as artifacts.

A run is renamed and tagged from inside its flow, once its plan is known, so runs started by `kd`, by a
schedule or from the UI's run form are labelled alike: named after the report folder (``--run-name``) or
the store, and tagged with the dataset and the store's provenance key.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

from pipeline import report


def run_tags(*, dataset: str, store_key: str) -> list[str]:
    return [f"dataset:{dataset}", f"store:{store_key}"]


def label_run(*, name: str | None = None, tags: Iterable[str] = ()) -> None:
    """Rename the current flow run to ``name`` and add ``tags`` to the tags it has."""
    run_id = flow_run.get_id()
    if run_id is None:  # not inside a flow run
        return
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(run_id)
        client.update_flow_run(run_id, name=name or current.name, tags=sorted({*current.tags, *tags}))


def publish_report(run_dir: str) -> None:
    """The leaderboard as the terminal shows it, and the report with its plot inlined (a web page may not load
    a file:// image), as artifacts of the current flow run."""
    board = report.read_report(run_dir)["leaderboard"]
    paths = report.report_paths(run_dir)
    name = os.path.basename(run_dir.rstrip("/"))
    note = report.baseline_note(board)  # which label-only student "Δ vs base" is against, when there are several
    create_table_artifact(key="leaderboard", table=report.table_rows(board),
                          description=f"Leaderboard of {name}" + (f". {note}" if note else ""))
    create_markdown_artifact(key="distill-report", markdown=report.embedded_report(paths["md"], paths["plot"]),
                             description=f"report: {run_dir}")
