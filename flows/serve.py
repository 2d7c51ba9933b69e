"""`make serve`: serve the flows from this process on one machine (no work pool needed).

Schedules and parameters are those of prefect.yaml's deployments (a test keeps the two, and
`kd run`'s defaults, equal); trigger runs from the UI or
`prefect deployment run 'kd-pipeline/nightly-pipeline'`.
"""
from __future__ import annotations

import flows  # noqa: F401  (Prefect environment defaults)
from prefect import serve

from flows.distill_flow import distill_flow
from flows.pipeline_flow import kd_pipeline
from flows.teacher_flow import teacher_flow
from pipeline.config import DistillConfig, TeacherConfig

FROM_TEACHER = "from-teacher"  # the pipeline replaces it with the store its teacher flow returns


def deployment_parameters() -> dict[str, dict]:
    """The parameters of each served deployment that has any, by deployment name: the configs' defaults, with
    three student seeds in the nightly pipeline (as `make distill` runs it)."""
    return {
        "nightly-teacher-refresh": {"config": TeacherConfig()},
        "nightly-pipeline": {"teacher": TeacherConfig(), "distill": DistillConfig(store=FROM_TEACHER, seeds=(0, 1, 2))},
    }


def main() -> None:
    params = deployment_parameters()
    serve(
        teacher_flow.to_deployment(name="nightly-teacher-refresh", parameters=params["nightly-teacher-refresh"],
                                   cron="0 2 * * *"),
        distill_flow.to_deployment(name="distill"),
        kd_pipeline.to_deployment(name="nightly-pipeline", cron="30 2 * * *", parameters=params["nightly-pipeline"]),
    )


if __name__ == "__main__":
    main()
