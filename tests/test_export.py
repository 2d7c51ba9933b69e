"""pipeline.export: a trained student leaves a report as TorchScript or ONNX that computes what it computes."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import warnings

import pytest
import torch

from pipeline import export as ex
from pipeline.data import load_dataset
from pipeline.errors import UserError
from tests.conftest import DIGITS

RUN = "kl-T4-a0.9-s0"


def refused(field: str, *args, **kwargs) -> UserError:
    with pytest.raises(UserError) as e:
        ex.export(*args, **kwargs)
    assert e.value.field == field and "\n" not in str(e.value)
    return e.value


def test_torchscript_round_trips_and_matches_the_student(trained_report, tmp_path):
    out = str(tmp_path / "student.pt")
    result = ex.export(trained_report, RUN, "torchscript", out)
    assert result.path == out and os.path.getsize(out) > 0 and result.max_abs_diff <= 1e-5
    # Independently of export's own check: the file, loaded back, on real test images of another batch size.
    student, row = ex.load_student(trained_report, RUN)
    assert row["arch"] == "cnn" and row["width"] == 4
    x = load_dataset(DIGITS).splits["test"].x[:17]  # (17, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch marks TorchScript deprecated
        loaded = torch.jit.load(out, map_location="cpu")
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), student(x), atol=1e-5, rtol=0)
    # And the student is the trained one: its test accuracy is the leaderboard's.
    test = load_dataset(DIGITS).splits["test"]
    with torch.inference_mode():
        acc = float((loaded(test.x).argmax(1) == test.y).float().mean())
    assert acc == pytest.approx(row["test_acc"])


def test_safetensors_holds_the_students_weights_and_reads_back_as_weights(trained_report, tmp_path):
    from pipeline.config import ModelConfig
    from pipeline.models import build_model

    out = str(tmp_path / "student.safetensors")
    result = ex.export(trained_report, RUN, "safetensors", out)
    assert result.path == out and result.max_abs_diff == 0.0
    student, row = ex.load_student(trained_report, RUN)
    # What --weights FILE.safetensors does with it: the same network, the same outputs on real test images.
    reread = build_model(ModelConfig(arch="cnn", width=4, weights=out), tuple(row["input_shape"]), row["num_classes"])
    x = load_dataset(DIGITS).splits["test"].x[:17]
    with torch.inference_mode():
        torch.testing.assert_close(reread.eval()(x), student(x), atol=0, rtol=0)


def test_default_output_goes_under_the_report_folder(trained_report, tmp_path):
    copy = tmp_path / "moved"  # a report folder moved elsewhere still finds its students/
    shutil.copytree(trained_report, copy)
    result = ex.export(str(copy), "baseline-s0")
    assert result.path == os.path.join(str(copy), "export", "baseline-s0.pt") and os.path.isfile(result.path)


def test_checkpoint_is_loaded_weights_only(trained_report, monkeypatch):
    seen = []
    real = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ex.torch, "load", spy)
    ex.load_student(trained_report, RUN)
    assert seen == [True]


def test_unknown_run_missing_dir_and_unexportable_runs_are_one_line_errors(trained_report, tmp_path):
    err = refused("run_id", trained_report, "kl-T5-a0.9-s0")
    assert "baseline-s0" in err.fix and RUN in err.fix
    assert "failed" in str(refused("run_id", trained_report, "kl-T8-a0.9-s0"))
    refused("run_id", trained_report, "teacher")
    refused("run_dir", str(tmp_path / "nope"), RUN)
    refused("run_dir", str(tmp_path), RUN)  # a folder without leaderboard.json
    refused("format", trained_report, RUN, "tflite")
    (tmp_path / "dir.pt").mkdir()
    refused("out", trained_report, RUN, "torchscript", str(tmp_path / "dir.pt"))


def test_old_report_without_rebuild_fields_is_refused(trained_report, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained_report, old)
    data = json.loads((old / "leaderboard.json").read_text())
    for r in data["runs"]:
        r.pop("input_shape", None)
    (old / "leaderboard.json").write_text(json.dumps(data))
    assert "input_shape" in str(refused("run_id", str(old), RUN))


def test_a_missing_or_wrong_checkpoint_is_refused(trained_report, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(trained_report, bad)
    data = json.loads((bad / "leaderboard.json").read_text())
    for r in data["runs"]:
        r["width"] = 8 if r.get("run_id") == RUN else r.get("width")
        r["checkpoint"] = "nowhere.pt"
    (bad / "leaderboard.json").write_text(json.dumps(data))
    assert "width 8" in str(refused("checkpoint", str(bad), RUN))  # the weights do not fit the network
    os.remove(bad / "students" / "baseline-s0.pt")
    refused("checkpoint", str(bad), "baseline-s0")


def test_an_export_that_does_not_match_fails_and_keeps_nothing(trained_report, tmp_path, monkeypatch):
    def off_by_a_bit(model, example, check, out):
        with open(out, "wb") as f:
            f.write(b"not a model")
        with torch.inference_mode():
            return model(check) + 1e-3

    out = tmp_path / "student.pt"
    good = ex.export(trained_report, RUN, "torchscript", str(out))
    before = out.read_bytes()
    monkeypatch.setitem(ex.EXPORTERS, "torchscript", off_by_a_bit)
    with pytest.raises(ex.ExportMismatch, match="differs"):
        ex.export(trained_report, RUN, "torchscript", str(out))
    assert out.read_bytes() == before and good.path == str(out)  # the earlier good export is untouched
    assert sorted(os.listdir(tmp_path)) == ["student.pt"]  # and nothing half-written is left beside it

    def crashes(model, example, check, out):
        with open(out, "wb") as f:
            f.write(b"half")
        raise RuntimeError("unsupported operator aten::foo\nlong traceback text")

    monkeypatch.setitem(ex.EXPORTERS, "torchscript", crashes)
    with pytest.raises(ex.ExportError) as e:
        ex.export(trained_report, RUN, "torchscript", str(tmp_path / "other.pt"))
    assert str(e.value).endswith("RuntimeError: unsupported operator aten::foo")
    assert sorted(os.listdir(tmp_path)) == ["student.pt"]


def test_onnx_without_the_package_says_how_to_get_it(trained_report, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(ex.importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    err = refused("format", trained_report, RUN, "onnx", str(tmp_path / "s.onnx"))
    assert "pip install onnx" in err.fix
    assert not (tmp_path / "s.onnx").exists()


def test_onnx_round_trips_and_matches_the_student(trained_report, tmp_path):
    # onnx and onnxruntime are in the test extras and requirements.lock: no skip, so CI always runs this.
    import onnx
    import onnxruntime

    out = str(tmp_path / "student.onnx")
    result = ex.export(trained_report, RUN, "onnx", out)
    assert result.path == out and result.max_abs_diff <= 1e-5
    onnx.checker.check_model(out)
    # Independently of export's own check: real test images, at a batch size it was not traced with.
    student, _ = ex.load_student(trained_report, RUN)
    x = load_dataset(DIGITS).splits["test"].x[:17]  # (17, 1, 8, 8)
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})  # (17, 10)
    with torch.inference_mode():
        torch.testing.assert_close(torch.from_numpy(got), student(x), atol=1e-5, rtol=0)


def test_out_under_a_file_and_a_damaged_leaderboard_are_one_line_errors(trained_report, tmp_path, capsys):
    """Through the CLI: `--out FILE/x.pt` (its folder cannot be made) and a truncated leaderboard.json."""
    from flows.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    damaged = tmp_path / "damaged"
    shutil.copytree(trained_report, damaged)
    text = (damaged / "leaderboard.json").read_text()
    (damaged / "leaderboard.json").write_text(text[: len(text) // 2])  # what a full disk used to leave
    for argv, field in (([trained_report, RUN, "--out", str(blocker / "x.pt")], "out"),
                        ([str(damaged), RUN], "leaderboard")):
        with pytest.raises(SystemExit) as e:
            main(["export", *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(f"error: {field}: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
    assert not os.path.exists(blocker / "x.pt") and blocker.read_text() == "not a folder"
