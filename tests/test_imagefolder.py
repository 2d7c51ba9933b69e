"""Image folders: bad input refused in one line with nothing written, image modes converted, per-sample train
transforms replayed in any worker, and a folder changed after its store was written refused by stage 2."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.cli import main
from pipeline import distill, teacher
from pipeline.config import DataConfig, DistillConfig, ModelConfig, OptimConfig, TeacherConfig
from pipeline.data import load_dataset
from pipeline.compat import check_fingerprints, verify_data
from pipeline.errors import StoreError, UserError
from pipeline.loader import SoftTargetLoader, ordered_batches
from pipeline.store import SoftTargetStore
from tests.conftest import cli_fails


def write_folder(root, *, classes=("a", "b"), n=10, size=(16, 12), fmt="png", seed=0) -> str:
    """``n`` noisy images per class, class k tinted by channel k, ``size`` = (width, height)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, cls in enumerate(classes):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 80, size=(size[1], size[0], 3), dtype=np.uint8)
            arr[..., k % 3] += 150
            Image.fromarray(arr).save(os.path.join(root, cls, f"{i:03d}.{fmt}"))
    return str(root)


def _data(folder, **kw) -> DataConfig:
    return DataConfig(name=f"imagefolder:{folder}", **kw)


def _refused(folder, field="dataset", **kw) -> str:
    with pytest.raises(UserError) as exc:
        load_dataset(_data(folder, **kw))
    assert exc.value.field == field and "\n" not in str(exc.value)
    return str(exc.value)


# --- structure: refused before any work ------------------------------------------------------------


