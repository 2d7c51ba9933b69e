"""pipeline.data on the bundled scikit-learn digits, torchvision datasets offline, and image folders."""
from __future__ import annotations

import math
import os
import socket
from collections import Counter

import numpy as np
import pytest
import torch

from pipeline.config import DataConfig
from pipeline.data import Split, check_dataset_name, load_dataset
from pipeline.data.sources import TORCHVISION
from pipeline.errors import UserError
from pipeline.names import DATASETS, SPLITS

N_DIGITS = 1797


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits"))


@pytest.fixture(scope="module")
def sk_digits():
    from sklearn.datasets import load_digits

    return load_digits()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def clone(split: Split) -> Split:
    return Split.from_tensors(split.x.clone(), split.y.clone(), split.ids.clone())


# --- digits --------------------------------------------------------------------------------------


def test_digits_split_sizes_sum_to_1797(digits):
    sizes = {name: len(digits.splits[name]) for name in SPLITS}
    assert set(digits.splits) == set(SPLITS)
    assert sum(sizes.values()) == N_DIGITS
    # 15% / 15% of 1797, rounded up by scikit-learn.
    assert sizes["test"] == 270
    assert sizes["val"] == 270
    assert sizes["train"] == N_DIGITS - 540


def test_digits_shapes_dtypes_and_range(digits):
    assert digits.name == "digits"
    assert digits.num_classes == 10
    assert digits.class_names == [str(c) for c in range(10)]
    assert digits.input_shape == (1, 8, 8)
    for split in digits.splits.values():
        n = len(split)
        assert split.x.shape == (n, 1, 8, 8) and split.x.dtype == torch.float32
        assert split.y.shape == (n,) and split.y.dtype == torch.int64
        assert split.ids.shape == (n,) and split.ids.dtype == torch.int64
        assert split.x.min().item() >= 0.0 and split.x.max().item() <= 1.0
        assert split.x.max().item() == 1.0  # 16/16 occurs in every split


def test_digits_splits_are_disjoint_and_cover_every_sample(digits):
    ids = {name: set(digits.splits[name].ids.tolist()) for name in SPLITS}
    for name in SPLITS:
        assert len(ids[name]) == len(digits.splits[name]), f"duplicate ids inside {name}"
    assert not ids["train"] & ids["val"]
    assert not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    assert ids["train"] | ids["val"] | ids["test"] == set(range(N_DIGITS))


def test_digits_ids_point_at_the_source_samples(digits, sk_digits):
    for split in digits.splits.values():
        idx = split.ids.numpy()
        np.testing.assert_array_equal(split.y.numpy(), sk_digits.target[idx])
        np.testing.assert_allclose(split.x[:, 0].numpy(), sk_digits.images[idx] / 16.0, rtol=0, atol=1e-7)


def test_digits_split_is_stratified(digits):
    all_y = torch.cat([digits.splits[n].y for n in SPLITS]).tolist()
    overall = Counter(all_y)
    for name in SPLITS:
        split = digits.splits[name]
        counts = Counter(split.y.tolist())
        assert set(counts) == set(range(10)), f"{name} misses a class"
        for c in range(10):
            expected = overall[c] / N_DIGITS * len(split)
            # A stratified split rounds per class; a random one is off by ~5 samples per class.
            assert abs(counts[c] - expected) <= 1.5, (name, c, counts[c], expected)


def test_same_config_gives_identical_fingerprints_and_ids(digits):
    again = load_dataset(DataConfig(name="digits"))
    assert again.fingerprints() == digits.fingerprints()
    for name in SPLITS:
        assert torch.equal(again.splits[name].ids, digits.splits[name].ids)
        assert torch.equal(again.splits[name].y, digits.splits[name].y)
        assert torch.equal(again.splits[name].x, digits.splits[name].x)
    assert again.describe() == digits.describe()


