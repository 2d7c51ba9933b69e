"""Reading a store: opened read-only, metadata parsed and checked against the contract once, every chunk verified
as it is decoded."""
from __future__ import annotations

import functools
import json

import os
from typing import Iterator

import numpy as np

from pipeline.errors import StoreError
from pipeline.names import NO_LABEL, SPLITS
from pipeline.store.codec import Encoding, encoding
from pipeline.store.contract import check_arrays, data_arrays, num_shards
from pipeline.store.integrity import check_digest, check_transform, shard_ranges
from pipeline.store.meta import StoreMeta
from pipeline.store.paths import exists, local_path, zarr_store


class SoftTargetStore:
    """A complete store, opened read-only. Construction parses and validates the metadata into :attr:`meta`."""

    def __init__(self, path: str, storage_options: dict | None = None, require_complete: bool = True) -> None:
        import zarr

        self.path, self.storage_options = path, storage_options
        if not exists(path, storage_options):
            raise StoreError("store", f"no soft-target store at {path!r}",
                             "pass the path printed by `kd teacher` (see `kd stores`)")
        try:
            self.group = zarr.open_group(zarr_store(path, read_only=True, storage_options=storage_options), mode="r",
                                         zarr_format=3)
            attrs = dict(self.group.attrs)
        except StoreError:
            raise
        except Exception as exc:  # unreadable metadata is a user-visible store problem
            raise StoreError("store", f"cannot open {path!r} as a Zarr v3 group ({type(exc).__name__})",
                             "pass a store written by `kd teacher`") from None
        self.meta = StoreMeta.from_attrs(attrs)
        # Every array the attributes define, at the shape and chunking they record: checked (and opened) once.
        self._arrays: dict[tuple[str, str], object] = check_arrays(self.group, self.meta)
        self._sorted_ids: dict[str, np.ndarray] = {}  # per split, for checking mixed views' partners
        if require_complete and not self.meta.complete:
            raise StoreError("complete", f"store {path!r} is incomplete (the teacher run did not finish)",
                             "rerun the same `kd teacher` command to finish it")

    def _array(self, split: str, name: str):
        """An array handle, opened once (at construction): opening reads its metadata from storage."""
        key = (split, name)
        if key not in self._arrays:
            raise StoreError(f"{split}/{name}", "is not part of this store", "check the split and encoding")
        return self._arrays[key]

    # --- metadata -------------------------------------------------------
    @property
    def attrs(self) -> dict:
        """The group attributes as JSON (what ``kd inspect`` prints); code reads the typed :attr:`meta`."""
        return self.meta.to_attrs()

    @property
    def num_classes(self) -> int:
        return self.meta.dataset.num_classes

    @property
    def encoding(self) -> str:
        return self.meta.encoding

    @functools.cached_property
    def codec(self) -> Encoding:
        """How the logits are encoded (validated when the store was opened; looked up once, not per read)."""
        return encoding(self.meta.encoding)

    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self.meta.layout]

    def size(self, split: str) -> int:
        return int(self._array(split, "labels").shape[0])

    def chunk_rows(self, split: str) -> int:
        return int(self._array(split, self.codec.arrays()[0]).chunks[0])

    def labels(self, split: str) -> np.ndarray:
        return self._read(split, "labels", slice(None))

    def _has_unlabelled(self, split: str) -> bool:
        """Whether ``split`` holds samples without a label (train, when written with --unlabelled)."""
        return split == "train" and self.meta.data_config.get("unlabelled") is not None

    def ids(self, split: str) -> np.ndarray:
        return self._read(split, "ids", slice(None))

    # --- data -----------------------------------------------------------
    def _read(self, split: str, name: str, rows: slice) -> np.ndarray:
        arr = self._array(split, name)
        try:
            values = arr[rows]
        except StoreError:  # a chunk reached through a link that leaves the store
            raise
        except Exception as exc:  # checksum mismatch or undecodable chunk
            raise StoreError(f"{split}/{name}", f"chunk {self._chunk_of(arr, rows)} is corrupt ({type(exc).__name__}: "
                             f"{str(exc)[:120]})", "the store was damaged after writing; re-run `kd teacher`") from None
        if values.dtype.kind == "f":
            # NaN is the fill value: one float32 sum per row finds it (published logits are finite, and
            # float16 rows cannot overflow a float32 sum), far cheaper than an elementwise test.
            bad = ~np.isfinite(values.reshape(len(values), -1).sum(axis=1, dtype=np.float32)) if values.ndim > 1 \
                else ~np.isfinite(values)
        elif name == "labels" and self._has_unlabelled(split):
            # -1 is both the fill and NO_LABEL, the label of a sample that has none (--unlabelled): here a missing
            # chunk cannot be told from such samples by its values; the manifest (`kd inspect --verify`) and the
            # labels' comparison with the data (--verify, the split fingerprints) still tell.
            bad = values < NO_LABEL
        else:
            bad = values < 0 if values.ndim == 1 else (values < 0).reshape(len(values), -1).any(axis=1)
        if np.any(bad):
            i = int(np.nonzero(bad)[0][0])
            row = (rows.start or 0) + i
            chunk = row // arr.chunks[0]
            if values.dtype.kind == "f" and not np.isnan(values[i]).any():
                # inf is not the fill value: the chunk is there, and holds what no complete store may hold.
                raise StoreError(f"{split}/{name}", f"row {row} (chunk {chunk}) holds non-finite values (inf); a "
                                 "published store never does", "rewrite the store with `kd teacher --encoding "
                                 "float32`")
            # A missing chunk reads back as the NaN fill, every value of it; NaN beside other values was written.
            start = rows.start or 0
            lo, hi = max(chunk * arr.chunks[0], start) - start, min((chunk + 1) * arr.chunks[0] - start, len(values))
            if values.dtype.kind == "f" and not np.isnan(values[lo:hi]).all():
                raise StoreError(f"{split}/{name}", f"row {row} (chunk {chunk}) holds NaN beside finite values: it "
                                 "was rewritten after publishing (a published store holds none)",
                                 "rewrite the store with `kd teacher`")
            raise StoreError(f"{split}/{name}", f"chunk {chunk} (row {row}) is missing from the store",
                             "the store was damaged after writing; re-run `kd teacher`")
        return values

    @staticmethod
    def _chunk_of(arr, rows: slice) -> str:
        start = rows.start or 0
        stop = rows.stop if rows.stop is not None else arr.shape[0]
        first, last = start // arr.chunks[0], max(start, stop - 1) // arr.chunks[0]
        return str(first) if first == last else f"{first}..{last}"

    @property
    def views(self) -> int:
        """Teacher views per sample (1: the clean image only)."""
        return self.meta.views.count

    def read_views(self, split: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Decoded logits of every view, (rows, V, C) float32, verified (checksums, no missing chunk).

        Under ``topk:K`` these are the dense logits the encoding decodes (see :mod:`pipeline.store.codec`).
        """
        stop = self.size(split) if stop is None else stop
        rows = slice(start, stop)
        return self.codec.decode(lambda name: self._read_checked(split, name, rows), self.num_classes)

    def _read_checked(self, split: str, name: str, rows: slice) -> np.ndarray:
        """:meth:`_read`, and every whole shard among the rows read checked against the manifest.

        A read of whole shards (a split decoded at once: stage 2's test split, and its train split when it
        fits the cache) costs one sha256 of bytes already in memory; rows streamed a chunk at a time are not
        hashed (a shard's digest needs all of it): `kd inspect --verify` checks those.
        """
        values = self._read(split, name, rows)
        manifest = self.meta.manifest
        if manifest is None:  # an incomplete store: nothing recorded yet
            return values
        lay, start = self.meta.layout[split], rows.start or 0
        first = -(-start // lay.shard_rows)
        for shard in range(first, num_shards(lay.rows, lay.shard_rows)):
            a, b = shard * lay.shard_rows, min((shard + 1) * lay.shard_rows, lay.rows)
            if b > start + len(values):
                break
            part = values[a - start:b - start]
            check_digest(f"{split}/{name}", shard, manifest.arrays[f"{split}/{name}"][shard], [part], part.shape,
                         part.dtype, whole=False)
        return values

    def read_logits(self, split: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Logits of the clean view (view 0), (rows, C) float32, verified."""
        return np.ascontiguousarray(self.read_views(split, start, stop)[:, 0, :])

    def view_params(self, split: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(rows, V, P) drawn parameters of each stored view, columns named by ``views.params`` (V > 1 only).

        A mixed view's partner must be a sample of the same split: one that is not (a store altered
        after writing) is refused, naming the view.
        """
        stop = self.size(split) if stop is None else stop
        params = self._read_params(split, slice(start, stop))
        names = self.meta.views.params or ()
        if "partner" in names:
            self._check_partners(split, start, params[..., names.index("partner")])
        return params

    def _check_partners(self, split: str, start: int, partners: np.ndarray) -> None:
        """``partners`` (rows, V): -1 (not mixed) or the id of a sample of ``split``."""
        if split not in self._sorted_ids:
            self._sorted_ids[split] = np.sort(self.ids(split))
        known = self._sorted_ids[split]
        ids = partners.astype(np.int64)  # (R, V)
        pos = np.minimum(np.searchsorted(known, ids), max(len(known) - 1, 0))
        in_split = (known[pos] == ids) if len(known) else np.zeros(ids.shape, dtype=bool)
        ok = (partners == -1) | ((ids == partners) & in_split)  # a whole id of the split, or no partner
        if not np.all(ok):
            r, v = (int(i[0]) for i in np.nonzero(~ok))
            bad = float(partners[r, v])
            shown = str(int(bad)) if bad.is_integer() else repr(bad)
            raise StoreError(f"{split}/view_params", f"view {v} of sample id {int(self.ids(split)[start + r])} "
                             f"names partner {shown}, which is not a sample of the {split} split",
                             "the store was altered after writing; rewrite it with `kd teacher`")

    def verify_view_params(self, split: str) -> int:
        """Decode every chunk of ``split``'s view parameters (checksums, missing chunks, partners); rows checked."""
        rows = self.chunk_rows(split)
        for start in range(0, self.size(split), rows):
            self.view_params(split, start, start + rows)
        return self.size(split)

    def _read_params(self, split: str, rows: slice) -> np.ndarray:
        if self.views == 1:
            raise StoreError("views", "this store holds the clean view only", "write it with --views K")
        return self._read(split, "view_params", rows)

    def iter_chunks(self, split: str) -> Iterator[tuple[int, np.ndarray]]:
        """(start row, logits) per chunk, in order: each chunk is decoded exactly once."""
        rows = self.chunk_rows(split)
        for start in range(0, self.size(split), rows):
            yield start, self.read_logits(split, start, start + rows)

    def file_count(self) -> int | None:
        """Objects the store occupies on a local disk (None for URL stores)."""
        local = local_path(self.path)
        return None if local is None else sum(len(files) for _, _, files in os.walk(local))

    def verify(self) -> dict[str, int]:
        """Decode every chunk of every array the contract lists and check it against the manifest.

        Catches damaged chunks (CRC32C), missing ones (NaN fill), unwritten shards, and content rewritten
        with valid checksums (the manifest's sha256 per shard). Returns rows checked per split.
        """
        if not self.meta.complete or self.meta.manifest is None:
            raise StoreError("complete", f"store {self.path!r} is incomplete: it has no manifest to verify against",
                             "rerun the same `kd teacher` command to finish it")
        check_transform(self.meta)
        manifest = self.meta.manifest.arrays
        checked = {}
        for split in self.splits():
            lay = self.meta.layout[split]
            specs = data_arrays(self.meta, split)
            # Sizes against each other before anything is read: the manifest lists one digest per shard the
            # layout defines (checking them reads at most one chunk at a time, so a store claiming more rows
            # than it holds fails at its first missing chunk, never by allocating its claimed size).
            for spec in specs:
                at, count = f"{split}/{spec.name}", num_shards(lay.rows, lay.shard_rows) if spec.per_shard else 1
                if len(manifest[at]) != count:
                    raise StoreError(f"manifest.arrays.{at}", f"lists {len(manifest[at])} shards, the layout has "
                                     f"{count}", "rewrite the store with `kd teacher`")
            self._check_written(split)
            for spec in specs:
                at = f"{split}/{spec.name}"
                for i, (a, b) in enumerate(shard_ranges(lay.rows, lay.shard_rows, spec.per_shard)):
                    pieces = (self._read(split, spec.name, slice(r, min(r + step, b)))
                              for step in [int(self._array(split, spec.name).chunks[0])] for r in range(a, b, step))
                    check_digest(at, i, manifest[at][i], pieces, (b - a, *spec.shape[1:]), spec.dtype,
                                 whole=not spec.per_shard)
            if self.views > 1:
                self.verify_view_params(split)  # mixed views: every partner is a sample of the split
            checked[split] = self.size(split)
        return checked

    def _check_written(self, split: str, step: int = 65536) -> None:
        """Every shard of a complete store is flagged written; the flags are read ``step`` at a time."""
        n = self._array(split, "written").shape[0]
        for start in range(0, n, step):
            if not self._read(split, "written", slice(start, min(start + step, n))).all():
                raise StoreError(f"{split}/written", "some shards are flagged unwritten in a complete store",
                                 "rewrite the store with `kd teacher`")

    # --- size -----------------------------------------------------------
    def _nbytes(self, names: tuple[str, ...], stored: bool = True) -> int:
        total = 0
        for split in self.splits():
            for name in names:
                arr = self._array(split, name)
                total += int(arr.nbytes_stored() if stored else arr.nbytes)
        return total

    def nbytes_stored(self) -> int:
        extra = ("view_params",) if self.views > 1 else ()
        return self._nbytes(self.codec.arrays() + extra + ("labels", "ids", "written"))

    def summary(self) -> dict:
        """What ``kd inspect`` prints: metadata plus size, bytes per sample and compression ratio.

        The compression ratio compares the stored logits with dense float32
        logits (N x C x 4 bytes), i.e. what the encoding plus compression saves.
        """
        stored = self.nbytes_stored()
        logits_stored = self._nbytes(self.codec.arrays())
        n = sum(self.size(s) for s in self.splits())
        logits_raw = n * self.views * self.num_classes * 4
        attrs = dict(self.attrs)
        if not attrs.get("complete"):  # the teacher is scored by the pass that completes the store
            attrs["teacher"] = {**attrs["teacher"], **dict.fromkeys(("val_acc", "test_acc", "val_nll", "test_nll"))}
        return {
            "path": self.path,
            **attrs,
            "samples": {s: self.size(s) for s in self.splits()},
            "bytes_stored": stored,
            "bytes_per_sample": stored / max(n, 1),
            "logits_bytes_per_sample": logits_stored / max(n, 1),
            "views": self.views,
            "logits_bytes_per_view": logits_stored / max(n * self.views, 1),
            "compression_ratio": logits_raw / max(logits_stored, 1),
            "files": self.file_count(),
        }


@functools.lru_cache(maxsize=4)
def _open_store(path: str, options_json: str) -> SoftTargetStore:
    return SoftTargetStore(path, storage_options=json.loads(options_json) or None)


def open_store(path: str, storage_options: dict | None = None) -> SoftTargetStore:
    """A complete store, opened read-only once per process (complete stores never change)."""
    return _open_store(path, json.dumps(storage_options or {}, sort_keys=True))
