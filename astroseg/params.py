"""Typed, validated `params.yaml`: one frozen dataclass per section, checked before any work.

Each field's default is the value in the repo's `params.yaml` (a test checks that they agree),
so a params file that leaves a key out gets the project's default, not the seed notebook's.
Validation rejects unknown keys, wrong types and out-of-range values, and params that contradict
each other (a tile size the model cannot take, a colormap matplotlib lacks), with a one-line
message that names the file, the dotted key and the value, before any stage writes anything.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import re
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from astroseg.errors import ParamsError


def _p(default: Any, *, ge: float | None = None, gt: float | None = None,
       le: float | None = None, lt: float | None = None,
       choices: tuple[str, ...] | None = None, ordered: bool = False) -> Any:
    """A dataclass field with bounds (applied to each number of a list) or allowed choices.

    `ordered` marks a [low, high] range.
    """
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "ordered": ordered}
    if isinstance(default, (list, tuple)):
        meta["empty"] = not default     # a list that is empty by default may be left empty
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


def _sub(cls: type) -> Any:
    """A nested section field."""
    return field(default_factory=cls)


# ---------------------------------------------------------------- data (prepare stage)

# Limits where the program has one of its own (a value past one used to pass validation, then
# crash, hang or silently overflow in the stage):
FLUX_MAX = 1e6          # synthetic pixels are float32: brightness scales up to this (and their
                        # products with the band fluxes and the count of galaxies) stay finite
FLUX_MIN = 1e-30        # ... and a noise level above 0 is at least this
SIZE_MIN, SIZE_MAX = 1e-3, 1e6   # sizes in pixels (galaxies, bars, the PSF): a Gaussian
                        # divides by the size squared, and exp() and float32 overflow past these
SIDE_MAX = 8192         # image or tile side (pixels): one 8192^2 image is 256 MB in float32
IMAGES_MAX = 2 ** 48    # images per split: synthetic.image_stream keys image i by 48 bits


@dataclass(frozen=True)
class GalaxyParams:
    """Elliptical Gaussian galaxies; the mask is where a galaxy exceeds `mask_level` of its peak."""
    count: tuple[int, int] = _p((1, 3), ge=0, le=255, ordered=True)   # the file stores uint8
    margin: float = _p(20.0, ge=0)
    a: tuple[float, float] = _p((4.0, 12.0), ge=SIZE_MIN, le=SIZE_MAX, ordered=True)
    b: tuple[float, float] = _p((3.0, 10.0), ge=SIZE_MIN, le=SIZE_MAX, ordered=True)
    peak: tuple[float, float] = _p((0.7, 1.5), gt=0, le=FLUX_MAX, ordered=True)
    mask_level: float = _p(0.1, gt=0, lt=1)


@dataclass(frozen=True)
class BarParams:
    """Unmasked bars along a galaxy's major axis."""
    probability: float = _p(0.4, ge=0, le=1)
    length: tuple[float, float] = _p((6.0, 14.0), ge=SIZE_MIN, le=SIZE_MAX, ordered=True)
    width: tuple[float, float] = _p((1.5, 3.5), ge=SIZE_MIN, le=SIZE_MAX, ordered=True)
    amplitude: float = _p(0.2, ge=0, le=FLUX_MAX)


@dataclass(frozen=True)
class SpiralParams:
    """Unmasked log-spiral ridges around a galaxy: structure that fools thresholding."""
    probability: float = _p(0.3, ge=0, le=1)
    turns: tuple[float, float] = _p((1.0, 2.5), ge=0, le=1e6, ordered=True)  # in a float32 phase
    arms: int = _p(3, ge=1)
    ridge_level: float = _p(0.9, ge=-1, lt=1)
    amplitude: float = _p(0.1, ge=0, le=FLUX_MAX)


@dataclass(frozen=True)
class NoiseParams:
    """Gaussian read noise plus a scaled Poisson term."""
    gaussian_sigma: float = _p(0.02, ge=0, le=FLUX_MAX)
    poisson_rate: float = _p(1.0, ge=0, le=1e4)
    poisson_scale: float = _p(0.001, ge=0, le=FLUX_MAX)

    def check(self) -> None:
        # The generator divides by 1e-3 x sigma (it draws galaxies out to that level), which is 0
        # for a sigma under ~1e-320; and under float32's 1e-38 the pixels hold no noise anyway.
        if 0 < self.gaussian_sigma < FLUX_MIN:
            raise ParamsError(f"data.noise.gaussian_sigma = {self.gaussian_sigma:g}: expected 0 "
                              f"(no Gaussian noise) or at least {FLUX_MIN:g}")


