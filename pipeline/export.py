"""Export a trained student from a report folder to TorchScript or ONNX.

A report folder (``data/reports/<run>/``) holds ``leaderboard.json`` and each student's state dict
under ``students/<run_id>.pt``. Its row records what rebuilds the network (``arch``, ``width``,
``input_shape``, ``num_classes``); the state dict is loaded with ``weights_only=True``. An export
only counts once the written file has been loaded back and its outputs match the PyTorch student
to ``ATOL`` on a batch of a size it was not traced with; a file that does not match is never kept.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from copy import deepcopy
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.atomic import write_atomic
from pipeline.checkpoints import load_model
from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.names import EXPORT_FORMATS
from pipeline.output_checks import check_output_folder
from pipeline.report import LEADERBOARD, read_report
from pipeline.serialize import from_dict

FORMATS = EXPORT_FORMATS
SUFFIXES = {"torchscript": ".pt", "onnx": ".onnx", "safetensors": ".safetensors"}
ATOL = 1e-5
REBUILD_FIELDS = ("arch", "width", "input_shape", "num_classes")
TRACE_BATCH, CHECK_BATCH = 2, 3  # different sizes, so a batch size baked into the graph is caught


class ExportError(RuntimeError):
    """The exporter failed on a valid student: not something the user can fix (the CLI exits 1)."""


class ExportMismatch(ExportError):
    """The exported file loads but does not reproduce the student's outputs."""


@dataclass(frozen=True)
class Exported:
    path: str
    format: str
    max_abs_diff: float  # between the reloaded export and the PyTorch student on the check batch


def find_run(run_dir: str, run_id: str) -> dict:
    """The student's row in ``run_dir/leaderboard.json``, refusing anything that cannot be exported."""
    if not os.path.isdir(run_dir):
        raise UserError("run_dir", f"{run_dir!r} does not exist", "pass a report folder printed by `kd distill`")
    path = os.path.join(run_dir, LEADERBOARD)
    if not os.path.isfile(path):
        raise UserError("run_dir", f"{run_dir!r} has no leaderboard.json",
                        "pass the folder `kd distill` printed as `report: DIR`")
    runs = read_report(run_dir)["runs"]  # a damaged leaderboard.json is a one-line UserError
    if run_id == "teacher":
        raise UserError("run_id", "the teacher's weights are not part of a report",
                        "export a student, or use the teacher checkpoint named in the store (`kd inspect`)")
    row = next((r for r in runs if r.get("run_id") == run_id), None)
    if row is None:
        ids = [r["run_id"] for r in runs if r.get("kind") != "teacher" and r.get("status") == "ok"]
        shown = ", ".join(ids[:6]) + (", …" if len(ids) > 6 else "")
        raise UserError("run_id", f"no student run {run_id!r} in {path}", f"choose one of: {shown}")
    if row.get("status") != "ok":
        raise UserError("run_id", f"{run_id!r} failed ({row.get('error')}) and has no checkpoint",
                        "choose a run whose status is ok")
    missing = [k for k in REBUILD_FIELDS if row.get(k) is None]
    if missing:
        raise UserError("run_id", f"{run_id!r} does not record {', '.join(missing)} (a report from before export)",
                        "rerun `kd distill` to write a report that can be exported")
    return row


def load_student(run_dir: str, run_id: str) -> tuple[nn.Module, dict]:
    """Rebuild the student named ``run_id`` and load its checkpoint (weights only), in eval mode on the CPU."""
    row = find_run(run_dir, run_id)
    # The report folder may have moved since it was written: look beside leaderboard.json first.
    local = os.path.join(run_dir, "students", f"{run_id}.pt")
    ckpt = local if os.path.isfile(local) else row.get("checkpoint")
    if not ckpt or not os.path.isfile(ckpt):
        raise UserError("checkpoint", f"{local!r} does not exist", "the report folder lost its students/ folder")
    # The row's whole model config (weights, preprocessing) where it records one: the student normalises and
    # resizes its input itself, and the export must too.
    extra = row["model"] if isinstance(row.get("model"), dict) else {}
    model_cfg = from_dict(ModelConfig, {**extra, "arch": row["arch"], "width": int(row["width"])})
    model = load_model(ckpt, model=model_cfg,
                       input_shape=tuple(row["input_shape"]), num_classes=int(row["num_classes"]),
                       fix="rerun `kd distill`")
    return model, row


