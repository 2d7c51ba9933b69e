"""Run locks on report folders: exclusive, released, stale ones taken over, other hosts' respected."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from pipeline import locks
from pipeline.errors import UserError


def test_the_run_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path):
    path = str(tmp_path / "run")
    lock = os.path.join(path, locks.LOCK)
    with locks.run_lock(path):
        assert json.load(open(lock))["pid"] == os.getpid()
        for check in (lambda: locks.check_not_running(path), lambda: locks.run_lock(path).__enter__()):
            with pytest.raises(UserError) as e:
                check()
            assert e.value.field == "run_name" and f"pid {os.getpid()}" in e.value.problem
    assert not os.path.exists(lock)  # released

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process that held the lock and died (SIGKILL, power cut)
    with open(lock, "w") as f:
        json.dump({"pid": gone.pid, "host": socket.gethostname(), "started": "then"}, f)
    locks.check_not_running(path)
    with locks.run_lock(path):
        assert json.load(open(lock))["pid"] == os.getpid()
    # Another machine's lock cannot be checked from here: respected, with the way out in the fix.
    with open(lock, "w") as f:
        json.dump({"pid": gone.pid, "host": "elsewhere", "started": "then"}, f)
    with pytest.raises(UserError) as e:
        locks.check_not_running(path)
    assert "elsewhere" in e.value.problem and locks.LOCK in e.value.fix
