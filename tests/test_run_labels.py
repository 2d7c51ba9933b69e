"""How a run is found in Prefect's UI: `kd run --run-name X` is a flow run named X, tagged with its dataset
and store, whose parent run shows the leaderboard; a rerun of a finished run starts no flow at all."""
from __future__ import annotations

import asyncio
import contextlib
import io
import os

import pytest

from flows.cli import main
from pipeline.store import SoftTargetStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def _kd(*argv: str) -> tuple[list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        main(list(argv))
    return out.getvalue().strip().splitlines(), err.getvalue()


async def _runs_named(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    async with get_client() as client:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))


async def _artifact_keys(flow_run_id) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key for a in found if a.key}


async def _count_runs() -> int:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.count_flow_runs()


def test_kd_run_is_found_by_its_run_name_with_tags_and_the_leaderboard_on_the_parent(tmp_path):
    root = str(tmp_path)
    argv = ("run", "--epochs", "1", "--width", "8", "--store-root", f"{root}/stores", "--checkpoint-root",
            f"{root}/ckpt", "--student-width", "4", "--student-epochs", "1", "--temperatures", "4",
            "--report-root", f"{root}/reports", "--run-name", "findable-x", "--device", "cpu")
    out, _ = _kd(*argv)
    assert out[-1] == f"report: {root}/reports/findable-x"

    runs = asyncio.run(_runs_named("findable-x"))
    flows = {}
    for r in runs:
        flows.setdefault(r.parent_task_run_id is None, []).append(r)
    assert len(flows[True]) == 1, "one top-level kd-pipeline run carries the run name"
    parent = flows[True][0]
    store = os.path.join(f"{root}/stores", os.listdir(f"{root}/stores")[0])
    key = SoftTargetStore(store).meta.provenance_key
    assert {"dataset:digits", f"store:{key}"} <= set(parent.tags)
    assert len(flows.get(False, [])) == 1, "its distill subflow, named after the same report folder"
    assert {"dataset:digits", f"store:{key}"} <= set(flows[False][0].tags)
    # The report is on the parent run too, not only on its distill subflow.
    assert {"leaderboard", "distill-report"} <= asyncio.run(_artifact_keys(parent.id))

    # A rerun of the finished run is recognised before Prefect starts: no flow run is created.
    before = asyncio.run(_count_runs())
    again, err = _kd(*argv)
    assert again == out
    assert "an identical run has finished; not retraining" in err
    assert asyncio.run(_count_runs()) == before
