"""`make serve`: serve the flows from this process on one machine (no work pool needed).

Schedules are the same examples as in prefect.yaml; trigger runs from the UI or
`prefect deployment run 'kd-pipeline/nightly-pipeline'`.
"""
from __future__ import annotations

import flows  # noqa: F401  (Prefect environment defaults)
from prefect import serve

from flows.distill_flow import distill_flow
from flows.pipeline_flow import kd_pipeline
from flows.teacher_flow import teacher_flow
from pipeline.config import DistillConfig, TeacherConfig


def main() -> None:
    serve(
        teacher_flow.to_deployment(name="nightly-teacher-refresh", parameters={"config": TeacherConfig()},
                                   cron="0 2 * * *"),
        distill_flow.to_deployment(name="distill"),
        kd_pipeline.to_deployment(name="nightly-pipeline", cron="30 2 * * *",
                                  parameters={"teacher": TeacherConfig(),
                                              "distill": DistillConfig(store="from-teacher")}),
    )


if __name__ == "__main__":
    main()
