"""The per-sample preprocessing both stages must agree on: named torchvision.transforms.v2 pipelines, and their hash.

A sample leaves its source as a raw image tensor (C, H, W) (uint8 for image
files and torchvision's arrays, float32 in [0, 1] for ``digits``) and goes
through one of two pipelines, built from the data config:

- **decode** (image folders): with ``--exif-orientation`` (the default), each
  photo is turned upright by its EXIF orientation tag as it is decoded, before
  anything else; recorded first in the eval steps as ``ExifTranspose``.
- **eval** (evaluation, and the teacher's clean view): with ``--image-size S``,
  ``Resize(S)`` (shorter side) then ``CenterCrop(S)``; without it the native
  resolution; then ``ToDtype(float32, scale=True)``: float32 in [0, 1], no
  normalisation.
- **train** (``--train-transform``): the ops named there, in the order of
  :data:`TRAIN_OPS` (``random-resized-crop`` replaces the eval resize and crop),
  drawn per sample from a generator seeded by (seed, epoch, sample id), so any
  DataLoader worker draws the same crop for the same sample.

A teacher with its own evaluation preprocessing (:class:`pipeline.preprocessing_spec.Preprocessing`: a pretrained
model's resize, crop and interpolation) replaces the eval resize and crop with its own, applied to image
files as torchvision's and timm's evaluation transforms apply them (PIL's resize of the decoded image, then
the center crop), so the pixels equal those libraries' to the bit; its mean and std are recorded here too
(under ``model``) but applied by the model (:mod:`pipeline.preprocessing`), after any teacher view.

Stage 1 records the eval pipeline in the store (``transform``) with its hash;
stage 2 refuses a store whose hash differs from its own, since the student
would otherwise see other pixels than the teacher scored. Train-time
augmentation is the trainer's choice and is recorded in the data config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torchvision.transforms import v2

from pipeline.names import TRAIN_TRANSFORMS
from pipeline.preprocessing_spec import Preprocessing
from pipeline.rng import seeded
from pipeline.serialize import config_hash

# The record of version 1 (every dataset as float32 in [0, 1], image folders squashed to 32x32).
# digits without --image-size still gets exactly this preprocessing (its float pixels pass through
# unchanged), so it keeps this record byte for byte: its stores keep their transform hash and
# provenance key. (torchvision's uint8 sets now scale by a product, 1 ulp off v1's division: v2.)
TRANSFORM = {"pixels": "float32 in [0, 1], no normalisation", "resize": "imagefolder only, 32x32", "version": 1}
PIXELS = "float32 in [0, 1], no normalisation"
VERSION = 2

# Training augmentation ops by name: (size (H, W)) -> a v2 transform. Applied in this order.
TRAIN_OPS: dict[str, Callable[[tuple[int, int]], v2.Transform]] = {
    "random-resized-crop": lambda size: v2.RandomResizedCrop(size, antialias=True),
    "hflip": lambda size: v2.RandomHorizontalFlip(p=0.5),
}
assert tuple(TRAIN_OPS) == TRAIN_TRANSFORMS, "declare the training ops' names in pipeline/names.py"


def transform_hash(record: dict = TRANSFORM) -> str:
    """The short hash of a transform record (the store's ``transform_hash``)."""
    return config_hash(record)[:16]


@dataclass(frozen=True)
class Preprocess:
    """The eval and train pipelines of one dataset, and what a store records about them.

    ``native``: the raw images' (H, W) when every sample shares one size, else None
    (then ``image_size`` is required). ``v1_record``: the dataset's preprocessing is unchanged since
    version 1 (see :data:`TRANSFORM`).
    """

    image_size: int | None
    train_ops: tuple[str, ...]
    native: tuple[int, int] | None
    v1_record: bool = False
    exif: bool = False  # image files turned upright by their EXIF orientation as they are decoded (FolderSource)
    model: Preprocessing | None = None  # the teacher's own preprocessing (its resize and crop replace image_size)

    @property
    def geometry(self) -> bool:
        return self.model is not None and self.model.geometry

    @property
    def out_size(self) -> tuple[int, int]:
        """(H, W) of every preprocessed image."""
        if self.geometry:
            return self.model.crop, self.model.crop  # type: ignore[union-attr,return-value]
        if self.image_size is not None:
            return self.image_size, self.image_size
        assert self.native is not None, "a dataset of mixed sizes needs --image-size"
        return self.native

    def record(self) -> dict:
        """The eval pipeline as the store records it; its hash is the store's ``transform_hash``."""
        if self.v1_record and self.image_size is None and self.model is None:
            return dict(TRANSFORM)
        # Recorded only when on, so the stores written before the option (never transposed) keep their hash.
        steps = ["ExifTranspose", "ToImage"] if self.exif else ["ToImage"]
        if self.geometry:
            m = self.model
            steps += [f"Resize({m.resize}, {m.interpolation}, PIL)", f"CenterCrop({m.crop})"]  # type: ignore[union-attr]
        elif self.image_size is not None:
            steps += [f"Resize({self.image_size}, antialias=True)", f"CenterCrop({self.image_size})"]
        steps.append("ToDtype(float32, scale=True)")
        out = {"pixels": PIXELS, "eval": steps, "size": list(self.out_size), "version": VERSION}
        if self.model is not None:  # added only then: the records (and hashes) of every other store are unchanged
            out["model"] = self.model.record()
        return out

    @property
    def hash(self) -> str:
        return transform_hash(self.record())

    def eval(self) -> v2.Compose:
        """Deterministic: applies to one image (C, H, W) or a batch (B, C, H, W) alike."""
        return v2.Compose([*self._resize_crop(), v2.ToDtype(torch.float32, scale=True)])

    def _resize_crop(self) -> list:
        if self.geometry:
            return [ResizeCrop(self.model)]  # type: ignore[arg-type]
        if self.image_size is not None:
            return [v2.Resize(self.image_size, antialias=True), v2.CenterCrop(self.image_size)]
        return []

    def train(self) -> v2.Compose | None:
        """Random, per sample; None when no train op is named (the eval pipeline is used)."""
        if not self.train_ops:
            return None
        steps: list = []
        if "random-resized-crop" not in self.train_ops:
            steps += self._resize_crop()
        steps += [TRAIN_OPS[op](self.out_size) for op in TRAIN_OPS if op in self.train_ops]
        return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True)])


