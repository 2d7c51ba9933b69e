"""``imagefolder:PATH``: one sub-folder of images per class, read file by file at native resolution.

The folder is scanned once (names and sizes, no pixels) and checked before any
work: no class folders, a single class or a class folder without images are
each refused in one line naming the folder; hidden files (``.DS_Store``…) and
files beside the class folders are ignored. Files that are not images by their
extension (``Thumbs.db``, ``desktop.ini``, notes) are skipped, as torchvision's
``ImageFolder`` skips them, and their number is logged once. Images are decoded
where they are read (in DataLoader workers), turned upright by their EXIF
orientation unless ``--no-exif-orientation``, and converted to RGB whatever
their mode (L, P, RGBA, CMYK, 16-bit…); a file that cannot be decoded is
refused naming it. An image over Pillow's decompression-bomb warning limit is
decoded, with one line of ours per file instead of Pillow's raw warning at every
read.

The listing (relative paths and byte sizes) is the folder's cheap identity:
stage 2 checks it at every start, before reading any image, and, when it
differs from the store's, names the first file added, removed or changed. At
native resolution the teacher pass reads every image's header to learn the one
size; stage 2, when the listing matches, takes that size from the store
instead (:class:`RecordedFolder`). The full content (every file's bytes) is
hashed once, while the teacher pass reads them anyway.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import logging
import os
import threading
import warnings
import zlib

import numpy as np
import torch

from pipeline.data.sources import Source
from pipeline.errors import StoreError, UserError
from pipeline.names import NO_LABEL

# torchvision's IMG_EXTENSIONS: what ImageFolder would read.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FIX_FILE = "remove or replace the file"
ORIENTATION = 0x0112  # the EXIF tag; 5 to 8 turn the image a quarter, swapping its width and height
SHOWN_SKIPPED = 3  # skipped files named in the log line

log = logging.getLogger(__name__)
_logged: set = set()  # what this process has said once already: (root, skipped files), large image paths
_logged_lock = threading.Lock()


def _once(key) -> bool:
    """True the first time ``key`` is seen in this process."""
    with _logged_lock:
        if key in _logged:
            return False
        _logged.add(key)
        return True


def _quiet_pillow() -> None:
    """Pillow's DecompressionBombWarning, raw and repeated at every open of a large image, is off; the images
    are the user's own and decoded anyway, and :func:`_check_pixels` says so once per file instead."""
    from PIL import Image

    # Checked at every call, not once: a caller's warnings.catch_warnings() restores the filters it found.
    if not any(f[0] == "ignore" and f[2] is Image.DecompressionBombWarning for f in warnings.filters):
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _check_pixels(img, rel: str) -> None:
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    w, h = img.size
    if limit and w * h > limit and _once(("large", rel)):
        log.warning("dataset: %s is %dx%d (%.1f megapixels, over Pillow's decompression-bomb warning limit of "
                    "%.1f): decoded anyway, at %.0f MB a read; shrink it if that is not intended",
                    rel, w, h, w * h / 1e6, limit / 1e6, w * h * 3 / 1e6)


