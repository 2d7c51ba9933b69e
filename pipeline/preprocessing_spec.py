"""A model's evaluation preprocessing as plain values (:class:`Preprocessing`): resolved from the teacher's model
options by :mod:`pipeline.preprocessing`, recorded in its data config and in the store's transform, and applied
by :mod:`pipeline.transforms` (resize, crop) and by the model itself (mean, std).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from pipeline.validation import check_preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """A model's evaluation preprocessing, as plain values: resize the shorter side to ``resize`` with
    ``interpolation`` (PIL's filter, as torchvision and timm apply it), center-crop ``crop`` x ``crop``, scale to
    [0, 1], then ``(x - mean) / std`` per channel. ``None`` leaves a step out (no resize or crop: the data's
    --image-size or native resolution; no mean/std: no normalisation). ``origin`` says where the values came from
    (a weights enum, timm's pretrained config, options)."""

    resize: int | None = None
    crop: int | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    origin: str = "options"

    def __post_init__(self) -> None:
        check_preprocessing(self)

    @property
    def geometry(self) -> bool:
        """Whether it resizes or crops (else the data's own size applies)."""
        return self.crop is not None

    @property
    def normalizes(self) -> bool:
        return self.mean is not None

    def record(self) -> dict:
        """As the store records it (part of the transform and its hash)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