def test_empty_class_folder_and_single_class_are_refused_and_non_images_skipped(tmp_path, caplog):
    folder = write_folder(tmp_path / "f")
    os.makedirs(tmp_path / "f" / "c")
    assert "'c'" in _refused(folder) and "holds no images" in _refused(folder)
    (tmp_path / "f" / "c" / "Thumbs.db").write_bytes(b"\0" * 64)  # a class folder of non-images holds no images
    assert "'c'" in _refused(folder) and "holds no images" in _refused(folder)
    os.remove(tmp_path / "f" / "c" / "Thumbs.db")
    os.rmdir(tmp_path / "f" / "c")
    # What Windows and notes leave in photo folders: skipped like torchvision's ImageFolder does, and counted.
    (tmp_path / "f" / "a" / "Thumbs.db").write_bytes(b"\0" * 64)
    (tmp_path / "f" / "b" / "desktop.ini").write_text("[.ShellClassInfo]")
    (tmp_path / "f" / "b" / "notes.txt").write_text("not a picture")
    with caplog.at_level("WARNING", logger="pipeline.data.folder"):
        ds = load_dataset(_data(folder))
        load_dataset(_data(folder))  # said once per process
    assert sum(len(s) for s in ds.splits.values()) == 20  # the images alone
    said = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert said == [f"dataset: skipped 3 files that are not images (by extension, as torchvision's ImageFolder "
                    f"does) in image folder {folder}: Thumbs.db, desktop.ini, notes.txt"]
    for name in ("a/Thumbs.db", "b/desktop.ini", "b/notes.txt"):
        os.remove(tmp_path / "f" / name)
    (tmp_path / "f" / "a" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    (tmp_path / "f" / "README.txt").write_text("beside the class folders: ignored")
    assert len(load_dataset(_data(folder)).splits["train"]) > 0
    single = write_folder(tmp_path / "one", classes=("only",))
    assert "single class" in _refused(single) and "at least 2 classes" in _refused(single)


def test_mixed_sizes_need_image_size_and_get_it(tmp_path):
    folder = write_folder(tmp_path / "f")
    write_folder(tmp_path / "f", classes=("b",), n=1, size=(20, 20), seed=1)  # b/000.png is now 20x20
    msg = _refused(folder, field="image_size")
    assert "--image-size" in msg and "20x20" in msg
    ds = load_dataset(_data(folder, image_size=8))
    assert ds.input_shape == (3, 8, 8) and ds.splits["train"].x.shape[1:] == (3, 8, 8)


def test_cli_refuses_bad_folders_in_one_line_and_writes_nothing(capsys, tmp_path):
    folder = write_folder(tmp_path / "f")
    os.makedirs(tmp_path / "f" / "c")
    (tmp_path / "f" / "c" / "data.csv").write_text("1,2,3")
    out = ["--store-root", str(tmp_path / "stores"), "--checkpoint-root", str(tmp_path / "ckpt")]
    assert "'c'" in cli_fails(capsys, "teacher", "--dataset", f"imagefolder:{folder}", *out)
    assert "single class" in cli_fails(capsys, "teacher", "--dataset",
                                    f"imagefolder:{write_folder(tmp_path / 'one', classes=('x',))}", *out)
    # no path at all: refused, not the current folder scanned
    assert "names no folder" in cli_fails(capsys, "teacher", "--dataset", "imagefolder:", *out)
    assert not (tmp_path / "stores").exists() and not (tmp_path / "ckpt").exists()


def test_cli_says_once_how_many_files_it_skipped(tmp_path):
    """`kd teacher` on a folder with Windows' files: not refused; one line says what was skipped."""
    import subprocess
    import sys

    import flows

    folder = write_folder(tmp_path / "f")
    (tmp_path / "f" / "a" / "Thumbs.db").write_bytes(b"\0" * 64)
    (tmp_path / "f" / "b" / "desktop.ini").write_text("[.ShellClassInfo]")
    kd = os.path.join(os.path.dirname(sys.executable), "kd")
    env = {k: v for k, v in os.environ.items() if k != flows.CONSOLE_LEVEL}
    # topk:2 keeps both classes: refused right after the folder is listed, before any training.
    proc = subprocess.run([kd, "teacher", "--dataset", f"imagefolder:{folder}", "--encoding", "topk:2",
                           "--store-root", str(tmp_path / "stores"), "--checkpoint-root", str(tmp_path / "ckpt")],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"dataset: skipped 2 files that are not images (by extension, as torchvision's ImageFolder does) in image "
        f"folder {folder}: Thumbs.db, desktop.ini",
        f"error: encoding: topk:2 keeps every one of imagefolder:{folder}'s 2 classes (use topk:K with K < 2, or "
        "float32 to keep all logits)"]


def test_a_dangling_link_in_a_class_folder_is_one_line_naming_it(capsys, tmp_path):
    folder = write_folder(tmp_path / "f")
    os.symlink(tmp_path / "gone.png", tmp_path / "f" / "a" / "zz-dangling.png")  # listed as an image, no file
    out = ["--store-root", str(tmp_path / "stores"), "--checkpoint-root", str(tmp_path / "ckpt")]
    msg = cli_fails(capsys, "teacher", "--dataset", f"imagefolder:{folder}", *out)
    assert os.path.join("a", "zz-dangling.png") in msg and "No such file" in msg
    assert not (tmp_path / "stores").exists() and not (tmp_path / "ckpt").exists()


# --- decoding: in whichever process reads the batch --------------------------------------------------


def _broken(tmp_path, kind: str) -> tuple[str, str]:
    folder = write_folder(tmp_path / "f", fmt="jpg")
    path = tmp_path / "f" / "b" / "004.jpg"
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    else:  # bytes that are no image at all, under an image's name
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return folder, os.path.join("b", "004.jpg")


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_corrupt_jpeg_is_refused_naming_it_and_nothing_is_written(tmp_path, kind):
    folder, rel = _broken(tmp_path, kind)
    cfg = TeacherConfig(data=_data(folder, image_size=12), model=ModelConfig(arch="cnn", width=4),
                        optim=OptimConfig(epochs=1, batch_size=8), store_root=str(tmp_path / "stores"),
                        checkpoint_root=str(tmp_path / "ckpt"), device="cpu")
    p = teacher.plan(cfg)  # names and sizes only: the file is not decoded yet
    with pytest.raises(UserError) as exc:
        teacher.train(p)  # the first epoch (or validation) decodes every image
    assert exc.value.field == "dataset" and rel in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "stores").exists() and not (tmp_path / "ckpt").exists()