def test_digits_fingerprints_and_transform_hash_are_pinned(digits):
    """Streaming fingerprints hash exactly the bytes the in-memory ones did: stores keep their provenance keys."""
    assert digits.fingerprints() == {
        "train": "18e0eb53bcfb39b19f8b1f0b463ddd5f0e5271bf68c3efb013c333bba8c8c00b",
        "val": "7f63c32a09a273986a8484d6dd3cd07025a162dcb2f6eaddfc8b37920bb79212",
        "test": "e86bbefd26efbf901b3450c244cf5012b7b1a22693be3a1b7cc2be0dcd3e4d7c"}
    assert digits.transform_hash == "dc1169e5b5e62527"
    # --image-size is real preprocessing: another record, another hash.
    resized = load_dataset(DataConfig(name="digits", image_size=16))
    assert resized.input_shape == (1, 16, 16) and resized.transform_hash != digits.transform_hash
    assert resized.fingerprints() == digits.fingerprints()  # same samples: the transform is recorded apart


def test_split_reads_rows_without_holding_pixels(digits):
    """A split holds labels, ids and row indices; pixels come from its source, batch by batch."""
    split = digits.splits["val"]
    assert not any(isinstance(v, torch.Tensor) and v.dim() == 4 for v in vars(split).values())
    rows = np.array([5, 0, 7])
    np.testing.assert_array_equal(split.batch(rows).numpy(), split.x[rows].numpy())


def test_fingerprint_is_a_sha256_hex_and_stable(digits):
    fp = digits.splits["train"].fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert digits.splits["train"].fingerprint() == fp
    assert len(set(digits.fingerprints().values())) == 3


def test_different_split_seed_changes_fingerprints(digits):
    other = load_dataset(DataConfig(name="digits", split_seed=1))
    for name in SPLITS:
        assert other.splits[name].fingerprint() != digits.splits[name].fingerprint()
    assert not torch.equal(other.splits["test"].ids, digits.splits["test"].ids)
    assert sum(len(s) for s in other.splits.values()) == N_DIGITS


def test_changing_one_pixel_changes_the_fingerprint(digits):
    base = digits.splits["val"]
    assert clone(base).fingerprint() == base.fingerprint()
    x = base.x.clone()
    x[5, 0, 3, 4] += 1.0 / 16.0
    assert Split.from_tensors(x, base.y.clone(), base.ids.clone()).fingerprint() != base.fingerprint()


def test_changing_one_label_changes_the_fingerprint(digits):
    base = digits.splits["val"]
    changed = clone(base)
    changed.y[0] = (changed.y[0] + 1) % 10
    assert changed.fingerprint() != base.fingerprint()


def test_changing_order_or_ids_changes_the_fingerprint(digits):
    base = digits.splits["test"]
    perm = torch.arange(len(base))
    perm[[0, 1]] = perm[[1, 0]]
    swapped = Split.from_tensors(base.x[perm].clone(), base.y[perm].clone(), base.ids[perm].clone())
    assert swapped.fingerprint() != base.fingerprint()
    renumbered = clone(base)
    renumbered.ids[0] += N_DIGITS
    assert renumbered.fingerprint() != base.fingerprint()


def test_train_limit_truncates_and_changes_train_fingerprint(digits):
    limited = load_dataset(DataConfig(name="digits", train_limit=100))
    full_train = digits.splits["train"]
    tr = limited.splits["train"]
    assert len(tr) == 100
    assert torch.equal(tr.ids, full_train.ids[:100])
    assert torch.equal(tr.x, full_train.x[:100])
    assert tr.fingerprint() != full_train.fingerprint()
    # Only the training split is limited.
    assert limited.splits["val"].fingerprint() == digits.splits["val"].fingerprint()
    assert limited.splits["test"].fingerprint() == digits.splits["test"].fingerprint()
    assert limited.describe()["splits"]["train"]["size"] == 100


def test_train_limit_at_or_above_size_changes_nothing(digits):
    n = len(digits.splits["train"])
    for limit in (n, n + 1000):
        ds = load_dataset(DataConfig(name="digits", train_limit=limit))
        assert ds.fingerprints() == digits.fingerprints()


