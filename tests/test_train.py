"""The training loop: one pass, independent students, failure isolation, selection on val; the teacher's plain path."""
from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

from pipeline.config import AugmentConfig, ModelConfig, OptimConfig
from pipeline.data import load_dataset
from pipeline.grid import StudentSpec
from pipeline.loader import SoftTargetLoader
from pipeline.store import SoftTargetStore
from pipeline.optim import make_optimizer, make_schedule
from pipeline.student_group import fit_group
from pipeline.train import build_seeded, evaluate
from tests.conftest import DIGITS

CPU = torch.device("cpu")
TINY = ModelConfig(arch="mlp", width=64)
FAST = OptimConfig(epochs=2, lr=1e-2)


@pytest.fixture(scope="module")
def ds():
    return load_dataset(DIGITS)


def _run(ds, store, specs, optim=FAST, select="best", augment=AugmentConfig(), batched=None):
    loader = SoftTargetLoader(ds.splits["train"], optim.batch_size, seed=0, store=store)
    return fit_group(specs, model_cfg=TINY, optim=dataclasses.replace(optim, select=select), augment=augment,
                     loader=loader, val=ds.splits["val"], input_shape=ds.input_shape, num_classes=ds.num_classes,
                     device=CPU, batched=batched)


def spec(loss="kl", t=4.0, seed=0):
    return StudentSpec(loss=loss, temperature=t, alpha=0.9, beta=None, seed=seed)


def test_a_group_trains_the_same_as_separate_runs(digits_store, ds):
    store = SoftTargetStore(digits_store)
    # The per-student loop (a stacked group equals it up to float rounding: tests/test_stacking.py).
    together = _run(ds, store, [spec(t=1.0), spec(t=8.0)], batched=False)
    alone = _run(ds, store, [spec(t=8.0)])
    # Same seed, same batches, same augmentation stream: sharing the pass changes nothing.
    for a, b in zip(together[1].model.state_dict().values(), alone[0].model.state_dict().values()):
        assert torch.equal(a, b)
    # ...and different temperatures really train different students.
    assert not torch.equal(together[0].model.state_dict()["1.weight"], together[1].model.state_dict()["1.weight"])
    assert all(r.val_acc > 0.3 for r in together)  # chance is 0.1


def test_a_diverging_student_fails_alone(digits_store, ds):
    store = SoftTargetStore(digits_store)
    silly = StudentSpec(loss="kl", temperature=4.0, alpha=0.9, beta=None, seed=0, lr=1e30)
    results = _run(ds, store, [spec("hard"), silly], optim=FAST)
    assert results[0].failed is None and results[0].val_acc > 0.3  # shares the pass, unaffected
    assert results[1].model is None and "loss became" in results[1].failed


def test_best_checkpoint_is_chosen_on_validation(digits_store, ds):
    store = SoftTargetStore(digits_store)
    (best,) = _run(ds, store, [spec()], optim=OptimConfig(epochs=4), select="best")
    accs = [h["val_acc"] for h in best.history]
    assert best.val_acc == max(accs) and best.best_epoch == accs.index(max(accs))
    assert evaluate(best.model, ds.splits["val"], CPU)["acc"] == pytest.approx(best.val_acc)
    (last,) = _run(ds, store, [spec()], optim=OptimConfig(epochs=4), select="last")
    assert last.best_epoch == 3


def test_augmentation_is_applied_and_seeded(digits_store, ds):
    store = SoftTargetStore(digits_store)
    aug = AugmentConfig(ops=("translate", "flip"))
    a = _run(ds, store, [spec()], augment=aug)[0].model.state_dict()
    b = _run(ds, store, [spec()], augment=aug)[0].model.state_dict()
    c = _run(ds, store, [spec()])[0].model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# --- optimizers, schedules, clipping, early stopping -----------------------------------------------


def _lrs(cfg: OptimConfig, steps_per_epoch: int, lr: float | None = None) -> list[float]:
    """The lr each optimizer step of a whole run uses, with the schedule stepped as train_one_epoch does."""
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = make_optimizer(params, cfg if lr is None else dataclasses.replace(cfg, lr=lr))
    sched = make_schedule(opt, cfg, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out


def test_sgd_nesterov_reaches_the_optimizer():
    params = [torch.nn.Parameter(torch.zeros(1))]
    assert make_optimizer(params, OptimConfig(name="sgd", nesterov=True)).param_groups[0]["nesterov"] is True
    assert make_optimizer(params, OptimConfig(name="sgd")).param_groups[0]["nesterov"] is False


def test_constant_schedule_with_and_without_warmup():
    assert make_schedule(make_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(schedule="none")),
                         OptimConfig(schedule="none"), 5) is None
    lrs = _lrs(OptimConfig(lr=1.0, epochs=3, schedule="none", warmup_epochs=1), steps_per_epoch=4)
    # Linear from lr / (4 + 1) over the 4 warm-up steps, then flat at lr.
    assert lrs == pytest.approx([0.2, 0.4, 0.6, 0.8] + [1.0] * 8)