def test_corrupt_jpeg_met_by_the_pass_of_a_loaded_teacher_leaves_no_copy_behind(tmp_path):
    """With --checkpoint nothing is trained: the teacher pass is the first to decode every image. Its half-written
    copy is deleted and its lease given up (a crash would keep the copy, to resume)."""
    from pipeline.train import build_seeded

    folder, rel = _broken(tmp_path, "truncated")
    data = _data(folder, image_size=12)
    ds = load_dataset(data)
    ckpt = tmp_path / "teacher.pt"
    model_cfg = ModelConfig(arch="cnn", width=4)
    torch.save(build_seeded(model_cfg, ds.input_shape, ds.num_classes, seed=0).state_dict(), ckpt)
    stores = tmp_path / "stores"
    cfg = TeacherConfig(data=data, model=model_cfg, checkpoint=str(ckpt), store_root=str(stores),
                        checkpoint_root=str(tmp_path / "ckpt"), device="cpu", chunk_rows=2, shard_chunks=1)
    p = teacher.plan(cfg)
    with pytest.raises(UserError) as exc:
        teacher.publish(p, teacher.load(p))
    assert exc.value.field == "dataset" and rel in str(exc.value) and "\n" not in str(exc.value)
    assert not stores.exists() or os.listdir(stores) == []


@pytest.mark.slow
def test_corrupt_image_read_in_a_worker_is_the_same_one_line_error(tmp_path):
    folder, rel = _broken(tmp_path, "truncated")
    ds = load_dataset(_data(folder, image_size=12))
    # The split that holds the broken file (the stratified split decides which; not always train).
    split = next(s for s in ds.splits.values() if rel in [s.source.path(int(i)) for i in s.index])
    batches = [np.arange(len(split))]
    errors = []
    for workers in (0, 1):
        with pytest.raises(UserError) as exc:
            list(ordered_batches(split, batches, workers=workers))
        errors.append(str(exc.value))
    assert rel in errors[1] and "\n" not in errors[1] and errors[1] == errors[0]


def test_image_modes_are_converted_to_rgb_not_refused(tmp_path):
    from PIL import Image

    root = tmp_path / "modes"
    for cls in ("x", "y"):
        os.makedirs(root / cls)
        for i in range(4):
            Image.fromarray(np.full((6, 6), 60 + i, np.uint8), "L").save(root / cls / f"l{i}.png")
            Image.fromarray(np.full((6, 6, 4), (200, 10, 10, 50), np.uint8), "RGBA").save(root / cls / f"a{i}.png")
            Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(root / cls / f"c{i}.jpg")  # red in CMYK
            Image.fromarray(np.full((6, 6), 100 * 256 + 7, np.uint16)).save(root / cls / f"w{i}.png")  # 16-bit
            Image.new("P", (6, 6), 3).save(root / cls / f"p{i}.png")
            Image.fromarray(np.full((6, 6), 0.5, np.float32), "F").save(root / cls / f"f{i}.tif")  # float, [0, 1]
            Image.fromarray(np.full((6, 6), 200.0, np.float32), "F").save(root / cls / f"g{i}.tif")  # float, [0, 255]
    ds = load_dataset(_data(root))
    assert ds.input_shape == (3, 6, 6)
    split = ds.splits["train"]
    x = split.x
    assert x.shape[1:] == (3, 6, 6) and x.dtype == torch.float32
    names = [split.source.path(int(i)) for i in split.index]
    px = {os.path.basename(n)[0]: x[k, :, 0, 0] for k, n in enumerate(names)}
    assert torch.allclose(px["w"], torch.full((3,), 100 / 255))  # 16-bit keeps its top 8 bits, not clipped
    assert px["a"][0] > 0.7 and px["a"][1] < 0.1  # RGBA: alpha dropped, colour kept
    assert px["c"][0] > 0.9 and px["c"][1] < 0.1  # CMYK red is RGB red
    assert px["l"][0] == px["l"][1] == px["l"][2]  # grey: three equal channels
    assert torch.allclose(px["f"], torch.full((3,), 128 / 255))  # a float image in [0, 1] is not black
    assert torch.allclose(px["g"], torch.full((3,), 200 / 255))  # one in [0, 255] keeps its values


