"""Seeded, per-sample data augmentation on batches of image tensors.

Parameters are drawn from an explicit ``torch.Generator`` rather than the
global RNG, so several students training in threads side by side each get a
reproducible stream, and a view can later be replayed from its seed. The pixel
work itself is torchvision's (``transforms.v2.functional``): ``resized_crop``
(RandomResizedCrop), ``horizontal_flip``, ``affine`` (translate, rotate) and
``adjust_brightness/contrast/saturation`` (colour jitter), in that order.

Draws are appended op by op in a fixed order (shift, flip, angle, crop,
jitter), and an op that is off draws nothing, so adding an op never changes
what the others draw: views recorded with translate/flip/rotate replay the same.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from pipeline.config import AugmentConfig


def _crop_box(gen: torch.Generator, size: tuple[int, int], scale: tuple[float, ...],
              ratio: tuple[float, ...]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a RandomResizedCrop box, drawn as torchvision does but from ``gen``.

    Ten tries at a box of a random share of the area and a log-uniform aspect ratio; if none fits,
    the largest central box whose aspect ratio is within ``ratio``.
    """
    h, w = size
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * float(torch.rand(1, generator=gen)))
        aspect = math.exp(log_lo + (log_hi - log_lo) * float(torch.rand(1, generator=gen)))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def scaled_px(v: float, ratio: float) -> int:
    """A pixel offset or edge ``v`` at ``ratio`` times the resolution, to the nearest pixel, halves away from zero
    (so a shift of -3 and one of +3 stay mirror images)."""
    return int(math.copysign(math.floor(abs(v) * ratio + 0.5), v))


def apply_params(x: torch.Tensor, params: dict[str, torch.Tensor], *,
                 size: tuple[int, int] | None = None) -> torch.Tensor:
    """Apply drawn parameters to a batch ``x`` of shape (B, C, H, W); absent keys mean "not this op".

    Keys: ``shift`` (B, 2) px, ``flip`` (B,) bool, ``angle`` (B,) degrees, ``crop`` (B, 4)
    [top, left, height, width], ``jitter`` (B, 3) [brightness, contrast, saturation] factors, all in the pixel
    coordinates of ``x``. An identity parameter (no shift, the whole image, factor 1) skips its op, so a clean
    view is the image itself, bit for bit.

    ``size`` (H', W'): the resolution the view is made at (a student's own), when it is not ``x``'s. The crop box
    is then resampled once, straight to ``size`` (no crop op, or the whole box: the image resized once, as
    ``resize``, antialiased bilinear), shifts are scaled by the size ratio to whole pixels (:func:`scaled_px`),
    and the flip, rotation and jitter are applied at ``size``. Returns (B, C, H', W').
    """
    h, w = x.shape[-2:]
    out_h, out_w = (h, w) if size is None else (int(size[0]), int(size[1]))
    rescale = (out_h, out_w) != (h, w)
    out = torch.empty_like(x) if not rescale else x.new_empty((*x.shape[:-2], out_h, out_w))  # (B, C, H', W')
    boxes = [tuple(int(v) for v in params["crop"][i]) if "crop" in params else (0, 0, h, w) for i in range(len(x))]
    whole = [i for i, box in enumerate(boxes) if box == (0, 0, h, w)]
    resized = {}
    if rescale and whole:  # the views of the whole image: resized in one call (what the crop of it would give)
        resized = dict(zip(whole, TF.resize(x[whole], [out_h, out_w], antialias=True)))  # (W, C, H', W')
    for i in range(x.shape[0]):
        img = x[i]  # (C, H, W)
        if boxes[i] != (0, 0, h, w):
            img = TF.resized_crop(img, *boxes[i], size=[out_h, out_w], antialias=True)
        elif rescale:
            img = resized[i]
        if "flip" in params and bool(params["flip"][i]):
            img = TF.horizontal_flip(img)
        dx, dy = (int(v) for v in params["shift"][i]) if "shift" in params else (0, 0)
        if rescale:
            dx, dy = scaled_px(dx, out_w / w), scaled_px(dy, out_h / h)
        angle = float(params["angle"][i]) if "angle" in params else 0.0
        if dx or dy or angle:
            img = TF.affine(img, angle=angle, translate=[dx, dy], scale=1.0, shear=[0.0, 0.0])
        if "jitter" in params:
            bright, contrast, sat = (float(v) for v in params["jitter"][i])
            if bright != 1.0:
                img = TF.adjust_brightness(img, bright)
            if contrast != 1.0:
                img = TF.adjust_contrast(img, contrast)
            if sat != 1.0:
                img = TF.adjust_saturation(img, sat)
        out[i] = img
    return out