def _walk(root: str) -> tuple[list[str], list[str], list[int], list[int], list[str]]:
    """Class names, every image's relative path, byte size and label, in a fixed (sorted) order, and the files
    skipped as not images."""
    if not os.path.isdir(root):
        raise UserError("dataset", f"image folder {root!r} does not exist", "pass imagefolder:PATH to a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError("dataset", f"image folder {root!r} has no class folders",
                        "use one sub-folder of images per class")
    if len(classes) == 1:
        raise UserError("dataset", f"image folder {root!r} has a single class folder ({classes[0]!r})",
                        "a classifier needs at least 2 classes: add a sub-folder per class")
    paths, sizes, labels, skipped = [], [], [], []
    for label, cls in enumerate(classes):
        before = len(paths)
        # fwalk: each file is statted relative to its open folder (fstatat), not by its full path, which
        # saves resolving the path again for every file of a large folder.
        for dirpath, dirnames, filenames, folder in os.fwalk(os.path.join(root, cls), follow_symlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            # Paths joined as strings, relpath once per directory: per file, os.path.relpath costs more than
            # the stat itself.
            rel_dir = os.path.relpath(dirpath, root) + os.sep
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                rel = rel_dir + name
                if not name.lower().endswith(IMAGE_EXTENSIONS):  # Thumbs.db, desktop.ini, a note: as ImageFolder
                    skipped.append(rel)
                    continue
                try:
                    sizes.append(os.stat(name, dir_fd=folder).st_size)
                except OSError as exc:  # a dangling link, or a file removed while listing
                    raise UserError("dataset", f"cannot read {rel} in image folder {root!r} ({exc.strerror})",
                                    FIX_FILE) from None
                paths.append(rel)
                labels.append(label)
        if len(paths) == before:
            raise UserError("dataset", f"class folder {cls!r} of image folder {root!r} holds no images (files "
                            f"named {', '.join(IMAGE_EXTENSIONS)})", "add images to it or remove it")
    return classes, paths, sizes, labels, skipped


def _walk_flat(root: str) -> tuple[list[str], list[int], list[str]]:
    """Every image under ``root``, recursively, class folders or not: relative paths and byte sizes in a fixed
    (sorted) order, and the files skipped as not images (an unlabelled folder: ``--unlabelled``)."""
    if not os.path.isdir(root):
        raise UserError("unlabelled", f"folder {root!r} does not exist", "pass --unlabelled PATH to a folder of "
                        "images, or a dataset name such as mnist")
    paths, sizes, skipped = [], [], []
    for dirpath, dirnames, filenames, folder in os.fwalk(root, follow_symlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = "" if dirpath == root else os.path.relpath(dirpath, root) + os.sep
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = rel_dir + name
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                skipped.append(rel)
                continue
            try:
                sizes.append(os.stat(name, dir_fd=folder).st_size)
            except OSError as exc:
                raise UserError("unlabelled", f"cannot read {rel} in folder {root!r} ({exc.strerror})",
                                FIX_FILE) from None
            paths.append(rel)
    if not paths:
        raise UserError("unlabelled", f"folder {root!r} holds no images (files named {', '.join(IMAGE_EXTENSIONS)})",
                        "add images to it, or pass another folder")
    return paths, sizes, skipped


def to_rgb(img) -> np.ndarray:
    """Any PIL image as (H, W, 3) uint8: 16- and 32-bit greys keep their top 8 bits, float greys are read as
    [0, 1] when none exceeds 1 (else as [0, 255]), alpha is dropped."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit PNGs open as I;16 or I (values up to 65535): scale, do not clip at 255 as convert("L") would.
        grey = (np.asarray(img).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(grey, mode="L")
    elif img.mode == "F":
        # Float images are [0, 1] by the usual convention (scientific TIFFs, numpy exports); clipped at 255 as
        # before they came out black. One whose values exceed 1 is taken as [0, 255].
        grey = np.asarray(img, dtype=np.float32)
        scale = 255.0 if np.nanmax(grey, initial=0.0) <= 1.0 else 1.0
        img = Image.fromarray(np.nan_to_num(grey * scale).clip(0, 255).round().astype(np.uint8), mode="L")
    elif img.mode in ("P", "PA") and "transparency" in img.info:
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB"))


def decode(data: bytes, rel: str, *, exif: bool = False) -> torch.Tensor:
    """One image file's bytes as a (3, H, W) uint8 tensor, turned upright by its EXIF orientation when ``exif``;
    a file that does not decode is a one-line error."""
    from PIL import Image, ImageOps

    _quiet_pillow()
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_pixels(img, rel)
            img.load()  # decode now: a truncated file fails here, not later
            upright = ImageOps.exif_transpose(img) if exif and img.getexif().get(ORIENTATION, 1) != 1 else img
            arr = to_rgb(upright)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError… for broken files
        raise UserError("dataset", f"cannot decode image {rel} ({type(exc).__name__}: {exc})", FIX_FILE) from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (3, H, W)


def header_size(path: str, rel: str, *, exif: bool = False) -> tuple[int, int]:
    """(width, height) from the file's header alone; upright (by its EXIF orientation) when ``exif``."""
    from PIL import Image

    _quiet_pillow()
    try:
        with Image.open(path) as img:
            _check_pixels(img, rel)
            w, h = img.size
            return (h, w) if exif and img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8) else (w, h)
    except Exception as exc:
        raise UserError("dataset", f"cannot read image {rel} ({type(exc).__name__}: {exc})", FIX_FILE) from None


def native_size(cfg) -> bool:
    """Whether a data config reads images at their native resolution (so they must all have one size): neither
    --image-size nor a teacher's own resize and crop."""
    pre = cfg.model_preprocessing
    return cfg.image_size is None and not (pre is not None and pre.geometry)


@dataclasses.dataclass(frozen=True)
class RecordedFolder:
    """What a store recorded of the folder it was written from: its listing (``dataset.files``) and, for a
    store written at native resolution, the images' one shape (C, H, W). Hashable: part of
    :func:`pipeline.data.open_dataset`'s cache key."""

    files: str
    shape: tuple[int, int, int] | None

    @classmethod
    def of(cls, meta, data_cfg) -> RecordedFolder | None:
        """From a store's metadata, for opening ``data_cfg``; None unless that is the store's own image folder."""
        d = meta.dataset
        if d.files is None or d.name != data_cfg.name:
            return None
        native = native_size(meta.data_cfg())
        return cls(d.files, tuple(int(n) for n in d.input_shape) if native else None)  # type: ignore[arg-type]


class FolderSource(Source):
    """The images of one folder. Paths are kept as one joined byte string plus offsets (compact, and
    cheap to send to workers); labels and sizes as int arrays."""

    has_content = True

    def __init__(self, root: str, *, native_size: bool, recorded: RecordedFolder | None = None,
                 exif: bool = False, unlabelled: bool = False) -> None:
        """``native_size``: every image must have one size (no --image-size was given); it is learnt by reading
        every header. ``recorded``: the store's record of this folder, compared with it before any header is
        read (a folder changed since is refused naming the file); when it matches, the size is the store's.
        ``exif``: images are turned upright by their EXIF orientation (sizes too). ``unlabelled``: every image
        under the folder, recursively, each labelled NO_LABEL (no class folders needed)."""
        self.root = os.path.abspath(root)
        self.exif = exif
        if unlabelled:
            paths, sizes, self.skipped = _walk_flat(self.root)
            self.classes, labels = [], [NO_LABEL] * len(paths)
        else:
            self.classes, paths, sizes, labels, self.skipped = _walk(self.root)
        if self.skipped and _once((self.root, tuple(self.skipped))):
            shown = ", ".join(os.path.basename(p) for p in self.skipped[:SHOWN_SKIPPED])
            more = "…" if len(self.skipped) > SHOWN_SKIPPED else ""
            what = "1 file that is not an image" if len(self.skipped) == 1 else \
                f"{len(self.skipped)} files that are not images"
            log.warning("dataset: skipped %s (by extension, as torchvision's ImageFolder does) in image folder %s: "
                        "%s%s", what, root, shown, more)
        encoded = [p.encode() for p in paths]
        self._names = b"".join(encoded)
        self._offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self._matched: str | None = None  # the manifest this listing was found equal to (not sent to workers)
        if recorded is not None:
            self.check_unchanged(recorded.files)
        if not native_size:
            self.shape = None
        elif recorded is not None and recorded.shape is not None:
            # The teacher pass that wrote the store read every header of exactly these files.
            self.shape = recorded.shape
        else:
            self.shape = self._common_shape()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_matched": None}

    def path(self, i: int) -> str:
        return self._names[self._offsets[i]:self._offsets[i + 1]].decode()

    def _common_shape(self) -> tuple[int, int, int]:
        first = None
        for i in range(len(self)):
            rel = self.path(i)
            size = header_size(os.path.join(self.root, rel), rel, exif=self.exif)
            if first is None:
                first = (size, rel)
            elif size != first[0]:
                (w0, h0), rel0 = first
                raise UserError("image_size", f"images differ in size ({rel0} is {w0}x{h0}, {rel} is "
                                f"{size[0]}x{size[1]}); native resolution needs one size",
                                "pass --image-size S to resize and center-crop every image to S x S")
        (w, h), _ = first  # type: ignore[misc]
        return 3, h, w

    def read_bytes(self, i: int) -> bytes:
        rel = self.path(i)
        try:
            with open(os.path.join(self.root, rel), "rb") as f:
                return f.read()
        except OSError as exc:
            raise UserError("dataset", f"cannot read {rel} in image folder {self.root!r} ({exc.strerror})",
                            "the folder changed while it was read; restore it") from None

    def read(self, i: int) -> torch.Tensor:
        return decode(self.read_bytes(i), self.path(i), exif=self.exif)

    def read_with_digest(self, i: int) -> tuple[torch.Tensor, bytes]:
        """The image and the sha256 of its file's bytes, from a single read."""
        data = self.read_bytes(i)
        return decode(data, self.path(i), exif=self.exif), hashlib.sha256(data).digest()

    def digest(self, i: int) -> bytes:
        return hashlib.sha256(self.read_bytes(i)).digest()

    def hash_rows(self, h, idx: np.ndarray) -> None:
        h.update(self.sizes[idx].tobytes())
        names, offsets = self._names, self._offsets.tolist()  # the paths' UTF-8 bytes, not decoded and re-encoded
        for s in range(0, len(idx), 4096):
            h.update(b"\n".join(names[offsets[i]:offsets[i + 1]] for i in idx[s:s + 4096].tolist()) + b"\n")

    def listing(self) -> list[tuple[str, int]]:
        return [(self.path(i), int(self.sizes[i])) for i in range(len(self))]

    def _listing_text(self) -> bytes:
        """``path\\tsize`` lines, UTF-8: the manifest before compression."""
        names, offsets, sizes = self._names, self._offsets.tolist(), self.sizes.tolist()
        return b"".join(b"%b\t%d\n" % (names[offsets[i]:offsets[i + 1]], size) for i, size in enumerate(sizes))

    def manifest(self) -> str:
        """The listing as the store records it: ``path\\tsize`` lines, zlib-compressed, base64."""
        return base64.b64encode(zlib.compress(self._listing_text(), 6)).decode()

    def matches(self, manifest: str) -> bool:
        """Whether a recorded manifest lists exactly these files and sizes.

        Stage 2 asks this at every start: decompressing the store's listing costs a tenth of compressing
        this one (about 0.1 ms against 1 for 2,000 files).
        """
        if manifest == self._matched:
            return True
        text = self._listing_text()
        try:  # inflated no further than this listing's length: a longer one differs, whatever it holds
            same = inflate(manifest, len(text)) == text
        except (ValueError, zlib.error):  # not a manifest at all: it lists nothing of this folder
            return False
        if same:
            self._matched = manifest
        return same

    def check_unchanged(self, manifest: str) -> None:
        """Refuse a folder whose listing differs from a store's recorded ``manifest``, naming the first file
        added, removed or changed."""
        if not self.matches(manifest):
            limit = max(LISTING_SLACK * len(self._listing_text()), MIN_LISTING_LIMIT)
            recorded = read_manifest(manifest, limit=limit)
            changed = first_difference(recorded, self.listing()) if recorded is not None else (
                f"the store lists over {limit // 2**20} MiB of files, far more than this folder's {len(self)} "
                "(not compared file by file)")
            raise StoreError("dataset.files", f"the image folder changed since the store was written: {changed}",
                             "restore the folder, or rerun `kd teacher` on it")


# How far a store's recorded listing may inflate when it differs from the folder's: a multiple of this folder's
# listing, at least MIN_LISTING_LIMIT. The attribute is a few compressed bytes that zlib can expand a thousandfold
# (a zlib bomb): bounded, a damaged or hostile store costs memory in proportion to the real folder, never its claim.
LISTING_SLACK = 16
MIN_LISTING_LIMIT = 16 * 2**20


def inflate(manifest: str, limit: int) -> bytes | None:
    """A recorded listing decompressed, or None when it would exceed ``limit`` bytes (no more is ever inflated).

    Raises ValueError (not base64) or zlib.error (not a whole zlib stream).
    """
    d = zlib.decompressobj()
    out = d.decompress(base64.b64decode(manifest), limit + 1)
    if len(out) > limit:
        return None
    if not d.eof:
        raise zlib.error("incomplete or truncated stream")
    return out


def read_manifest(manifest: str, *, limit: int = MIN_LISTING_LIMIT) -> list[tuple[str, int]] | None:
    """A store's recorded listing (``dataset.files``) as (relative path, byte size) pairs; None when it inflates
    past ``limit`` bytes."""
    try:
        text = inflate(manifest, limit)
        if text is None:
            return None
        lines = text.decode().splitlines()
        return [(p, int(s)) for p, _, s in (line.rpartition("\t") for line in lines)]
    except (ValueError, zlib.error) as exc:  # (binascii.Error and UnicodeDecodeError are ValueErrors)
        raise StoreError("dataset.files", f"the store's listing of its image folder cannot be read ({exc})",
                         "the store is damaged: rerun `kd teacher`") from None


def first_difference(old: list[tuple[str, int]], new: list[tuple[str, int]]) -> str | None:
    """The first file (in path order) added, removed or resized between two listings, described; None if equal."""
    before, after = dict(old), dict(new)
    for path in sorted(before.keys() | after.keys()):
        a, b = before.get(path), after.get(path)
        if a == b:
            continue
        if a is None:
            return f"{path} was added"
        if b is None:
            return f"{path} was removed"
        return f"{path} changed ({a} bytes when the store was written, {b} now)"
    return None
