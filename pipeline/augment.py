"""Seeded, per-sample data augmentation on batches of image tensors.

Parameters are drawn from an explicit ``torch.Generator`` rather than the
global RNG, so several students training in threads side by side each get a
reproducible stream, and a view can later be replayed from its seed. The pixel
work itself is torchvision's (``transforms.v2.functional``).
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from pipeline.config import AugmentConfig


class Augmenter:
    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.ops)

    def draw(self, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-sample parameters for ``n`` images: shifts (px), flips, angles (deg)."""
        c = self.cfg
        zeros = torch.zeros(n)
        shift = (torch.randint(-c.translate, c.translate + 1, (n, 2), generator=gen).float()
                 if "translate" in c.ops else torch.zeros(n, 2))
        flip = torch.rand(n, generator=gen) < 0.5 if "flip" in c.ops else torch.zeros(n, dtype=torch.bool)
        angle = ((torch.rand(n, generator=gen) * 2 - 1) * c.rotate_degrees) if "rotate" in c.ops else zeros
        return {"shift": shift, "flip": flip, "angle": angle}

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Apply drawn parameters to a batch ``x`` of shape (B, C, H, W)."""
        out = torch.empty_like(x)
        for i in range(x.shape[0]):
            img = x[i]
            if bool(params["flip"][i]):
                img = TF.horizontal_flip(img)
            dx, dy = (int(v) for v in params["shift"][i])
            angle = float(params["angle"][i])
            if dx or dy or angle:
                img = TF.affine(img, angle=angle, translate=[dx, dy], scale=1.0, shear=[0.0, 0.0])
            out[i] = img
        return out

    # --- replayable views -------------------------------------------------
    PARAM_NAMES = ("dx", "dy", "flip", "angle")

    def view_params(self, ids: torch.Tensor, views: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        """Parameters of view ``views[i]`` of sample ``ids[i]``: a pure function of (seed, id, view).

        View 0 is always the clean image. Every other view draws from its own
        generator, seeded from (seed, id, view) alone, so any process, worker
        or machine replays exactly the same transform.
        """
        n = ids.shape[0]
        out = {"shift": torch.zeros(n, 2), "flip": torch.zeros(n, dtype=torch.bool), "angle": torch.zeros(n)}
        for i in range(n):
            v = int(views[i])
            if v == 0:
                continue
            key = np.random.SeedSequence([seed, int(ids[i]), v]).generate_state(2, dtype=np.uint64)[0]
            one = self.draw(1, torch.Generator().manual_seed(int(key) & (2**63 - 1)))
            for name in out:
                out[name][i] = one[name][0]
        return out

    def replay(self, x: torch.Tensor, ids: torch.Tensor, views: torch.Tensor, seed: int) -> torch.Tensor:
        """``x`` (B, C, H, W) with each sample's chosen view applied."""
        return self.apply(x, self.view_params(ids, views, seed))

    @classmethod
    def params_array(cls, params: dict[str, torch.Tensor]) -> np.ndarray:
        """Drawn parameters as a (B, 4) float32 array [dx, dy, flip, angle], for the store's audit trail."""
        return torch.stack([params["shift"][:, 0], params["shift"][:, 1], params["flip"].float(),
                            params["angle"]], dim=1).numpy().astype(np.float32)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if not self.enabled:
            return x
        return self.apply(x, self.draw(x.shape[0], gen))