def test_describe_records_sizes_and_fingerprints(digits):
    d = digits.describe()
    assert d["name"] == "digits" and d["num_classes"] == 10 and d["input_shape"] == [1, 8, 8]
    for name in SPLITS:
        assert d["splits"][name] == {"size": len(digits.splits[name]),
                                     "fingerprint": digits.splits[name].fingerprint()}


# --- label noise ---------------------------------------------------------------------------------


def test_label_noise_flips_about_the_rate_of_train_labels_to_other_classes(digits):
    noisy = load_dataset(DataConfig(name="digits", label_noise=0.2))
    clean_y, noisy_y = digits.splits["train"].y, noisy.splits["train"].y
    flipped = noisy_y != clean_y
    n = len(clean_y)
    # Binomial(1257, 0.2): mean 251, std 14; +-4 std is a failure rate of about 1e-4 for a fair coin.
    assert abs(int(flipped.sum()) - 0.2 * n) <= 4 * math.sqrt(n * 0.2 * 0.8)
    assert noisy_y.dtype == torch.int64 and 0 <= int(noisy_y.min()) and int(noisy_y.max()) <= 9
    # Symmetric: a flipped label goes to every other class, none favoured much (~25 each).
    shifts = Counter(((noisy_y - clean_y) % 10)[flipped].tolist())
    assert set(shifts) == set(range(1, 10)) and max(shifts.values()) < 3 * min(shifts.values())
    # Only labels change, only in train: pixels, ids and the val/test splits are untouched.
    assert torch.equal(noisy.splits["train"].x, digits.splits["train"].x)
    assert torch.equal(noisy.splits["train"].ids, digits.splits["train"].ids)
    for name in ("val", "test"):
        assert torch.equal(noisy.splits[name].y, digits.splits[name].y)
        assert noisy.splits[name].fingerprint() == digits.splits[name].fingerprint()
    assert noisy.splits["train"].fingerprint() != digits.splits["train"].fingerprint()


def test_label_noise_is_deterministic_and_seeded(digits):
    a = load_dataset(DataConfig(name="digits", label_noise=0.2)).splits["train"].y
    assert torch.equal(a, load_dataset(DataConfig(name="digits", label_noise=0.2)).splits["train"].y)
    # The default seed is the split seed; another noise seed flips other samples.
    assert torch.equal(a, load_dataset(DataConfig(name="digits", label_noise=0.2, noise_seed=0)).splits["train"].y)
    other = load_dataset(DataConfig(name="digits", label_noise=0.2, noise_seed=1)).splits["train"].y
    assert not torch.equal(a, other)
    # A lower rate flips a subset of the samples a higher one flips, and a limited split is a prefix.
    clean = digits.splits["train"].y
    low = load_dataset(DataConfig(name="digits", label_noise=0.05)).splits["train"].y
    assert bool(((low != clean) <= (a != clean)).all())
    limited = load_dataset(DataConfig(name="digits", label_noise=0.2, train_limit=100)).splits["train"].y
    assert torch.equal(limited, a[:100])


def test_zero_label_noise_is_the_clean_dataset(digits):
    assert load_dataset(DataConfig(name="digits", label_noise=0.0)).fingerprints() == digits.fingerprints()


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digitz", "MNIST", "imagenet", "imagefolder"])
def test_unknown_dataset_name_is_a_user_error(name):
    with pytest.raises(UserError) as exc:
        load_dataset(DataConfig(name=name))
    assert exc.value.field == "dataset"
    assert repr(name) in str(exc.value)
    assert "digits" in exc.value.fix and "imagefolder:PATH" in exc.value.fix
    with pytest.raises(UserError):
        check_dataset_name(name)


