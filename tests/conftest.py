"""Shared fixtures: a tiny real teacher store on `digits`, and one Prefect test harness per session."""
from __future__ import annotations

import os

import pytest

import flows  # noqa: F401  (Prefect's environment defaults, before Prefect is imported)
from pipeline import teacher
from pipeline.config import DataConfig, ModelConfig, OptimConfig, TeacherConfig


def small_teacher_config(root, **overrides) -> TeacherConfig:
    """A 3-epoch digits teacher writing under ``root``: seconds on a CPU."""
    kwargs = dict(model=ModelConfig(arch="cnn", width=8), optim=OptimConfig(epochs=3, batch_size=64),
                  store_root=os.path.join(root, "stores"), checkpoint_root=os.path.join(root, "checkpoints"),
                  device="cpu")
    kwargs.update(overrides)
    return TeacherConfig(**kwargs)


def build_store(root, **overrides) -> str:
    """Train and publish a teacher store through the library (no Prefect); returns its path."""
    p = teacher.plan(small_teacher_config(root, **overrides))
    return teacher.publish(p, teacher.train(p))


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory) -> str:
    """A complete float32 digits store; tests must not modify it (copy it first)."""
    return build_store(str(tmp_path_factory.mktemp("shared")), encoding="float32")


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's temporary server, started once for every flow test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def store_copy(digits_store, tmp_path) -> str:
    """A private copy of the shared store that a test may damage."""
    import shutil

    dst = tmp_path / "copy.zarr"
    shutil.copytree(digits_store, dst)
    return str(dst)


DIGITS = DataConfig(name="digits")
