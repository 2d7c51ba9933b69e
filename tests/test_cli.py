"""The `kd` CLI: every user error is one line on stderr and exit 2, before any expensive work."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from flows.cli import main
from pipeline.config import DataConfig, DistillConfig, OptimConfig, TeacherConfig
from pipeline.serialize import from_dict
from tests.conftest import cli_fails, flip_byte, shard_file



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
    err = cli_fails(capsys, "distill", "--store", digits_store, *argv)
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
    err = cli_fails(capsys, "distill", "--store", digits_store, *argv)
    assert err.startswith(f"error: {field}")


def test_bad_new_teacher_and_run_options(capsys):
    assert cli_fails(capsys, "teacher", "--label-noise", "-0.1").startswith("error: label_noise")
    assert cli_fails(capsys, "teacher", "--patience", "0").startswith("error: patience")
    # `kd run` names the flag and the stage.
    assert cli_fails(capsys, "run", "--student-patience", "0").startswith("error: --student-patience (students): ")
    assert cli_fails(capsys, "run", "--student-optimizer", "adam", "--student-nesterov").startswith(
        "error: --student-nesterov (students): ")
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
    # Not given for the students: the teacher's value; --epochs sets both stages; lr keeps the students' default.
    assert s.optim.batch_size == 32 and s.optim.clip_grad_norm == 2.0 and s.optim.momentum == t.optim.momentum
    assert s.optim.epochs == 6 and s.optim.lr == 3e-3 and (s.model.arch, s.model.width) == ("cnn", 4)
    assert s.data == t.data and s.data.label_noise == 0.1  # students train on the labels the teacher saw


def test_export_prints_the_path_and_refuses_one_line(capsys, trained_report, tmp_path):
    out = str(tmp_path / "s.pt")
    main(["export", trained_report, "kl-T4-a0.9-s0", "--format", "torchscript", "--out", out])
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"exported: {out}" and os.path.isfile(out)
    assert cli_fails(capsys, "export", str(tmp_path / "gone"), "kl-T4-a0.9-s0").startswith("error: run_dir")
    assert cli_fails(capsys, "export", trained_report, "kl-T9-a0.9-s0").startswith("error: run_id")
    with pytest.raises(SystemExit) as e:
        main(["export", trained_report, "kl-T4-a0.9-s0", "--format", "tflite"])
    assert e.value.code == 2


def test_missing_store(capsys, tmp_path):
    err = cli_fails(capsys, "distill", "--store", str(tmp_path / "nope.zarr"))
    assert "no soft-target store" in err


def test_mismatched_store(capsys, digits_store):
    err = cli_fails(capsys, "distill", "--store", digits_store, "--dataset", "digits", "--train-limit", "100")
    assert "splits.train.size" in err


def test_incomplete_store(capsys, store_copy):
    import zarr

    zarr.open_group(store_copy, mode="r+").attrs["complete"] = False
    assert "incomplete" in cli_fails(capsys, "distill", "--store", store_copy)
    # Inspecting it works, and shows no teacher score: an unfinished store is scored when it is completed.
    main(["inspect", store_copy])
    teacher_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("teacher:"))
    assert "val acc —  test acc —" in teacher_line


def test_corrupt_chunk_via_inspect_verify_and_distill(capsys, store_copy):
    flip_byte(shard_file(store_copy))
    main(["inspect", store_copy])  # metadata alone still reads
    capsys.readouterr()
    assert "train/logits: chunk" in cli_fails(capsys, "inspect", store_copy, "--verify")
    assert "train/logits: chunk" in cli_fails(capsys, "distill", "--store", store_copy)


def test_bad_teacher_options(capsys, tmp_path):
    assert "checkpoint" in cli_fails(capsys, "teacher", "--checkpoint", str(tmp_path / "x.pt"))
    assert "data_root: cifar10 not found" in cli_fails(capsys, "teacher", "--dataset", "cifar10", "--data-root",
                                                   str(tmp_path))
    assert "--download" in cli_fails(capsys, "teacher", "--dataset", "mnist", "--data-root", str(tmp_path))


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
    flat = " ".join(out.split())  # argparse wraps help text at the terminal's width
    assert "(default: [1.0, 2.0, 4.0, 8.0])" in flat and "(default: digits)" in flat
    # Each option's default is shown once, and never as a bare None.
    entries = re.split(r"\n  (?=-)", out)
    assert len(entries) > 150
    for entry in entries:
        assert entry.count("(default:") <= 1, entry
    assert "(default: None)" not in flat


def test_distill_help_says_where_the_data_comes_from(capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    flat = " ".join(capsys.readouterr().out.split())
    assert "--dataset DATASET digits | mnist | fashion-mnist | cifar10 | cifar100 | imagefolder:PATH " \
           "(default: the dataset the store was written from)" in flat


@pytest.mark.parametrize("argv, message, prog", [
    (["distill", "--store", "x.zarr", "--losses", "kld"], "argument --losses: invalid choice: 'kld'", "kd distill"),
    (["teacher", "--epochs", "ten"], "argument --epochs: invalid int value: 'ten'", "kd teacher"),
    (["distill"], "the following arguments are required: --store", "kd distill"),
    (["run", "--nonsense"], "unknown option --nonsense", "kd run"),  # found by the top-level parser
    (["distil"], "argument command: invalid choice: 'distil'", "kd"),
])
def test_argparse_errors_are_one_line_with_a_pointer_to_help(capsys, argv, message, prog):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {message}") and "usage:" not in err
    assert err.rstrip().endswith(f"(see `{prog} --help`)")


def test_data_options_without_dataset_are_refused_not_ignored(capsys, digits_store):
    err = cli_fails(capsys, "distill", "--store", digits_store, "--train-limit", "100")
    assert err.startswith("error: dataset:")


def test_fields_without_a_flag_before_get_one():
    from flows.cli import build_parser, distill_config, student_namespace, teacher_config

    a = build_parser().parse_args(["run", "--val-fraction", "0.2", "--test-fraction", "0.1", "--translate", "2",
                                   "--rotate-degrees", "5", "--view-translate", "3", "--view-rotate-degrees", "7",
                                   "--lrs", "0.01", "0.03", "--views", "2", "--augment", "translate,flip"])
    t = teacher_config(a)
    d = distill_config(student_namespace(a), "s.zarr")
    assert (t.data.val_fraction, t.data.test_fraction) == (0.2, 0.1) and d.data == t.data
    assert t.augment == d.augment and (t.augment.ops, t.augment.translate, t.augment.rotate_degrees) == \
        (("translate", "flip"), 2, 5.0)
    assert (t.view_augment.ops, t.view_augment.translate, t.view_augment.rotate_degrees) == (("translate", "rotate"), 3, 7.0)
    assert d.lrs == (0.01, 0.03)


def test_distill_data_options_need_dataset(capsys, digits_store):
    from flows.cli import build_parser, distill_config

    for option in ("--val-fraction", "--test-fraction"):
        err = cli_fails(capsys, "distill", "--store", digits_store, option, "0.2")
        assert err.startswith(f"error: dataset: {option} only applies together with --dataset")
    err = cli_fails(capsys, "distill", "--store", digits_store, "--data-root", "elsewhere", "--split-seed", "0")
    assert err.startswith("error: dataset: --data-root, --split-seed only apply together with --dataset")
    a = build_parser().parse_args(["distill", "--store", "s.zarr", "--dataset", "digits", "--train-limit", "9"])
    assert distill_config(a, a.store).data == DataConfig(train_limit=9)


def test_every_config_field_has_one_option():
    """Generated options: each command-line field of the configs is one flag, and no flag is used twice."""
    from flows.cli import DISTILL, RUNNER, STUDENT, TEACHER

    for options in (TEACHER + RUNNER, DISTILL + RUNNER, TEACHER + STUDENT + RUNNER):
        flags = [o.flag for o in options]
        assert len(flags) == len(set(flags))
    teacher_paths = {o.path for o in TEACHER}
    assert ("parent_store",) not in teacher_paths  # set by born-again KD, not an option
    assert {("optim", "lr"), ("data", "val_fraction"), ("view_augment", "translate")} <= teacher_paths
    # kd run: the students' model and optimisation options, and the grid; data, augmentation, device and
    # data-loading workers are the teacher's.
    assert {o.path for o in STUDENT} == {o.path for o in DISTILL} - {("store",)} - {
        o.path for o in DISTILL if o.path[0] in ("data", "augment", "device", "storage_options", "workers")}


def test_kd_run_make_serve_and_prefect_yaml_agree_on_defaults():
    """One set of defaults: `kd run` (as `make distill` runs it) and prefect.yaml's parameters (merged over the
    configs' defaults, as Prefect does; `make serve` serves prefect.yaml's deployments) build the same configs."""
    from flows.cli import build_parser, distill_config, student_namespace, teacher_config
    from flows.parameters import FROM_TEACHER
    from flows.serve import read_deployments

    a = build_parser().parse_args(["run"])
    kd_teacher = teacher_config(a)
    kd_students = distill_config(student_namespace(a), FROM_TEACHER)
    assert kd_teacher == TeacherConfig() and kd_students == DistillConfig(store=FROM_TEACHER, data=DataConfig())
    # The nightly pipeline trains make distill's grid on every label (make distill keeps 5 per class, below).
    a = build_parser().parse_args(["run", "--seeds", "0", "1", "2"])
    # The deployments' students read their data from the store the teacher wrote (data=None), where `kd run`
    # names it (--dataset digits): the same data.
    nightly = (teacher_config(a), dataclasses.replace(distill_config(student_namespace(a), FROM_TEACHER), data=None))

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    deployments = {d["name"]: d["parameters"] for d in read_deployments(os.path.join(root, "prefect.yaml"))}
    assert from_dict(TeacherConfig, deployments["nightly-teacher-refresh"]["config"]) == kd_teacher
    p = deployments["nightly-pipeline"]
    assert (from_dict(TeacherConfig, p["teacher"]), from_dict(DistillConfig, p["distill"])) == nightly
    store = deployments["distill"]["config"]["store"]
    a = build_parser().parse_args(["distill", "--store", store])
    assert from_dict(DistillConfig, deployments["distill"]["config"]) == distill_config(a, store)
    assert _make_distill_args() == ["--seeds", "0", "1", "2", "--labelled-per-class", "5"]
    made = teacher_config(build_parser().parse_args(["run", *_make_distill_args()]))
    assert made == dataclasses.replace(kd_teacher, data=DataConfig(labelled_per_class=5))


def _make_distill_args() -> list[str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    recipe = re.search(r"^distill:.*\n\t\$\(BIN\)/kd run(.*)$", open(os.path.join(root, "Makefile")).read(), re.M)
    return recipe.group(1).split()


@pytest.mark.parametrize("argv, field", [
    (["teacher", "--encoding", "topk:10"], "encoding"),  # digits has 10 classes: K must be fewer
    (["teacher", "--store-root", "{file}"], "store_root"),
    (["teacher", "--checkpoint-root", "{file}/sub"], "checkpoint_root"),
    (["run", "--report-root", "{file}"], "--report-root (students)"),
    (["teacher", "--store-root", "http://127.0.0.1:9/stores"], "store_root"),  # nothing listens on port 9
    (["run", "--seeds", "-1"], "--seeds (students)"),
    (["run", "--run-name", "a/b"], "--run-name (students)"),
    (["run", "--run-name", ".."], "--run-name (students)"),
    (["teacher", "--checkpoint", "{junk}"], "checkpoint"),
    (["run", "--checkpoint", "{junk}"], "--checkpoint (teacher)"),
    (["teacher", "--checkpoint", "{dir}"], "checkpoint"),
    (["teacher", "--split-seed", "-1"], "split_seed"),
])
def test_user_errors_are_refused_before_any_work(capsys, tmp_path, argv, field):
    """Each is one line and exit 2 before Prefect starts: no store, checkpoint or report is written."""
    (tmp_path / "file").write_text("a file")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "dir").mkdir()
    places = {"file": tmp_path / "file", "junk": tmp_path / "junk.pt", "dir": tmp_path / "dir"}
    out = tmp_path / "out"
    common = ["--epochs", "1", "--train-limit", "300", "--device", "cpu", "--store-root", f"{out}/stores",
              "--checkpoint-root", f"{out}/ckpt"] + (["--report-root", f"{out}/reports"] if argv[0] == "run" else [])
    err = cli_fails(capsys, argv[0], *common, *[a.format(**places) for a in argv[1:]])
    assert err.startswith(f"error: {field}: "), err
    assert not out.exists()
    if argv[1] == "--checkpoint":
        # A file that is not a checkpoint is damaged: another --arch/--width could not load it.
        assert ("is a directory" if "dir" in argv[2] else "cannot read") in err and "--arch" not in err


def test_online_mode_with_a_bad_recorded_checkpoint_is_refused_up_front(capsys, tmp_path):
    """kd distill, and kd run reusing the store: the store's teacher is loaded before any work."""
    from pipeline.store import SoftTargetStore
    from tests.conftest import build_store

    store = build_store(str(tmp_path), data=DataConfig(train_limit=300), optim=OptimConfig(epochs=1))
    with open(SoftTargetStore(store).meta.teacher.checkpoint, "ab") as f:
        f.write(b"tampered")
    reports = tmp_path / "reports"
    err = cli_fails(capsys, "distill", "--store", store, "--mode", "online", "--report-root", str(reports))
    assert err.startswith("error: mode: ") and "sha256" in err
    before = sorted(os.listdir(tmp_path / "stores")) + sorted(os.listdir(tmp_path / "checkpoints"))
    err = cli_fails(capsys, "run", "--mode", "online", "--epochs", "1", "--train-limit", "300", "--width", "8",
                 "--chunk-rows", "256", "--device", "cpu", "--store-root", str(tmp_path / "stores"),
                 "--checkpoint-root", str(tmp_path / "checkpoints"), "--report-root", str(reports))
    assert err.startswith("error: --mode (students): ")
    assert sorted(os.listdir(tmp_path / "stores")) + sorted(os.listdir(tmp_path / "checkpoints")) == before
    assert not reports.exists()