@pytest.mark.parametrize("name", [*DATASETS, "imagefolder:/anywhere"])
def test_known_dataset_names_pass_the_check(name):
    check_dataset_name(name)


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_missing_torchvision_dataset_asks_for_download_offline(name, tmp_path, no_network):
    with pytest.raises(UserError) as exc:
        load_dataset(DataConfig(name=name, root=str(tmp_path), download=False))
    assert exc.value.field == "data_root"
    assert "--download" in str(exc.value)
    assert str(tmp_path) in str(exc.value)
    # Nothing was downloaded.
    assert not any(f.is_file() for f in tmp_path.rglob("*"))


# --- imagefolder ---------------------------------------------------------------------------------


def _write_images(root, classes: dict[str, tuple[int, int, int]], n: int = 10, size=(12, 10)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, color in classes.items():
        os.makedirs(root / cls, exist_ok=True)
        for i in range(n):
            arr = np.empty((size[1], size[0], 3), dtype=np.uint8)
            arr[:] = color
            arr = np.clip(arr.astype(int) + rng.integers(-10, 11, arr.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr, mode="RGB").save(root / cls / f"img_{i:02d}.png")


def test_imagefolder_loads_rgb_at_native_resolution_with_folder_class_names(tmp_path):
    folder = tmp_path / "imgs"
    # Class "cat" is red, class "dog" is blue, so each label can be checked against its pixels.
    _write_images(folder, {"dog": (20, 30, 220), "cat": (220, 30, 20)})
    ds = load_dataset(DataConfig(name=f"imagefolder:{folder}"))
    assert ds.class_names == ["cat", "dog"]
    assert ds.num_classes == 2
    assert ds.input_shape == (3, 10, 12)  # 12 wide, 10 high, as written: no silent resize
    assert sum(len(s) for s in ds.splits.values()) == 20
    ids = torch.cat([s.ids for s in ds.splits.values()])
    assert sorted(ids.tolist()) == list(range(20))
    for split in ds.splits.values():
        assert split.x.dtype == torch.float32
        assert split.x.min().item() >= 0.0 and split.x.max().item() <= 1.0
        red = split.x[:, 0].mean(dim=(1, 2))
        blue = split.x[:, 2].mean(dim=(1, 2))
        assert torch.equal(split.y, (blue > red).long())  # 0 = cat (red), 1 = dog (blue)
        assert set(split.y.tolist()) == {0, 1}  # stratified: both classes in every split
    again = load_dataset(DataConfig(name=f"imagefolder:{folder}"))
    assert again.fingerprints() == ds.fingerprints()


def test_imagefolder_grayscale_images_get_three_equal_channels(tmp_path):
    from PIL import Image

    folder = tmp_path / "gray"
    for cls, level in (("a", 40), ("b", 200)):
        os.makedirs(folder / cls)
        for i in range(10):
            Image.fromarray(np.full((8, 8), level + i, dtype=np.uint8), mode="L").save(folder / cls / f"{i}.png")
    ds = load_dataset(DataConfig(name=f"imagefolder:{folder}"))
    x = ds.splits["train"].x
    assert x.shape[1:] == (3, 8, 8)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])


def test_imagefolder_image_size_resizes_the_shorter_side_and_center_crops(tmp_path):
    from PIL import Image

    folder = tmp_path / "wide"
    for cls in ("a", "b"):
        os.makedirs(folder / cls)
        for i in range(10):
            arr = np.zeros((20, 40, 3), np.uint8)
            arr[:, :6] = 255  # a white left strip: cropped away by a center crop of the resized image
            Image.fromarray(arr).save(folder / cls / f"{i}.png")
    ds = load_dataset(DataConfig(name=f"imagefolder:{folder}", image_size=10))
    x = ds.splits["train"].x
    assert ds.input_shape == (3, 10, 10) and x.shape[1:] == (3, 10, 10)
    assert float(x.max()) == 0.0  # 40x20 -> 20x10 -> center 10x10: the white strip is gone
    assert ds.transform["eval"] == ["ExifTranspose", "ToImage", "Resize(10, antialias=True)", "CenterCrop(10)",
                                    "ToDtype(float32, scale=True)"]