class Augmenter:
    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.ops)

    def draw(self, n: int, gen: torch.Generator, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Per-sample parameters for ``n`` images: shifts (px), flips, angles (deg); crop boxes and jitter
        factors when those ops are on (``crop`` needs the image ``size`` (H, W))."""
        c = self.cfg
        zeros = torch.zeros(n)
        shift = (torch.randint(-c.translate, c.translate + 1, (n, 2), generator=gen).float()
                 if "translate" in c.ops else torch.zeros(n, 2))
        flip = torch.rand(n, generator=gen) < 0.5 if "flip" in c.ops else torch.zeros(n, dtype=torch.bool)
        angle = ((torch.rand(n, generator=gen) * 2 - 1) * c.rotate_degrees) if "rotate" in c.ops else zeros
        out = {"shift": shift, "flip": flip, "angle": angle}
        if "crop" in c.ops:
            if size is None:
                raise ValueError("the crop op needs the image size")
            out["crop"] = torch.tensor([_crop_box(gen, size, c.crop_scale, c.crop_ratio) for _ in range(n)],
                                       dtype=torch.float32).reshape(n, 4)  # (n, 4)
        if "jitter" in c.ops:
            out["jitter"] = (1.0 + (torch.rand(n, 3, generator=gen) * 2 - 1) * c.jitter)  # (n, 3)
        return out

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Apply drawn parameters to a batch ``x`` of shape (B, C, H, W)."""
        return apply_params(x, params)

    # --- replayable views -------------------------------------------------
    PARAM_NAMES = ("dx", "dy", "flip", "angle")  # the columns of every store written before crop/jitter/mix

    @staticmethod
    def view_generator(seed: int, sample_id: int, view: int) -> torch.Generator:
        """The generator of view ``view`` of sample ``sample_id``: seeded from (seed, id, view) alone."""
        key = np.random.SeedSequence([seed, sample_id, view]).generate_state(2, dtype=np.uint64)[0]
        return torch.Generator().manual_seed(int(key) & (2**63 - 1))

    def view_params(self, ids: torch.Tensor, views: torch.Tensor, seed: int,
                    size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Parameters of view ``views[i]`` of sample ``ids[i]``: a pure function of (seed, id, view).

        View 0 is always the clean image. Every other view draws from its own
        generator, seeded from (seed, id, view) alone, so any process, worker
        or machine replays exactly the same transform. ``size`` (H, W) is needed by ``crop``.
        """
        n = ids.shape[0]
        out = {"shift": torch.zeros(n, 2), "flip": torch.zeros(n, dtype=torch.bool), "angle": torch.zeros(n)}
        if "crop" in self.cfg.ops:
            if size is None:
                raise ValueError("the crop op needs the image size")
            out["crop"] = torch.tensor([[0.0, 0.0, size[0], size[1]]]).repeat(n, 1)  # (n, 4): the whole image
        if "jitter" in self.cfg.ops:
            out["jitter"] = torch.ones(n, 3)
        for i in range(n):
            v = int(views[i])
            if v == 0:
                continue
            one = self.draw(1, self.view_generator(seed, int(ids[i]), v), size)
            for name in out:
                out[name][i] = one[name][0]
        return out

    def replay(self, x: torch.Tensor, ids: torch.Tensor, views: torch.Tensor, seed: int) -> torch.Tensor:
        """``x`` (B, C, H, W) with each sample's chosen view applied (views without mixing)."""
        return self.apply(x, self.view_params(ids, views, seed, size=tuple(x.shape[-2:])))

    @classmethod
    def params_array(cls, params: dict[str, torch.Tensor]) -> np.ndarray:
        """Drawn parameters as a (B, 4) float32 array [dx, dy, flip, angle], for the store's audit trail."""
        return torch.stack([params["shift"][:, 0], params["shift"][:, 1], params["flip"].float(),
                            params["angle"]], dim=1).numpy().astype(np.float32)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if not self.enabled:
            return x
        return self.apply(x, self.draw(x.shape[0], gen, tuple(x.shape[-2:])))
