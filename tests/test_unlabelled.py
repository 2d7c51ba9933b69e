"""``--unlabelled SOURCE`` (pipeline/data/unlabelled.py): samples without labels appended to train, scored by the
teacher, learnt from by the students' soft term alone; and the inputs it refuses."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from pipeline import distill, teacher, train as train_module
from pipeline.compat import check_fingerprints, verify_data
from pipeline.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, TeacherConfig
from pipeline.data import load_dataset
from pipeline.data.unlabelled import ConcatSource
from pipeline.errors import UserError
from pipeline.names import NO_LABEL
from pipeline.store import SoftTargetStore
from pipeline.views import Partners
from tests.conftest import cli_fails
from tests.test_imagefolder import write_folder


def write_flat(root, *, n=6, size=(16, 12), seed=5) -> str:
    """``n`` images with no class folders: half at the top, half in a sub-folder (read recursively)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "more"), exist_ok=True)
    for i in range(n):
        where = root if i % 2 == 0 else os.path.join(root, "more")
        Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)).save(
            os.path.join(where, f"u{i:03d}.png"))
    return str(root)


def _data(folder, **kw) -> DataConfig:
    return DataConfig(name=f"imagefolder:{folder}", **kw)


def test_the_samples_are_appended_to_train_unlabelled_with_ids_past_every_other(tmp_path):
    folder, extra = write_folder(tmp_path / "f", n=12), write_flat(tmp_path / "u")
    plain = load_dataset(_data(folder))
    ds = load_dataset(_data(folder, unlabelled=extra))
    train, before = ds.splits["train"], plain.splits["train"]
    assert len(train) == len(before) + 6 and isinstance(train.source, ConcatSource)
    assert (train.y[:len(before)] == before.y).all() and (train.y[len(before):] == NO_LABEL).all()
    top = max(int(s.ids.max()) for s in plain.splits.values())
    assert train.ids[len(before):].tolist() == list(range(top + 1, top + 7))
    assert train.batch(np.arange(len(train))).shape == (len(train), 3, 12, 16)
    assert train.fingerprint() != before.fingerprint()
    assert ds.splits["val"].fingerprint() == plain.splits["val"].fingerprint()  # only train changes


def test_a_dataset_name_is_unlabelled_data_too(tmp_path):
    from tests.test_data import _fake_mnist

    _fake_mnist(str(tmp_path), "MNIST", n_train=100)
    _fake_mnist(str(tmp_path), "FashionMNIST", n_train=30)
    root = str(tmp_path)
    ds = load_dataset(DataConfig(name="mnist", root=root, unlabelled="fashion-mnist"))
    plain = load_dataset(DataConfig(name="mnist", root=root))
    train = ds.splits["train"]
    assert len(train) == len(plain.splits["train"]) + 30 and (train.y[-30:] == NO_LABEL).all()
    assert train.batch(np.arange(len(train) - 2, len(train))).shape == (2, 1, 28, 28)
    assert train.ids[-30:].min() > max(int(s.ids.max()) for s in plain.splits.values())
    with pytest.raises(UserError) as e:  # the labelled data itself
        load_dataset(DataConfig(name="mnist", root=root, unlabelled="mnist"))
    assert e.value.field == "unlabelled" and "dataset itself" in str(e.value)


def test_an_unlabelled_sample_draws_its_mixing_partner_from_every_other_sample():
    ds = load_dataset(DataConfig(train_limit=40))
    split = ds.splits["train"]
    y = split.y.clone()
    y[:20] = NO_LABEL
    partners = Partners(split.with_labels(y), "train")
    rng = np.random.default_rng(0)
    drawn = {partners.draw(rng, int(split.ids[0])) for _ in range(400)}
    assert int(split.ids[0]) not in drawn and len(drawn) > 30  # any other sample, labelled or not
    labelled_drawn = {partners.draw(rng, int(split.ids[30])) for _ in range(400)}
    rows = partners.rows(np.array(sorted(labelled_drawn)))
    assert (y[torch.from_numpy(rows)] != y[30]).all()  # a labelled sample's partner: another class (or unlabelled)


