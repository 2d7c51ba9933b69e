"""How a split's rows are cut into chunks (the unit of compression and checksums) and shards (one file each)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_CHUNK_ROWS = None  # auto: about CHUNK_TARGET_BYTES of decoded logits per chunk
DEFAULT_SHARD_CHUNKS = 16
# Each chunk read costs a fixed overhead (zarr's machinery, one codec call), so chunks must be big
# enough to amortise it: ~1 MB of decoded float32 reads about 10x faster than 256 rows of 100 classes.
CHUNK_TARGET_BYTES = 1 << 20
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 64, 1 << 16
# The most one chunk may decode to (float32 logits of every view): what a reader allocates per chunk read, so a
# store's attributes cannot make one read take more. The automatic layout's chunks are about CHUNK_TARGET_BYTES.
MAX_CHUNK_BYTES = 256 << 20


def chunk_bytes(chunk_rows: int, views: int, columns: int) -> int:
    """Decoded float32 bytes of one chunk of ``chunk_rows`` rows of ``views`` x ``columns`` logits."""
    return chunk_rows * views * columns * 4


def auto_chunk_rows(row_bytes: int) -> int:
    """A power of two of rows holding about CHUNK_TARGET_BYTES (row_bytes: decoded float32 bytes per row)."""
    rows = 2 ** round(np.log2(max(CHUNK_TARGET_BYTES / max(row_bytes, 1), 1)))
    return int(min(max(rows, MIN_CHUNK_ROWS), MAX_CHUNK_ROWS))


@dataclass(frozen=True)
class SplitLayout:
    size: int
    num_classes: int
    chunk_rows: int
    shard_rows: int

    @property
    def num_shards(self) -> int:
        return -(-self.size // self.shard_rows) if self.size else 0

    def shard_range(self, i: int) -> tuple[int, int]:
        return i * self.shard_rows, min((i + 1) * self.shard_rows, self.size)


def layout_for(size: int, num_classes: int, chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
               shard_chunks: int = DEFAULT_SHARD_CHUNKS, views: int = 1) -> SplitLayout:
    if chunk_rows is None:
        chunk_rows = auto_chunk_rows(views * num_classes * 4)
    chunk = max(1, min(chunk_rows, size))
    return SplitLayout(size, num_classes, chunk, chunk * max(1, shard_chunks))
