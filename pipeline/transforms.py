"""The preprocessing both stages must agree on, and its hash.

Stage 1 records it in the store; stage 2 refuses a store whose hash differs
from its own, since the student would otherwise see other pixels than the
teacher scored. Bump ``version`` when ``pipeline/data.py``'s preprocessing changes.
"""
from __future__ import annotations

from pipeline.config import config_hash

TRANSFORM = {"pixels": "float32 in [0, 1], no normalisation", "resize": "imagefolder only, 32x32", "version": 1}


def transform_hash() -> str:
    return config_hash(TRANSFORM)[:16]
