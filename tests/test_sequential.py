"""Born-again distillation: generations chained through stores that record their lineage."""
from __future__ import annotations

import contextlib
import io
import json
import os

import pytest

from flows.cli import main
from pipeline.store import SoftTargetStore

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def test_three_generations_chain_stores_and_report(tmp_path):
    root = str(tmp_path)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["run", "--epochs", "2", "--width", "8", "--store-root", f"{root}/stores", "--checkpoint-root",
              f"{root}/ckpt", "--student-width", "4", "--student-epochs", "2", "--temperatures", "2", "4",
              "--report-root", f"{root}/reports", "--generations", "3", "--device", "cpu"])
    stores = sorted(os.listdir(f"{root}/stores"))
    assert len(stores) == 3  # one store per generation's teacher
    by_depth = {len(SoftTargetStore(f"{root}/stores/{s}").attrs["lineage"]): s for s in stores}
    assert sorted(by_depth) == [0, 1, 2]
    g3 = SoftTargetStore(f"{root}/stores/{by_depth[2]}").attrs
    assert g3["lineage"][0]["store"].endswith(by_depth[1]) and g3["lineage"][1]["store"].endswith(by_depth[0])
    assert g3["teacher"]["arch"] == "cnn" and g3["teacher"]["width"] == 4  # a student became the teacher
    gens_dir = next(d for d in os.listdir(f"{root}/reports") if d.endswith("-generations"))
    rows = json.load(open(f"{root}/reports/{gens_dir}/generations.json"))
    assert [r["generation"] for r in rows] == [1, 2, 3]
    assert "| 3 |" in open(f"{root}/reports/{gens_dir}/generations.md").read()

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["inspect", f"{root}/stores/{by_depth[2]}"])
    assert out.getvalue().count("taught by the student of") == 2