# --- photos as cameras write them: EXIF orientation, large images ------------------------------------


def write_rotated_photos(root, *, n=10, size=(16, 12), orientation=6) -> str:
    """JPEGs stored ``size`` = (width, height) with an EXIF orientation tag, as a phone held upright writes them
    (6: the viewer turns the stored pixels a quarter clockwise). Each class is tinted on its own channel."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, cls in enumerate(("a", "b")):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 80, size=(size[1], size[0], 3), dtype=np.uint8)
            arr[..., k] += 150
            arr[:3, :3] = 255  # a white top-left corner in the stored pixels: where it lands shows the turn
            exif = Image.Exif()
            exif[0x0112] = orientation
            Image.fromarray(arr).save(os.path.join(root, cls, f"{i:03d}.jpg"), exif=exif, quality=95)
    return str(root)


def test_exif_orientation_turns_photos_upright_and_is_recorded(tmp_path):
    from PIL import Image, ImageOps

    folder = write_rotated_photos(tmp_path / "photos")
    upright = load_dataset(_data(folder))  # the default for a new store
    stored = load_dataset(_data(folder, exif_orientation=False))
    assert upright.input_shape == (3, 16, 12) and stored.input_shape == (3, 12, 16)  # (C, H, W): turned a quarter
    split = upright.splits["train"]
    rel = split.source.path(int(split.index[0]))
    with Image.open(os.path.join(folder, rel)) as img:
        viewed = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))  # what a photo viewer shows
    pixels = (split.batch(np.array([0]))[0] * 255).round().to(torch.uint8)  # (3, 16, 12)
    assert torch.equal(pixels, torch.from_numpy(viewed.copy()).permute(2, 0, 1))
    assert viewed[:2, -2:].min() > 200 and viewed[:2, :2].max() < 240  # the stored top-left corner, now top-right
    # Recorded in the transform (and so in the store's hash and provenance key) only when on.
    assert upright.transform["eval"][0] == "ExifTranspose" and "ExifTranspose" not in stored.transform["eval"]
    assert upright.transform_hash != stored.transform_hash
    assert _data(folder).key() != _data(folder, exif_orientation=False).key()
    # The other datasets carry no EXIF: the option changes nothing of theirs, their stores keep their keys.
    assert DataConfig(exif_orientation=False).key() == DataConfig().key()
    assert "exif_orientation" not in DataConfig().key()
    # At a fixed --image-size too: turned before the resize and crop.
    assert load_dataset(_data(folder, image_size=8)).transform["eval"][:2] == ["ExifTranspose", "ToImage"]


def test_a_store_written_before_the_exif_option_is_read_and_reproduced_as_it_was(tmp_path):
    """Its data_config has no exif_orientation and its transform no ExifTranspose: stage 2 reads its photos as
    stored, as the teacher did, with the same transform hash; a new store of the same folder is another store."""
    import zarr

    folder = write_rotated_photos(tmp_path / "photos", n=12)
    cfg = TeacherConfig(data=_data(folder, exif_orientation=False), model=ModelConfig(arch="cnn", width=4),
                        optim=OptimConfig(epochs=1, batch_size=8), store_root=str(tmp_path / "stores"),
                        checkpoint_root=str(tmp_path / "ckpt"), device="cpu", chunk_rows=8, shard_chunks=1)
    p = teacher.plan(cfg)
    store = teacher.publish(p, teacher.train(p))
    g = zarr.open_group(store, mode="r+")
    attrs = dict(g.attrs)
    # Exactly what the pipeline recorded before the option: no step of it, the same record and hash.
    before = {"pixels": "float32 in [0, 1], no normalisation", "eval": ["ToImage", "ToDtype(float32, scale=True)"],
              "size": [12, 16], "version": 2}
    from pipeline.transforms import transform_hash

    assert attrs["transform"] == before and attrs["transform_hash"] == transform_hash(before)
    attrs["data_config"] = {k: v for k, v in attrs["data_config"].items() if k != "exif_orientation"}
    g.attrs.put(attrs)  # as the previous version wrote it
    meta = SoftTargetStore(store).meta
    assert meta.data_cfg().exif_orientation is False
    plan = distill.plan(DistillConfig(store=store, model=ModelConfig(arch="cnn", width=4), device="cpu",
                                      temperatures=(4.0,), report_root=str(tmp_path / "reports")))
    assert plan.dataset.input_shape == (3, 12, 16) and plan.dataset.transform_hash == meta.transform_hash
    # The same folder read upright (the default now) is other data: its own store, never this one reused.
    assert teacher.plan(TeacherConfig(**{**vars(cfg), "data": _data(folder)})).store_path != store
    assert teacher.plan(cfg).store_path == store


def test_a_large_image_is_said_once_in_our_words_not_pillows(tmp_path, caplog, monkeypatch):
    """An image over Pillow's decompression-bomb warning limit (89 megapixels; lowered here to keep the test
    small) printed Pillow's raw warning at the header scan and again at every decode."""
    import warnings

    from PIL import Image

    folder = write_folder(tmp_path / "f")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)  # every 16x12 image (192 pixels) is over it, none 2x
    with caplog.at_level("WARNING", logger="pipeline.data.folder"), warnings.catch_warnings(record=True) as caught:
        ds = load_dataset(_data(folder))  # native size: every header read
        for _ in range(2):
            for split in ds.splits.values():
                split.batch(np.arange(len(split)))  # every image decoded, twice
    said = [r.getMessage() for r in caplog.records if "decompression-bomb" in r.getMessage()]
    assert len(said) == 20 and len(set(said)) == 20  # one line per image, however often it is read
    assert said[0] == ("dataset: a/000.png is 16x12 (0.0 megapixels, over Pillow's decompression-bomb warning limit "
                       "of 0.0): decoded anyway, at 0 MB a read; shrink it if that is not intended")
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