def test_cosine_after_warmup_anneals_over_the_remaining_steps():
    lrs = _lrs(OptimConfig(lr=1.0, epochs=4, schedule="cosine", warmup_epochs=1), steps_per_epoch=4)
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    rest = 12  # steps after the warm-up: lr * (1 + cos(pi * k / 12)) / 2
    assert lrs[4:] == pytest.approx([(1 + math.cos(math.pi * k / rest)) / 2 for k in range(rest)])
    assert _lrs(OptimConfig(lr=1.0, epochs=2, schedule="cosine"), 2) == pytest.approx([1.0, 0.853553, 0.5, 0.146447],
                                                                                         rel=1e-5)


def test_step_schedule_decays_at_whole_epochs_from_the_start():
    lrs = _lrs(OptimConfig(lr=1.0, epochs=5, schedule="step", step_size=2, gamma=0.5), steps_per_epoch=3)
    assert lrs == pytest.approx([1.0] * 6 + [0.5] * 6 + [0.25] * 3)
    # A warm-up does not move the decays: still at epochs 2 and 4.
    lrs = _lrs(OptimConfig(lr=1.0, epochs=5, schedule="step", step_size=2, gamma=0.5, warmup_epochs=1), 3)
    assert lrs == pytest.approx([0.25, 0.5, 0.75] + [1.0] * 3 + [0.5] * 6 + [0.25] * 3)


def test_onecycle_rises_to_lr_during_the_warmup_then_anneals():
    lrs = _lrs(OptimConfig(lr=0.5, epochs=4, schedule="onecycle", warmup_epochs=1), steps_per_epoch=5)
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(0.5) and peak == 4  # the last step of the 1-epoch warm-up
    assert lrs[0] == pytest.approx(0.5 / 25)  # torch's default div_factor
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a > b for a, b in zip(lrs[peak:], lrs[peak + 1:])) and lrs[-1] < 1e-4
    # Without a warm-up, torch's default: 30% of the run rising.
    lrs = _lrs(OptimConfig(lr=0.5, epochs=4, schedule="onecycle"), steps_per_epoch=5)
    assert lrs.index(max(lrs)) == 5
    # A per-student lr (an lr sweep) is the peak, not the config's lr.
    assert max(_lrs(OptimConfig(lr=0.5, epochs=4, schedule="onecycle"), 5, lr=0.1)) == pytest.approx(0.1)


def test_onecycle_too_short_is_a_user_error():
    from pipeline.errors import UserError

    with pytest.raises(UserError) as e:
        _lrs(OptimConfig(epochs=2, schedule="onecycle"), steps_per_epoch=1)
    assert e.value.field == "schedule" and "3 optimizer steps" in str(e.value)


def test_onecycle_trains_a_whole_group(ds):
    # OneCycle raises if stepped past its last step: a full run proves the step count is right.
    # (Label-only students, store=None: no logits needed, so these tests stay fast.)
    optim = OptimConfig(epochs=2, lr=1e-2, schedule="onecycle", warmup_epochs=1)
    results = _run(ds, None, [spec("hard", seed=0), spec("hard", seed=1)], optim=optim)
    assert all(r.failed is None and r.val_acc > 0.3 for r in results)


