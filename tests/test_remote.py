"""Stores behind fsspec URLs: a real S3-compatible endpoint on loopback (moto's server), and file://.

The S3 server is moto's ThreadedMotoServer, started by this module on 127.0.0.1 with a port the OS picks;
nothing here ever talks to AWS. Credentials are dummies, set in the environment only while the module runs.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest

from flows.cli import main
from pipeline import distill, teacher
from pipeline.config import DistillConfig, ModelConfig, OptimConfig
from pipeline.errors import StoreError, UserError
from pipeline.store import SoftTargetStore, StoreWriter, find_stores
from tests.conftest import cli_fails, small_teacher_config, synthetic_provenance

BUCKET = "kd-remote-test"
KEY, SECRET = "kd-test-access-key", "kd-test-secret-key"  # dummies: moto accepts any


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 endpoint on loopback with one empty bucket; ``opts`` are the fsspec storage options for it."""
    import boto3
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        # Never reach real AWS: dummy credentials, no profile or config file, no instance metadata lookups,
        # and no proxy for loopback.
        empty = tmp_path_factory.mktemp("aws")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(empty / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("NO_PROXY", ",".join(filter(None, ["127.0.0.1", os.environ.get("NO_PROXY")])))
        mp.setenv("no_proxy", ",".join(filter(None, ["127.0.0.1", os.environ.get("no_proxy")])))
        werkzeug_log = logging.getLogger("werkzeug")  # one INFO line per request otherwise
        level = werkzeug_log.level
        werkzeug_log.setLevel(logging.WARNING)

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: a free one
        server.start()
        try:
            host, port = server.get_host_and_port()
            assert host == "127.0.0.1"
            endpoint = f"http://127.0.0.1:{port}"
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                  aws_access_key_id=KEY, aws_secret_access_key=SECRET)
            client.create_bucket(Bucket=BUCKET)
            yield SimpleNamespace(endpoint=endpoint, client=client, bucket=BUCKET,
                                  opts={"endpoint_url": endpoint, "key": KEY, "secret": SECRET})
        finally:
            server.stop()
            werkzeug_log.setLevel(level)


def _keys(s3, prefix: str) -> list[str]:
    pages = s3.client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _kd(*argv: str) -> list[str]:
    """Run the CLI in-process; its stdout lines. (Not capsys: see tests/test_flows.py.)"""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(list(argv))
    return buf.getvalue().strip().splitlines()


# ---------------------------------------------------------------- end to end through Prefect


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_teacher_writes_to_s3_and_distill_trains_from_it(s3, tmp_path):
    root, opts = str(tmp_path), json.dumps(s3.opts)
    teacher_argv = ("teacher", "--epochs", "2", "--width", "8", "--device", "cpu", "--checkpoint-root",
                    f"{root}/ckpt", "--store-root", f"s3://{s3.bucket}/stores", "--storage-options", opts)
    out = _kd(*teacher_argv)
    m = re.fullmatch(rf"store: (s3://{s3.bucket}/stores/(digits-cnn-[0-9a-f]{{10}}\.zarr))", out[-1])
    assert m, out[-1]
    store, name = m.groups()
    keys = _keys(s3, f"stores/{name}/")
    assert f"stores/{name}/zarr.json" in keys
    # shard 0 of each split's logits: chunk key c/<row shard>/<view>/<class>
    assert {f"stores/{name}/{s}/logits/c/0/0/0" for s in ("train", "val", "test")} <= set(keys)
    assert not os.path.exists("s3:")  # not mistaken for a local folder named "s3:"

    out = _kd("distill", "--store", store, "--storage-options", opts, "--epochs", "2", "--width", "4",
              "--temperatures", "1", "4", "--report-root", f"{root}/reports", "--run-name", "remote",
              "--device", "cpu")
    assert out[-1] == f"report: {root}/reports/remote"
    report = json.load(open(f"{root}/reports/remote/leaderboard.json"))
    board = report["leaderboard"]
    assert [e["config_id"] for e in board][:2] == ["teacher", "baseline"]
    assert {e["temperature"] for e in board if e["kind"] == "student"} == {1.0, 4.0}
    assert all(e["failed"] == 0 for e in board)
    assert all(r["status"] == "ok" for r in report["runs"] if r["kind"] != "teacher")

    (row,) = json.loads("\n".join(_kd("stores", f"s3://{s3.bucket}/stores", "--json", "--storage-options", opts)))
    assert (row["path"], row["name"], row["complete"], row["dataset"]) == (store, name, True, "digits")

    out = _kd("inspect", store, "--verify", "--storage-options", opts)
    assert out[0].split() == ["store:", store]
    assert "complete: True" in out[1]
    assert any(line.startswith("verified:") and "'train': 1257" in line for line in out)

    # The same command again reuses the store on S3: same path, not retrained, not rewritten.
    attrs = SoftTargetStore(store, storage_options=s3.opts).attrs
    ckpt_mtime = os.path.getmtime(attrs["teacher"]["checkpoint"])
    assert _kd(*teacher_argv)[-1] == f"store: {store}"
    again = SoftTargetStore(store, storage_options=s3.opts).attrs
    assert (again["created_at"], again["completed_at"]) == (attrs["created_at"], attrs["completed_at"])
    assert os.path.getmtime(attrs["teacher"]["checkpoint"]) == ckpt_mtime


# ---------------------------------------------------------------- library level

C = 5


