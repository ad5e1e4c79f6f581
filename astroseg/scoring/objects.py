"""Object-level scores: connected components matched by "centre inside", and completeness by S/N.

Pixel IoU rewards getting big sources' outlines right; a survey wants to know which sources
were found at all. The matching rule is symmetric and simple to explain:

- A component is an 8-connected region of a mask; its *centre* is its pixel nearest its own
  centroid, so the centre always lies inside it (a ring's centroid would not).
- True objects are the given centres (generator truth: (y, x) rounded to the nearest pixel,
  pixel centres at integers, clipped to the image), else the truth mask's components.
- A true object is *found* when its centre pixel lies inside a predicted component:
  completeness = found / n_true.
- A predicted component is *pure* (real) when its centre lies inside the truth mask:
  purity = pure / n_pred.
- A *merge* is a predicted component holding the centres of 2 or more true objects.
- A *split* is a truth component holding more predicted-component centres than true-object
  centres (and at least 2 when it holds none): one source seen as several.
- `merges_in_truth` counts the truth components that hold 2 or more true centres: galaxies
  whose masks touch. A binary prediction cannot separate them, so that count is the floor of
  `merges` for any mask, a perfect one included; only a label image (deblended) goes below.

Empty sets mirror the pixel metrics (astroseg/scoring/metrics.py): a ratio with a zero
denominator is 1 only when truth and prediction are both empty, else 0. So with no true
objects completeness is 1 if nothing was predicted and 0 otherwise, and with no predictions
purity is 1 if there was nothing to find and 0 otherwise.

A prediction may also be an integer label image wider than uint8 (0 = background, e.g.
deblended sources): its labels are then the predicted components, so touching sources count
apart. A bool or uint8 array is a mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from astroseg.errors import DataError

SNR_EDGES: tuple[float, ...] = (0, 3, 5, 7, 10, 15, 20, 30, 40, 50, 60, 80, 120, float("inf"))
_EIGHT = np.ones((3, 3), dtype=bool)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components (8-connectivity, scipy.ndimage.label) of a boolean (H, W) mask."""
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT)
    return labels, int(n)


def component_centres(labels: np.ndarray, n: int) -> np.ndarray:
    """(n, 2) int (y, x) of each label's pixel nearest its centroid; labels are 1..n."""
    if n == 0:
        return np.zeros((0, 2), dtype=np.intp)
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    count = np.bincount(lab, minlength=n + 1)
    present = count[1:] > 0
    if not present.all():
        raise DataError(f"label image skips labels {list(np.flatnonzero(~present)[:5] + 1)}: "
                        "expected labels 1..n with no gaps")
    cy = np.bincount(lab, weights=ys, minlength=n + 1) / np.maximum(count, 1)
    cx = np.bincount(lab, weights=xs, minlength=n + 1) / np.maximum(count, 1)
    d2 = (ys - cy[lab]) ** 2 + (xs - cx[lab]) ** 2
    # Sort by label, then distance (stable: ties go to the first pixel in raster order).
    order = np.lexsort((d2, lab))
    first = np.searchsorted(lab[order], np.arange(1, n + 1))
    pick = order[first]
    return np.stack([ys[pick], xs[pick]], 1)


def _as_labels(pred: np.ndarray) -> tuple[np.ndarray, int]:
    """A mask's components (bool or uint8, the dtypes masks come in), or a wider integer label
    image relabelled to 1..n."""
    pred = np.asarray(pred)
    if pred.dtype in (bool, np.uint8):
        return components(pred > 0)
    if not np.issubdtype(pred.dtype, np.integer) or (pred < 0).any():
        raise DataError(f"prediction of dtype {pred.dtype}: expected a bool mask or a "
                        "non-negative integer label image")
    # Consecutive labels, so bincounts stay as small as the number of sources.
    values, inverse = np.unique(pred, return_inverse=True)
    if values[0] != 0:
        inverse = inverse + 1
    return inverse.reshape(pred.shape), int(np.count_nonzero(values))


def _ratio(num: int, den: int, both_empty: bool) -> float:
    return num / den if den else float(both_empty)


