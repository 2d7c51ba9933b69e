"""Shared fixtures: a tiny real teacher store on `digits`, and one Prefect test harness per session."""
from __future__ import annotations

import os

import pytest

import flows  # noqa: F401  (Prefect's environment defaults, before Prefect is imported)
from pipeline import teacher
from pipeline.augment import Augmenter
from pipeline.config import DataConfig, ModelConfig, OptimConfig, TeacherConfig
from pipeline.store import DatasetMeta, Provenance, TeacherMeta, ViewsMeta, now_iso, software_versions
from pipeline.transforms import TRANSFORM, transform_hash


def small_teacher_config(root, **overrides) -> TeacherConfig:
    """A 3-epoch digits teacher writing under ``root``: seconds on a CPU."""
    kwargs = dict(model=ModelConfig(arch="cnn", width=8), optim=OptimConfig(epochs=3, batch_size=64),
                  store_root=os.path.join(root, "stores"), checkpoint_root=os.path.join(root, "checkpoints"),
                  device="cpu", chunk_rows=256)  # several chunks per split, so chunk logic is exercised
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


def prefect_server_env(home, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a real Prefect server on a free loopback port, its state under ``home``."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.makedirs(os.path.join(home, "prefect"), exist_ok=True)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**os.environ, "PREFECT_HOME": os.path.join(home, "prefect"),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PWD": root, **(extra or {})}


def start_prefect_server(env: dict[str, str], timeout: float = 90):
    """`prefect server start` with ``env``, once its API answers; stop it with :func:`stop_processes`."""
    import subprocess
    import sys
    import time
    import urllib.request

    url = env["PREFECT_API_URL"]
    port = url.rsplit(":", 1)[1].split("/")[0]
    log = os.path.join(env["PREFECT_HOME"], "server.log")  # a file, not a pipe that nobody drains
    with open(log, "w") as out:
        proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "prefect"), "server", "start",
                                 "--host", "127.0.0.1", "--port", port], env=env, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited: {open(log).read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    stop_processes([proc])
    raise TimeoutError("prefect server did not become healthy")


def stop_processes(procs: list) -> None:
    """Terminate ``procs`` (last started first), killing any that do not exit."""
    import subprocess

    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models, or large ones on a handful of images, on one intra-op thread: as fast as on two, and no
    spinning threads fighting other jobs for the cores. Use as ``pytestmark = usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture(scope="session")
def trained_report(digits_store, tmp_path_factory) -> str:
    """A report folder with two tiny trained students (baseline-s0, kl-T4-a0.9-s0) and a failed one.

    Session-scoped and shared: tests must not modify it (export with ``out=`` under their tmp_path).
    """
    from pipeline import distill, report
    from pipeline.config import DistillConfig

    root = tmp_path_factory.mktemp("report")
    cfg = DistillConfig(store=digits_store, model=ModelConfig(arch="cnn", width=4), optim=OptimConfig(epochs=1),
                        temperatures=(4.0,), report_root=str(root), run_name="run", device="cpu")
    p = distill.plan(cfg)
    run_dir = p.run_dir
    rows = [p.teacher_row()] + distill.train_students(p, cfg.students())
    failed = cfg.students()[0].__class__(loss="kl", temperature=8.0, alpha=0.9, beta=None, seed=0)
    rows.append(distill.failed_row(cfg, failed, "loss became nan at epoch 0 step 3"))
    report.write_report(run_dir, rows, {"store": digits_store})
    return run_dir


def shard_file(store: str, split: str = "train", shard: int = 0) -> str:
    """The file holding shard ``shard`` of ``split``'s logits (chunk key c/<row shard>/<view>/<class>)."""
    return os.path.join(store, split, "logits", "c", str(shard), "0", "0")


def flip_byte(path: str, at: float = 0.5, mask: int = 0xFF) -> None:
    """Corrupt one byte of a file in place, at a fraction ``at`` of its length."""
    raw = bytearray(open(path, "rb").read())
    raw[int(len(raw) * at)] ^= mask
    open(path, "wb").write(bytes(raw))


def synthetic_provenance(num_classes: int, *, views: int = 1, key: str = "synthetic",
                         checkpoint_sha256: str = "0" * 64) -> Provenance:
    """Store metadata for synthetic logits written straight through StoreWriter (no teacher behind them)."""
    view_meta = ViewsMeta(count=1) if views == 1 else ViewsMeta(
        count=views, seed=0, augment={"ops": ["translate"], "translate": 1, "rotate_degrees": 10.0},
        params=tuple(Augmenter.PARAM_NAMES))
    return Provenance(
        created_at=now_iso(), provenance_key=key,
        teacher=TeacherMeta(arch="synthetic", width=1, params=0, checkpoint="", checkpoint_sha256=checkpoint_sha256,
                            trained_here=False, config={}, val_acc=0.0, test_acc=0.0, val_nll=0.0, test_nll=0.0,
                            precision="float32", source="builtin"),
        dataset=DatasetMeta(name="synthetic", num_classes=num_classes,
                            class_names=tuple(str(c) for c in range(num_classes)), input_shape=(1, 1, 1), splits={}),
        data_config={}, transform=TRANSFORM, transform_hash=transform_hash(), software=software_versions(),
        views=view_meta, lineage=())


def cli_fails(capsys, *argv: str) -> str:
    """Run `kd ARGV` in this process; it must exit 2 with one `error: …` line on stderr and no traceback."""
    from flows.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "Traceback" not in err
    return err
