"""Teacher views as rows of named parameters: drawn once, stored, replayed exactly.

A view of a sample is one row of float32 parameters whose columns are named
in the store (``views.params``): the geometric and colour ops of
:mod:`pipeline.augment` (``dx, dy, flip, angle``, the ``crop_*`` box, the
jitter factors) and, for mixed views, ``mix`` (0 none, 1 MixUp, 2 CutMix),
the ``partner``'s stable sample id, ``lam`` (the sample's share) and the
CutMix ``box_*``. Only the columns of the ops in use are stored.

- :func:`draw_rows` draws the rows of one view of a batch of samples, each
  from generators seeded by (store seed, sample id, view) alone. The partner
  is drawn from the samples of *other classes of the same split*, so a train
  view never sees a val or test image.
- :func:`apply_rows` turns rows into pixels: the view's transform is applied
  to the sample and to its partner alike, then the two are mixed. It is a pure
  function of (images, partner images, rows, output size), so the teacher pass and stage 2
  (in any DataLoader worker) produce the same pixels bit for bit. A student at
  another resolution than the teacher's has each view made at its own size,
  from the recorded box in one resampling (boxes and shifts scaled to it).
- :class:`Partners` is the one place partner images and labels are fetched.

Rows are applied from their float32 values on both sides (the teacher never
uses a value the store cannot hold), which is what makes replay exact.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.augment import Augmenter, apply_params, scaled_px
from pipeline.config import AugmentConfig, MixConfig
from pipeline.data import Split
from pipeline.errors import StoreError, UserError
from pipeline.names import NO_LABEL

OP_COLUMNS: dict[str, tuple[str, ...]] = {
    "translate": ("dx", "dy"),
    "flip": ("flip",),
    "rotate": ("angle",),
    "crop": ("crop_top", "crop_left", "crop_height", "crop_width"),
    "jitter": ("brightness", "contrast", "saturation"),
}
MIX_COLUMNS = ("mix", "partner", "lam")
BOX_COLUMNS = ("box_top", "box_left", "box_height", "box_width")
MIX_CODES = {"mixup": 1, "cutmix": 2}  # 0: the view is not mixed
NO_PARTNER = -1
# Partner ids are stored in the float32 rows: exact up to 2^24.
MAX_PARTNER_ID = 2**24


def columns(augment: AugmentConfig, mix: MixConfig) -> tuple[str, ...]:
    """The named columns of ``view_params`` for these ops, in a fixed order.

    Stores written before crop, jitter and mixing always held the four ``Augmenter.PARAM_NAMES``;
    those keep their four columns, so their replay is unchanged.
    """
    if set(augment.ops) <= {"translate", "flip", "rotate"} and not mix.ops:
        return Augmenter.PARAM_NAMES
    names = [c for op in OP_COLUMNS if op in augment.ops for c in OP_COLUMNS[op]]
    if mix.ops:
        names += MIX_COLUMNS + (BOX_COLUMNS if "cutmix" in mix.ops else ())
    return tuple(names)


def check_mixable(mix: MixConfig, splits: dict[str, Split]) -> None:
    """Refuse mixing where a split cannot supply partners: one class only, or ids float32 cannot hold."""
    if not mix.ops:
        return
    for name, split in splits.items():
        if len(split) == 0:
            continue
        classes = np.unique(split.y.numpy())
        if len(classes) < 2:
            raise UserError("view_mix", f"{'/'.join(mix.ops)} mixes a sample with a partner of another class, but "
                            f"the {name} split has a single class ({int(classes[0])})",
                            "drop --view-mix, or use data with at least two classes in every split")
        top = int(split.ids.max())
        if top >= MAX_PARTNER_ID:
            raise UserError("view_mix", f"partner ids are stored as float32, exact below 2^24, but the {name} split "
                            f"has sample id {top}", "drop --view-mix for a dataset this large")


class Partners:
    """A split's samples addressed by stable id: where mixing partners are drawn from and fetched.

    :meth:`images` and :meth:`labels` are the only places partner samples are read, so a lazy
    dataset only has to re-point them.
    """

    def __init__(self, split: Split, name: str) -> None:
        self.split, self.name = split, name
        ids = split.ids.numpy()
        self._by_id = np.argsort(ids, kind="stable")  # (N,) rows in id order
        self._sorted_ids = ids[self._by_id]  # (N,)
        y = split.y.numpy()
        self._by_class = np.argsort(y, kind="stable")  # (N,) rows grouped by class
        self._classes, self._starts, self._counts = np.unique(y[self._by_class], return_index=True,
                                                              return_counts=True)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of the samples with these ids; refuses an id that is not in the split."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._sorted_ids, ids), max(len(self._sorted_ids) - 1, 0))
        found = self._sorted_ids[pos] == ids if len(self._sorted_ids) else np.zeros(len(ids), dtype=bool)
        if not found.all():
            bad = int(ids[np.nonzero(~found)[0][0]])
            raise StoreError("view_params", f"partner id {bad} is not in the {self.name} split",
                             "the store's views do not belong to this data; rewrite it with `kd teacher`")
        return self._by_id[pos]

    def draw(self, rng: np.random.Generator, sample_id: int) -> int:
        """A partner for ``sample_id``: uniform over the split's samples of other classes (rows without a label
        count as another class); for a sample without a label, uniform over every other sample. Returns its id."""
        row = int(self.rows(np.array([sample_id]))[0])
        if int(self.split.y[row]) == NO_LABEL:
            if len(self._by_id) < 2:
                raise UserError("view_mix", f"the {self.name} split has a single sample", "drop --view-mix")
            r = int(rng.integers(len(self._by_id) - 1))
            r += 1 if r >= row else 0  # skip the sample itself
            return int(self.split.ids[r])
        k = int(np.searchsorted(self._classes, int(self.split.y[row])))
        start, count = int(self._starts[k]), int(self._counts[k])
        others = len(self._by_class) - count
        if others == 0:  # check_mixable refuses this before any work; kept for direct callers
            raise UserError("view_mix", f"the {self.name} split has a single class", "drop --view-mix")
        r = int(rng.integers(others))
        r += count if r >= start else 0  # skip the sample's own class
        return int(self.split.ids[int(self._by_class[r])])

    def images(self, ids: np.ndarray) -> torch.Tensor:
        """(M, C, H, W) images of the partners with these ids, read through the lazy split: only these rows
        are decoded (eval preprocessing, as the teacher pass reads its samples)."""
        return self.split.batch(self.rows(ids))

    def labels(self, ids: np.ndarray) -> torch.Tensor:
        """(M,) labels of the partners with these ids (the split's labels: noisy ones under --label-noise)."""
        return self.split.y[torch.from_numpy(self.rows(ids))]


def _cutmix_box(rng: np.random.Generator, lam: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a box covering about 1 - lam of the image, centred at a uniform pixel."""
    h, w = size
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    half = 0.5 * np.sqrt(1.0 - lam)
    rh, rw = int(half * h), int(half * w)
    top, bottom = max(cy - rh, 0), min(cy + rh, h)
    left, right = max(cx - rw, 0), min(cx + rw, w)
    return top, left, bottom - top, right - left


def draw_rows(augment: AugmentConfig, mix: MixConfig, *, ids: torch.Tensor, view: int, seed: int,
              size: tuple[int, int], partners: Partners | None) -> np.ndarray:
    """(R, P) float32 rows of view ``view`` of the samples ``ids``: a pure function of (seed, id, view).

    View 0 is the clean image (identity parameters, never mixed). ``partners`` (the samples' own
    split) is needed when ``mix`` has ops.
    """
    names = columns(augment, mix)
    col = {c: i for i, c in enumerate(names)}
    n = ids.shape[0]
    out = np.zeros((n, len(names)), dtype=np.float32)  # (R, P)
    drawn = Augmenter(augment).view_params(ids, torch.full_like(ids, view), seed, size=size)
    fields = {"dx": drawn["shift"][:, 0], "dy": drawn["shift"][:, 1], "flip": drawn["flip"].float(),
              "angle": drawn["angle"]}
    for key, cols in (("crop", OP_COLUMNS["crop"]), ("jitter", OP_COLUMNS["jitter"])):
        if key in drawn:
            fields.update({c: drawn[key][:, j] for j, c in enumerate(cols)})
    for name, values in fields.items():
        if name in col:
            out[:, col[name]] = values.numpy()
    if not mix.ops:
        return out
    out[:, col["partner"]], out[:, col["lam"]] = NO_PARTNER, 1.0
    if view == 0:
        return out
    assert partners is not None, "mixed views need the split's partners"
    for i in range(n):
        # numpy's generator for the mix draws (Beta has no torch.Generator form); its own stream of (seed, id, view).
        rng = np.random.default_rng([seed, int(ids[i]), view, 1])
        if rng.random() >= mix.prob:
            continue
        op = mix.ops[int(rng.integers(len(mix.ops)))]
        partner = partners.draw(rng, int(ids[i]))
        alpha = mix.mixup_alpha if op == "mixup" else mix.cutmix_alpha
        lam = float(rng.beta(alpha, alpha))
        out[i, col["mix"]], out[i, col["partner"]] = MIX_CODES[op], partner
        if op == "cutmix":
            box = _cutmix_box(rng, lam, size)
            out[i, [col[c] for c in BOX_COLUMNS]] = box
            lam = 1.0 - box[2] * box[3] / (size[0] * size[1])  # the share the box really leaves
        out[i, col["lam"]] = lam
    return out


def _params(rows: np.ndarray, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Rows (B, P) as :func:`pipeline.augment.apply_params`' dict; ops without columns are left out."""
    col = {c: i for i, c in enumerate(names)}
    t = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))  # (B, P)
    out: dict[str, torch.Tensor] = {}
    if "dx" in col:
        out["shift"] = t[:, [col["dx"], col["dy"]]]
    if "flip" in col:
        out["flip"] = t[:, col["flip"]] > 0.5
    if "angle" in col:
        out["angle"] = t[:, col["angle"]]
    for key in ("crop", "jitter"):
        if OP_COLUMNS[key][0] in col:
            out[key] = t[:, [col[c] for c in OP_COLUMNS[key]]]
    return out


