"""`data.source: fits`: survey images + masks -> normalised tiles, split by field or by block.

`data.fits.split` picks how tiles are dealt to train/val/test (astroseg.data.blocks): `field`
gives each file to one split (overlapping neighbours of one field never straddle two splits);
`block` deals blocks of each field, with a guard band of one tile between splits, so a single
mosaic can be trained on; `auto` is `field` from 3 files on, else `block`. Each field is
normalised as a whole (astroseg.data.normalize), from its pixels alone and not its mask, as
`astroseg predict` does, and cut into `tile` x `tile` windows every `stride` pixels; tiles with
no valid pixel (or, with `skip_empty`, no source pixel) are dropped. Invalid pixels are 0 in
`images`, background in `masks` and 0 in the per-tile `valid` map, which the loss and the
metrics leave out.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from astroseg.data.band_files import band_globs, check_aligned, find_band_files
from astroseg.data.blocks import BlockGrid, block_axes, deal, deal_blocks
from astroseg.data.dataset import SPLITS, DatasetWriter
from astroseg.errors import DataError
from astroseg.data.fits_io import check_same_shape, open_image, parse_hdu, read_mask, stem
from astroseg.data.normalize import Normalization, normalize_array
from astroseg.params import DataParams, FitsParams
from astroseg.data.tiling import cut_tiles, pad_to

# block: the tile's block (row-major over the fields' block grids, in field order); -1 when
# whole fields are split.
META_DTYPES = {"field": np.int32, "y": np.int32, "x": np.int32, "valid_fraction": np.float32,
               "block": np.int32}


@dataclass(frozen=True)
class Field:
    """One image file with its mask (and bad-pixel map) files."""
    name: str
    image: Path
    mask: Path
    bad: Path | None = None
    bands: tuple[Path, ...] = ()     # one file per band (data.fits.bands), `image` the first


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
    """Pair the files of `data.fits.images` (or of each band), `.masks` (and `.bad_pixels`)
    by name."""
    root = Path(root)
    if p.bands:
        _, files = find_band_files(p.images, p.bands, root)
        images = {name: paths[0] for name, paths in files.items()}
    else:
        files, images = {}, _glob(p.images, "data.fits.images", root)
    # A field's mask or bad-pixel map is named after the field, or after one of its band files
    # (`astroseg label` on band 0 names its mask after that file).
    names = {n: [n, *(stem(f) for f in files.get(n, ()))] for n in images}
    masks = _glob(p.masks, "data.fits.masks", root)
    bad = _glob(p.bad_pixels, "data.fits.bad_pixels", root) if p.bad_pixels else {}
    mask_of = {n: next((masks[a] for a in names[n] if a in masks), None) for n in images}
    missing = [n for n in images if mask_of[n] is None]
    if missing:
        raise DataError(f"{images[missing[0]]}: no mask file named "
                        f"{' or '.join(repr(a) for a in dict.fromkeys(names[missing[0]]))} (any "
                        f"image suffix) among the {len(masks)} files of data.fits.masks = "
                        f"{p.masks!r}")
    used = {m for m in mask_of.values()}
    orphans = [m for m in masks.values() if m not in used]
    if orphans:
        raise DataError(f"{orphans[0]}: mask without an image in data.fits.images = {p.images!r}")
    bad_of = {n: next((bad[a] for a in names[n] if a in bad), None) for n in images}
    if bad and None in bad_of.values():
        n = next(n for n in images if bad_of[n] is None)
        raise DataError(f"{images[n]}: no bad-pixel map of the same name in "
                        f"data.fits.bad_pixels = {p.bad_pixels!r}")
    return [Field(n, images[n], mask_of[n], bad_of[n], tuple(files.get(n, ()))) for n in images]


def load_field(field: Field, p: FitsParams, method: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Normalization]]:
    """A field's normalised image ((H, W), or (C, H, W) with each band normalised on its own),
    uint8 mask, valid map (valid in every band), and normalisation per band; shapes, values
    and the bands' alignment checked."""
    # The same reader as `astroseg predict`, so training and prediction see the same pixels.
    raws, valids, headers = [], [], []
    for path in field.bands or (field.image,):
        with open_image(path, parse_hdu(p.hdu), parse_hdu(p.bad_pixel_hdu), field.bad) as src:
            raw, valid = src.read()
            if raws:
                check_same_shape(field.image, raws[0].shape, raw.shape, f"band file {path}")
                check_aligned(field.image, headers[0], path, src.header, raw.shape)
            raws.append(raw)
            valids.append(valid)
            headers.append(src.header)
    mask = read_mask(field.mask, parse_hdu(p.mask_hdu))
    check_same_shape(field.image, raws[0].shape, mask.shape, str(field.mask))
    fitted = [normalize_array(raw, valid, method, str(path))
              for raw, valid, path in zip(raws, valids, field.bands or (field.image,))]
    valid = np.logical_and.reduce(valids)
    image = fitted[0][0] if len(fitted) == 1 else np.stack([f[0] for f in fitted])
    if len(fitted) > 1:
        image[:, ~valid] = 0     # a pixel one band lacks is 0 in all, as predict feeds it
    return image, (mask & valid).astype(np.uint8), valid, [f[1] for f in fitted]