# --- train transforms: drawn per sample, the same in any worker --------------------------------------


def test_train_transform_is_drawn_per_sample_and_epoch(tmp_path):
    folder = write_folder(tmp_path / "f", size=(24, 24))
    split = load_dataset(_data(folder, image_size=16, train_transform=("random-resized-crop", "hflip"))
                         ).splits["train"]
    rows = np.arange(6)
    a = split.batch(rows, train_seed=(0, 0))
    assert a.shape == (6, 3, 16, 16)
    assert torch.equal(a, split.batch(rows, train_seed=(0, 0)))  # replayable
    assert torch.equal(a[2:4], split.batch(rows[2:4], train_seed=(0, 0)))  # per sample, not per batch
    assert not torch.equal(a, split.batch(rows, train_seed=(0, 1)))  # a new draw each epoch
    assert not torch.equal(a, split.batch(rows))  # eval: resize + center crop, no draw
    torch.manual_seed(5)
    state = torch.get_rng_state()
    split.batch(rows, train_seed=(0, 0))
    assert torch.equal(state, torch.get_rng_state())  # the caller's generator is untouched


@pytest.mark.slow
def test_train_transform_pixels_are_identical_with_0_and_2_workers(tmp_path):
    folder = write_folder(tmp_path / "f", size=(24, 24))
    split = load_dataset(_data(folder, image_size=16, train_transform=("random-resized-crop", "hflip"))
                         ).splits["train"]

    def by_row(workers):
        loader = SoftTargetLoader(split, 4, seed=3, workers=workers, pin_memory=False)
        return {int(r): b.x[i] for b in loader.epoch(0) for i, r in enumerate(b.rows)}

    serial, parallel = by_row(0), by_row(2)
    assert serial.keys() == parallel.keys() == set(range(len(split)))
    assert all(torch.equal(serial[r], parallel[r]) for r in serial)