def test_imagefolder_missing_path_is_a_user_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError) as exc:
        load_dataset(DataConfig(name=f"imagefolder:{missing}"))
    assert exc.value.field == "dataset"
    assert str(missing) in str(exc.value)


def test_imagefolder_without_class_folders_is_a_user_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as exc:
        load_dataset(DataConfig(name=f"imagefolder:{empty}"))
    assert exc.value.field == "dataset"


# --- torchvision's files, in torchvision's layout (tiny fakes written here: no network) -------------


def _idx(path, array: np.ndarray) -> None:
    """An idx file of unsigned bytes as MNIST ships them (big-endian magic 0x08 << 8 | ndim, then the dims)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write((0x0800 + array.ndim).to_bytes(4, "big"))
        for d in array.shape:
            f.write(int(d).to_bytes(4, "big"))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def _fake_mnist(root, folder="MNIST", n_train=100, n_test=20):
    rng = np.random.default_rng(0)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        _idx(os.path.join(root, folder, "raw", f"{prefix}-images-idx3-ubyte"), images)
        _idx(os.path.join(root, folder, "raw", f"{prefix}-labels-idx1-ubyte"), labels)
        data[prefix] = (images, labels)
    return data


def _fake_cifar10(root, per_batch=20):
    import pickle

    rng = np.random.default_rng(1)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    data = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in np.arange(per_batch) % 10]
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": images, "labels": labels}, f)
        data[name] = (images, labels)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return data


@pytest.mark.parametrize("layout", ["torchvision", "legacy"])
def test_mnist_idx_files_are_memory_mapped_in_either_layout(tmp_path, layout, no_network):
    """ROOT/MNIST/raw/... (torchvision's layout) and ROOT/mnist/MNIST/raw/... (this pipeline's earlier one)."""
    root = tmp_path / "data"
    data = _fake_mnist(str(root if layout == "torchvision" else root / "mnist"))
    ds = load_dataset(DataConfig(name="mnist", root=str(root)))
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert len(ds.splits["train"]) + len(ds.splits["val"]) == 100 and len(ds.splits["test"]) == 20
    train_src = ds.splits["train"].source
    assert isinstance(train_src.array, np.memmap)  # read from the file page by page, never copied whole
    for name, split in ds.splits.items():
        images, labels = data["t10k" if name == "test" else "train"]
        idx = split.ids.numpy() - (100 if name == "test" else 0)
        np.testing.assert_array_equal(split.y.numpy(), labels[idx])
        np.testing.assert_allclose(split.batch(np.arange(len(split))).numpy()[:, 0],
                                   images[idx].astype(np.float32) / 255.0, rtol=1e-6, atol=0)
    # The fingerprint covers the pixels: one changed byte in the file changes it.
    before = ds.fingerprints()
    path = root / ("MNIST" if layout == "torchvision" else "mnist/MNIST") / "raw" / "train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[16 + 28 * 28 * int(ds.splits["val"].ids[0]) + 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    after = load_dataset(DataConfig(name="mnist", root=str(root))).fingerprints()
    assert after["val"] != before["val"] and after["test"] == before["test"]


def test_fashion_mnist_reads_its_own_folder(tmp_path):
    _fake_mnist(str(tmp_path), folder="FashionMNIST")
    ds = load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path)))
    assert ds.class_names[0] == "T-shirt/top" and ds.input_shape == (1, 28, 28)


def test_cifar10_pickled_batches_in_torchvision_layout(tmp_path, no_network):
    data = _fake_cifar10(str(tmp_path))
    ds = load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert ds.input_shape == (3, 32, 32) and ds.class_names == [f"c{i}" for i in range(10)]
    train_images = np.concatenate([data[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    val = ds.splits["val"]
    np.testing.assert_array_equal((val.x.numpy() * 255).round().astype(np.uint8), train_images[val.ids.numpy()])
    test = ds.splits["test"]
    assert test.ids.tolist() == list(range(100, 120))  # test ids offset past the 100 training samples
    np.testing.assert_array_equal(test.y.numpy(), np.arange(20) % 10)
    # The split is sent to DataLoader workers without its pixels: they reload the files there.
    import pickle

    sent = pickle.dumps(ds.splits["train"])
    assert len(sent) < train_images.nbytes / 4
    # This process and every worker map one cache file written beside the batches, instead of each
    # unpickling its own copy of the whole set.
    assert isinstance(ds.splits["train"].source.array, np.memmap)
    in_worker = pickle.loads(sent).source.array
    assert isinstance(in_worker, np.memmap) and in_worker.filename == ds.splits["train"].source.array.filename
    np.testing.assert_array_equal(in_worker[ds.splits["train"].ids.numpy()], train_images[ds.splits["train"].ids.numpy()])
    assert [f for f in os.listdir(tmp_path / "cifar-10-batches-py") if f.startswith(".kd-pixels-")] != []


def test_cifar10_without_a_writable_cache_reads_its_batches(tmp_path, no_network):
    """Where no cache can be written (here: its name is taken by a folder), every process unpickles its own."""
    from pipeline.data.sources import _cache_path

    data = _fake_cifar10(str(tmp_path))
    folder = str(tmp_path / "cifar-10-batches-py")
    os.makedirs(_cache_path(folder, tuple(f"data_batch_{i}" for i in range(1, 6))))
    ds = load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    import pickle

    for source in (ds.splits["train"].source, pickle.loads(pickle.dumps(ds.splits["train"])).source):
        assert not isinstance(source.array, np.memmap)
        np.testing.assert_array_equal(source.array[:3].reshape(3, -1), data["data_batch_1"][0][:3])


def test_truncated_idx_file_is_a_one_line_error(tmp_path):
    _fake_mnist(str(tmp_path))
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError) as exc:
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    assert exc.value.field == "data_root" and "truncated" in str(exc.value)


# --- data options ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, field", [({"image_size": 0}, "image_size"),
                                           ({"train_transform": ("blur",)}, "train_transform")])
def test_bad_data_options_name_their_field(kwargs, field):
    with pytest.raises(UserError) as exc:
        DataConfig(**kwargs)
    assert exc.value.field == field


def test_provenance_key_leaves_new_options_out_at_their_defaults():
    """So the stores of an unchanged dataset keep their names; set, they are part of the key."""
    assert "image_size" not in DataConfig().key() and "train_transform" not in DataConfig().key()
    assert DataConfig(image_size=64).key()["image_size"] == 64
    assert DataConfig(train_transform=("hflip",)).key()["train_transform"] == ("hflip",)


def test_verify_data_names_the_file_modified_in_place(tmp_path, capsys):
    """Same name, same size, other bytes, after the store was written: `kd inspect --verify-data` names it."""
    from pipeline import teacher
    from pipeline.config import ModelConfig, OptimConfig, TeacherConfig
    from tests.conftest import cli_fails
    from tests.test_imagefolder import write_folder

    folder = write_folder(tmp_path / "f", n=12)
    p = teacher.plan(TeacherConfig(data=DataConfig(name=f"imagefolder:{folder}"),
                                   model=ModelConfig(arch="cnn", width=4), optim=OptimConfig(epochs=1, batch_size=8),
                                   store_root=str(tmp_path / "s"), checkpoint_root=str(tmp_path / "c"), device="cpu"))
    store = teacher.publish(p, teacher.train(p))
    path = os.path.join(folder, "b", "002.png")
    raw = bytearray(open(path, "rb").read())
    raw[-20] ^= 0xFF  # inside the PNG's final chunks: same size, other content
    open(path, "wb").write(bytes(raw))
    err = cli_fails(capsys, "inspect", store, "--verify-data")
    assert "modified in place (changed on disk since the store was written: " in err, err
    assert os.path.join("b", "002.png") in err and os.path.join("a", "001.png") not in err, err
