"""The finetune recipe, CPU-sized and offline (`make finetune-demo`): a generated image folder, and random
stand-in weights where torchvision caches its pretrained ones, so `kd run --preset finetune` runs end to end
with no network. The numbers it prints say nothing of real fine-tuning (the weights are random); the real
command fetches the real weights with --download (README, "Your own data").

    python -m experiments.finetune_demo ROOT   # writes ROOT/photos/<class>/*.png and ROOT/torch/hub/checkpoints/
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torchvision
from PIL import Image

STAND_INS = {"resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
             "mobilenet_v3_small": torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1}


def write_photos(folder: str, classes=("circle", "square", "stripes"), n: int = 16, seed: int = 0) -> None:
    """``n`` noisy 96x80 photos per class, each class a shape of its own."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:80, :96]
    for k, cls in enumerate(classes):
        os.makedirs(os.path.join(folder, cls), exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 90, size=(80, 96, 3), dtype=np.uint8)
            cy, cx = rng.integers(25, 55), rng.integers(25, 70)
            mask = [(yy - cy) ** 2 + (xx - cx) ** 2 < 400, (abs(yy - cy) < 15) & (abs(xx - cx) < 15),
                    (xx // 8) % 2 == 0][k % 3]
            img[mask] += np.uint8(120)
            Image.fromarray(img).save(os.path.join(folder, cls, f"{i:03d}.png"))


def write_stand_ins(torch_home: str) -> None:
    """Random weights under the file names torchvision's cache expects for the enums the demo names."""
    folder = os.path.join(torch_home, "hub", "checkpoints")
    os.makedirs(folder, exist_ok=True)
    for arch, weights in STAND_INS.items():
        path = os.path.join(folder, os.path.basename(weights.url))
        if not os.path.exists(path):
            torch.manual_seed(0)
            torch.save(torchvision.models.get_model(arch).state_dict(), path)


if __name__ == "__main__":
    root = sys.argv[1] if len(sys.argv) > 1 else "data/demo"
    write_photos(os.path.join(root, "photos"))
    write_stand_ins(os.path.join(root, "torch"))
    print(f"photos: {os.path.join(root, 'photos')}  stand-in weights: {os.path.join(root, 'torch')}")
