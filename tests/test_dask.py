"""Scale-out on a real 2-worker Dask LocalCluster through prefect-dask."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from flows.runners import RunnerConfig, task_runner
from pipeline import teacher
from pipeline.config import DistillConfig, ModelConfig, OptimConfig
from pipeline.store import SoftTargetStore
from tests.conftest import small_teacher_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield RunnerConfig(name="dask", address=c.scheduler_address)


def test_split_teacher_pass_is_bit_identical_to_one_writer(cluster, tmp_path, digits_store):
    from flows.teacher_flow import teacher_flow

    ckpt = SoftTargetStore(digits_store).attrs["teacher"]["checkpoint"]
    base = small_teacher_config(str(tmp_path / "one"), checkpoint=ckpt, chunk_rows=32, shard_chunks=2,
                                encoding="float32")
    p = teacher.plan(base)
    single = SoftTargetStore(teacher.publish(p, teacher.load(p)))

    split = dataclasses.replace(base, store_root=str(tmp_path / "many" / "stores"), writers=3)
    store = teacher_flow.with_options(task_runner=task_runner(cluster))(split)
    many = SoftTargetStore(store)
    assert many.attrs["complete"] is True
    for s in ("train", "val", "test"):
        assert np.array_equal(many.read_logits(s), single.read_logits(s)), s
        assert many.group[s]["written"][:].all()


def test_student_groups_run_on_dask(cluster, tmp_path, digits_store):
    from flows.distill_flow import distill_flow

    cfg = DistillConfig(store=digits_store, model=ModelConfig(arch="mlp", width=32),
                        optim=OptimConfig(epochs=2, lr=1e-2), temperatures=(1.0, 4.0), report_root=str(tmp_path),
                        run_name="dask", device="cpu", group_size=2)
    run_dir = distill_flow.with_options(task_runner=task_runner(cluster))(cfg)
    rows = json.load(open(f"{run_dir}/leaderboard.json"))["runs"]
    assert sorted(r["run_id"] for r in rows) == ["baseline-s0", "kl-T1-a0.9-s0", "kl-T4-a0.9-s0", "teacher"]
    assert all(r["status"] == "ok" for r in rows)


def test_runner_config_refuses_nonsense():
    from pipeline.errors import UserError

    with pytest.raises(UserError):
        RunnerConfig(name="ray")
    with pytest.raises(UserError):
        RunnerConfig(name="thread", address="tcp://1.2.3.4:8786")