@dataclass(frozen=True)
class BandParams:
    """Several bands (channels) of the synthetic sky: each component's flux in each band,
    relative to the one-band image (colours); the mask and the noise are as in one band."""
    names: tuple[str, ...] = _p(())       # [] = one band, the seed's image
    galaxy: tuple[float, ...] = _p((), ge=0, le=FLUX_MAX)
    bar: tuple[float, ...] = _p((), ge=0, le=FLUX_MAX)
    spiral: tuple[float, ...] = _p((), ge=0, le=FLUX_MAX)

    def check(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise ParamsError(f"data.bands.names = {_show(list(self.names))}: names must be "
                              "unique")
        for key in ("galaxy", "bar", "spiral"):
            if len(getattr(self, key)) != len(self.names):
                raise ParamsError(f"data.bands.{key} = {_show(list(getattr(self, key)))}: "
                                  f"expected {len(self.names)} values, one per band of "
                                  "data.bands.names")


@dataclass(frozen=True)
class RealisticParams:
    """`data.sky: realistic`: a survey-like sky in detector counts (astroseg.data.realistic).

    Fluxes are in units of the background noise sigma (sky + read noise, per pixel), so one
    range spans shallow and deep, space- and ground-based frames; counts per image are
    Poisson with a mean per 128 x 128 pixels, drawn log-uniformly per image.
    """
    mask_nsigma: float = _p(1.5, gt=0)      # truth: noiseless source model > this x sigma
    mask_npixels: int = _p(5, ge=1)         # ... in components of at least this many pixels
    fwhm: tuple[float, float] = _p((1.2, 8.0), gt=0, le=SIZE_MAX, ordered=True)  # PSF (pixels),
                                            # log-uniform; the truth table holds it in float32
    moffat: float = _p(0.7, ge=0, le=1)     # fraction of images with a Moffat PSF, else Gaussian
    moffat_beta: tuple[float, float] = _p((2.0, 5.0), gt=1, ordered=True)
    # Upper bounds: numpy's Poisson draws take a mean up to ~1e19 electrons, and a frame holds
    # 128^2 x galaxies / 128^2 sources (1e6: a minute per image); the lowest gain: counts =
    # electrons / gain stay finite in float32. Each is orders of magnitude past real detectors.
    sky: tuple[float, float] = _p((10.0, 20000.0), ge=0, le=1e9, ordered=True)  # electrons/px
    gain: tuple[float, float] = _p((0.5, 5.0), ge=1e-6, le=1e6, ordered=True)  # electrons/count
    read_noise: tuple[float, float] = _p((2.0, 15.0), ge=0, le=1e6, ordered=True)  # electrons
    full_well: tuple[float, float] = _p((2e4, 2e5), gt=0, ordered=True)  # electrons: saturation
    gradient: tuple[float, float] = _p((0.0, 3.0), ge=0, le=1e3, ordered=True)  # sky slope
                                            # across the image, in sigma
    galaxies: tuple[float, float] = _p((4.0, 400.0), ge=0, le=1e4, ordered=True)  # mean per
                                            # 128^2 px
    galaxy_flux: tuple[float, float] = _p((2.0, 1e5), gt=0, ordered=True)  # x sigma
    galaxy_slope: tuple[float, float] = _p((0.4, 1.2), gt=0, ordered=True)  # N(>F) ~ F^-slope
    sersic_n: tuple[float, float] = _p((0.5, 4.0), ge=0.3, le=8, ordered=True)
    radius: tuple[float, float] = _p((0.5, 6.0), gt=0, ordered=True)  # half-light radius
                                            # (pixels) at 100 sigma; grows as flux^0.3
    axis_ratio: tuple[float, float] = _p((0.2, 1.0), gt=0, le=1, ordered=True)
    bulge: float = _p(0.3, ge=0, le=1)      # fraction of galaxies drawn as bulge + disc
    stars: tuple[float, float] = _p((0.5, 300.0), ge=0, le=1e5, ordered=True)  # per 128^2 px
    star_flux: tuple[float, float] = _p((3.0, 1e7), gt=0, ordered=True)   # x sigma
    star_slope: tuple[float, float] = _p((0.3, 0.8), gt=0, ordered=True)
    correlated_noise: float = _p(0.3, ge=0, le=1)   # probabilities per image: drizzle-like
    cosmic_rays: float = _p(0.3, ge=0, le=1)        # noise; cosmic-ray hits; a wide halo on
    halo: float = _p(0.2, ge=0, le=1)               # the brightest star; a satellite streak
    streak: float = _p(0.1, ge=0, le=1)
    max_objects: int = _p(128, ge=1, le=65535)   # truth rows per image (the brightest first)

    def check(self) -> None:
        if self.sky[1] <= 0 and self.read_noise[1] <= 0:
            raise ParamsError(f"data.realistic.sky = {list(self.sky)} with data.realistic."
                              f"read_noise = {list(self.read_noise)}: a frame without sky or "
                              "read noise has no noise to measure fluxes in; raise either")


@dataclass(frozen=True)
class FitsParams:
    """`data.source: fits`: survey images and masks, tiled; split by field (file) or by block."""
    images: str = _p("raw/images/*.fits")   # glob, relative to the project root
    masks: str = _p("raw/masks/*.fits")     # paired with images by file name (without suffix)
    hdu: str = _p("")                       # image HDU: index or EXTNAME; "" = first image HDU
    mask_hdu: str = _p("")
    bad_pixels: str = _p("")                # optional glob of bad-pixel maps (nonzero = bad)
    bad_pixel_hdu: str = _p("")             # or an HDU of the image file (e.g. DQ), nonzero = bad
    tile: int = _p(128, ge=8, le=SIDE_MAX)
    stride: int = _p(96, ge=1)
    skip_empty: bool = _p(False)            # drop tiles without any source pixel
    split: str = _p("auto", choices=("auto", "field", "block"))   # astroseg.data.blocks
    block: int = _p(512, ge=16)             # block side (pixels) for split: block
    val_fraction: float = _p(0.15, gt=0, lt=1)   # of the fields, or of the blocks
    test_fraction: float = _p(0.15, gt=0, lt=1)
    bands: tuple[str, ...] = _p(())        # several bands per field (astroseg.data.bands)

    def check(self) -> None:
        if len(set(self.bands)) != len(self.bands):
            raise ParamsError(f"data.fits.bands = {_show(list(self.bands))}: entries must be "
                              "unique")
        if self.stride > self.tile:
            raise ParamsError(f"data.fits.stride = {self.stride} exceeds data.fits.tile = "
                              f"{self.tile}: tiles would leave gaps")
        if self.val_fraction + self.test_fraction >= 1:
            raise ParamsError("data.fits.val_fraction + data.fits.test_fraction must be < 1 "
                              "to leave fields (or blocks) for training")
        if self.split == "block":
            self.check_block()

    def check_block(self) -> None:
        """Raise unless a block can hold a tile inside its guard band."""
        if self.block < 2 * self.tile:
            raise ParamsError(f"data.fits.block = {self.block} is under 2 x data.fits.tile = "
                              f"{2 * self.tile}: a block bordered by other splits loses half a "
                              "tile of guard band on each side and must still hold a tile")


@dataclass(frozen=True)
class DataParams:
    """The `data` section: how `prepare` builds data/dataset.h5."""
    source: str = _p("synthetic", choices=("synthetic", "fits"))
    sky: str = _p("seed", choices=("seed", "realistic"))    # synthetic: which generator
    classes: str = _p("binary", choices=("binary", "morphology"))
    normalize: str = _p("minmax", choices=("minmax", "zscale", "asinh", "noise"))
    seed: int = _p(1234, ge=0, le=2 ** 64 - 1)
    height: int = _p(128, ge=8, le=SIDE_MAX)
    width: int = _p(128, ge=8, le=SIDE_MAX)
    n_train: int = _p(1600, ge=1, le=IMAGES_MAX)
    n_val: int = _p(120, ge=1, le=IMAGES_MAX)
    n_test: int = _p(120, ge=1, le=IMAGES_MAX)
    chunk: int = _p(64, ge=1)
    workers: int = _p(0, ge=0)
    galaxies: GalaxyParams = _sub(GalaxyParams)
    bar: BarParams = _sub(BarParams)
    spiral: SpiralParams = _sub(SpiralParams)
    noise: NoiseParams = _sub(NoiseParams)
    bands: BandParams = _sub(BandParams)
    realistic: RealisticParams = _sub(RealisticParams)
    fits: FitsParams = _sub(FitsParams)

    def class_names(self) -> list[str]:
        """The classes this source's masks hold (index = mask value)."""
        if self.classes == "morphology":
            return ["background", "galaxy", "star", "artifact"]
        return ["background", "source"]

    def record(self) -> dict[str, Any]:
        """The params that determine the dataset's bytes, for the source in use.

        Stored in the dataset file: `chunk` and `workers` (how many images are rendered at once,
        and by how many processes) and the other source's section do not change a pixel, so
        they must not change the file either.
        """
        if self.source == "fits":
            keep = ("source", "normalize", "seed", "fits")
        else:
            # Keys at their defaults that a file of the seed's sky never had are left out, so
            # that file keeps its bytes: one band, the seed sky, binary classes. The realistic
            # sky has none of the seed's galaxy, bar, spiral and noise sections.
            skip = ("chunk", "workers", "fits") + (() if self.bands.names else ("bands",))
            if self.sky == "seed":
                skip += ("sky", "realistic") + (("classes",) if self.classes == "binary" else ())
            else:
                skip += ("galaxies", "bar", "spiral", "noise")
            keep = tuple(f.name for f in dataclasses.fields(self) if f.name not in skip)
        full = dataclasses.asdict(self)
        return {key: full[key] for key in keep}

    def check(self) -> None:
        if self.source == "synthetic" and self.sky == "realistic":
            if self.normalize == "minmax":
                raise ParamsError("data.normalize = minmax with data.sky = realistic: one "
                                  "saturated star would squash the rest to 0; use noise (or "
                                  "asinh), as a real frame needs")
            if self.bands.names:
                raise ParamsError(f"data.bands.names = {_show(list(self.bands.names))}: the "
                                  "realistic sky renders one band; use data.sky = seed for "
                                  "several")
            return
        if self.classes == "morphology":
            raise ParamsError(f"data.classes = morphology with data.source = {self.source}, "
                              f"data.sky = {self.sky}: only the realistic synthetic sky labels "
                              "galaxies, stars and artifacts apart; use binary")
        margin = self.galaxies.margin
        for key, size in (("width", self.width), ("height", self.height)):
            if size <= 2 * margin:
                raise ParamsError(f"data.{key} = {size} must exceed 2 * data.galaxies.margin "
                                  f"= {2 * margin:g}, or galaxy centres have nowhere to go")


# ---------------------------------------------------------------- model, loss, train

WIDTH_MAX = 16384       # channels: past this one 1x1 layer alone is over 1 GB; and past 2^63
                        # torch cannot even express the shape
DEPTH_MAX = 64          # blocks per stage (MiT-B5's deepest stage has 40)
MLP_RATIO_MAX = 16.0    # feed-forward width over the block's (4 in SegFormer and ViT)


def _hidden_width(key: str, dim: int, dim_key: str, ratio: float) -> None:
    """Raise unless a block of width `dim` gets a feed-forward layer at least 1 wide."""
    if int(dim * ratio) < 1:
        raise ParamsError(f"{key} = {ratio:g} gives {dim_key} = {dim} a feed-forward width of "
                          f"{int(dim * ratio)}; expected {key} x {dim} >= 1")


@dataclass(frozen=True)
class TinySegFormerParams:
    """The seed notebook's single-scale transformer with a full-resolution conv decoder."""
    embed_dim: int = _p(128, ge=2, le=WIDTH_MAX)
    depth: int = _p(4, ge=1, le=DEPTH_MAX)
    num_heads: int = _p(4, ge=1)
    mlp_ratio: float = _p(3.0, gt=0, le=MLP_RATIO_MAX)
    patch_size: int = _p(8, ge=1, le=SIDE_MAX)
    overlap: float = _p(0.5, ge=0, le=8)     # the patch kernel spans 1 + overlap patches
    dropout: float = _p(0.0, ge=0, lt=1)
    attn_dropout: float = _p(0.0, ge=0, lt=1)
    pos_encoding: str = _p("absolute", choices=("absolute", "relative_bias"))

    def check(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ParamsError(f"model.tiny_segformer.embed_dim = {self.embed_dim} is not divisible "
                              f"by model.tiny_segformer.num_heads = {self.num_heads}")
        _hidden_width("model.tiny_segformer.mlp_ratio", self.embed_dim,
                      "model.tiny_segformer.embed_dim", self.mlp_ratio)


@dataclass(frozen=True)
class SegFormerParams:
    """Hierarchical Mix-Transformer encoder + all-MLP decoder; one list entry per stage."""
    dims: tuple[int, ...] = _p((32, 64, 160, 256), ge=1, le=WIDTH_MAX)
    depths: tuple[int, ...] = _p((2, 2, 2, 2), ge=1, le=DEPTH_MAX)
    heads: tuple[int, ...] = _p((1, 2, 5, 8), ge=1)
    sr_ratios: tuple[int, ...] = _p((8, 4, 2, 1), ge=1)
    first_stride: int = _p(4, ge=1)
    mlp_ratio: float = _p(4.0, gt=0, le=MLP_RATIO_MAX)
    decoder_dim: int = _p(128, ge=1, le=WIDTH_MAX)
    refine_dim: int = _p(32, ge=0, le=WIDTH_MAX)
    drop_path: float = _p(0.0, ge=0, lt=1)
    attn_dropout: float = _p(0.0, ge=0, lt=1)
    dropout: float = _p(0.1, ge=0, lt=1)   # MC dropout (evaluate.mc_samples) samples with it

    @property
    def stride(self) -> int:
        """Total downsampling: image sides must be multiples of it."""
        return self.first_stride * 2 ** (len(self.dims) - 1)

    def check(self) -> None:
        n = len(self.dims)
        for key in ("depths", "heads", "sr_ratios"):
            if len(getattr(self, key)) != n:
                raise ParamsError(f"model.segformer.{key} = {_show(list(getattr(self, key)))}: "
                                  f"expected {n} values, one per stage of model.segformer.dims")
        for i, (dim, heads) in enumerate(zip(self.dims, self.heads)):
            if dim % heads:
                raise ParamsError(f"model.segformer.dims[{i}] = {dim} is not divisible by "
                                  f"model.segformer.heads[{i}] = {heads}")
        i = self.dims.index(min(self.dims))
        _hidden_width("model.segformer.mlp_ratio", self.dims[i], f"model.segformer.dims[{i}]",
                      self.mlp_ratio)

    def check_size(self, key: str, size: int) -> None:
        """Raise unless each stage's keys/values, shrunk sr_ratio times per side, keep a token:
        the reduction is a conv whose kernel may not exceed the stage's token map."""
        for i, ratio in enumerate(self.sr_ratios):
            tokens = size // (self.first_stride * 2 ** i)
            if ratio > tokens:
                raise ParamsError(f"model.segformer.sr_ratios[{i}] = {ratio} exceeds the {tokens} "
                                  f"tokens per side of stage {i} at {key} = {size}; use at most "
                                  f"{tokens}")


@dataclass(frozen=True)
class ModelParams:
    """The `model` section: `name` picks the architecture, its sub-section holds the knobs."""
    name: str = _p("segformer", choices=("segformer", "tiny_segformer"))
    num_classes: int = _p(1, ge=1)
    segformer: SegFormerParams = _sub(SegFormerParams)
    tiny_segformer: TinySegFormerParams = _sub(TinySegFormerParams)

    @property
    def stride(self) -> int:
        """Image sides must be multiples of this (the tiny_segformer takes any size)."""
        return self.segformer.stride if self.name == "segformer" else 1

    def config(self) -> dict[str, Any]:
        """The chosen architecture's constructor arguments, plus its name (stored in checkpoints)."""
        return {"name": self.name, "num_classes": self.num_classes,
                **dataclasses.asdict(getattr(self, self.name))}


@dataclass(frozen=True)
class LossParams:
    """The `loss` section, read by train and evaluate: weighted soft Dice + BCE, plus BCE over
    a band around the true edges (`boundary_weight`, 0 = off)."""
    dice_weight: float = _p(0.6, ge=0)
    bce_weight: float = _p(0.4, ge=0)
    boundary_weight: float = _p(0.5, ge=0)
    boundary_width: int = _p(2, ge=1, le=64)

    def check(self) -> None:
        if self.dice_weight == 0 and self.bce_weight == 0:
            raise ParamsError("loss.dice_weight and loss.bce_weight are both 0: nothing to train on")


@dataclass(frozen=True)
class TrainParams:
    """The `train` section: AdamW with warmup + cosine decay, validation after every epoch."""
    epochs: int = _p(12, ge=1)
    batch_size: int = _p(16, ge=1)
    lr: float = _p(3e-3, gt=0)
    weight_decay: float = _p(0.01, ge=0)
    schedule: str = _p("cosine", choices=("constant", "cosine"))
    warmup_epochs: float = _p(1.0, ge=0)
    min_lr_ratio: float = _p(0.01, ge=0, le=1)
    augment: bool = _p(True)
    early_stopping: int = _p(0, ge=0)
    precision: str = _p("auto", choices=("auto", "fp32", "bf16"))
    seed: int = _p(1234, ge=0, le=2 ** 64 - 1)
    device: str = _p("auto", choices=("auto", "cpu", "cuda"))
    progress: bool = _p(True)
    lr_scaling: str = _p("none", choices=("none", "sqrt", "linear"))
    lr_batch: int = _p(16, ge=1)
    nproc: int = _p(1, ge=1)
    data_on_device: str = _p("auto", choices=("auto", "true", "false"))
    compile: str = _p("false", choices=("false", "true", "reduce-overhead", "max-autotune",
                                        "max-autotune-no-cudagraphs"))
    log_every: int = _p(50, ge=1)
    checkpoint_minutes: float = _p(10.0, ge=0)
    max_memory_gb: float = _p(4.0, gt=0)
    loader_workers: int = _p(2, ge=0)
    init_from: str = _p("")                 # checkpoint to fine-tune from ("" = random init)
    ema: float = _p(0.0, ge=0, lt=1)        # decay of the weight average validated and kept; 0 = off

    def check(self) -> None:
        if self.nproc > self.batch_size:
            raise ParamsError(f"train.nproc = {self.nproc} exceeds train.batch_size = "
                              f"{self.batch_size}, the global batch the ranks share")

    def peak_lr(self) -> float:
        """`lr` scaled from `lr_batch` images per step to `batch_size` by the `lr_scaling` rule."""
        ratio = self.batch_size / self.lr_batch
        return self.lr * {"none": 1.0, "sqrt": math.sqrt(ratio), "linear": ratio}[self.lr_scaling]


# ---------------------------------------------------------------- evaluate, plots

@dataclass(frozen=True)
class EvaluateParams:
    """The `evaluate` section: test-set scoring of models/model.pt."""
    threshold: float = _p(0.5, gt=0, lt=1)
    batch_size: int = _p(32, ge=1)
    n_examples: int = _p(8, ge=0)
    tta: bool = _p(True)
    device: str = _p("auto", choices=("auto", "cpu", "cuda"))
    max_memory_gb: float = _p(4.0, gt=0)
    loader_workers: int = _p(2, ge=0)
    calibrate: bool = _p(True)
    mc_samples: int = _p(8, ge=0, le=1000)

    def check(self) -> None:
        if self.mc_samples == 1:
            raise ParamsError("evaluate.mc_samples = 1: expected 0 (off) or >= 2 (a spread "
                              "needs at least two passes)")


@dataclass(frozen=True)
class BaselineParams:
    """The `baseline` section: photutils detect_sources, nsigma and npixels tuned on val."""
    fwhm: float = _p(3.0, gt=0, le=50)
    nsigma: tuple[float, ...] = _p((1.5, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0), gt=0)
    npixels: tuple[int, ...] = _p((3, 5, 10, 20, 50), ge=1)
    deblend: bool = _p(False)
    max_memory_gb: float = _p(4.0, gt=0)


@dataclass(frozen=True)
class PlotsParams:
    """The `plots` section: what the PNGs in plots/ show."""
    n_samples: int = _p(6, ge=1)
    n_predictions: int = _p(4, ge=1)
    cmap: str = _p("magma")
    dpi: int = _p(100, ge=10, le=1200)

    def check(self) -> None:
        import matplotlib  # only here: every stage validates params, few draw

        if self.cmap not in matplotlib.colormaps:
            raise ParamsError(f"plots.cmap = {_show(self.cmap)}: not a matplotlib colormap "
                              "(e.g. magma, viridis, gray)")


@dataclass(frozen=True)
class Params:
    """All of params.yaml."""
    data: DataParams = _sub(DataParams)
    model: ModelParams = _sub(ModelParams)
    loss: LossParams = _sub(LossParams)
    train: TrainParams = _sub(TrainParams)
    evaluate: EvaluateParams = _sub(EvaluateParams)
    baseline: BaselineParams = _sub(BaselineParams)
    plots: PlotsParams = _sub(PlotsParams)

    def check(self) -> None:
        """What the sections say about each other, checked before any stage writes anything."""
        stride, name = self.model.stride, self.model.name
        if self.data.source == "fits":
            sides = (("data.fits.tile", self.data.fits.tile),)
        else:
            sides = (("data.height", self.data.height), ("data.width", self.data.width))
        for key, size in sides:
            if size % stride:
                # Past SIDE_MAX no side is a multiple (and 2^stages may have thousands of digits).
                use = (f"use {max(stride, size // stride * stride)} or "
                       f"{(size // stride + 1) * stride}" if stride <= SIDE_MAX else
                       "use fewer stages or a smaller first_stride")
                raise ParamsError(f"{key} = {size} is not a multiple of {_show(stride)}, the total "
                                  f"stride of model.name = {name} (model.segformer.first_stride x "
                                  f"2^(stages - 1)); {use}")
            if name == "segformer":
                self.model.segformer.check_size(key, size)
        classes = self.data.class_names()
        k = self.model.num_classes
        allowed = (1, 2) if len(classes) == 2 else (len(classes),)
        if k not in allowed:
            raise ParamsError(f"model.num_classes = {k}: data.classes = {self.data.classes} "
                              f"gives {len(classes)} classes {classes}; use "
                              + (" or ".join(map(str, allowed)) if len(classes) == 2 else
                                 f"{len(classes)} (softmax), or data.classes = binary"))
        if self.data.source == "synthetic" and self.data.n_val < self.train.nproc:
            raise ParamsError(f"data.n_val = {self.data.n_val} is less than train.nproc = "
                              f"{self.train.nproc}: every rank validates a share")
        if self.plots.n_predictions > self.evaluate.n_examples:
            raise ParamsError(f"plots.n_predictions = {self.plots.n_predictions} exceeds "
                              f"evaluate.n_examples = {self.evaluate.n_examples}, the test "
                              "predictions evaluate keeps for the plots")


# ---------------------------------------------------------------- parsing

class _ShortRepr(reprlib.Repr):
    """repr() cut to a few dozen characters however long or deep the value (a 5 MB list, an
    alias bomb), and an int too long for Python to print as its size."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = self.maxlong = 60
        self.maxlist = self.maxtuple = self.maxset = self.maxdict = 8
        self.maxlevel = 3

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 10_000:    # past sys.get_int_max_str_digits(): repr() raises
            return f"<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_show = _ShortRepr().repr


def _describe(value: Any) -> str:
    return f"{_show(value)} ({type(value).__name__})"


# A number PyYAML (YAML 1.1) reads as a string: `1e-3` and `5E+2` lack the dot it requires.
# ASCII digits only: Python's \d and float() also take '١٢' (Arabic-Indic twelve).
_NUMERIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[-+]?\d+", re.ASCII)


def _number(value: Any, kind: type, key: str) -> int | float:
    written = value
    if isinstance(value, str) and _NUMERIC.fullmatch(value.strip()):
        text = value.strip()
        # An integer exactly, not rounded through a float ('18446744073709551615' is 2^64 - 1).
        # One of hundreds of digits is out of every range, and int() refuses thousands.
        value = int(text) if _INTEGER.fullmatch(text) and len(text) <= 400 else float(text)
    # bool is an int subclass in Python; `epochs: true` is a typo, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamsError(f"{key} = {_describe(value)}: expected {kind.__name__}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ParamsError(f"{key} = {_show(written)}: expected an integer")
        return int(value)
    try:
        number = float(value)
    except OverflowError:       # an int past the largest float (YAML ints have no limit)
        number = math.inf
    if not math.isfinite(number):
        raise ParamsError(f"{key} = {_show(written)}: expected a finite number")
    return number


_BOUNDS = (("ge", operator.ge, ">="), ("gt", operator.gt, ">"),
           ("le", operator.le, "<="), ("lt", operator.lt, "<"))


# numpy, torch and HDF5 take ints in 64 bits: an int without a bound of its own stays under this
INT_MAX = 2 ** 63 - 1


def _check_bounds(value: float, meta: dict, key: str, kind: type = float) -> None:
    for name, holds, symbol in _BOUNDS:
        bound = meta[name]
        if bound is not None and not holds(value, bound):
            raise ParamsError(f"{key} = {_show(value)} is out of range: expected {symbol} "
                              f"{bound:g}")
    if kind is int and meta["le"] is None and meta["lt"] is None and value > INT_MAX:
        raise ParamsError(f"{key} = {_show(value)} is out of range: expected <= 2^63 - 1")


def _is_text(value: Any) -> bool:
    # Every string param is a name, a choice or a path: a NUL makes open() and glob raise, and
    # a line break or an escape sequence would break the one-line messages that quote it.
    return isinstance(value, str) and value.isprintable()


def _parse_value(value: Any, hint: Any, meta: dict, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return parse_section(hint, value, key)
    origin = typing.get_origin(hint)
    if origin is tuple:
        kinds = typing.get_args(hint)
        if kinds[-1] is Ellipsis:  # tuple[int, ...]: one value per encoder stage
            if not isinstance(value, (list, tuple)) or not (value or meta.get("empty")):
                raise ParamsError(f"{key} = {_describe(value)}: expected a non-empty list")
            if kinds[0] is str:
                bad = next((i for i, v in enumerate(value) if not _is_text(v) or not v), None)
                if bad is not None:
                    raise ParamsError(f"{key}[{bad}] = {_describe(value[bad])}: expected a "
                                      "non-empty string of printable characters")
                return tuple(value)
            kinds = (kinds[0],) * len(value)
        elif not isinstance(value, (list, tuple)) or len(value) != len(kinds):
            raise ParamsError(f"{key} = {_describe(value)}: expected a list [low, high] "
                              f"of {len(kinds)} numbers")
        items = tuple(_number(v, k, f"{key}[{i}]") for i, (v, k) in enumerate(zip(value, kinds)))
        for item, kind in zip(items, kinds):
            _check_bounds(item, meta, key, kind)
        if meta.get("ordered") and items[0] > items[1]:
            raise ParamsError(f"{key} = {_show(list(value))}: expected low <= high")
        return items
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key} = {_describe(value)}: expected true or false")
        return value
    if hint is str:
        if key.endswith("hdu") and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # an HDU is an index or an EXTNAME
        if isinstance(value, bool) and "true" in (meta["choices"] or ()):
            value = "true" if value else "false"   # YAML's true in a choice such as auto|true|false
        if not isinstance(value, str):
            raise ParamsError(f"{key} = {_describe(value)}: expected a string")
        if not _is_text(value):
            raise ParamsError(f"{key} = {_show(value)}: expected printable characters, without "
                              "line breaks or control characters")
        if meta["choices"] and value not in meta["choices"]:
            raise ParamsError(f"{key} = {_show(value)}: expected one of "
                              f"{', '.join(meta['choices'])}")
        return value
    number = _number(value, hint, key)
    # The value as written, so the message quotes the user (-5, not -5.0).
    _check_bounds(number if isinstance(value, str) else value, meta, key, hint)
    return number


# The annotations are strings (`from __future__ import annotations`): evaluate them once per class.
_type_hints = functools.cache(typing.get_type_hints)


def parse_section(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from the mapping `raw`; missing keys take their defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{prefix or 'params'} = {_describe(raw)}: expected a mapping of keys")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        name = unknown[0]
        if not (isinstance(name, str) and _is_text(name) and len(name) <= 60):
            name = _show(name)     # one short line, whatever the key
        where = f"{prefix}.{name}" if prefix else name
        raise ParamsError(f"{where}: unknown key (expected one of {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        if name in raw:
            key = f"{prefix}.{name}" if prefix else name
            values[name] = _parse_value(raw[name], hints[name], dict(f.metadata), key)
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check()
    return obj


def to_dict(params: Any) -> dict[str, Any]:
    """A params dataclass as plain YAML-able values (tuples become lists)."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return list(value) if isinstance(value, tuple) else value
    return plain(dataclasses.asdict(params))


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for lists: the layout of params.yaml."""


_Dumper.add_representer(list, lambda dumper, value: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", value, flow_style=True))


def dump_params(params: Params) -> str:
    """The resolved params (defaults filled in) as YAML, in params.yaml's order."""
    return yaml.dump(to_dict(params), Dumper=_Dumper, sort_keys=False)


# The repo's params.yaml is 10 kB. A file past this is some other file, which PyYAML could take
# minutes to parse (and /dev/zero never ends): read no more of it.
PARAMS_FILE_MAX = 1 << 20


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; raise ParamsError naming the file and the bad key."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(PARAMS_FILE_MAX + 1)
        if len(data) > PARAMS_FILE_MAX:
            raise ParamsError(f"{path}: over {PARAMS_FILE_MAX >> 20} MB, too large for a params "
                              "file (the repo's is 10 kB); is it the right file?")
        raw = yaml.safe_load(data.decode("utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    # ValueError: PyYAML builds `2024-13-01` as a date and a 5000-digit number as an int, and
    # both raise it; RecursionError: lists nested a few hundred deep.
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())
        raise ParamsError(f"{path}: not a readable YAML file: {detail[:300]}") from None
    try:
        return parse_section(Params, raw, "")
    except ParamsError as exc:
        raise ParamsError(f"{path}: {exc}") from None
