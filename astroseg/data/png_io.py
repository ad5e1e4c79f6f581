"""PNG images as float32 pixels: grey levels as stored, colour as luminance, transparency as
invalid; the PNGs Pillow would silently misread are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from astroseg.errors import DataError


def png_pixels(path: Path, img) -> np.ndarray:
    """Float32 pixels of a PNG: grey levels as they are (8 or 16 bits), colour and palette
    images as their luminance; NaN (invalid) where the alpha channel or the palette's
    transparency makes a pixel fully transparent (HiPS tiles mark blank sky so)."""
    if img.format != "PNG":
        # Pillow reads many formats by content; a FITS file named .png would lose its
        # BSCALE/BZERO/BLANK handling, a JPEG its lossless pixels.
        raise DataError(f"{path}: holds {img.format or 'unknown'} data, not PNG; give it the "
                        "suffix of what it holds (.fits for FITS)")
    mode, rawmode = img.mode, str(img.tile[0][3] if img.tile else "")
    if mode not in ("I", "I;16", "I;16B", "F", "L", "1") and "16" in rawmode:
        # Pillow reads 16-bit colour (RGB;16B, LA;16B) as 8 bits per channel: 256 levels.
        raise DataError(f"{path}: a 16-bit colour PNG ({rawmode}), which Pillow reads at 8 bits "
                        "per channel; save it as 16-bit greyscale PNG, or as FITS")
    if mode == "P" and not img.palette:
        raise DataError(f"{path}: a palette PNG without its palette (no PLTE chunk): corrupt")
    grey = img.convert("F") if mode in ("I", "I;16", "I;16B", "F", "L") else \
        img.convert("L").convert("F")
    arr = np.array(grey, dtype=np.float32)
    if "A" in img.getbands() or img.has_transparency_data:
        arr[np.asarray(img.convert("RGBA").getchannel("A")) == 0] = np.nan
    return arr