def _write(path: str, n: int, opts: dict | None, finish: bool = True) -> tuple[str, np.ndarray]:
    """A small synthetic store (train split only, several shards) written through StoreWriter."""
    logits = np.random.default_rng(0).normal(0, 3, size=(n, C)).astype(np.float32)
    w = StoreWriter(path, synthetic_provenance(C), {"train": (np.arange(n) % C, np.arange(n))},
                    encoding="float32", chunk_rows=32, shard_chunks=2, storage_options=opts)
    try:
        lay = w.layouts["train"]
        for shard in range(lay.num_shards):
            a, b = lay.shard_range(shard)
            w.put("train", shard, logits[a:b])
        if finish:
            w.finish()
    finally:
        w.abort()
    return path, logits


def test_s3_round_trip_incomplete_and_deleted_shard(s3):
    base = f"s3://{s3.bucket}/lib"
    with pytest.raises(StoreError, match="no soft-target store"):
        SoftTargetStore(f"{base}/absent.zarr", storage_options=s3.opts)
    with pytest.raises(UserError) as e:  # one line, not a FileNotFoundError traceback
        find_stores(f"{base}/absent-root", s3.opts)
    assert e.value.field == "root"

    path, logits = _write(f"{base}/ok.zarr", 200, s3.opts)
    assert find_stores(base, s3.opts) == [path]
    s = SoftTargetStore(path, storage_options=s3.opts)
    np.testing.assert_array_equal(s.read_logits("train"), logits)
    assert s.verify() == {"train": 200}

    # Written but never finished: refused, naming `complete`.
    part, _ = _write(f"{base}/partial.zarr", 200, s3.opts, finish=False)
    with pytest.raises(StoreError) as e:
        SoftTargetStore(part, storage_options=s3.opts)
    assert e.value.field == "complete"
    assert SoftTargetStore(part, storage_options=s3.opts, require_complete=False).attrs["complete"] is False
    assert find_stores(base, s3.opts) == [path, part]  # a fresh listing, not the one cached above

    # A shard object deleted behind the store's back: detected on read, never served as fill values.
    shards = sorted(k for k in _keys(s3, "lib/ok.zarr/train/logits/c/"))
    assert len(shards) == 4  # 200 rows / 64-row shards
    s3.client.delete_object(Bucket=s3.bucket, Key=shards[1])
    s = SoftTargetStore(path, storage_options=s3.opts)
    with pytest.raises(StoreError) as e:
        s.read_logits("train")
    assert e.value.field == "train/logits" and "missing" in str(e.value)
    with pytest.raises(StoreError, match="train/logits"):
        s.verify()


def test_file_urls_for_store_root_and_store(tmp_path):
    root = str(tmp_path)
    cfg = small_teacher_config(root, store_root=f"file://{root}/stores",
                               optim=OptimConfig(epochs=1, batch_size=64))
    p = teacher.plan(cfg)
    assert p.store_path.startswith(f"file://{root}/stores/") and not p.reusable
    path = teacher.publish(p, teacher.train(p))
    assert path == p.store_path
    local = path[len("file://"):]
    assert os.path.isfile(os.path.join(local, "zarr.json"))
    assert teacher.plan(cfg).reusable
    assert find_stores(f"file://{root}/stores") == [path]

    out = _kd("stores", f"file://{root}/stores", "--json")
    assert [(r["path"], r["complete"]) for r in json.loads("\n".join(out))] == [(path, True)]
    assert any(line.startswith("verified:") for line in _kd("inspect", path, "--verify"))

    # Stage 2 trains from the file:// store (one tiny student group, no Prefect).
    dcfg = DistillConfig(store=path, model=ModelConfig(arch="mlp", width=16), optim=OptimConfig(epochs=1),
                         temperatures=(4.0,), report_root=f"{root}/reports", run_name="file", device="cpu",
                         group_size=2)
    (group,) = distill.groups(dcfg)
    rows = distill.train_students(distill.plan(dcfg), group)
    assert [(r["run_id"], r["status"]) for r in rows] == [("baseline-s0", "ok"), ("kl-T4-a0.9-s0", "ok")]


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


READERS = [("inspect", "s3://kd-remote-test/x.zarr"), ("stores", "s3://kd-remote-test"),
           ("distill", "--store", "s3://kd-remote-test/x.zarr")]


@pytest.mark.parametrize("argv", READERS, ids=[a[0] for a in READERS])
def test_an_unreachable_remote_store_is_one_line_for_every_reader(capsys, argv):
    """The endpoint is a closed loopback port: `kd inspect`, `kd stores` and `kd distill` each say so in one
    line naming the location, as `kd teacher --store-root` does."""
    opts = {"endpoint_url": f"http://127.0.0.1:{_closed_port()}", "key": KEY, "secret": SECRET,
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}
    err = cli_fails(capsys, *argv, "--storage-options", json.dumps(opts))
    assert "cannot reach 's3://kd-remote-test" in err and "EndpointConnectionError" in err, err


@pytest.mark.parametrize("argv", READERS, ids=[a[0] for a in READERS])
def test_a_remote_store_without_credentials_is_one_line_for_every_reader(s3, capsys, monkeypatch, argv):
    """No credentials anywhere (the module's environment has no profile, file or instance metadata either):
    refused in one line before any request is sent."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    err = cli_fails(capsys, *argv, "--storage-options", json.dumps({"endpoint_url": s3.endpoint}))
    assert "cannot reach 's3://kd-remote-test" in err and "Credentials" in err, err
