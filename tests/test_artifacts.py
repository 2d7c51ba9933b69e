"""What the Prefect UI shows of a distill run: its artifacts, read back from Prefect's API."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from pipeline import report
from pipeline.config import DistillConfig, ModelConfig, OptimConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

DATA_URI = re.compile(r"!\[accuracy vs temperature\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


async def _artifacts(flow_run_id) -> dict[str, object]:
    """The latest artifact of each key created by the flow run, from the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found if a.key}


@pytest.fixture(scope="module")
def distill_run(digits_store, tmp_path_factory) -> tuple[str, dict, object]:
    """A finished two-student distill flow: its report folder, its artifacts by key, and its flow run id."""
    import asyncio

    from flows.distill_flow import distill_flow

    root = tmp_path_factory.mktemp("artifacts")
    cfg = DistillConfig(store=digits_store, model=ModelConfig(arch="mlp", width=16), optim=OptimConfig(epochs=1),
                        temperatures=(4.0,), report_root=str(root), run_name="ui", device="cpu")
    state = distill_flow(cfg, return_state=True)
    assert state.is_completed()
    run_id = state.state_details.flow_run_id
    return state.result(), asyncio.run(_artifacts(run_id)), run_id


def test_markdown_report_embeds_the_plot_and_the_folder_keeps_the_file(distill_run):
    run_dir, artifacts, _ = distill_run
    text = artifacts["distill-report"].data
    assert "file://" not in text
    (encoded,) = DATA_URI.findall(text)  # the one image, inlined
    png = Path(run_dir, "accuracy_vs_temperature.png").read_bytes()
    assert base64.b64decode(encoded) == png and png.startswith(b"\x89PNG")
    # The folder's report.md is otherwise the same text, and links the PNG beside it.
    on_disk = Path(run_dir, "report.md").read_text()
    assert "](accuracy_vs_temperature.png)" in on_disk
    assert DATA_URI.sub("![accuracy vs temperature](accuracy_vs_temperature.png)", text) == on_disk


def test_leaderboard_table_shows_the_terminal_columns_accuracy_first(distill_run):
    run_dir, artifacts, _ = distill_run
    table = json.loads(artifacts["leaderboard"].data)
    head, rows = report.leaderboard_cells(report.read_report(run_dir)["leaderboard"])
    assert [list(r)[:2] for r in table] == [["config", "test acc %"]] * len(rows)
    assert list(table[0]) == ["config", "test acc %"] + [h for h in head if h not in ("config", "test acc %")]
    # Cell for cell what the terminal prints, e.g. "99.01 ± 0.21" (a lone "-", a Markdown bullet in the UI, as
    # "—"); no raw JSON fields.
    shown = [dict(zip(head, ["—" if c == "-" else c for c in row])) for row in rows]
    assert [{h: r[h] for h in head} for r in table] == shown
    assert table[0]["loss"] == "—"  # the teacher's
    assert [r["config"] for r in table] == ["teacher", "baseline", "kl-T4-a0.9"]
    assert all(re.fullmatch(r"\d+\.\d\d", r["test acc %"]) for r in table)  # one seed: no spread shown
    assert "size_mb_estimated" not in table[0] and "test_acc_mean" not in table[0]


def test_no_artifact_links_a_local_file(distill_run):
    _, artifacts, _ = distill_run
    assert not [k for k, a in artifacts.items() if "file://" in str(a.data)]


def test_progress_artifacts_and_task_runs_are_named_for_what_they_track(distill_run):
    """The group of both students (one seed), not its first student (it read "baseline-s0: epochs done (%)")."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType,
                                                FlowRunFilter, FlowRunFilterId)

    _, _, flow_run_id = distill_run

    async def read() -> tuple[list[str], list[str]]:
        async with get_client() as client:
            progress = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=["progress"])))
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return [a.description for a in progress], [t.name for t in tasks]

    descriptions, task_names = asyncio.run(read())
    assert descriptions == ["seed 0: 2 students: epochs done (%)"]
    assert "students[seed 0: 2 students]" in task_names
