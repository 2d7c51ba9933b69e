"""Scheduled deployments as they really run: a `prefect server start` whose scheduler creates the runs, and
`make serve` (``python -m flows.serve``) executing them. Nothing here triggers a scheduled run by hand.

The scheduler's loops are shortened through Prefect's settings so that runs are created within seconds;
a one-minute cron still waits for the next minute to start. Also checked against that server: the run
form's defaults (the deployments' parameter schemas, read from the API) are the CLI's, and a run submitted
from the form with only its required field trains exactly what `kd distill` trains.

Marked `deploy` so it can be skipped (`pytest -m "not deploy"`); `make test` runs it.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from flows.serve import read_deployments
from tests.conftest import prefect_server_env, start_prefect_server, stop_processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = read_deployments(os.path.join(ROOT, "prefect.yaml"))
SCHEDULED = [d for d in PROJECT if d.get("schedules")]
FLOW_NAMES = {"flows/teacher_flow.py:teacher_flow": "teacher", "flows/distill_flow.py:distill_flow": "distill",
              "flows/pipeline_flow.py:kd_pipeline": "kd-pipeline"}

pytestmark = [pytest.mark.slow, pytest.mark.deploy]


def _api(env: dict, method: str, path: str, body: dict | None = None) -> object:
    req = urllib.request.Request(env["PREFECT_API_URL"] + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def _deployment(env: dict, full_name: str) -> dict:
    return _api(env, "GET", f"/deployments/name/{full_name}")


def _runs(env: dict, deployment_id: str, **flow_runs: object) -> list[dict]:
    body = {"deployments": {"id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_ASC", "limit": 50}
    if flow_runs:
        body["flow_runs"] = flow_runs
    return _api(env, "POST", "/flow_runs/filter", body)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Prefect server on loopback whose scheduler loops every second."""
    env = prefect_server_env(tmp_path_factory.mktemp("schedules"), {
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
        "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    })
    procs = [start_prefect_server(env)]
    try:
        yield env, procs
    finally:
        stop_processes(procs)


EVERY_MINUTE = "every-minute"


@pytest.fixture(scope="module")
def served(server, digits_store, tmp_path_factory):
    """`make serve` on prefect.yaml's deployments plus one tiny distill deployment on a one-minute cron;
    its console output is read from a file."""
    env, procs = server
    root = tmp_path_factory.mktemp("served")
    tiny = {"name": EVERY_MINUTE, "entrypoint": "flows/distill_flow.py:distill_flow",
            "description": "a tiny grid on a one-minute cron",
            "parameters": {"config": {"store": digits_store, "model": {"arch": "mlp", "width": 16},
                                      "optim": {"epochs": 1}, "temperatures": [2.0], "device": "cpu",
                                      "report_root": str(root / "reports"), "run_name": EVERY_MINUTE}},
            "schedules": [{"cron": "* * * * *", "timezone": "UTC"}]}
    spec = root / "prefect.yaml"
    spec.write_text(yaml.safe_dump({"deployments": copy.deepcopy(PROJECT) + [tiny]}))
    log = open(root / "serve.log", "w+")
    started = time.monotonic()
    procs.append(subprocess.Popen([sys.executable, "-m", "flows.serve", "--file", str(spec)], env=env, cwd=ROOT,
                                  stdout=log, stderr=subprocess.STDOUT, text=True))

    def output(wait_for: str | None = None, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while True:
            log.flush()
            text = (root / "serve.log").read_text()
            if wait_for is None or wait_for in text:
                return text
            if procs[-1].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`make serve` never printed {wait_for!r}:\n{text[-3000:]}")
            time.sleep(1)

    return env, output, started


def test_make_serve_lists_its_deployments_schedules_next_runs_and_the_ui(served):
    env, output, _ = served
    text = output("distill/every-minute: cron * * * * * (UTC); next run")
    assert "UI: " + env["PREFECT_API_URL"].removesuffix("/api") in text
    for d in SCHEDULED:
        assert f"{FLOW_NAMES[d['entrypoint']]}/{d['name']}: cron {d['schedules'][0]['cron']} (UTC); next run " in text
    assert "distill/distill: no schedule" in text


@pytest.mark.parametrize("deployment", SCHEDULED, ids=lambda d: d["name"])
def test_each_scheduled_deployment_of_prefect_yaml_is_active_with_runs_the_scheduler_created(served, deployment):
    env, output, _ = served
    d = _deployment(env, f"{FLOW_NAMES[deployment['entrypoint']]}/{deployment['name']}")
    assert d["schedules"] and all(s["active"] for s in d["schedules"])
    assert d["schedules"][0]["schedule"]["cron"] == deployment["schedules"][0]["cron"]
    deadline, upcoming = time.monotonic() + 60, []
    while not upcoming and time.monotonic() < deadline:
        upcoming = _runs(env, d["id"], state={"type": {"any_": ["SCHEDULED"]}})
        time.sleep(1)
    assert upcoming, "the server's scheduler listed no next run"
    assert all(r["auto_scheduled"] for r in upcoming)  # created by the scheduler, not by a person
    minute, hour = (int(v) for v in deployment["schedules"][0]["cron"].split()[:2])
    assert upcoming[0]["expected_start_time"][11:16] == f"{hour:02d}:{minute:02d}"


def _form_values(prop: dict, given: object = None) -> object:
    """What the run form submits for a property: the deployment's value where it has one, else the
    property's default; an object's fields are filled the same way, one by one (a given partial object
    keeps its values)."""
    if given is None and "default" in prop:
        given = copy.deepcopy(prop["default"])
    branch = next((b for b in prop.get("anyOf", ()) if b.get("type") == "object"), prop)
    if "properties" in branch and (isinstance(given, dict) or (given is None and "default" not in prop)):
        given = dict(given or {})
        for name, sub in branch["properties"].items():
            value = _form_values(sub, given.get(name))
            if value is not None or "default" in sub:
                given[name] = value
    return given


def _leaf_defaults(prop: dict) -> object:
    """A property's value built from its leaves' defaults alone (a form that fills fields, not objects)."""
    branch = next((b for b in prop.get("anyOf", ()) if b.get("type") == "object"), prop)
    if "properties" not in branch or prop.get("default", {}) is None:
        return prop.get("default")
    return {name: _leaf_defaults(sub) for name, sub in branch["properties"].items()}


def test_the_run_forms_defaults_are_the_clis(served):
    """Each flow's parameter schema, as the server gives it to the UI, pre-fills what `kd teacher`,
    `kd distill` and `kd run` would build, at every level, whichever way a form fills nested fields."""
    from flows.cli import build_parser, distill_config, runner_config, student_namespace, teacher_config
    from flows.parameters import FROM_TEACHER
    from pipeline.serialize import to_dict

    env, output, _ = served
    output("distill/distill: no schedule")
    as_json = lambda cfg: json.loads(json.dumps(to_dict(cfg)))  # noqa: E731  (tuples as lists)

    teacher = _deployment(env, "teacher/nightly-teacher-refresh")["parameter_openapi_schema"]["properties"]["config"]
    assert _leaf_defaults(teacher) == teacher["default"] == as_json(teacher_config(build_parser().parse_args(["teacher"])))

    distill = _deployment(env, "distill/distill")["parameter_openapi_schema"]["properties"]["config"]
    form = _form_values(distill, {"store": "S"})
    cli = as_json(distill_config(build_parser().parse_args(["distill", "--store", "S"]), "S"))
    assert form == cli
    assert (form["model"]["arch"], form["model"]["width"]) == ("cnn", 8)  # the students', not ModelConfig's 32
    leaves = _leaf_defaults(distill)
    assert {**leaves, "store": "S"} == cli

    pipeline = _deployment(env, "kd-pipeline/nightly-pipeline")["parameter_openapi_schema"]["properties"]
    a = build_parser().parse_args(["run"])
    assert _form_values(pipeline["teacher"]) == as_json(teacher_config(a))
    assert _form_values(pipeline["distill"]) == as_json(
        dataclasses.replace(distill_config(student_namespace(a), FROM_TEACHER), data=None))
    assert _form_values(pipeline["runner"]) == as_json(runner_config(a))
    assert pipeline["generations"]["default"] == a.generations


def test_a_run_from_the_form_with_only_the_store_trains_what_kd_distill_trains(served, digits_store):
    from flows.cli import build_parser, distill_config
    from pipeline import runs
    from pipeline.store import SoftTargetStore

    env, output, _ = served
    output("distill/distill: no schedule")
    d = _deployment(env, "distill/distill")
    form = {"config": _form_values(d["parameter_openapi_schema"]["properties"]["config"],
                                   {**d["parameters"]["config"], "store": digits_store})}
    run = _api(env, "POST", f"/deployments/{d['id']}/create_flow_run", {"parameters": form})
    state = _wait_for(env, run["id"], timeout=300)
    assert state["state"]["type"] == "COMPLETED", state["state"]

    run_dir = os.path.join(ROOT, "data", "reports", state["name"])  # the run is named after its report folder
    try:
        from pipeline.report import read_report

        recorded = read_report(run_dir)
        cfg = distill_config(build_parser().parse_args(["distill", "--store", digits_store]), digits_store)
        meta = SoftTargetStore(digits_store).meta
        expected = runs.run_identity(cfg, data_cfg=meta.data_cfg(), provenance_key=meta.provenance_key)
        assert {k: recorded["meta"][k] for k in expected} == expected
        students = [r for r in recorded["runs"] if r["kind"] != "teacher"]
        assert len(students) == len(cfg.students()) and {r["params"] for r in students} == {4370}  # width 8
        assert {"dataset:digits", f"store:{meta.provenance_key}"} <= set(state["tags"])
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    tag = f"[{run['id'].replace('-', '')[:8]}]"
    text = output(f"run finished: distill/distill {state['name']!r} {tag} Completed")
    assert re.search(rf"run started: distill/distill '[^']+' {re.escape(tag)} \(on request\)", text)


def _wait_for(env: dict, flow_run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = _api(env, "GET", f"/flow_runs/{flow_run_id}")
        if run["state"] and run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(1)
    pytest.fail(f"flow run {flow_run_id} did not finish in {timeout} s")


def test_a_one_minute_cron_fires_and_its_run_completes_within_two_minutes(served):
    """The acceptance test of the schedules: nothing here starts a run; the scheduler creates it from the
    cron, and `make serve` executes it."""
    env, output, started = served
    d = _deployment(env, f"distill/{EVERY_MINUTE}")
    deadline = started + 150  # the next minute starts within 60 s; the run itself takes seconds
    done = []
    while not done and time.monotonic() < deadline:
        done = [r for r in _runs(env, d["id"], state={"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}})]
        time.sleep(2)
    assert done, f"no scheduled run finished within {deadline - started:.0f} s of serving:\n{output()[-3000:]}"
    run = done[0]
    assert run["auto_scheduled"] and run["state"]["type"] == "COMPLETED", run["state"]
    assert run["name"] == EVERY_MINUTE  # named after its report folder (run_name)
    tag = f"[{run['id'].replace('-', '')[:8]}]"
    text = output(f"run finished: distill/{EVERY_MINUTE} '{EVERY_MINUTE}' {tag} Completed")
    assert re.search(rf"run started: distill/{EVERY_MINUTE} '[^']+' {re.escape(tag)} \(by its schedule\)", text)
