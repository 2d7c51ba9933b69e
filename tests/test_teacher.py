"""Stage 1 in the library: planning, provenance naming, reuse, checkpoints."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pipeline import teacher
from pipeline.file_hash import sha256_file
from pipeline.config import DataConfig, ModelConfig
from pipeline.errors import UserError
from pipeline.store import SoftTargetStore
from tests.conftest import build_store, cli_fails, small_teacher_config


def test_store_is_named_by_content_and_reused(tmp_path):
    cfg = small_teacher_config(str(tmp_path))
    p = teacher.plan(cfg)
    assert os.path.basename(p.store_path).startswith("digits-cnn-") and not p.reusable
    path = teacher.publish(p, teacher.train(p))
    assert path == p.store_path and teacher.plan(cfg).reusable
    # Any change to what produced the logits gives another store.
    other = teacher.plan(small_teacher_config(str(tmp_path), seed=1))
    assert other.store_path != path and not other.reusable
    enc = teacher.plan(small_teacher_config(str(tmp_path), encoding="float32"))
    assert enc.store_path != path


def test_store_records_provenance(digits_store):
    a = SoftTargetStore(digits_store).attrs
    t = a["teacher"]
    assert t["arch"] == "cnn" and t["trained_here"] is True and len(t["checkpoint_sha256"]) == 64
    assert t["checkpoint_sha256"] == sha256_file(t["checkpoint"])
    assert a["dataset"]["class_names"] == [str(i) for i in range(10)]
    assert set(a["dataset"]["splits"]) == {"train", "val", "test"}
    assert {"torch", "zarr", "numcodecs", "python"} <= set(a["software"])
    assert a["encoding"] == "float32" and a["complete"] is True
    assert t["precision"] == "float32"  # a CPU pass never autocasts


def test_a_pass_resumed_in_a_less_precise_dtype_records_it(digits_store, tmp_path):
    """A store started in float32 and finished under bfloat16 autocast (as when a CPU run is resumed on a GPU)
    holds logits of both: it records the less precise, which `--verify-views` sizes its tolerance by."""
    import dataclasses

    ckpt = SoftTargetStore(digits_store).attrs["teacher"]["checkpoint"]
    p = teacher.plan(small_teacher_config(str(tmp_path), checkpoint=ckpt, encoding="float32"))
    model = teacher.load(p)
    writer = teacher.create_store(p, model)
    assert writer.meta.teacher.precision == "float32"
    teacher.write_shards(p, model, writer, {"val": writer.pending("val")})
    writer.close()
    writer.abort()  # cut off: the staged copy with val written stays
    resumed = dataclasses.replace(p, precision="bfloat16")
    assert resumed.pass_precision == "bfloat16"
    path = teacher.publish(resumed, model)
    s = SoftTargetStore(path)
    assert s.meta.teacher.precision == "bfloat16"
    # val was written in float32, the rest under bfloat16: val matches the float32 store exactly, train does not.
    ref = SoftTargetStore(digits_store)
    assert np.array_equal(s.read_logits("val"), ref.read_logits("val"))
    assert not np.array_equal(s.read_logits("train"), ref.read_logits("train"))


def test_loading_a_checkpoint_reproduces_the_store(digits_store, tmp_path):
    a = SoftTargetStore(digits_store)
    ckpt = a.attrs["teacher"]["checkpoint"]
    cfg = small_teacher_config(str(tmp_path), checkpoint=ckpt, encoding="float32")
    p = teacher.plan(cfg)
    assert p.checkpoint_sha256 == a.attrs["teacher"]["checkpoint_sha256"]
    b = SoftTargetStore(teacher.publish(p, teacher.load(p)))
    assert b.attrs["teacher"]["trained_here"] is False
    assert b.attrs["teacher"]["checkpoint_sha256"] == sha256_file(ckpt)  # plan()'s hash, not computed twice
    assert torch.equal(torch.from_numpy(a.read_logits("train")), torch.from_numpy(b.read_logits("train")))


def test_recorded_scores_come_from_the_pass_and_equal_an_evaluation(digits_store, tmp_path, monkeypatch):
    """The store's val/test accuracy and NLL are summed from the logits pass (no second read of those
    images) and equal :func:`evaluate` of the same checkpoint; a resumed store evaluates what it did not see."""
    from pipeline.train import evaluate

    ckpt = SoftTargetStore(digits_store).attrs["teacher"]["checkpoint"]
    p = teacher.plan(small_teacher_config(str(tmp_path / "a"), checkpoint=ckpt, encoding="float32"))
    model = teacher.load(p)
    evaluated = []
    real = teacher.evaluate_splits
    monkeypatch.setattr(teacher, "evaluate_splits", lambda m, splits, *a, **k: evaluated.append(sorted(splits))
                        or real(m, splits, *a, **k))
    t = SoftTargetStore(teacher.publish(p, model)).meta.teacher
    assert evaluated == []  # scored from the pass itself
    for split in ("val", "test"):
        want = evaluate(model, p.dataset.splits[split], torch.device("cpu"))
        assert getattr(t, f"{split}_acc") == pytest.approx(want["acc"], abs=1e-6)  # evaluate() means in float32
        assert getattr(t, f"{split}_nll") == pytest.approx(want["nll"], rel=1e-5)
        assert 0.0 <= getattr(t, f"{split}_acc") <= 1.0

    # A store resumed with val already written: val is evaluated once, test is scored from the pass.
    p2 = teacher.plan(small_teacher_config(str(tmp_path / "b"), checkpoint=ckpt, encoding="float32"))
    writer = teacher.create_store(p2, model)
    teacher.write_shards(p2, model, writer, {"val": writer.pending("val")})
    writer.close()
    writer.abort()  # the lease goes, the staged copy with val written stays: the next publish resumes it
    t2 = SoftTargetStore(teacher.publish(p2, model)).meta.teacher
    assert evaluated == [["val"]]
    assert (t2.val_acc, t2.test_acc) == pytest.approx((t.val_acc, t.test_acc), abs=1e-6)
    assert (t2.val_nll, t2.test_nll) == pytest.approx((t.val_nll, t.test_nll), rel=1e-5)


def test_missing_checkpoint_is_refused(tmp_path):
    with pytest.raises(UserError) as e:
        teacher.plan(small_teacher_config(str(tmp_path), checkpoint=str(tmp_path / "nope.pt")))
    assert e.value.field == "checkpoint"


def test_checkpoint_for_another_architecture_is_refused(digits_store, tmp_path):
    ckpt = SoftTargetStore(digits_store).attrs["teacher"]["checkpoint"]
    # Refused by the plan, before any work (and so never retried in a task), naming the options to fix.
    with pytest.raises(UserError, match="cannot load") as e:
        teacher.plan(small_teacher_config(str(tmp_path), checkpoint=ckpt, model=ModelConfig(arch="mlp")))
    assert e.value.field == "checkpoint" and "--arch/--width" in e.value.fix


def test_a_pickled_checkpoint_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    bad = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(UserError):
        teacher.plan(small_teacher_config(str(tmp_path), checkpoint=str(bad)))
    assert not (tmp_path / "pwned").exists()


def test_train_limit_changes_the_fingerprint_and_name(tmp_path):
    a = teacher.plan(small_teacher_config(str(tmp_path)))
    b = teacher.plan(small_teacher_config(str(tmp_path), data=DataConfig(train_limit=300)))
    assert a.store_path != b.store_path
    assert len(b.dataset.splits["train"]) == 300


def test_build_store_helper_writes_a_complete_store(tmp_path):
    assert SoftTargetStore(build_store(str(tmp_path))).attrs["encoding"] == "float16"


def test_storage_options_never_reach_the_store(tmp_path):
    cfg = small_teacher_config(str(tmp_path), storage_options={"secret": "TOPSECRET"})
    p = teacher.plan(cfg)
    path = teacher.publish(p, teacher.train(p))
    assert "TOPSECRET" not in repr(SoftTargetStore(path).attrs)


class _Payload:
    """What a malicious checkpoint carries: loading it unrestricted would call os.system."""

    def __reduce__(self):
        return os.system, ("echo loaded-the-payload",)


def test_a_checkpoint_with_pickled_code_is_refused_in_one_whole_line(digits_store, tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"0.weight": _Payload()}, evil)
    err = cli_fails(capsys, "teacher", "--checkpoint", str(evil), "--store-root", str(tmp_path / "s"),
                    "--checkpoint-root", str(tmp_path / "c"))
    assert err == (f"error: checkpoint: {str(evil)!r} is not a plain state dict: it holds pickled objects (it would "
                   "call posix.system), so it was not loaded (pass a checkpoint saved as "
                   "torch.save(model.state_dict(), PATH), from a source you trust)"), err
    assert "--arch" not in err
    cut = tmp_path / "cut.pt"  # a truncated checkpoint: damaged, not another architecture
    cut.write_bytes(open(SoftTargetStore(digits_store).attrs["teacher"]["checkpoint"], "rb").read()[:3000])
    err = cli_fails(capsys, "teacher", "--checkpoint", str(cut), "--store-root", str(tmp_path / "s"),
                    "--checkpoint-root", str(tmp_path / "c"))
    assert "cannot read" in err and "truncated or damaged" in err and "--arch" not in err and err.count(" …)") == 1


def test_chunks_larger_than_a_reader_allocates_are_refused_before_any_work(tmp_path, monkeypatch):
    """The bound every reader enforces (pipeline.store.layout.MAX_CHUNK_BYTES) is checked when the store is
    planned, so no store is written that no reader would open. (Lowered here: digits' chunks are far smaller.)"""
    monkeypatch.setattr(teacher, "MAX_CHUNK_BYTES", 1000)
    with pytest.raises(UserError) as e:
        teacher.plan(small_teacher_config(str(tmp_path), chunk_rows=256))
    assert e.value.field == "chunk_rows" and "--chunk-rows" in e.value.fix
    assert not (tmp_path / "stores").exists()
    teacher.plan(small_teacher_config(str(tmp_path), chunk_rows=16))  # 16 rows x 10 classes x 4 B: under it