@pytest.fixture(scope="module")
def unlabelled_store(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("unlabelled")
    folder, extra = write_folder(tmp / "f", n=12), write_flat(tmp / "u")
    cfg = TeacherConfig(data=_data(folder, unlabelled=extra), model=ModelConfig(arch="cnn", width=4),
                        optim=OptimConfig(epochs=1, batch_size=8), store_root=str(tmp / "stores"),
                        checkpoint_root=str(tmp / "ckpt"), device="cpu", chunk_rows=8, shard_chunks=1)
    p = teacher.plan(cfg)
    fitted = []
    real = train_module.fit_teacher

    def spy(**kw):
        fitted.append(kw["train"])
        return real(**kw)

    teacher.fit_teacher = spy
    try:
        model = teacher.train(p)
    finally:
        teacher.fit_teacher = real
    return tmp, teacher.publish(p, model), p, fitted


def test_the_teacher_trains_on_the_labelled_rows_and_scores_every_row(unlabelled_store):
    _, store_path, p, fitted = unlabelled_store
    (train_split,) = fitted
    ds = p.dataset
    assert len(train_split) == len(ds.splits["train"]) - 6 and (train_split.y >= 0).all()
    store = SoftTargetStore(store_path)
    assert store.size("train") == len(ds.splits["train"])
    assert (store.labels("train")[-6:] == NO_LABEL).all()
    assert np.isfinite(store.read_logits("train")[-6:]).all()
    labels = store.meta.dataset.labels
    assert labels.unlabelled == 6 and labels.labelled == len(ds.splits["train"]) - 6
    # verify covers the unlabelled rows: labels, ids, fingerprints, every file's content and the mask's record.
    assert check_fingerprints(store).startswith("checked against the data")
    assert set(verify_data(store)) == {"train", "val", "test"}


def test_verify_data_sees_an_unlabelled_file_changed_in_place(unlabelled_store, tmp_path):
    from pipeline.errors import StoreError

    tmp, store_path, _, _ = unlabelled_store
    path = os.path.join(tmp, "u", "u000.png")
    saved = open(path, "rb").read()
    from PIL import Image
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tmp_path / "x.png")
    try:
        data = open(tmp_path / "x.png", "rb").read()
        with open(path, "wb") as f:  # same size, other bytes
            f.write(data[:len(saved)].ljust(len(saved), b"\0"))
        with pytest.raises(StoreError) as e:
            verify_data(SoftTargetStore(store_path))
        assert e.value.field == "dataset.splits.train.content"
    finally:
        with open(path, "wb") as f:
            f.write(saved)


def test_students_learn_the_unlabelled_rows_and_the_baseline_skips_them(unlabelled_store, tmp_path):
    _, store_path, p, _ = unlabelled_store
    cfg = DistillConfig(store=store_path, model=ModelConfig(arch="cnn", width=4), optim=OptimConfig(epochs=1),
                        temperatures=(4.0,), report_root=str(tmp_path / "r"), device="cpu")
    plan = distill.plan(cfg)
    n = len(p.dataset.splits["train"])
    assert plan.label_counts() == {"labelled": n - 6, "unlabelled": 6}
    parts = distill._by_rows(cfg.students(), plan.labels)
    assert [(int(keep.sum()) if keep is not None else n, [s.run_id for s in specs]) for keep, specs in parts] == [
        (n - 6, ["baseline-s0"]), (n, ["kl-T4-a0.9-s0"])]
    rows = distill.train_students(plan, cfg.students())
    assert [r["status"] for r in rows] == ["ok", "ok"]


# --- bad input: one line, nothing written -------------------------------------------------------------------------


def _refused_by_teacher(capsys, tmp_path, folder, extra, *more) -> str:
    out = tmp_path / "out"
    err = cli_fails(capsys, "teacher", "--dataset", f"imagefolder:{folder}", "--unlabelled", extra, *more,
                    "--store-root", str(out / "s"), "--checkpoint-root", str(out / "c"), "--device", "cpu")
    assert not any(files for _, _, files in os.walk(out))
    return err