def _sample(shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    """Pixels in [0, 1], like the pipeline's inputs. (batch, C, H, W)"""
    return torch.rand(batch, *shape, generator=torch.Generator().manual_seed(seed))


def _torchscript(model: nn.Module, example: torch.Tensor, check: torch.Tensor, out: str) -> torch.Tensor:
    # Tracing (not scripting) handles every torchvision classifier; torch marks TorchScript as
    # deprecated, but it is the format asked for and the one C++/mobile runtimes still load.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example)
        traced.save(out)
        loaded = torch.jit.load(out, map_location="cpu")
    with torch.inference_mode():
        return loaded(check)  # (B, C)


def _require_onnx() -> None:
    if importlib.util.find_spec("onnx") is None:
        raise UserError("format", "onnx export needs the onnx package, which is not installed",
                        "pip install onnx, or use --format torchscript")


def _onnx(model: nn.Module, example: torch.Tensor, check: torch.Tensor, out: str) -> torch.Tensor:
    _require_onnx()
    import onnx

    names = {"input_names": ["input"], "output_names": ["logits"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        if importlib.util.find_spec("onnxscript") is not None:
            # torch's current exporter (torch.export based) needs onnxscript; weights go in the one file.
            torch.onnx.export(model, (example,), out, dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
        else:
            torch.onnx.export(model, (example,), out, dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **names)
    onnx.checker.check_model(out)
    feed = check.numpy()
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
        (result,) = session.run(None, {session.get_inputs()[0].name: feed})
    else:  # onnx's own pure-Python runtime: slow, but exact enough and always there with onnx
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(onnx.load(out))
        (result,) = evaluator.run(None, {evaluator.input_names[0]: feed})
    return torch.from_numpy(result)  # (B, C)


def _safetensors(model: nn.Module, example: torch.Tensor, check: torch.Tensor, out: str) -> torch.Tensor:
    """The student's weights alone (no code, no pickle), as its source library names them: what --weights
    FILE.safetensors reads back. Checked by loading the file into a copy of the student."""
    from safetensors.torch import load_file, save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out)
    copy = deepcopy(model)
    copy.load_state_dict(load_file(out))
    with torch.inference_mode():
        return copy.eval()(check)


EXPORTERS = {"torchscript": _torchscript, "onnx": _onnx, "safetensors": _safetensors}
assert tuple(EXPORTERS) == EXPORT_FORMATS, "declare the export formats' names in pipeline/names.py"


def export(run_dir: str, run_id: str, fmt: str = "torchscript", out: str | None = None) -> Exported:
    """Export the student ``run_id`` of ``run_dir``; check the reloaded file against PyTorch before returning."""
    if fmt not in EXPORTERS:
        raise UserError("format", f"unknown value {fmt!r}", f"choose one of: {', '.join(FORMATS)}")
    if fmt == "onnx":
        _require_onnx()  # before any work
    model, row = load_student(run_dir, run_id)
    out = out or os.path.join(run_dir, "export", f"{run_id}{SUFFIXES[fmt]}")
    if os.path.isdir(out):
        raise UserError("out", f"{out!r} is a directory", f"pass a file name, e.g. {run_id}{SUFFIXES[fmt]}")
    check_output_folder(os.path.dirname(os.path.abspath(out)), field="out",
                        fix=f"pass a file in a folder, e.g. export/{run_id}{SUFFIXES[fmt]}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    shape = tuple(row["input_shape"])
    example, check = _sample(shape, TRACE_BATCH, 0), _sample(shape, CHECK_BATCH, 1)
    # Written under a temporary name and renamed only once verified: a failed or wrong export never
    # leaves a file under the student's name, nor replaces an earlier good one.
    checked: list[float] = []

    def write_and_check(tmp: str) -> None:
        try:
            got = EXPORTERS[fmt](model, example, check, tmp)
        except UserError:
            raise
        except Exception as exc:  # torch's exporters raise anything; the CLI shows one line, exit 1
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ExportError(f"{fmt} export of {run_id} ({row['arch']}) failed: {type(exc).__name__}: {first}") from exc
        with torch.inference_mode():
            want = model(check)  # (B, C)
        diff = float((got.float() - want).abs().max()) if got.shape == want.shape else float("inf")
        if not diff <= ATOL:
            raise ExportMismatch(f"{fmt} export of {run_id} differs from the PyTorch student (max |Δ| {diff:.3g} > "
                                 f"{ATOL:g}, shapes {tuple(got.shape)} vs {tuple(want.shape)}); nothing was kept")
        checked.append(diff)

    write_atomic(out, write_and_check, field="out")
    diff = checked[0]
    return Exported(out, fmt, diff)
