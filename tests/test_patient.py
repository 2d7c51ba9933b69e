"""The patient recipe: its settings, its minimum number of views, and one tiny real run of it."""
from __future__ import annotations

import pytest

from flows.cli import distill_config, main, parse_args, student_namespace, teacher_config
from pipeline import distill, teacher
from pipeline.presets import MIN_VIEWS, PRESETS


def test_patient_preset_is_many_mixed_views_pure_kd_and_long_cosine():
    a = parse_args(["run", "--preset", "patient"])
    t, d = teacher_config(a), distill_config(student_namespace(parse_args(["run", "--preset", "patient"])), "x.zarr")
    assert 16 <= t.views <= 32 and t.views >= MIN_VIEWS["patient"]
    assert {"crop", "flip", "jitter"} <= set(t.view_augment.ops) and set(t.view_mix.ops) == {"mixup", "cutmix"}
    assert d.alphas == (1.0,) and d.optim.schedule == "cosine" and d.optim.epochs >= 200
    assert t.data.name == "digits" and "data" not in PRESETS["patient"]["teacher"]  # any dataset


def test_views_below_the_recipe_minimum_is_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["run", "--preset", "patient", "--views", "4", "--store-root", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: --views (teacher): the patient recipe needs at least 16 teacher views per sample, "
                          "got 4")
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_patient_recipe_runs_end_to_end(tmp_path):
    """Teacher -> 16 mixed, augmented views per sample -> pure-KD students and the baseline, on 300 digits."""
    a = parse_args(["run", "--preset", "patient", "--views", "16", "--train-limit", "300", "--epochs", "1",
                    "--student-epochs", "1", "--seeds", "0", "--store-root", str(tmp_path / "s"),
                    "--checkpoint-root", str(tmp_path / "c"), "--report-root", str(tmp_path / "r"), "--device", "cpu"])
    p = teacher.plan(teacher_config(a))
    store = teacher.publish(p, teacher.train(p))
    cfg = distill_config(student_namespace(a), store)
    rows = distill.train_students(distill.plan(cfg), cfg.students())
    assert [(r["loss"], r["status"]) for r in rows] == [("hard", "ok"), ("kl", "ok")]
    assert rows[1]["alpha"] == 1.0
