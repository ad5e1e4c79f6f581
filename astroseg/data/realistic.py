"""The realistic synthetic sky (`data.sky: realistic`): a survey frame in detector counts.

Each image draws, from its own counter-based stream (as the seed sky does, so image i is the
same whatever the chunking or the number of workers):
  - an instrument: a Moffat or Gaussian PSF of a drawn FWHM, sky level, gain, read noise, full
    well (saturation) and a bias, with an optional sky gradient;
  - galaxies, Sérsic profiles (or a de Vaucouleurs bulge plus an exponential disc), with total
    fluxes from a truncated power-law number count, N(>F) ~ F^-slope: most are faint, a few
    are bright; sizes grow with flux;
  - stars, the PSF itself, bright enough to saturate; optionally a wide halo on the brightest;
  - optionally correlated (drizzle-like) noise, cosmic-ray hits and a satellite streak.
Fluxes are drawn in units of the background noise sigma = sqrt(sky + read noise^2) so that
one range spans shallow and deep frames. The electrons get Poisson noise (source plus sky) and
Gaussian read noise, saturate at the full well, and are written in counts (ADU).

Truth, as an astronomer's isophotal segmentation defines it: a pixel is a source where the
noiseless, PSF-convolved model of all sources exceeds `mask_nsigma` x the background noise, in
connected components of at least `mask_npixels` pixels (8-connected). The background level and
noise are those measured on the noisy frame, as SExtractor or photutils would measure them
(and as the `noise` normalisation does, astroseg.data.normalize.sky_and_noise): in a crowded
field the unresolved faint galaxies and the wings of bright sources raise both (the measured
noise is 1.09x the true one in the median frame of the preset's sky, 1.44x at the 90th
percentile, 4.5x at the 99th), and the isophote an astronomer draws rises with them. Its class
(data.classes: morphology) is the component that gives it the most light: galaxy, star, or
artifact (cosmic ray or streak); `binary` masks are all of them as "source". Per object, the table records the
centre, its flux (the sum of its noiseless model inside the frame, in ADU) and its isophotal
S/N (flux over noise inside its own isophote), for those whose centre lies in the mask and
whose own light crosses the isophote on `mask_npixels` pixels (a faint galaxy that is in the
mask only on a brighter one's light is part of that object, not one of its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from astroseg.data import profiles
from astroseg.data.normalize import normalize_array, sky_and_noise
from astroseg.data.synthetic import Chunk, image_stream
from astroseg.params import DataParams, RealisticParams

GALAXY, STAR, ARTIFACT = 1, 2, 3      # class index in morphology masks
AREA = 128 * 128                      # the area the count params are per
PAD = 8                               # centres fall this far outside the frame too
OBJECT_FIELDS = ("obj_cx", "obj_cy", "obj_class", "obj_flux", "obj_snr", "obj_radius",
                 "obj_sersic", "obj_axis_ratio")
META_FIELDS = {"n_sources": np.uint16, "psf_fwhm": np.float32, "sky_sigma": np.float32,
               "saturated": np.bool_, "cosmic_rays": np.uint16, "has_streak": np.bool_}


@dataclass
class Source:
    """One galaxy or star: its noiseless model (electrons) on a stamp, and what it is."""
    kind: int                   # GALAXY or STAR
    cx: float
    cy: float
    flux: float                 # electrons, total (before the frame edge)
    model: np.ndarray           # electrons on the stamp
    y0: int
    x0: int
    radius: float = math.nan    # half-light radius (galaxies) or FWHM / 2 (stars), pixels
    sersic: float = math.nan
    axis_ratio: float = 1.0


@dataclass
class Scene:
    """One rendered frame: counts, truth and everything that went into them."""
    counts: np.ndarray          # float32 (H, W) ADU, with noise
    classes: np.ndarray         # uint8 (H, W): 0 sky, GALAXY, STAR, ARTIFACT
    noiseless: np.ndarray       # float64 (H, W) electrons: all sources and artifacts, no sky
    sources: list[Source]
    psf: profiles.PSF
    sky: float                  # electrons per pixel (at the centre, with a gradient)
    gain: float
    read_noise: float
    bias: float                 # ADU
    sigma: float                # background noise, electrons per pixel (sky + read noise)
    threshold: float            # the truth isophote above the sky, electrons (measured level
                                # and noise of the frame; module docstring)
    saturation: float           # ADU at which pixels saturate
    cosmic_rays: int = 0
    has_streak: bool = False
    truth: dict[str, np.ndarray] = field(default_factory=dict)


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(np.exp(rng.uniform(math.log(lo), math.log(hi)))) if lo > 0 else \
        float(rng.uniform(lo, hi))


def _power_law(rng: np.random.Generator, n: int, lo_hi: tuple[float, float], slope: float
               ) -> np.ndarray:
    """n fluxes with N(>F) ~ F^-slope between lo and hi (inverse CDF)."""
    lo, hi = lo_hi
    u = rng.random(n)
    return lo * (1 - u * (1 - (lo / hi) ** slope)) ** (-1 / slope)


def _galaxy(rng: np.random.Generator, r: RealisticParams, psf: profiles.PSF, flux: float,
            size: float, cx: float, cy: float) -> Source:
    """A Sérsic galaxy, or a bulge plus disc, convolved with the PSF."""
    r_e = float(np.clip(size * (flux / 100) ** 0.3 * math.exp(rng.normal(0, 0.35)), 0.2, 60))
    q, theta = rng.uniform(*r.axis_ratio), rng.uniform(0, math.pi)
    if rng.random() < r.bulge:
        bt = rng.uniform(0.1, 0.6)
        disc, y0, x0 = profiles.sersic(cx, cy, r_e, 1.0, q, theta)
        bulge, by, bx = profiles.sersic(cx, cy, r_e * rng.uniform(0.2, 0.5), 4.0,
                                        max(q, rng.uniform(0.6, 1.0)), theta)
        light = (1 - bt) * disc
        profiles.add_stamp(light, bt * bulge, by - y0, bx - x0)   # the bulge's stamp is smaller
        n = math.nan
    else:
        n = rng.uniform(*r.sersic_n)
        light, y0, x0 = profiles.sersic(cx, cy, r_e, n, q, theta)
    model, y0, x0 = profiles.convolve(light * flux, y0, x0, psf)
    return Source(GALAXY, cx, cy, flux, model, y0, x0, r_e, n, q)


def _cosmic_rays(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Electrons of a few sharp hits: short straight tracks, not blurred by the PSF."""
    out = np.zeros(shape)
    for _ in range(1 + rng.poisson(3 * shape[0] * shape[1] / AREA)):
        y, x = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        length, angle = math.exp(rng.uniform(0, math.log(12))), rng.uniform(0, 2 * math.pi)
        energy = sigma * math.exp(rng.uniform(math.log(5), math.log(300)))
        for t in np.arange(0, length, 0.5):
            iy, ix = int(y + t * math.sin(angle)), int(x + t * math.cos(angle))
            if 0 <= iy < shape[0] and 0 <= ix < shape[1]:
                out[iy, ix] = max(out[iy, ix], energy * rng.uniform(0.6, 1.4))
    return out


