"""`data.source: fits`: survey images + masks -> normalised tiles, split by field.

A field is one image file. Fields, not tiles, are assigned to train/val/test (shuffled with
`data.seed`), so overlapping neighbours of one field never straddle two splits. Each field is
normalised as a whole (astroseg.data.normalize) and cut into `tile` x `tile` windows every `stride`
pixels; tiles with no valid pixel (or, with `skip_empty`, no source pixel) are dropped.
Invalid pixels are 0 in `images`, background in `masks` and 0 in the per-tile `valid` map.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from astroseg.data.dataset import SPLITS, DatasetWriter
from astroseg.errors import DataError
from astroseg.data.fits_io import check_same_shape, open_image, parse_hdu, read_mask, stem
from astroseg.data.normalize import Normalization, normalize_array
from astroseg.params import DataParams, FitsParams
from astroseg.data.tiling import cut_tiles, pad_to

META_DTYPES = {"field": np.int32, "y": np.int32, "x": np.int32, "valid_fraction": np.float32}


@dataclass(frozen=True)
class Field:
    """One image file with its mask (and bad-pixel map) files."""
    name: str
    image: Path
    mask: Path
    bad: Path | None = None


def _glob(pattern: str, key: str, root: Path) -> dict[str, Path]:
    paths = sorted(Path(p) for p in glob.glob(str(root / pattern)))
    if not paths:
        raise DataError(f"{key} = {pattern!r} matches no file (relative to {root.resolve()})")
    by_stem: dict[str, Path] = {}
    for path in paths:
        if stem(path) in by_stem:
            raise DataError(f"{key}: {by_stem[stem(path)]} and {path} have the same name; "
                            "files are paired by name, so names must be unique")
        by_stem[stem(path)] = path
    return by_stem


def find_fields(p: FitsParams, root: str | os.PathLike = ".") -> list[Field]:
    """Pair the files of `data.fits.images`, `.masks` (and `.bad_pixels`) by name."""
    root = Path(root)
    images = _glob(p.images, "data.fits.images", root)
    masks = _glob(p.masks, "data.fits.masks", root)
    bad = _glob(p.bad_pixels, "data.fits.bad_pixels", root) if p.bad_pixels else {}
    missing = [images[n] for n in images if n not in masks]
    if missing:
        raise DataError(f"{missing[0]}: no mask file named '{missing[0].name}' (any image "
                        f"suffix) among the {len(masks)} files of data.fits.masks = {p.masks!r}")
    orphans = [masks[n] for n in masks if n not in images]
    if orphans:
        raise DataError(f"{orphans[0]}: mask without an image in data.fits.images = {p.images!r}")
    if bad:
        no_bad = [images[n] for n in images if n not in bad]
        if no_bad:
            raise DataError(f"{no_bad[0]}: no bad-pixel map of the same name in "
                            f"data.fits.bad_pixels = {p.bad_pixels!r}")
    return [Field(n, images[n], masks[n], bad.get(n)) for n in images]


def split_fields(fields: list[Field], val_fraction: float, test_fraction: float,
                 seed: int) -> dict[str, list[Field]]:
    """Shuffle fields with `seed` and deal them to test, val, then train (at least 1 each)."""
    if len(fields) < 3:
        raise DataError(f"{len(fields)} field(s) found; need at least 3 image files so that "
                        "train, val and test each get a whole field")
    order = np.random.default_rng(seed).permutation(len(fields))
    n = len(fields)
    n_test = min(max(1, round(test_fraction * n)), n - 2)
    n_val = min(max(1, round(val_fraction * n)), n - 1 - n_test)
    picked = [fields[i] for i in order]
    return {"test": picked[:n_test], "val": picked[n_test:n_test + n_val],
            "train": picked[n_test + n_val:]}


def load_field(field: Field, p: FitsParams, method: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Normalization]:
    """A field's normalised image, uint8 mask and valid map, checking shapes and values."""
    # The same reader as `astroseg predict`, so training and prediction see the same pixels.
    with open_image(field.image, parse_hdu(p.hdu), parse_hdu(p.bad_pixel_hdu), field.bad) as src:
        raw, valid = src.read()
    mask = read_mask(field.mask, parse_hdu(p.mask_hdu))
    check_same_shape(field.image, raw.shape, mask.shape, str(field.mask))
    image, norm = normalize_array(raw, valid, method, str(field.image))
    return image, (mask & valid).astype(np.uint8), valid, norm


@dataclass
class Tiles:
    """The kept tiles of one field."""
    images: np.ndarray
    masks: np.ndarray
    valid: np.ndarray
    meta: dict[str, np.ndarray]


def field_tiles(index: int, image: np.ndarray, mask: np.ndarray, valid: np.ndarray,
                p: FitsParams) -> Tiles:
    """Cut one field into tiles, dropping invalid (and, with skip_empty, source-free) ones."""
    valid = pad_to(valid, p.tile, p.tile, value=False)
    (images, masks, valids), pos = cut_tiles([image, mask, valid], p.tile, p.stride)
    fraction = valids.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
    keep = fraction > 0
    if p.skip_empty:
        keep &= masks.any(axis=(1, 2))
    meta = {"field": np.full(keep.sum(), index, np.int32), "y": pos[keep, 0], "x": pos[keep, 1],
            "valid_fraction": fraction[keep]}
    return Tiles(images[keep], masks[keep], valids[keep].astype(np.uint8), meta)


def iter_split_tiles(split_fields: dict[str, list[Field]], p: FitsParams, method: str
                     ) -> Iterator[tuple[str, int, Field, Normalization, Tiles]]:
    """(split, field index, field, normalisation, tiles) for every field, split by split."""
    index = 0
    for split in SPLITS:
        for field in split_fields[split]:
            image, mask, valid, norm = load_field(field, p, method)
            yield split, index, field, norm, field_tiles(index, image, mask, valid, p)
            index += 1


def write_fits_dataset(path: str | os.PathLike, p: DataParams, root: str | os.PathLike = "."
                       ) -> dict[str, int]:
    """Build the dataset file from FITS/PNG fields; return the number of tiles per split.

    The file is written to a temp name and only replaces `path` once every field was read, so a
    bad file anywhere leaves the previous dataset untouched.
    """
    fields = find_fields(p.fits, root)
    splits = split_fields(fields, p.fits.val_fraction, p.fits.test_fraction, p.seed)
    records, counts = [], dict.fromkeys(SPLITS, 0)
    attrs = {"source": "fits", "class_names": ["background", "source"],
             "normalization": p.normalize, "params": p.record()}
    shape = (p.fits.tile, p.fits.tile)
    with DatasetWriter(path, attrs) as out:
        writers = {s: out.split(s, None, shape, META_DTYPES, valid=True) for s in SPLITS}
        for split, index, field, norm, tiles in iter_split_tiles(splits, p.fits, p.normalize):
            writers[split].write(counts[split], tiles.images, tiles.masks, tiles.meta, tiles.valid)
            counts[split] += len(tiles.images)
            records.append({"name": field.name, "image": str(field.image), "mask": str(field.mask),
                            "split": split, "tiles": len(tiles.images),
                            "normalization": norm.as_dict()})
        empty = [s for s in SPLITS if counts[s] == 0]
        if empty:
            names = [r["name"] for r in records if r["split"] == empty[0]]
            raise DataError(f"split '{empty[0]}' got no tiles from its fields {names}: every "
                            "tile was invalid or empty; check the masks, data.fits.skip_empty "
                            "and data.fits.tile")
        out.set_attr("fields", records)
    return counts