def test_gradient_clipping_bounds_every_step(ds):
    # Plain SGD (no momentum, no decay) moves the weights by lr * g per step, and |g| <= clip after
    # clipping, so after n steps they are within n * lr * clip of their initialisation.
    store = None  # label-only: no stored logits needed
    sgd = OptimConfig(name="sgd", momentum=0.0, lr=0.5, epochs=1, schedule="none", select="last")
    init = build_seeded(TINY, ds.input_shape, ds.num_classes, seed=0).state_dict()
    steps = -(-len(ds.splits["train"]) // sgd.batch_size)

    def moved(optim):
        (r,) = _run(ds, store, [spec("hard")], optim=optim, select="last")
        state = r.model.state_dict()
        return math.sqrt(sum(float(((state[k] - init[k]) ** 2).sum()) for k in init))

    clip = 1e-3
    assert moved(dataclasses.replace(sgd, clip_grad_norm=clip)) <= steps * 0.5 * clip * (1 + 1e-4)
    assert moved(sgd) > 100 * steps * 0.5 * clip  # unclipped, the same run moves far more


def test_early_stopping_stops_one_student_and_the_group_carries_on(ds):
    # lr 1e-12 leaves float32 weights exactly unchanged: its val accuracy can never improve.
    frozen = StudentSpec(loss="hard", temperature=1.0, alpha=0.0, beta=None, seed=0, lr=1e-12)
    optim = OptimConfig(epochs=6, lr=1e-2, patience=2)
    learner, stuck = _run(ds, None, [spec("hard"), frozen], optim=optim)
    assert stuck.stopped_epoch == 2 and len(stuck.history) == 3  # epoch 0 sets the peak, 1 and 2 do not beat it
    assert stuck.model is not None and stuck.best_epoch == 0  # the selected checkpoint is still returned
    # The rule, checked on the learner's own history: it stops exactly when `patience` epochs in a row
    # fail to beat its best so far, and otherwise runs every epoch.
    accs = [h["val_acc"] for h in learner.history]
    peak, stale, stop = -1.0, 0, None
    for epoch, acc in enumerate(accs):
        peak, stale = (acc, 0) if acc > peak else (peak, stale + 1)
        if stale >= 2:
            stop = epoch
            break
    assert learner.stopped_epoch == stop
    assert len(accs) == (6 if stop is None else stop + 1) and len(accs) > len(stuck.history)


def test_validation_is_read_by_the_loaders_workers(digits_store, ds, tmp_path):
    """With DataLoader workers, val is decoded in them too, not in this process, by the same worker processes
    every epoch (started once per run), and scores the same."""
    from tests.test_loader import _LoggedSplit

    log = str(tmp_path / "reads.txt")
    val = _LoggedSplit(ds.splits["val"], log)
    store = SoftTargetStore(digits_store)

    def run(workers: int):
        loader = SoftTargetLoader(ds.splits["train"], FAST.batch_size, seed=0, store=store, workers=workers)
        return fit_group([spec(t=4.0)], model_cfg=TINY, optim=FAST, augment=AugmentConfig(), loader=loader, val=val,
                         input_shape=ds.input_shape, num_classes=ds.num_classes, device=CPU)

    (with_workers,) = run(2)
    reads = [tuple(map(int, line.split())) for line in open(log)]
    assert sum(n for _, n in reads) == FAST.epochs * len(val)
    assert os.getpid() not in {pid for pid, _ in reads}
    assert FAST.epochs == 2 and len({pid for pid, _ in reads}) == 2  # not 2 new workers per epoch
    (in_process,) = run(0)
    assert [h["val_acc"] for h in with_workers.history] == [h["val_acc"] for h in in_process.history]


def test_a_group_is_evaluated_on_one_read_of_test(ds, tmp_path):
    """A group's test scores decode the test images once (through the workers), and equal each model's own
    :func:`evaluate`, teacher agreement included."""
    from pipeline.train import evaluate_group
    from tests.test_loader import _LoggedSplit

    log = str(tmp_path / "reads.txt")
    test = _LoggedSplit(ds.splits["test"], log)
    models = [build_seeded(TINY, ds.input_shape, ds.num_classes, seed=s) for s in range(3)]
    teacher_logits = torch.randn(len(test), ds.num_classes, generator=torch.Generator().manual_seed(0))
    got = evaluate_group(models, test, CPU, teacher_logits=teacher_logits, workers=2)
    reads = [tuple(map(int, line.split())) for line in open(log)]
    assert sum(n for _, n in reads) == len(test) and os.getpid() not in {pid for pid, _ in reads}
    assert got == [evaluate(m, ds.splits["test"], CPU, teacher_logits=teacher_logits) for m in models]
    assert len({r["acc"] for r in got}) > 1 and all("agreement" in r for r in got)
    assert evaluate_group([], test, CPU) == []


@pytest.mark.parametrize("batched", [False, True], ids=["loop", "stack"])
def test_a_group_reads_val_once_per_epoch(digits_store, ds, monkeypatch, batched):
    """Validation is one read of val for the whole group, whether it trains as a loop or as a stack."""
    from pipeline.data import Split

    val = ds.splits["val"]
    reads = []
    real = Split.batch

    def counted(self, rows, **kwargs):
        if self is val:
            reads.append(len(rows))
        return real(self, rows, **kwargs)

    monkeypatch.setattr(Split, "batch", counted)
    results = _run(ds, SoftTargetStore(digits_store), [spec(t=1.0), spec(t=4.0), spec(t=8.0)], batched=batched)
    assert all(r.failed is None for r in results)
    assert sum(reads) == FAST.epochs * len(val)  # not once per student


# The teacher's path, from its flow to its store, with pipeline.stacking unimportable (None in sys.modules makes
# any import of it raise ImportError): it trains through the plain loop alone. The last lines are the control:
# the students' path needs the package, so the block is real.
TEACHER_WITHOUT_STACKING = """
import sys
sys.modules["pipeline.stacking"] = None
import flows.teacher_flow
from pipeline import teacher
from pipeline.config import ModelConfig, OptimConfig, TeacherConfig
root = sys.argv[1]
cfg = TeacherConfig(model=ModelConfig(arch="mlp", width=16), optim=OptimConfig(epochs=1, batch_size=128),
                    store_root=root + "/stores", checkpoint_root=root + "/checkpoints", device="cpu")
p = teacher.plan(cfg)
print("store:", teacher.publish(p, teacher.train(p)))
try:
    import pipeline.student_group
except ImportError as e:
    print("students:", e)
"""


def test_the_teacher_trains_without_the_stacking_package(tmp_path):
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", TEACHER_WITHOUT_STACKING, str(tmp_path)], cwd=repo,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "store: " + str(tmp_path) in out.stdout
    assert "students: import of pipeline.stacking halted" in out.stdout
