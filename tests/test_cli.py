"""The `kd` CLI: every user error is one line on stderr and exit 2, before any expensive work."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from flows.cli import main
from tests.conftest import flip_byte, shard_file


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


@pytest.mark.parametrize("argv, field", [
    (["--warmup-epochs", "30"], "warmup_epochs"),  # --epochs defaults to 30: nothing left after it
    (["--schedule", "step", "--step-size", "2", "--warmup-epochs", "2"], "warmup_epochs"),
    (["--step-size", "0"], "step_size"),
    (["--gamma", "2"], "gamma"),
    (["--clip-grad-norm", "0"], "clip_grad_norm"),
    (["--patience", "0"], "patience"),
    (["--nesterov"], "nesterov"),  # the default optimizer is adam
    (["--optimizer", "sgd", "--momentum", "0", "--nesterov"], "nesterov"),
    (["--dataset", "digits", "--label-noise", "1.5"], "label_noise"),
    (["--dataset", "digits", "--noise-seed", "3"], "noise_seed"),
    (["--label-noise", "0.2"], "label_noise"),  # without --dataset it would be silently ignored
])
def test_bad_new_distill_options(capsys, digits_store, argv, field):
    err = _fails(capsys, "distill", "--store", digits_store, *argv)
    assert err.startswith(f"error: {field}")


def test_bad_new_teacher_and_run_options(capsys):
    assert _fails(capsys, "teacher", "--label-noise", "-0.1").startswith("error: label_noise")
    assert _fails(capsys, "teacher", "--patience", "0").startswith("error: patience")
    assert _fails(capsys, "run", "--student-patience", "0").startswith("error: patience")
    assert _fails(capsys, "run", "--student-optimizer", "adam", "--student-nesterov").startswith("error: nesterov")
    with pytest.raises(SystemExit) as e:
        main(["distill", "--store", "x.zarr", "--clip-grad-norm", "big"])
    assert e.value.code == 2 and "not a number or 'off'" in capsys.readouterr().err


def test_optim_and_noise_options_become_configs():
    from flows.cli import build_parser, distill_config, teacher_config

    a = build_parser().parse_args(["teacher", "--optimizer", "sgd", "--nesterov", "--schedule", "step",
                                   "--step-size", "5", "--gamma", "0.5", "--warmup-epochs", "2",
                                   "--clip-grad-norm", "1.5", "--patience", "4", "--label-noise", "0.1",
                                   "--noise-seed", "7"])
    o = teacher_config(a).optim
    assert (o.name, o.nesterov, o.schedule, o.step_size, o.gamma, o.warmup_epochs, o.clip_grad_norm, o.patience) == \
        ("sgd", True, "step", 5, 0.5, 2, 1.5, 4)
    assert teacher_config(a).data.label_noise == 0.1 and teacher_config(a).data.noise_seed == 7
    a = build_parser().parse_args(["distill", "--store", "s.zarr", "--schedule", "onecycle", "--patience", "off"])
    d = distill_config(a, a.store)
    assert d.optim.schedule == "onecycle" and d.optim.patience is None and d.optim.clip_grad_norm is None
    assert d.data is None  # the store's data, noise included


def test_run_maps_student_options_and_inherits_the_rest():
    from flows.cli import build_parser, distill_config, student_namespace, teacher_config

    a = build_parser().parse_args([
        "run", "--optimizer", "sgd", "--nesterov", "--schedule", "cosine", "--patience", "3", "--batch-size", "32",
        "--clip-grad-norm", "2", "--label-noise", "0.1", "--epochs", "6",
        "--student-optimizer", "adamw", "--no-student-nesterov", "--student-schedule", "step",
        "--student-step-size", "5", "--student-warmup-epochs", "1", "--student-patience", "off",
        "--student-width", "4"])
    t = teacher_config(a)
    s = distill_config(student_namespace(a), "s.zarr")
    assert (t.optim.name, t.optim.nesterov, t.optim.schedule, t.optim.patience, t.optim.epochs) == \
        ("sgd", True, "cosine", 3, 6)
    assert (s.optim.name, s.optim.nesterov, s.optim.schedule, s.optim.step_size, s.optim.warmup_epochs,
            s.optim.patience) == ("adamw", False, "step", 5, 1, None)
    # Not given for the students: the teacher's value; epochs and lr keep their own student defaults.
    assert s.optim.batch_size == 32 and s.optim.clip_grad_norm == 2.0 and s.optim.momentum == t.optim.momentum
    assert s.optim.epochs == 30 and (s.model.arch, s.model.width) == ("cnn", 4)
    assert s.data == t.data and s.data.label_noise == 0.1  # students train on the labels the teacher saw


def test_export_prints_the_path_and_refuses_one_line(capsys, trained_report, tmp_path):
    out = str(tmp_path / "s.pt")
    main(["export", trained_report, "kl-T4-a0.9-s0", "--format", "torchscript", "--out", out])
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"exported: {out}" and os.path.isfile(out)
    assert _fails(capsys, "export", str(tmp_path / "gone"), "kl-T4-a0.9-s0").startswith("error: run_dir")
    assert _fails(capsys, "export", trained_report, "kl-T9-a0.9-s0").startswith("error: run_id")
    with pytest.raises(SystemExit) as e:
        main(["export", trained_report, "kl-T4-a0.9-s0", "--format", "tflite"])
    assert e.value.code == 2


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
    flip_byte(shard_file(store_copy))
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
    for cmd in ("teacher", "distill", "run", "inspect", "stores", "export"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "(default: [1.0, 2.0, 4.0, 8.0])" in out and "(default: digits)" in out


def test_data_options_without_dataset_are_refused_not_ignored(capsys, digits_store):
    err = _fails(capsys, "distill", "--store", digits_store, "--train-limit", "100")
    assert err.startswith("error: dataset:")