class ResizeCrop:
    """A model's evaluation resize and center crop, as torchvision's ``ImageClassification`` and timm's
    ``transforms_imagenet_eval`` apply them to a PIL image: the shorter side resized to ``resize`` with PIL's
    filter, then the center ``crop`` x ``crop``. A uint8 image (C, H, W) goes through PIL (losslessly: it was
    decoded from one), so its pixels equal those libraries' to the bit; float images (digits) are resized as
    tensors. Applies to one image or a batch (B, C, H, W)."""

    def __init__(self, pre: Preprocessing) -> None:
        self.resize, self.crop, self.interpolation = pre.resize, pre.crop, pre.interpolation

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() == 4:
            return torch.stack([self(x) for x in img])
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        mode = InterpolationMode(self.interpolation)
        if img.dtype != torch.uint8:
            out = F.resize(img, [self.resize], interpolation=mode, antialias=True)
            return F.center_crop(out, [self.crop])
        pil = F.to_pil_image(img)
        pil = F.center_crop(F.resize(pil, [self.resize], interpolation=mode, antialias=True), [self.crop])
        out = F.pil_to_tensor(pil)
        return out if out.dim() == 3 else out[None]


def sample_seed(seed: int, epoch: int, sample_id: int) -> int:
    """The seed of one sample's train-time draw: a pure function of (seed, epoch, id), like a teacher view's."""
    key = np.random.SeedSequence([seed, epoch, sample_id, 3]).generate_state(2, dtype=np.uint64)[0]
    return int(key) & (2**63 - 1)


def apply_seeded(tf: Callable[[torch.Tensor], torch.Tensor], img: torch.Tensor, seed: int) -> torch.Tensor:
    """``tf(img)`` with torch's global generator seeded by ``seed`` (v2's random transforms draw from it),
    restored afterwards so the caller's stream is untouched (under :data:`pipeline.rng.RNG_LOCK`: a thread
    training a dropout student meanwhile holds its own stream there)."""
    with seeded(seed):
        return tf(img)