def render_scene(r: RealisticParams, shape: tuple[int, int], rng: np.random.Generator) -> Scene:
    """Draw and render one frame of `shape` from `rng` (module docstring)."""
    h, w = shape
    area = h * w / AREA
    beta = rng.uniform(*r.moffat_beta) if rng.random() < r.moffat else 0.0
    psf = profiles.PSF(_log_uniform(rng, r.fwhm), beta)
    sky, gain = _log_uniform(rng, r.sky), _log_uniform(rng, r.gain)
    read_noise = rng.uniform(*r.read_noise)
    sigma = math.sqrt(sky + read_noise ** 2)
    full_well = _log_uniform(rng, r.full_well)
    bias = 0.0 if rng.random() < 0.3 else rng.uniform(0, 1000)

    light = np.zeros((3, h, w))                       # galaxies, stars, artifacts (electrons)
    sources: list[Source] = []
    n_gal = rng.poisson(_log_uniform(rng, r.galaxies) * area)
    fluxes = _power_law(rng, n_gal, r.galaxy_flux, rng.uniform(*r.galaxy_slope)) * sigma
    size = _log_uniform(rng, r.radius)
    for f in fluxes:
        cx, cy = rng.uniform(-PAD, w + PAD), rng.uniform(-PAD, h + PAD)
        sources.append(_galaxy(rng, r, psf, float(f), size, cx, cy))
    n_star = rng.poisson(_log_uniform(rng, r.stars) * area)
    for f in _power_law(rng, n_star, r.star_flux, rng.uniform(*r.star_slope)) * sigma:
        cx, cy = rng.uniform(-PAD, w + PAD), rng.uniform(-PAD, h + PAD)
        stamp, y0, x0 = psf.star(cx, cy)
        sources.append(Source(STAR, cx, cy, float(f), stamp * f, y0, x0, psf.fwhm / 2))
    stars = [s for s in sources if s.kind == STAR]
    if stars and rng.random() < r.halo:      # a wide, faint glow around the brightest star
        star = max(stars, key=lambda s: s.flux)
        halo = profiles.PSF(psf.fwhm * rng.uniform(6, 15), rng.uniform(1.2, 2.0))
        stamp, y0, x0 = halo.star(star.cx, star.cy)
        grown = np.zeros((stamp.shape[0], stamp.shape[1]))
        profiles.add_stamp(grown, star.model, star.y0 - y0, star.x0 - x0)
        extra = stamp * star.flux * rng.uniform(0.02, 0.1)
        star.model, star.y0, star.x0 = grown + extra, y0, x0
        star.flux += float(extra.sum())
    for s in sources:
        profiles.add_stamp(light[s.kind - 1], s.model, s.y0, s.x0)

    has_streak = bool(rng.random() < r.streak)
    if has_streak:
        surface = sigma * math.exp(rng.uniform(math.log(1.0), math.log(100.0)))
        light[2] += surface * profiles.streak(shape, rng.uniform(0, w), rng.uniform(0, h),
                                              rng.uniform(0, math.pi), psf.fwhm)
    n_cr = 0
    if rng.random() < r.cosmic_rays:
        cr = _cosmic_rays(rng, shape, sigma)
        n_cr = int(ndimage.label(cr > 0, np.ones((3, 3), bool))[1])
        light[2] += cr
    noiseless = light.sum(axis=0)

    # The sky, with a gradient of up to `gradient` sigma across the frame.
    slope, angle = rng.uniform(*r.gradient) * sigma, rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    along = ((xx - w / 2) * math.cos(angle) + (yy - h / 2) * math.sin(angle)) / math.hypot(h, w)
    sky_map = sky + slope * along
    if rng.random() < r.correlated_noise:
        # Drizzled images: the same per-pixel sigma, spread over neighbouring pixels.
        width = rng.uniform(0.4, 1.0)
        corr = ndimage.gaussian_filter(rng.standard_normal(shape), width, mode="wrap")
        corr /= math.sqrt((ndimage.gaussian_filter(_delta(), width) ** 2).sum())   # unit sigma
        electrons = sky_map + noiseless + corr * np.sqrt(sky_map + noiseless + read_noise ** 2)
    else:
        electrons = rng.poisson(np.maximum(sky_map + noiseless, 0)).astype(np.float64)
        electrons += read_noise * rng.standard_normal(shape)
    saturated = electrons >= full_well
    np.minimum(electrons, full_well, out=electrons)
    counts = electrons / gain + bias
    if rng.random() < 0.5:
        np.round(counts, out=counts)             # raw frames are integers

    counts = counts.astype(np.float32)
    level, noise = sky_and_noise(counts)     # as measured on the frame, in counts
    threshold = (level - (sky / gain + bias) + r.mask_nsigma * noise) * gain
    classes = _truth_classes(light, threshold, r.mask_npixels)
    scene = Scene(counts, classes, noiseless, sources, psf, sky, gain, read_noise, bias, sigma,
                  threshold, full_well / gain + bias, n_cr, has_streak)
    scene.truth = _truth_table(scene, r, bool(saturated.any()))
    return scene