@pytest.mark.parametrize("argv", [("teacher",), ("teacher", "--dataset", "digits"), ("run", "--dataset", "digits"),
                                  ("distill", "--store", "s.zarr", "--dataset", "digits"),
                                  ("teacher", "--dataset", "imagefolder:somewhere")])
def test_data_root_for_a_dataset_that_reads_nothing_under_it_is_refused(capsys, argv):
    err = cli_fails(capsys, *argv, "--data-root", "/etc/passwd")
    field = "--data-root (teacher)" if argv[0] == "run" else "data_root"  # kd run names the flag and its stage
    assert err.startswith(f"error: {field}: ") and "nothing is read under --data-root" in err, err
    assert "drop --data-root" in err


@pytest.mark.parametrize("argv, wrong, meant", [
    (["run", "--epoch", "2"], "--epoch", "--epochs"),  # a prefix argparse used to complete silently
    (["run", "--temperature", "4"], "--temperature", "--temperatures"),
    (["distill", "--store", "x.zarr", "--temprature=4"], "--temprature", "--temperatures"),  # a typo
    (["teacher", "--epoch", "2"], "--epoch", "--epochs"),
])
def test_abbreviations_are_refused_with_a_did_you_mean_and_the_subcommands_help(capsys, argv, wrong, meant):
    err = cli_fails(capsys, *argv)
    assert err == f"error: unknown option {wrong}; did you mean {meant}? (see `kd {argv[0]} --help`)"


