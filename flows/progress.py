"""Training progress as Prefect sees it: run-logger lines plus a live progress artifact."""
from __future__ import annotations

import threading

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact


def reporter(what: str):
    """A ``pipeline.train.Progress`` callback for the current task run."""
    logger = get_run_logger()
    artifact = create_progress_artifact(progress=0.0, description=f"{what}: epochs done (%)")
    lock = threading.Lock()

    def report(label: str, epoch: int, epochs: int, metrics: dict) -> None:
        with lock:
            update_progress_artifact(artifact_id=artifact, progress=100.0 * epoch / epochs)
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        logger.info("%s epoch %d/%d %s", label, epoch, epochs, shown)

    return report