def scaled_box(box: tuple[int, int, int, int], ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """A CutMix box (top, left, height, width) at ``ratio`` (rows, columns) times the resolution: each edge to the
    nearest pixel (:func:`pipeline.augment.scaled_px`), so the box stays inside the image and boxes that touch
    still touch."""
    top, left, h, w = box
    ry, rx = ratio
    t, b = scaled_px(top, ry), scaled_px(top + h, ry)
    lft, r = scaled_px(left, rx), scaled_px(left + w, rx)
    return t, lft, b - t, r - lft


def mix_pixels(x: torch.Tensor, partner: torch.Tensor, rows: np.ndarray, names: tuple[str, ...], *,
               ratio: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """MixUp/CutMix of ``x`` (B, C, H, W) with ``partner`` (B, C, H, W) by each row's mix, λ and box.

    ``ratio``: (H / recorded H, W / recorded W) when the views are made at another resolution than the one their
    boxes were drawn at (a student's own): each CutMix box is scaled to it (:func:`scaled_box`). λ stays the stored
    one, the box's share at the recorded resolution; the scaled box's share differs from it by edge rounding only.
    """
    col = {c: i for i, c in enumerate(names)}
    out = x.clone()
    for i in range(x.shape[0]):
        code, lam = int(rows[i, col["mix"]]), float(rows[i, col["lam"]])
        if code == MIX_CODES["mixup"]:
            out[i] = lam * x[i] + (1.0 - lam) * partner[i]
        elif code == MIX_CODES["cutmix"]:
            top, left, h, w = (int(rows[i, col[c]]) for c in BOX_COLUMNS)
            if ratio != (1.0, 1.0):
                top, left, h, w = scaled_box((top, left, h, w), ratio)
            out[i, :, top:top + h, left:left + w] = partner[i, :, top:top + h, left:left + w]
    return out


def mixed_rows(rows: np.ndarray, names: tuple[str, ...]) -> np.ndarray | None:
    """Indices of the mixed views among ``rows`` (B, P), or None when the store mixes none or no row is mixed."""
    if "mix" not in names:
        return None
    mixed = np.nonzero(rows[:, names.index("mix")] > 0)[0]  # (M,)
    return mixed if len(mixed) else None


def apply_rows(x: torch.Tensor, rows: np.ndarray, names: tuple[str, ...],
               partner_x: torch.Tensor | None = None, *, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Pixels of the views ``rows`` (B, P) of ``x`` (B, C, H, W): the view's transform applied to the sample
    and to its partner alike (``partner_x`` (B, C, H, W), only read on mixed rows), then the two mixed.

    ``size`` (H', W'): the resolution the views are made at, when not ``x``'s (a student's own): each view is
    resampled once, straight from ``x`` (:func:`pipeline.augment.apply_params`), and CutMix boxes are scaled to
    it. Returns (B, C, H', W'). A pure function of (x, partner_x, rows, size).
    """
    params = _params(rows, names)
    out = apply_params(x, params, size=size)  # (B, C, H', W')
    mixed = mixed_rows(rows, names)
    if mixed is None:
        return out
    assert partner_x is not None, "mixed rows need their partners' images"
    sel = torch.from_numpy(mixed)
    moved = apply_params(partner_x[sel], {k: v[sel] for k, v in params.items()}, size=size)  # (M, C, H', W')
    ratio = (out.shape[-2] / x.shape[-2], out.shape[-1] / x.shape[-1])
    out[sel] = mix_pixels(out[sel], moved, rows[mixed], names, ratio=ratio)
    return out


def partner_images(x: torch.Tensor, rows: np.ndarray, names: tuple[str, ...],
                   partners: Partners | None) -> torch.Tensor | None:
    """(B, C, H, W) partner images of the mixed rows (zeros elsewhere), or None when no row is mixed."""
    mixed = mixed_rows(rows, names)
    if mixed is None:
        return None
    assert partners is not None, "mixed views need the split's partners"
    out = torch.zeros_like(x)
    out[torch.from_numpy(mixed)] = partners.images(rows[mixed, names.index("partner")].astype(np.int64))
    return out


def view_pixels(x: torch.Tensor, rows: np.ndarray, names: tuple[str, ...], partners: Partners | None, *,
                size: tuple[int, int] | None = None) -> torch.Tensor:
    """Pixels of the views ``rows`` (B, P) of the samples ``x`` (B, C, H, W), partners fetched as needed; at
    ``size`` (H', W') when given (see :func:`apply_rows`), else at ``x``'s."""
    return apply_rows(x, rows, names, partner_images(x, rows, names, partners), size=size)


def mixed_labels(y: torch.Tensor, rows: np.ndarray, names: tuple[str, ...],
                 partners: Partners | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(partner labels (B,), λ (B,)) of the views ``rows``; an unmixed row has its own label and λ = 1.

    None when the store has no mixed views.
    """
    if "mix" not in names:
        return None
    mixed = rows[:, names.index("mix")] > 0  # (B,)
    partner_y, lam = y.clone(), torch.ones(len(y))
    if mixed.any():
        assert partners is not None, "mixed views need the split's partners"
        sel = torch.from_numpy(np.nonzero(mixed)[0])
        partner_y[sel] = partners.labels(rows[mixed, names.index("partner")].astype(np.int64))
        lam[sel] = torch.from_numpy(rows[mixed, names.index("lam")].astype(np.float32))
    return partner_y, lam


class ViewReplay:
    """What stage 2's loader holds to replay a store's views (picklable, for DataLoader workers).

    The loader carries each view's logits and its row together as one float32 array
    (logits, then parameters), so the chunk pipeline moves both without knowing about views.

    ``data`` is what the batches show (:data:`pipeline.grid.BASELINE_DATA`, for the label-only students): the
    views as stored (``views``), the sample's own transformed view without its mixing, with its own label
    (``nomix``), or the clean image (``plain``: the loader then picks view 0 alone, whose parameters are the
    identity).

    ``size`` (H', W'): the resolution views are replayed at when a student's own differs from the store's
    (None: the store's, as the teacher made them). Each view is then resampled once, from its recorded box
    straight to the student's size (:func:`apply_rows`), not made at the teacher's and resized again.
    """

    def __init__(self, names: tuple[str, ...], num_classes: int, split: Split, split_name: str, *,
                 size: tuple[int, int] | None = None, data: str = "views") -> None:
        self.names, self.num_classes, self.data = tuple(names), num_classes, data
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.partners = Partners(split, split_name) if "mix" in self.names and data == "views" else None

    @staticmethod
    def pack(logits: np.ndarray, params: np.ndarray) -> np.ndarray:
        """(R, V, C) logits and (R, V, P) rows -> (R, V, C + P)."""
        return np.concatenate([logits.astype(np.float32, copy=False), params.astype(np.float32, copy=False)], axis=-1)

    def split(self, payload: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One batch's chosen views: payload (B, C + P) -> (logits (B, C), view parameters (B, P))."""
        return payload[:, :self.num_classes], payload[:, self.num_classes:]

    def pixels(self, x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """The views ``rows`` (B, P) of the samples ``x`` (B, C, H, W), partners read as needed (in whichever
        process reads the batch: a DataLoader worker when there are any)."""
        if self.data != "views":  # each view's own transform (view 0's is the identity); mix columns never read
            return apply_params(x, _params(rows, self.names), size=self.size)
        return view_pixels(x, rows, self.names, self.partners, size=self.size)

    def labels(self, y: torch.Tensor, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(partner labels (B,), λ (B,)) of the views ``rows`` (B, P), or None without mixed views (or with
        their mixing not served)."""
        if self.partners is None:
            return None
        return mixed_labels(y, rows, self.names, self.partners)