@dataclass
class Tiles:
    """The kept tiles of one field."""
    images: np.ndarray
    masks: np.ndarray
    valid: np.ndarray
    meta: dict[str, np.ndarray]


def field_tiles(index: int, image: np.ndarray, mask: np.ndarray, valid: np.ndarray,
                p: FitsParams, pos: np.ndarray | None = None, block: np.ndarray | None = None
                ) -> Tiles:
    """Cut one field into tiles (every `stride`, or at the (K, 2) starts `pos`), dropping
    invalid (and, with skip_empty, source-free) ones; `block` is each tile's block index."""
    valid = pad_to(valid, p.tile, p.tile, value=False)
    bands = list(image) if image.ndim == 3 else [image]
    (*images, masks, valids), pos = cut_tiles([*bands, mask, valid], p.tile, p.stride, pos)
    images = images[0] if len(images) == 1 else np.stack(images, axis=1)
    fraction = valids.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
    keep = fraction > 0
    if p.skip_empty:
        keep &= masks.any(axis=(1, 2))
    block = np.full(len(pos), -1, np.int32) if block is None else block
    meta = {"field": np.full(keep.sum(), index, np.int32), "y": pos[keep, 0], "x": pos[keep, 1],
            "valid_fraction": fraction[keep], "block": block[keep]}
    return Tiles(images[keep], masks[keep], valids[keep].astype(np.uint8), meta)


def split_mode(p: FitsParams, n_fields: int) -> str:
    """`field` or `block`: what `data.fits.split` means for this many fields."""
    if p.split == "auto":
        if n_fields >= 3:
            return "field"
        p.check_block()
        return "block"
    if p.split == "field" and n_fields < 3:
        raise DataError(f"{n_fields} field(s) found and data.fits.split = field; need at least 3 "
                        "image files so that train, val and test each get a whole field, or "
                        "data.fits.split: block (or auto) to split inside the fields")
    return p.split


def block_coverage(field: Field, p: FitsParams, rows: int = 256
                   ) -> tuple[tuple[int, int], np.ndarray]:
    """A field's (H, W), and the (ny, nx) fraction of each block's pixels valid in every band,
    read in row strips."""
    sources = [open_image(path, parse_hdu(p.hdu), parse_hdu(p.bad_pixel_hdu), field.bad)
               for path in field.bands or (field.image,)]
    try:
        ys, xs = block_axes(sources[0].shape, p.block)
        counts = np.zeros((len(ys) - 1, len(xs) - 1), np.int64)
        for y0 in range(0, int(ys[-1]), rows):
            y1 = min(int(ys[-1]), y0 + rows)
            valid = np.logical_and.reduce([s.rows(y0, y1)[1] for s in sources])
            per_row = np.add.reduceat(valid, xs[:-1], axis=1, dtype=np.int64)   # (rows, nx)
            band = np.searchsorted(ys, np.arange(y0, y1), side="right") - 1
            np.add.at(counts, band, per_row)
    finally:
        for s in sources:
            s.close()
    return sources[0].shape, counts / np.outer(np.diff(ys), np.diff(xs))