# --- a folder changed after its store was written ----------------------------------------------------


@pytest.fixture
def folder_store(tmp_path):
    folder = write_folder(tmp_path / "f", n=12)
    cfg = TeacherConfig(data=_data(folder), model=ModelConfig(arch="cnn", width=4),
                        optim=OptimConfig(epochs=1, batch_size=8), store_root=str(tmp_path / "stores"),
                        checkpoint_root=str(tmp_path / "ckpt"), device="cpu", chunk_rows=8, shard_chunks=1)
    p = teacher.plan(cfg)
    return folder, teacher.publish(p, teacher.train(p)), p


def _stage2(store) -> None:
    distill.plan(DistillConfig(store=store, model=ModelConfig(arch="cnn", width=4), device="cpu",
                               temperatures=(4.0,), report_root="unused"))


def test_store_records_the_listing_and_content_and_stage2_accepts_the_same_folder(folder_store, capsys):
    folder, store, p = folder_store
    meta = SoftTargetStore(store).meta
    ds = p.dataset
    assert meta.dataset.input_shape == (3, 12, 16) and meta.transform == ds.transform
    for name, info in meta.dataset.splits.items():
        assert info.content == ds.splits[name].content_hash()  # hashed during the pass, equal to a fresh read
        assert info.content != info.fingerprint
    _stage2(store)
    # Other preprocessing than the logits assume: refused, naming the transform.
    with pytest.raises(StoreError) as exc:
        distill.plan(DistillConfig(store=store, data=_data(folder, image_size=8), device="cpu", report_root="x"))
    assert exc.value.field == "transform_hash" and "--image-size" in str(exc.value)
    assert set(verify_data(SoftTargetStore(store))) == {"train", "val", "test"}
    main(["inspect", store, "--verify-data"])
    assert "data verified" in capsys.readouterr().out


def test_split_writers_record_the_same_content(folder_store):
    """--writers N: the parts run elsewhere, so finalize hashes the files itself; the record is the same."""
    folder, store, p = folder_store
    other = teacher.plan(TeacherConfig(**{**vars(p.cfg), "store_root": os.path.join(os.path.dirname(store), "w"),
                                          "checkpoint": p.checkpoint_path, "writers": 2}))
    writer = teacher.create_store(other, teacher.load(other))
    writer.close()
    for part in teacher.pending_work(writer, 2):
        teacher.write_part(other, part)
    split_store = teacher.finalize(other)
    a, b = SoftTargetStore(store).meta.dataset, SoftTargetStore(split_store).meta.dataset
    assert {n: s.content for n, s in a.splits.items()} == {n: s.content for n, s in b.splits.items()}


@pytest.mark.parametrize("change, says", [
    ("add", os.path.join("a", "zzz.png") + " was added"),
    ("remove", os.path.join("b", "003.png") + " was removed"),
    ("resize", os.path.join("a", "005.png") + " changed"),
])
def test_stage2_refuses_a_changed_folder_naming_the_first_differing_file(folder_store, change, says):
    from PIL import Image

    folder, store, _ = folder_store
    if change == "add":
        Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(os.path.join(folder, "a", "zzz.png"))
    elif change == "remove":
        os.remove(os.path.join(folder, "b", "003.png"))
    else:
        Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(os.path.join(folder, "a", "005.png"))
    from pipeline.data import open_dataset

    open_dataset.cache_clear()  # a new process would see the folder afresh
    with pytest.raises(StoreError) as exc:
        _stage2(store)
    assert exc.value.field == "dataset.files" and says in str(exc.value), str(exc.value)