def test_run_epochs_and_lr_set_both_stages_and_the_stage_flags_one(capsys):
    from flows.cli import distill_config, parse_args, student_namespace, teacher_config

    def epochs_and_lrs(*argv):
        a = parse_args(["run", *argv])
        t, s = teacher_config(a), distill_config(student_namespace(a), "x.zarr")
        return (t.optim.epochs, s.optim.epochs), (t.optim.lr, s.optim.lr)

    assert epochs_and_lrs() == ((20, 30), (3e-3, 3e-3))  # each stage's own default
    assert epochs_and_lrs("--epochs", "3", "--lr", "0.01") == ((3, 3), (0.01, 0.01))
    # A stage's own flag wins over the plain one, wherever it stands on the line.
    assert epochs_and_lrs("--student-epochs", "5", "--epochs", "3") == ((3, 5), (3e-3, 3e-3))
    assert epochs_and_lrs("--epochs", "3", "--teacher-epochs", "7", "--student-lr", "0.1") == ((7, 3), (3e-3, 0.1))
    # Over a preset too: explicit flags win, the plain one for both stages.
    assert epochs_and_lrs("--preset", "resnet-mobilenet-cifar10") == ((30, 30), (0.1, 0.05))
    assert epochs_and_lrs("--preset", "resnet-mobilenet-cifar10", "--epochs", "2") == ((2, 2), (0.1, 0.05))
    # `kd teacher` and `kd distill` have one stage: --epochs is theirs.
    assert teacher_config(parse_args(["teacher", "--epochs", "4"])).optim.epochs == 4
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    flat = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps lines after hyphens
    assert "--epochs and --lr set both stages (--teacher-epochs, --student-epochs, --teacher-lr, --student-lr set " \
           "one); --arch and --width are the teacher's" in flat
    assert "--epochs EPOCHS epochs of training of the teacher and the students (default: the teacher 20, the " \
           "students 30)" in flat
    assert "--arch ARCH the teacher's mlp | cnn" in flat