class ObjectScorer:
    """Object-level matching summed over images."""

    def __init__(self) -> None:
        self.n_true = self.n_pred = self.found = self.pure = self.splits = self.merges = 0
        self.merges_in_truth = 0
        self._snr: list[np.ndarray] = []
        self._found: list[np.ndarray] = []

    def add(self, pred: np.ndarray, truth: np.ndarray, centres: np.ndarray | None = None,
            snr: np.ndarray | None = None) -> np.ndarray:
        """Match one image: pred/truth are (H, W) bool masks; centres (M, 2) float (y, x) pixel
        coordinates of the true objects (pixel centres at integers) or None to use the truth
        mask's components; snr (M,) per true object or None. Returns found (M,) bool."""
        truth = np.asarray(truth, dtype=bool)
        if truth.ndim != 2 or np.shape(pred) != truth.shape:
            raise DataError(f"object matching: prediction of shape {np.shape(pred)} and truth "
                            f"of shape {truth.shape}; expected the same (H, W)")
        pred_lab, n_pred = _as_labels(pred)
        truth_lab, n_truth = components(truth)
        if centres is None:
            true_c = component_centres(truth_lab, n_truth)
        else:
            centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2) if np.size(centres) \
                else np.zeros((0, 2))
            if not np.isfinite(centres).all():
                raise DataError("object matching: true centres hold NaN or infinite values")
            limit = np.array(truth.shape) - 1
            true_c = np.clip(np.rint(centres), 0, limit).astype(np.intp)
        m = len(true_c)
        if snr is not None:
            snr = np.asarray(snr, dtype=np.float64).reshape(-1)
            if len(snr) != m:
                raise DataError(f"object matching: {len(snr)} S/N values for {m} true objects")
        pred_c = component_centres(pred_lab, n_pred)

        # Which predicted component / truth component each centre falls in (0 = none).
        true_in_pred = pred_lab[true_c[:, 0], true_c[:, 1]]
        true_in_truth = truth_lab[true_c[:, 0], true_c[:, 1]]
        pred_in_truth = truth_lab[pred_c[:, 0], pred_c[:, 1]]
        found = true_in_pred > 0

        per_pred = np.bincount(true_in_pred, minlength=n_pred + 1)[1:]
        true_per_comp = np.bincount(true_in_truth, minlength=n_truth + 1)[1:]
        pred_per_comp = np.bincount(pred_in_truth, minlength=n_truth + 1)[1:]
        self.n_true += m
        self.n_pred += n_pred
        self.found += int(found.sum())
        self.pure += int((pred_in_truth > 0).sum())
        self.merges += int((per_pred >= 2).sum())
        self.merges_in_truth += int((true_per_comp >= 2).sum())
        self.splits += int((pred_per_comp > np.maximum(true_per_comp, 1)).sum())
        if snr is not None:
            self._snr.append(snr)
            self._found.append(found)
        return found

    def summary(self) -> dict[str, float | int]:
        """{"n_true", "n_pred", "found", "completeness", "purity", "splits", "merges",
        "merges_in_truth"}"""
        both_empty = self.n_true == 0 and self.n_pred == 0
        return {"n_true": self.n_true, "n_pred": self.n_pred, "found": self.found,
                "completeness": _ratio(self.found, self.n_true, both_empty),
                "purity": _ratio(self.pure, self.n_pred, both_empty),
                "splits": self.splits, "merges": self.merges,
                "merges_in_truth": self.merges_in_truth}

    def completeness_rows(self, edges: tuple[float, ...] = SNR_EDGES
                          ) -> list[dict[str, float | int]]:
        """One row per non-empty S/N bin: snr_lo, snr_hi, snr (median S/N in the bin), n, found,
        completeness. Empty list when no S/N was given."""
        if not self._snr:
            return []
        snr, found = np.concatenate(self._snr), np.concatenate(self._found)
        edges = np.asarray(edges, dtype=np.float64)
        # Bins are [lo, hi), the last [lo, hi] (an infinite S/N of noiseless data belongs in
        # it); objects outside the edges (or with NaN S/N) are left out.
        which = np.searchsorted(edges, snr, side="right") - 1
        which[snr == edges[-1]] = len(edges) - 2
        rows = []
        for b in range(len(edges) - 1):
            sel = which == b
            n = int(sel.sum())
            if n:
                k = int(found[sel].sum())
                rows.append({"snr_lo": float(edges[b]), "snr_hi": float(edges[b + 1]),
                             "snr": float(np.median(snr[sel])), "n": n, "found": k,
                             "completeness": k / n})
        return rows


def truth_objects(meta: dict[str, np.ndarray], i: int
                  ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(centres (M, 2) y, x; snr (M,)) of image i from the dataset meta, or (None, None) when
    the meta holds no per-object truth (FITS data)."""
    # gal_*: the seed sky's galaxies; obj_*: the realistic sky's galaxies and stars.
    prefix = next((p for p in ("gal_", "obj_") if p + "cx" in meta and p + "cy" in meta), None)
    if prefix is None:
        return None, None
    cx = np.asarray(meta[prefix + "cx"][i], dtype=np.float64).reshape(-1)
    cy = np.asarray(meta[prefix + "cy"][i], dtype=np.float64).reshape(-1)
    keep = np.isfinite(cx) & np.isfinite(cy)   # NaN pads images with fewer than K objects
    centres = np.stack([cy[keep], cx[keep]], 1)
    if prefix + "snr" not in meta:
        return centres, None
    return centres, np.asarray(meta[prefix + "snr"][i], dtype=np.float64).reshape(-1)[keep]
