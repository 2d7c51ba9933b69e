"""The soft-target store: a self-describing Zarr v3 group of raw teacher logits.

Layout (``FORMAT_VERSION`` 6; docs/store-format.md's tables are the contract)::

    <name>.zarr/                 group; attributes: pipeline.store.meta.StoreMeta
      train/logits   (N, V, C)   float16 | float32, fill NaN (V teacher views per sample; view 0 is clean)
      train/view_params (N, V, P) float32, each view's drawn parameters, columns named by views.params (V > 1)
      train/labels   (N,)        int64, fill -1 (-1 also marks a sample with no label: --unlabelled)
      train/ids      (N,)        int64, fill -1 (stable sample ids, aligned with logits)
      train/written  (S,)        uint8, one flag per shard: the completion bitmap
      val/...  test/...          same arrays

Rows are chunked by sample and grouped into shards (one file per shard), each
chunk compressed with Blosc/lz4 and followed by a CRC32C, so a flipped byte
fails loudly on read. Missing data cannot pass as zeros either: logits are
filled with NaN, the teacher never publishes NaN, so a NaN read back from a
complete store means a chunk is gone, and the reader says which.

The group attribute ``complete`` is written last, with a manifest of per-shard
content hashes; readers refuse a store without it. A local store is written
under a staging name and published by one atomic rename; a published store is
never opened for writing again, and a lease keeps concurrent writers of the same
store from working at once. Stores are opened read-only for reading, and every
reader checks the arrays against the attributes first. Nothing here pickles.

Modules: ``paths`` (locations, staging names, links that leave a store),
``codec`` (encodings), ``layout`` (chunks and shards), ``meta`` (the attributes
as types), ``contract`` (the arrays the attributes define, checked at open),
``integrity`` (manifest and fingerprints), ``lease`` (one writer at a time),
``writer``, ``reader`` and ``catalog`` (listing stores).
"""
from pipeline.store.catalog import find_stores
from pipeline.store.codec import ENCODINGS, Encoding, encoding
from pipeline.store.layout import (DEFAULT_CHUNK_ROWS, DEFAULT_SHARD_CHUNKS, SplitLayout, auto_chunk_rows,
                                   layout_for)
from pipeline.store.meta import (FORMAT_VERSION, SUPPORTED_VERSIONS, DatasetMeta, LabelsMeta, LayoutMeta,
                                 LineageEntry, ManifestMeta, Provenance, SplitMeta, StoreMeta, TeacherMeta, ViewsMeta, now_iso,
                                 software_versions)
from pipeline.store.paths import exists, is_url, join
from pipeline.store.reader import SoftTargetStore, open_store
from pipeline.store.writer import StoreWriter, published_meta

__all__ = [
    "DEFAULT_CHUNK_ROWS", "DEFAULT_SHARD_CHUNKS", "ENCODINGS", "FORMAT_VERSION", "SUPPORTED_VERSIONS",
    "DatasetMeta", "LabelsMeta", "LayoutMeta", "LineageEntry", "ManifestMeta", "Provenance", "SoftTargetStore",
    "SplitLayout", "SplitMeta", "StoreMeta", "StoreWriter", "TeacherMeta", "ViewsMeta", "auto_chunk_rows", "Encoding", "encoding",
    "exists", "find_stores", "is_url", "join", "layout_for", "now_iso", "open_store",
    "published_meta", "software_versions",
]