def test_run_errors_name_the_flag_the_stage_and_where_a_value_came_from(capsys, tmp_path):
    """The preset's warm-up with --epochs 1: no self-contradicting hint, flags not config fields, the preset named."""
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "b").mkdir()
    err = cli_fails(capsys, "run", "--preset", "resnet-mobilenet-imagefolder", "--dataset",
                    f"imagefolder:{tmp_path / 'imgs'}", "--epochs", "1")
    assert err == ("error: --warmup-epochs (teacher): must be less than --epochs (1), got 1, set by --preset "
                   "resnet-mobilenet-imagefolder (pass --warmup-epochs 0: one epoch leaves no room for a warm-up, "
                   "or more --epochs)")
    # The students follow the teacher's warm-up unless given their own: the message says so.
    err = cli_fails(capsys, "run", "--warmup-epochs", "2", "--teacher-epochs", "5", "--student-epochs", "2")
    assert err == ("error: --student-warmup-epochs (students): must be less than --student-epochs (2), got 2, the "
                   "teacher's value (--warmup-epochs) (pass --student-warmup-epochs 1 or fewer, or more "
                   "--student-epochs)")
    err = cli_fails(capsys, "run", "--student-epochs", "1", "--student-schedule", "step", "--student-step-size", "0")
    assert err.startswith("error: --student-step-size (students): ")
    # A default is named as one.
    err = cli_fails(capsys, "run", "--schedule", "step", "--warmup-epochs", "12", "--epochs", "40")
    assert err.startswith("error: --warmup-epochs (teacher): warm-up (12 epochs) must end before the first decay "
                          "(epoch 10)"), err
