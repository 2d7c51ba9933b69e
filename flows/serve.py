"""`make serve`: run the deployments of prefect.yaml from this process, on their schedules.

prefect.yaml is the one definition of the deployments, their parameters and schedules: `prefect deploy
--all` sends them to a work pool, and this serves the same ones from here, with no pool or worker. The
work pool of each entry is ignored here.

Schedules need a Prefect server whose scheduler runs. Prefect's temporary server (what a flow starts when
no ``PREFECT_API_URL`` is set) runs no scheduler and no UI, so without one this starts ``prefect server
start`` on loopback (its database under ``PREFECT_HOME``) and stops it on exit. It prints the deployments
with their schedules and next runs, the UI's address, and one line per run started and finished.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

import flows  # noqa: F401  (Prefect environment defaults, before Prefect is imported)

DEFAULT_PORT = 4200
POLL_SECONDS = 2.0
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def read_deployments(path: str) -> list[dict]:
    """The deployments of a prefect.yaml: name, entrypoint, description, parameters, schedules."""
    import yaml

    with open(path) as f:
        return list((yaml.safe_load(f) or {}).get("deployments") or [])


def _schedule(spec: dict):
    from prefect.schedules import Cron, Interval

    active = spec.get("active", True)
    if "cron" in spec:
        return Cron(spec["cron"], timezone=spec.get("timezone"), active=active)
    return Interval(spec["interval"], timezone=spec.get("timezone"), active=active)


def schedule_text(spec: dict) -> str:
    what = f"cron {spec['cron']}" if "cron" in spec else f"every {spec['interval']} s"
    zone = f" ({spec['timezone']})" if spec.get("timezone") else ""
    return what + zone + ("" if spec.get("active", True) else ", inactive")


def runner_deployment(spec: dict):
    """A deployment of prefect.yaml as `serve` takes it."""
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(spec["entrypoint"])
    return flow.to_deployment(name=spec["name"], description=spec.get("description"),
                              parameters=spec.get("parameters") or {},
                              schedules=[_schedule(s) for s in spec.get("schedules") or []])


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextmanager
def prefect_server(port: int) -> Iterator[str]:
    """The API URL to serve against: ``PREFECT_API_URL`` when set, else a ``prefect server start`` of our own."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            sys.exit(f"error: port {port} is taken (set KD_SERVE_PORT, or PREFECT_API_URL to use the server there)")
    api = f"http://127.0.0.1:{port}/api"
    print(f"starting a Prefect server on 127.0.0.1:{port} (database under {os.environ['PREFECT_HOME']})", flush=True)
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "prefect"), "server", "start",
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            # Its own session: Ctrl-C stops the serving first, which still needs the server
                            # to pause the schedules; the server is stopped after.
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _healthy(api):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"error: the Prefect server did not start (run `prefect server start --port {port}` "
                         "to see why)")
            time.sleep(0.5)
        os.environ["PREFECT_API_URL"] = api  # read by Prefect when it is imported, and by each run's process
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _when(t: datetime | None) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if t else "?"


class RunReporter(threading.Thread):
    """Prints the served deployments' schedules and next runs once the server lists them, then one line per
    run that starts and one per run that ends, from the server's own records."""

    def __init__(self, specs: list[dict]) -> None:
        super().__init__(daemon=True)
        self.specs = specs
        self.shown: dict[str, str] = {}  # flow run id -> the last phase printed

    def run(self) -> None:
        from prefect.client.orchestration import get_client

        since = datetime.now(timezone.utc)
        with get_client(sync_client=True) as client:
            ids = self._announce(client)
            while True:
                try:
                    self._report(client, ids, since)
                except Exception as exc:  # a busy or restarting server: say so, keep serving
                    print(f"(could not read run states: {type(exc).__name__})", flush=True)
                time.sleep(POLL_SECONDS)

    def _announce(self, client) -> dict:
        """Each deployment's id, once registered; prints its schedules and its next scheduled run."""
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
        from prefect.client.schemas.filters import FlowRunFilterState, FlowRunFilterStateType
        from prefect.client.schemas.sorting import FlowRunSort

        ids = {}
        for spec in self.specs:
            while True:
                found = [d for d in client.read_deployments() if d.name == spec["name"]]
                if found:
                    break
                time.sleep(0.5)
            d = found[0]
            ids[d.id] = spec
            flow = client.read_flow(d.flow_id).name
            spec["_full"] = f"{flow}/{d.name}"
            schedules = spec.get("schedules") or []
            if not schedules:
                print(f"  {spec['_full']}: no schedule; start it from the UI or with "
                      f"`prefect deployment run '{spec['_full']}'`", flush=True)
                continue
            nxt = None
            deadline = time.monotonic() + 30
            while nxt is None and any(s.get("active", True) for s in schedules) and time.monotonic() < deadline:
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[d.id])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=["SCHEDULED"]))),
                    sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
                nxt = runs[0].expected_start_time if runs else None
                if nxt is None:
                    time.sleep(0.5)
            when = (f"next run {_when(nxt)}" if nxt else "no run scheduled yet (the server's scheduler creates them)"
                    if any(s.get("active", True) for s in schedules) else "paused")
            print(f"  {spec['_full']}: {'; '.join(schedule_text(s) for s in schedules)}; {when}", flush=True)
        return ids

    def _report(self, client, ids: dict, since: datetime) -> None:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
        from prefect.client.schemas.filters import FlowRunFilterStartTime

        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(ids))),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)), limit=200)
        for run in runs:
            kind = run.state.type.value if run.state else "PENDING"
            full = ids[run.deployment_id]["_full"]
            how = "by its schedule" if run.auto_scheduled else "on request"
            # The id's first characters tie the two lines together: a run renames itself after its report
            # folder once it has started.
            tag = f"[{run.id.hex[:8]}]"
            if kind == "RUNNING" and run.id.hex not in self.shown:
                print(f"run started: {full} {run.name!r} {tag} ({how})", flush=True)
                self.shown[run.id.hex] = "started"
            elif kind in TERMINAL and self.shown.get(run.id.hex) != "ended":
                took = f" after {run.total_run_time.total_seconds():.0f} s" if run.total_run_time else ""
                if run.id.hex not in self.shown:
                    print(f"run started: {full} {run.name!r} {tag} ({how})", flush=True)
                print(f"run finished: {full} {run.name!r} {tag} {run.state.name}{took}", flush=True)
                self.shown[run.id.hex] = "ended"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--file", default="prefect.yaml", help="the deployments to serve (default: %(default)s)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("KD_SERVE_PORT", DEFAULT_PORT)),
                        help="port of the Prefect server started when PREFECT_API_URL is not set "
                             "(default: %(default)s, or KD_SERVE_PORT)")
    args = parser.parse_args(argv)
    # A service manager stops us with SIGTERM: exit as on Ctrl-C, so the server we started is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    specs = read_deployments(args.file)
    if not specs:
        sys.exit(f"error: {args.file} lists no deployments")
    with prefect_server(args.port) as api:
        from prefect import serve

        ui = api.removesuffix("/api")
        print(f"serving {len(specs)} deployments of {args.file} against {api}; UI: {ui} (Ctrl-C stops)", flush=True)
        deployments = [runner_deployment(s) for s in specs]
        RunReporter(specs).start()
        serve(*deployments, print_starting_message=False)


if __name__ == "__main__":
    main()