def test_a_file_modified_in_place_passes_stage2_and_fails_verify_data(folder_store, capsys):
    """Same name, same size, other bytes: the cheap identity cannot see it; the content hash does."""
    folder, store, _ = folder_store
    path = os.path.join(folder, "b", "002.png")
    raw = bytearray(open(path, "rb").read())
    raw[-20] ^= 0xFF  # inside the PNG's final chunks: same size, other content
    open(path, "wb").write(bytes(raw))
    from pipeline.data import open_dataset

    open_dataset.cache_clear()
    _stage2(store)  # identity unchanged: stage 2 starts
    with pytest.raises(StoreError) as exc:
        verify_data(SoftTargetStore(store))
    assert "content" in exc.value.field and "modified in place" in str(exc.value)
    assert "modified in place" in cli_fails(capsys, "inspect", store, "--verify-data")


def test_stage2_at_native_resolution_reads_no_image_when_the_folder_is_unchanged(folder_store, capsys, monkeypatch):
    """The teacher pass read every header; stage 2 compares the listing and takes the size from the store."""
    from PIL import Image

    from pipeline.data import open_dataset

    folder, store, p = folder_store
    for cls in ("a", "b"):  # every header made unreadable, every byte size kept: the listing still matches
        for path in Path(folder, cls).iterdir():
            path.write_bytes(bytes(16) + path.read_bytes()[16:])
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **kw: opened.append(a[0]) or real_open(*a, **kw))
    open_dataset.cache_clear()  # a new process would see the folder afresh
    _stage2(store)
    assert opened == []
    assert distill.plan(DistillConfig(store=store, model=ModelConfig(arch="cnn", width=4), device="cpu",
                                      report_root="unused")).dataset.input_shape == (3, 12, 16)
    assert "modified in place" in cli_fails(capsys, "inspect", store, "--verify-data")  # the full check reads them
    with pytest.raises(UserError) as exc:  # a teacher pass still reads every header
        teacher.plan(p.cfg)
    assert exc.value.field == "dataset" and "cannot read image" in str(exc.value)
    assert opened


def test_a_file_replaced_by_another_size_at_native_resolution_is_a_changed_folder(folder_store, capsys):
    """Not "images differ in size ... pass --image-size": the folder changed since the store was written."""
    from PIL import Image

    from pipeline.data import open_dataset

    folder, store, _ = folder_store
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(os.path.join(folder, "a", "001.png"))
    open_dataset.cache_clear()
    with pytest.raises(StoreError) as exc:
        _stage2(store)
    says = os.path.join("a", "001.png") + " changed"
    assert exc.value.field == "dataset.files" and says in str(exc.value), str(exc.value)
    for argv in (["distill", "--store", store, "--report-root", os.path.join(folder, "..", "reports")],
                 ["inspect", store, "--verify-data"]):
        msg = cli_fails(capsys, *argv)
        assert msg.startswith("error: dataset.files: ") and says in msg and "--image-size" not in msg, msg
    with pytest.raises(StoreError) as exc:  # `kd inspect --verify` compares the listing too
        check_fingerprints(SoftTargetStore(store))
    assert exc.value.field == "dataset.files"


@pytest.mark.parametrize("recorded", ["not base64 at all!", "aGVsbG8="])  # the second: base64, but not zlib
def test_a_damaged_recorded_listing_is_a_store_error(recorded):
    from pipeline.data.folder import read_manifest

    with pytest.raises(StoreError) as exc:
        read_manifest(recorded)
    assert exc.value.field == "dataset.files" and "damaged" in exc.value.fix
