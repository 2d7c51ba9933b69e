"""Deployments as a user runs them: a real Prefect server on loopback, `prefect deploy --all` from
prefect.yaml, a process worker, and a triggered run of the distill deployment that completes.

Marked `deploy` so it can be skipped (`pytest -m "not deploy"`); `make test` runs it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import prefect_server_env, start_prefect_server, stop_processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)

pytestmark = [pytest.mark.slow, pytest.mark.deploy]


@pytest.fixture
def server(tmp_path):
    env = prefect_server_env(tmp_path)
    procs = [start_prefect_server(env)]
    try:
        yield env, procs
    finally:
        stop_processes(procs)


def _prefect(env, *args, timeout=120) -> str:
    out = subprocess.run([f"{BIN}/prefect", "--no-prompt", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_deploy_from_prefect_yaml_and_run_on_a_process_worker(server, digits_store, tmp_path):
    env, procs = server
    _prefect(env, "work-pool", "create", "kd-process", "--type", "process")
    deployed = _prefect(env, "deploy", "--all")
    for name in ("nightly-teacher-refresh", "distill", "nightly-pipeline"):
        assert name in deployed
    procs.append(subprocess.Popen([f"{BIN}/prefect", "worker", "start", "--pool", "kd-process", "--limit", "1"],
                                  env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    params = {"config": {"store": digits_store, "model": {"arch": "mlp", "width": 16}, "optim": {"epochs": 1},
                         "temperatures": [2.0], "report_root": str(tmp_path / "reports"), "run_name": "deployed",
                         "device": "cpu"}}
    started = _prefect(env, "deployment", "run", "distill/distill", "--params", json.dumps(params))
    flow_run_id = next(line.split()[-1] for line in started.splitlines() if "UUID" in line)

    deadline, state = time.monotonic() + 150, ""
    while time.monotonic() < deadline:
        state = _prefect(env, "flow-run", "inspect", flow_run_id, "--output", "json")
        kind = json.loads(state)["state"]["type"]
        if kind == "COMPLETED":
            break
        if kind in ("FAILED", "CRASHED", "CANCELLED"):
            pytest.fail(state[-3000:])
        time.sleep(2)
    else:
        pytest.fail(f"run did not complete in time: {state[-2000:]}")
    board = json.load(open(tmp_path / "reports" / "deployed" / "leaderboard.json"))["leaderboard"]
    assert [e["config_id"] for e in board][:2] == ["teacher", "baseline"]
