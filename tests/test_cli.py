"""The `kd` CLI: every user error is one line on stderr and exit 2, before any expensive work."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flows.cli import main


def _fails(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("argv, field", [
    (["--temperatures", "0"], "temperature"),
    (["--temperatures", "-1", "2"], "temperature"),
    (["--alphas", "1.5"], "alpha"),
    (["--alphas", "-0.1"], "alpha"),
    (["--beta", "-1"], "beta"),
    (["--arch", "resnet81"], "arch"),
    (["--epochs", "0"], "epochs"),
    (["--lr", "0"], "lr"),
    (["--augment", "blur"], "augment"),
    (["--dataset", "imagenet"], "dataset"),
    (["--seeds", "1", "1"], "seeds"),
    (["--group-size", "0"], "group_size"),
])
def test_bad_distill_options(capsys, digits_store, argv, field):
    err = _fails(capsys, "distill", "--store", digits_store, *argv)
    assert err.startswith(f"error: {field}")


def test_missing_store(capsys, tmp_path):
    err = _fails(capsys, "distill", "--store", str(tmp_path / "nope.zarr"))
    assert "no soft-target store" in err


def test_mismatched_store(capsys, digits_store):
    err = _fails(capsys, "distill", "--store", digits_store, "--dataset", "digits", "--train-limit", "100")
    assert "splits.train.size" in err


def test_incomplete_store(capsys, store_copy):
    import zarr

    zarr.open_group(store_copy, mode="r+").attrs["complete"] = False
    assert "incomplete" in _fails(capsys, "distill", "--store", store_copy)


def test_corrupt_chunk_via_inspect_verify_and_distill(capsys, store_copy):
    d = os.path.join(store_copy, "train", "logits", "c")
    f = os.path.join(d, os.listdir(d)[0], "0")
    raw = bytearray(open(f, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(f, "wb").write(bytes(raw))
    main(["inspect", store_copy])  # metadata alone still reads
    capsys.readouterr()
    assert "train/logits: chunk" in _fails(capsys, "inspect", store_copy, "--verify")
    assert "train/logits: chunk" in _fails(capsys, "distill", "--store", store_copy)


def test_bad_teacher_options(capsys, tmp_path):
    assert "checkpoint" in _fails(capsys, "teacher", "--checkpoint", str(tmp_path / "x.pt"))
    assert "data_root: cifar10 not found" in _fails(capsys, "teacher", "--dataset", "cifar10", "--data-root",
                                                   str(tmp_path))
    assert "--download" in _fails(capsys, "teacher", "--dataset", "mnist", "--data-root", str(tmp_path))


def test_unknown_choice_is_argparse_exit_2(capsys, digits_store):
    with pytest.raises(SystemExit) as e:
        main(["distill", "--store", digits_store, "--losses", "kld"])
    assert e.value.code == 2


def test_inspect_and_stores(capsys, digits_store):
    main(["inspect", digits_store])
    out = capsys.readouterr().out
    assert "B/sample" in out and "compression" in out and "complete: True" in out
    main(["inspect", digits_store, "--json", "--verify"])
    info = json.loads(capsys.readouterr().out)
    assert info["verified_rows"]["train"] == 1257 and info["bytes_per_sample"] > 0
    main(["stores", os.path.dirname(digits_store)])
    line = capsys.readouterr().out.strip()
    assert os.path.basename(digits_store) in line and "complete" in line
    main(["stores", os.path.dirname(digits_store), "--json"])
    (row,) = json.loads(capsys.readouterr().out)
    assert row["dataset"] == "digits" and row["complete"] is True


def test_real_process_prints_no_traceback(tmp_path):
    """The installed console script, as a user runs it."""
    kd = os.path.join(os.path.dirname(sys.executable), "kd")
    proc = subprocess.run([kd, "distill", "--store", str(tmp_path / "missing.zarr")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: store:") and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_every_subcommand_has_help_with_defaults(capsys):
    for cmd in ("teacher", "distill", "run", "inspect", "stores"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "(default: [1.0, 2.0, 4.0, 8.0])" in out and "(default: digits)" in out