def test_an_unlabelled_folder_sharing_files_with_the_labelled_data_is_refused(capsys, tmp_path):
    folder, extra = write_folder(tmp_path / "f", n=12), write_flat(tmp_path / "u")
    shutil.copy(os.path.join(folder, "a", "003.png"), os.path.join(extra, "more", "copy.png"))  # same bytes
    err = _refused_by_teacher(capsys, tmp_path, folder, extra)
    assert err.startswith("error: unlabelled: more/copy.png has the same bytes as a/003.png")
    os.remove(os.path.join(extra, "more", "copy.png"))
    # The labelled folder itself (or one inside it): the same files.
    err = _refused_by_teacher(capsys, tmp_path, folder, os.path.join(folder, "b"))
    assert err.startswith("error: unlabelled: ") and "is a file of the labelled dataset" in err


def test_unlabelled_images_of_another_size_at_native_resolution_are_refused(capsys, tmp_path):
    folder, extra = write_folder(tmp_path / "f", n=12), write_flat(tmp_path / "u", size=(20, 20))
    err = _refused_by_teacher(capsys, tmp_path, folder, extra)
    assert err.startswith("error: unlabelled: its images are 20x20, the dataset's 16x12") and "--image-size" in err
    ds = load_dataset(_data(folder, unlabelled=extra, image_size=8))  # resized: accepted
    assert ds.splits["train"].batch(np.arange(len(ds.splits["train"]))[-3:]).shape == (3, 3, 8, 8)


def test_a_missing_or_empty_unlabelled_folder_is_one_line(capsys, tmp_path):
    folder = write_folder(tmp_path / "f", n=12)
    assert "does not exist" in _refused_by_teacher(capsys, tmp_path, folder, str(tmp_path / "nope"))
    os.makedirs(tmp_path / "empty")
    assert "holds no images" in _refused_by_teacher(capsys, tmp_path, folder, str(tmp_path / "empty"))


def _folder_teacher(tmp, **kw) -> TeacherConfig:
    folder, extra = write_folder(tmp / "f", n=12), write_flat(tmp / "u")
    return TeacherConfig(data=_data(folder, unlabelled=extra), model=ModelConfig(arch="cnn", width=4),
                         optim=OptimConfig(epochs=1, batch_size=8), store_root=str(tmp / "stores"),
                         checkpoint_root=str(tmp / "ckpt"), device="cpu", chunk_rows=8, shard_chunks=1, **kw)


def test_a_resumed_pass_writes_the_unlabelled_rows_as_a_whole_one(tmp_path):
    """A pass cut off after its first train shard resumes and writes the rest, unlabelled rows included."""
    torch.set_num_threads(1)
    p = teacher.plan(_folder_teacher(tmp_path, encoding="float32"))
    model = teacher.train(p)
    writer = teacher.create_store(p, model)
    teacher.write_shards(p, model, writer, {"train": [0]})
    writer.close()
    writer.abort()  # cut off: only train's first shard is on disk
    resumed = teacher.create_store(p, model)
    assert resumed.resumed and 0 not in resumed.pending("train") and resumed.pending("train")
    resumed.abort()
    store = SoftTargetStore(teacher.publish(p, model))
    train = p.dataset.splits["train"]
    expected = torch.cat(list(train_module.predict(model, train, torch.device("cpu")))).numpy()  # (N, C)
    np.testing.assert_allclose(store.read_logits("train"), expected, rtol=1e-5, atol=1e-5)
    assert (store.labels("train")[-6:] == NO_LABEL).all() and check_fingerprints(store).startswith("checked")


def test_verify_views_replays_mixed_views_of_unlabelled_rows(tmp_path):
    from pipeline.config import AugmentConfig, MixConfig
    from pipeline.view_fidelity import verify_views

    torch.set_num_threads(1)
    p = teacher.plan(_folder_teacher(tmp_path, views=3, view_augment=AugmentConfig(ops=("flip",)),
                                     view_mix=MixConfig(ops=("mixup",), prob=1.0)))
    store = SoftTargetStore(teacher.publish(p, teacher.train(p)))
    n = store.size("train")
    params = store.view_params("train")  # (N, V, P)
    partner = params[:, 1:, list(store.meta.views.params).index("partner")].astype(np.int64)  # (N, V - 1)
    ids = store.ids("train")
    # Each unlabelled row was mixed with another sample of train (never itself).
    assert np.isin(partner[-6:], ids).all() and (partner[-6:] != ids[-6:, None]).all()
    result = verify_views(store, samples=n)  # every train row, the unlabelled ones included
    assert result["samples"] == n