def _delta() -> np.ndarray:
    d = np.zeros((15, 15))
    d[7, 7] = 1.0
    return d


def _truth_classes(light: np.ndarray, threshold: float, npixels: int) -> np.ndarray:
    """Class per pixel: the strongest component where the total is above the isophote, in
    components of at least `npixels` pixels."""
    above = light.sum(axis=0) > threshold
    labels, n = ndimage.label(above, np.ones((3, 3), bool))
    if n:
        area = np.bincount(labels.ravel())
        above &= (area >= npixels)[labels] & (labels > 0)
    classes = (light.argmax(axis=0) + 1).astype(np.uint8)
    classes[~above] = 0
    return classes


def _truth_table(scene: Scene, r: RealisticParams, saturated: bool) -> dict[str, np.ndarray]:
    """obj_* per object whose centre pixel lies in the truth mask and whose own light exceeds
    the isophote on at least `mask_npixels` pixels, brightest first, and the per-image
    META_FIELDS."""
    h, w = scene.classes.shape
    threshold = scene.threshold
    rows = []
    for s in scene.sources:
        iy, ix = round(s.cy), round(s.cx)
        if not (0 <= iy < h and 0 <= ix < w) or not scene.classes[iy, ix]:
            continue
        ys, xs = profiles.add_stamp(np.zeros((h, w)), s.model, s.y0, s.x0)
        inside = s.model[ys.start - s.y0:ys.stop - s.y0, xs.start - s.x0:xs.stop - s.x0]
        own = inside[inside > threshold]
        if own.size < r.mask_npixels:
            # Above the isophote only on a brighter neighbour's light: not an object of its
            # own that a catalogue could list, and its S/N would be 0 (completeness.csv).
            continue
        snr = own.sum() / math.sqrt(own.size * scene.sigma ** 2 + own.sum())
        rows.append((s.cx, s.cy, s.kind, inside.sum() / scene.gain, snr, s.radius, s.sersic,
                     s.axis_ratio))
    rows.sort(key=lambda row: -row[3])
    table = np.full((r.max_objects, len(OBJECT_FIELDS)), np.nan, np.float32)
    if rows:
        table[:min(len(rows), r.max_objects)] = np.array(rows[:r.max_objects], np.float64)
    out = {name: table[:, i] for i, name in enumerate(OBJECT_FIELDS)}
    out.update(n_sources=np.uint16(min(len(rows), 65535)),
               psf_fwhm=np.float32(scene.psf.fwhm),
               sky_sigma=np.float32(scene.sigma / scene.gain), saturated=np.bool_(saturated),
               cosmic_rays=np.uint16(scene.cosmic_rays), has_streak=np.bool_(scene.has_streak))
    return out


def render(p: DataParams, split: str, indices: range) -> Chunk:
    """Render images `indices` of `split`, normalised with data.normalize; identical output for
    an index whatever the chunking."""
    shape = (p.height, p.width)
    images = np.empty((len(indices), *shape), np.float32)
    masks = np.empty((len(indices), *shape), np.uint8)
    truth: dict[str, list] = {}
    valid = np.ones(shape, dtype=bool)
    for row, i in enumerate(indices):
        scene = render_scene(p.realistic, shape, np.random.Generator(image_stream(p.seed, split, i)))
        images[row] = normalize_array(scene.counts, valid, p.normalize, "synthetic image")[0]
        masks[row] = scene.classes if p.classes == "morphology" else scene.classes > 0
        for key, value in scene.truth.items():
            truth.setdefault(key, []).append(value)
    stacked = {k: np.stack(v) for k, v in truth.items()}
    meta = {k: stacked[k].astype(dtype) for k, dtype in META_FIELDS.items()}
    return Chunk(start=indices.start, images=images, masks=masks, meta=meta,
                 objects={k: stacked[k] for k in OBJECT_FIELDS})
