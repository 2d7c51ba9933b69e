"""A rerun of a finished `kd run` (what a second `make distill` is): recognised before Prefect starts.

Timed as whole processes, side by side with `kd --help` (the cost of starting Python and the CLI alone),
rounds interleaved. The finished run is a small one in a temporary folder: the rerun's work (plan the
teacher, find the identical report, reprint it) does not depend on how long the first run trained.
"""
from __future__ import annotations

import os
import subprocess
import sys

import benchlib as B

KD = os.path.join(os.path.dirname(sys.executable), "kd")


def test_noop_rerun(tmp_path):
    begun = B.begin()
    root = str(tmp_path)
    argv = [KD, "run", "--seeds", "0", "1", "2", "--epochs", "1", "--student-epochs", "1", "--temperatures", "4",
            "--store-root", f"{root}/stores", "--checkpoint-root", f"{root}/ckpt", "--report-root",
            f"{root}/reports", "--device", "cpu"]
    env = {**os.environ, "PREFECT_HOME": f"{root}/prefect"}
    subprocess.run(argv, check=True, env=env, capture_output=True)  # the finished run

    def rerun() -> None:
        out = subprocess.run(argv, check=True, env=env, capture_output=True, text=True)
        assert "not retraining" in out.stderr, out.stderr[-2000:]

    def help_() -> None:
        subprocess.run([KD, "--help"], check=True, env=env, capture_output=True)

    times = B.interleaved({"rerun": rerun, "help": help_}, min_reps=5, max_reps=10, budget_s=60)
    ratio = B.rounds(times["rerun"], times["help"])
    B.record("noop_rerun", [
        B.figure("no-op rerun / kd --help", B.ratio(times["rerun"], times["help"]), "reported", None,
                 per_round=ratio),
        B.figure("no-op rerun wall time", B.med(times["rerun"]), "< 5 s", B.med(times["rerun"]) < 5.0, " s",
                 per_round=times["rerun"]),
        B.figure("kd --help wall time", B.med(times["help"]), "reported", None, " s", per_round=times["help"]),
    ], {"config": {"command": "kd run --seeds 0 1 2 (small grid, finished), as whole processes"},
        "seconds": times}, begun)
