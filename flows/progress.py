"""Training progress, three ways: a live Prefect progress artifact and run-logger lines (the UI), and a
console progress bar for the task while it runs (on a terminal only).

Prefect's console handler hides the run-logger lines unless ``--verbose`` (``flows/console.py``); they
still reach Prefect's backend. Without a terminal nothing is printed per epoch: logs and CI stay short.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from tqdm.auto import tqdm

from pipeline.teacher import progress_bar
from pipeline.train import Progress


@contextmanager
def reporter(what: str) -> Iterator[Progress]:
    """A ``pipeline.train.Progress`` callback for the current task run; ``what`` names what it tracks (the teacher,
    a group of students), for its progress artifact, bar and log lines. Its bar goes when the block ends."""
    logger = get_run_logger()
    artifact = create_progress_artifact(progress=0.0, description=f"{what}: epochs done (%)")
    lock = threading.Lock()
    bar = open_bar(what)

    def report(label: str, epoch: int, epochs: int, metrics: dict) -> None:
        shown = describe(metrics)
        with lock:
            update_progress_artifact(artifact_id=artifact, progress=100.0 * epoch / epochs)
            bar.total = epochs
            bar.set_postfix_str(shown, refresh=False)
            bar.update(epoch - bar.n)
        logger.info("%s epoch %d/%d: %s", label, epoch, epochs, shown)

    try:
        yield report
    finally:
        bar.close()  # leave=False: erased, so the terminal shows only the tasks still running


def describe(metrics: dict) -> str:
    """An epoch's metrics as a person reads them: ``best val acc 97.22%``, and for a group, how many of its
    students still train (the others stopped early or failed)."""
    text = f"best val acc {100 * metrics['best_val_acc']:.2f}%"
    if metrics.get("trainees", 1) > 1:
        text += f", {metrics['training']} of {metrics['trainees']} students training"
    return text


def open_bar(what: str) -> tqdm:
    """A bar for one task, on a terminal only. mininterval=0: epochs are seconds apart, so every one is drawn.
    The total comes with the first report."""
    return tqdm(desc=what, unit="epoch", leave=False, dynamic_ncols=True, mininterval=0, disable=not progress_bar())
