"""Where tasks run: threads in this process, or a Dask cluster through prefect-dask.

This is orchestration, so it lives here and not in the library's configs.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError
from pipeline.fields import option

RUNNERS = ("thread", "dask")


@dataclass(frozen=True)
class RunnerConfig:
    """``thread``: a thread pool here. ``dask``: a Dask cluster at ``address``, or a LocalCluster of ``workers``."""

    name: str = option("thread", flag="runner", choices=RUNNERS,
                       help="where Prefect tasks run: threads here, or a Dask cluster (prefect-dask)")
    address: str | None = option(None, flag="dask-address", help="scheduler address (tcp://…)",
                                 default_text="a LocalCluster")
    workers: int = option(2, flag="dask-workers", help="worker processes of the LocalCluster")

    def __post_init__(self) -> None:
        if self.name not in RUNNERS:
            raise UserError("runner", f"unknown runner {self.name!r}", f"choose one of: {', '.join(RUNNERS)}")
        if self.address is not None and self.name != "dask":
            raise UserError("dask_address", "only applies to --runner dask", "add --runner dask")
        if self.workers < 1:
            raise UserError("dask_workers", f"must be positive, got {self.workers}", "use e.g. 2")


def task_runner(cfg: RunnerConfig):
    # Prefect is imported here, not at the top: `kd` builds its options from RunnerConfig, and
    # `kd --help` or a refused option should not wait for Prefect to import.
    from prefect.task_runners import ThreadPoolTaskRunner

    if cfg.name == "thread":
        return ThreadPoolTaskRunner()
    from prefect_dask import DaskTaskRunner

    if cfg.address:
        return DaskTaskRunner(address=cfg.address)
    # One thread per worker process: torch already uses the cores inside each task.
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})
