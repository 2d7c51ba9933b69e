"""The group trainer: one pass, independent students, failure isolation, selection on val."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import AugmentConfig, ModelConfig, OptimConfig, StudentSpec
from pipeline.data import load_dataset
from pipeline.loader import SoftTargetLoader
from pipeline.store import SoftTargetStore
from pipeline.train import evaluate, train_group
from tests.conftest import DIGITS

CPU = torch.device("cpu")
TINY = ModelConfig(arch="mlp", width=64)
FAST = OptimConfig(epochs=2, lr=1e-2)


@pytest.fixture(scope="module")
def ds():
    return load_dataset(DIGITS)


def _run(ds, store, specs, optim=FAST, select="best", augment=AugmentConfig()):
    loader = SoftTargetLoader(ds.splits["train"], optim.batch_size, seed=0, store=store)
    return train_group(specs, TINY, optim, augment, loader, ds.splits["val"], ds.input_shape, ds.num_classes, CPU,
                       select=select)


def spec(loss="kl", t=4.0, seed=0):
    return StudentSpec(loss=loss, temperature=t, alpha=0.9, beta=None, seed=seed)


def test_a_group_trains_the_same_as_separate_runs(digits_store, ds):
    store = SoftTargetStore(digits_store)
    together = _run(ds, store, [spec(t=1.0), spec(t=8.0)])
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