def iter_tiles(fields: list[Field], p: FitsParams, method: str, seed: int
               ) -> Iterator[tuple[dict, dict[str, Tiles]]]:
    """(provenance record, tiles per split) of every field, split by field or by block."""
    if split_mode(p, len(fields)) == "field":
        dealt = deal(len(fields), p.val_fraction, p.test_fraction, seed, "field(s)")
        grids = [None] * len(fields)
    else:
        shapes, coverage = zip(*(block_coverage(f, p) for f in fields))
        grids = deal_blocks(list(shapes), p.block, p.val_fraction, p.test_fraction, seed,
                            list(coverage))
    first_block = 0
    # Whole fields go split by split (train, val, test), so the file's field index rises.
    order = range(len(fields)) if grids[0] is not None else \
        [i for s in (0, 1, 2) for i in np.flatnonzero(dealt == s)]
    for index, k in enumerate(order):
        field, grid = fields[k], grids[k]
        image, mask, valid, norm = load_field(field, p, method)
        record = {"name": field.name, "image": str(field.image), "mask": str(field.mask),
                  "normalization": norm[0].as_dict() if len(norm) == 1 else
                  [n.as_dict() for n in norm]}
        if field.bands:
            record["bands"] = [str(b) for b in field.bands]
        if grid is None:
            split = SPLITS[dealt[k]]
            tiles = {split: field_tiles(index, image, mask, valid, p)}
            record.update(split=split, tiles=len(tiles[split].images))
        else:
            tiles = {}
            for s, pos in grid.tiles(p.tile, p.stride, p.tile).items():
                blocks = _block_of(grid, pos) + first_block
                tiles[SPLITS[s]] = field_tiles(index, image, mask, valid, p, pos, blocks)
            # meta/block of a tile is first_block + its index in this field's `blocks`.
            record.update(split="block", tiles={s: len(t.images) for s, t in tiles.items()},
                          first_block=first_block, blocks=grid.records())
            first_block += grid.count
        yield record, tiles


def _block_of(grid: BlockGrid, pos: np.ndarray) -> np.ndarray:
    # Row-major index of the block holding each tile's first pixel.
    i = np.searchsorted(grid.ys, pos[:, 0], side="right") - 1
    j = np.searchsorted(grid.xs, pos[:, 1], side="right") - 1
    return (i * grid.split.shape[1] + j).astype(np.int32)


def write_fits_dataset(path: str | os.PathLike, p: DataParams, root: str | os.PathLike = "."
                       ) -> dict[str, int]:
    """Build the dataset file from FITS/PNG fields; return the number of tiles per split.

    The file is written to a temp name and only replaces `path` once every field was read, so a
    bad file anywhere leaves the previous dataset untouched.
    """
    fields = find_fields(p.fits, root)
    records, counts = [], dict.fromkeys(SPLITS, 0)
    attrs = {"source": "fits", "class_names": ["background", "source"],
             "normalization": p.normalize, "params": p.record()}
    if p.fits.bands:
        attrs["bands"] = [name for name, _ in band_globs(p.fits.images, p.fits.bands)]
    shape = (p.fits.tile, p.fits.tile)
    with DatasetWriter(path, attrs) as out:
        writers = {s: out.split(s, None, shape, META_DTYPES, valid=True,
                                bands=max(1, len(p.fits.bands))) for s in SPLITS}
        for record, tiles in iter_tiles(fields, p.fits, p.normalize, p.seed):
            for split, part in tiles.items():
                writers[split].write(counts[split], part.images, part.masks, part.meta,
                                     part.valid)
                counts[split] += len(part.images)
            records.append(record)
        empty = [s for s in SPLITS if counts[s] == 0]
        if empty:
            names = [r["name"] for r in records if r["split"] in (empty[0], "block")]
            raise DataError(f"split '{empty[0]}' got no tiles from fields {names}: every tile "
                            "was invalid or empty, or (data.fits.split: block) no block of it "
                            "holds a tile clear of the guard band; check the masks, "
                            "data.fits.skip_empty, data.fits.tile and data.fits.block")
        out.set_attr("fields", records)
    return counts
