"""The realistic sky: deterministic per image, flux-conserving, isophotal truth, the drawn PSF
and noise, and the multi-class pipeline it feeds."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
from astropy.io import fits

from astroseg.data import profiles
from astroseg.data.normalize import normalize_array, sky_and_noise
from astroseg.data.realistic import GALAXY, STAR, render, render_scene
from astroseg.params import DataParams, RealisticParams
from conftest import run_stage, sh, tiny_params, write_params

QUIET = dict(galaxies=(0.0, 0.0), stars=(0.0, 0.0), cosmic_rays=0.0, streak=0.0, halo=0.0,
             gradient=(0.0, 0.0), correlated_noise=0.0)


def _rng(i: int) -> np.random.Generator:
    return np.random.default_rng([99, i])


def test_each_image_is_the_same_whatever_the_chunk():
    p = DataParams(sky="realistic", normalize="noise", height=64, width=64)
    whole = render(p, "train", range(0, 6))
    part = render(p, "train", range(3, 6))
    assert np.array_equal(whole.images[3:], part.images)
    assert np.array_equal(whole.masks[3:], part.masks)
    for key, value in part.objects.items():
        np.testing.assert_array_equal(whole.objects[key][3:], value)
    other = render(p, "val", range(0, 3))      # another split: other images
    assert not np.array_equal(whole.images[:3], other.images)


def test_recorded_flux_is_the_sum_of_each_sources_noiseless_model():
    r = RealisticParams(galaxies=(40.0, 40.0), stars=(10.0, 10.0), cosmic_rays=0.0,
                        streak=0.0)
    checked = 0
    for i in range(6):
        scene = render_scene(r, (96, 96), _rng(i))
        h, w = scene.classes.shape
        total = np.zeros((h, w))
        for s in scene.sources:
            profiles.add_stamp(total, s.model, s.y0, s.x0)
            # Rendered whole (before the frame cuts it), a model holds exactly its drawn flux.
            assert s.model.sum() == pytest.approx(s.flux, rel=1e-9)
        # The frame's noiseless image is the sum of its sources' models, nothing else.
        np.testing.assert_allclose(scene.noiseless, total, rtol=1e-9, atol=1e-9)
        table = scene.truth
        for row in range(int(table["n_sources"])):
            cx, cy = table["obj_cx"][row], table["obj_cy"][row]
            s = min(scene.sources, key=lambda s: (s.cx - cx) ** 2 + (s.cy - cy) ** 2)
            inside = np.zeros((h, w))
            profiles.add_stamp(inside, s.model, s.y0, s.x0)
            assert table["obj_flux"][row] == pytest.approx(inside.sum() / scene.gain, rel=1e-5)
            # Each object crosses the isophote by its own light, so its S/N is positive.
            own = inside[inside > scene.threshold]
            assert own.size >= r.mask_npixels and table["obj_snr"][row] > 0
            checked += 1
    assert checked > 10


def test_a_higher_mask_threshold_gives_a_nested_smaller_mask():
    masks = [render_scene(RealisticParams(mask_nsigma=k), (96, 96), _rng(7)).classes > 0
             for k in (0.5, 1.0, 1.5, 3.0, 10.0, 100.0)]
    counts = [int(m.sum()) for m in masks]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    for loose, tight in zip(masks, masks[1:]):
        assert not (tight & ~loose).any()


def test_the_truth_is_the_isophote_of_the_noiseless_model_in_measured_sigma():
    r = RealisticParams(cosmic_rays=0.0, streak=0.0, mask_npixels=1)
    for i in range(3):
        scene = render_scene(r, (96, 96), _rng(3 + i))
        level, noise = sky_and_noise(scene.counts)     # what an astronomer measures
        above_sky = scene.noiseless / scene.gain - (level - scene.sky / scene.gain - scene.bias)
        np.testing.assert_array_equal(scene.classes > 0, above_sky > r.mask_nsigma * noise)


@pytest.mark.parametrize("fwhm, beta", [(1.6, 0.0), (3.0, 0.0), (6.0, 0.0), (2.0, 2.5),
                                        (4.5, 4.0)])
def test_a_rendered_star_has_the_drawn_fwhm(fwhm, beta):
    from astropy.modeling import fitting, models

    r = dataclasses.replace(RealisticParams(**QUIET), stars=(30.0, 30.0), fwhm=(fwhm, fwhm),
                            moffat=1.0 if beta else 0.0, moffat_beta=(beta or 2.0, beta or 2.0))
    scene = render_scene(r, (128, 128), _rng(11))
    assert scene.psf.fwhm == pytest.approx(fwhm) and scene.psf.beta == beta
    star = max((s for s in scene.sources if s.kind == STAR), key=lambda s: s.flux)
    # Fit the noiseless star, in frame pixel coordinates, with astropy's own profile.
    yy, xx = np.indices(star.model.shape)
    yy, xx = yy + star.y0, xx + star.x0
    peak = float(star.model.max())
    if beta:
        start = models.Moffat2D(peak, star.cx, star.cy, gamma=fwhm, alpha=3.0)
    else:
        start = models.Gaussian2D(peak, star.cx, star.cy, fwhm / 2.3, fwhm / 2.3)
    fit = fitting.TRFLSQFitter()(start, xx, yy, star.model, maxiter=500)
    measured = fit.fwhm if beta else math.sqrt(fit.x_fwhm * fit.y_fwhm)
    assert measured == pytest.approx(fwhm, rel=0.02)
    centre = (fit.x_0, fit.y_0) if beta else (fit.x_mean, fit.y_mean)
    assert [c.value for c in centre] == pytest.approx([star.cx, star.cy], abs=0.02)


@pytest.mark.parametrize("correlated", [0.0, 1.0])
def test_a_source_free_frame_has_the_noise_of_its_sky_gain_and_read_noise(correlated):
    r = dataclasses.replace(RealisticParams(**QUIET), correlated_noise=correlated)
    for i in range(6):
        scene = render_scene(r, (128, 128), _rng(20 + i))
        counts = scene.counts.astype(np.float64)
        rounded = np.array_equal(counts, np.round(counts))
        expected = math.sqrt(scene.sigma ** 2 / scene.gain ** 2 + (1 / 12 if rounded else 0))
        assert counts.std() == pytest.approx(expected, rel=0.04)
        assert counts.mean() == pytest.approx(scene.sky / scene.gain + scene.bias,
                                              abs=0.05 * expected)
        assert not scene.classes.any() and not scene.truth["n_sources"]
        # The noise normalisation finds that sky and sigma from the frame alone.
        sky, sigma = sky_and_noise(counts)
        assert sky == pytest.approx(scene.sky / scene.gain + scene.bias, abs=0.05 * expected)
        assert sigma == pytest.approx(expected, rel=0.06)


def test_bright_stars_saturate_and_morphology_labels_every_kind():
    r = RealisticParams(stars=(20.0, 20.0), star_flux=(1e5, 1e7), cosmic_rays=1.0,
                        streak=1.0)
    scene = render_scene(r, (128, 128), _rng(5))
    assert scene.truth["saturated"] and scene.counts.max() == pytest.approx(scene.saturation,
                                                                           rel=1e-3)
    assert set(np.unique(scene.classes)) >= {0, STAR, 3}
    scene = render_scene(RealisticParams(galaxies=(100.0, 100.0)), (128, 128), _rng(6))
    assert GALAXY in scene.classes


def test_noise_normalisation_maps_the_isophote_alike_in_any_frame():
    # The same sky at two sizes and two sets of units: sigma-units agree, min-max would not.
    rng = np.random.default_rng(0)
    small = 1000 + 10 * rng.standard_normal((128, 128))
    big = 1000 + 10 * rng.standard_normal((1024, 1024))
    big[500:520, 500:520] += 1e5                   # a bright star the small frame lacks
    a = normalize_array(small, np.ones(small.shape, bool), "noise", "small")[1]
    b = normalize_array(big, np.ones(big.shape, bool), "noise", "big")[1]
    level = np.array([1015.0])                     # 1.5 sigma above the sky
    assert a.apply(level)[0] == pytest.approx(b.apply(level)[0], rel=0.02)
    assert a.apply(np.array([1e30]))[0] < 10    # asinh: no overflow for any pixel


def test_morphology_pipeline_reports_per_class_scores_and_predicts_class_planes(tmp_path):
    params = tiny_params(data={"sky": "realistic", "classes": "morphology", "normalize": "noise",
                               "height": 64, "width": 64},
                         model={"num_classes": 4})
    write_params(tmp_path, params)
    for stage in ("prepare", "train", "evaluate", "baseline", "plots"):
        result = run_stage(stage, tmp_path)
        assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics/metrics.json").read_text())
    assert set(metrics["per_class"]) == {"galaxy", "star", "artifact"}
    for scores in metrics["per_class"].values():
        assert 0 <= scores["pooled_iou"] <= 1 and scores["pixels"] >= 0
    confusion = json.loads((tmp_path / "metrics/confusion.json").read_text())
    matrix = np.array(confusion["matrix"])
    assert confusion["classes"] == ["background", "galaxy", "star", "artifact"]
    assert matrix.shape == (4, 4) and matrix.sum() == 8 * 64 * 64
    assert (tmp_path / "plots/confusion.png").read_bytes()[:4] == b"\x89PNG"
    # A realistic make-sky frame through `astroseg predict`: a PROB_ plane per class.
    sh(["astroseg", "make-sky", str(tmp_path / "sky"), "--sky", "realistic", "--fields", "1",
        "--size", "96"], tmp_path)
    out = tmp_path / "pred.fits"
    sh(["astroseg", "predict", str(tmp_path / "sky/images/field_00.fits"), "-o", str(out),
        "--window", "64", "--overlap", "16"], tmp_path)
    with fits.open(out) as hdul:
        names = [h.name for h in hdul]
        assert {"PROB_BACKGROUND", "PROB_GALAXY", "PROB_STAR", "PROB_ARTIFACT"} <= set(names)
        assert hdul[0].header["ASNORM"] == "noise"
        assert set(np.unique(hdul["MASK"].data)) <= {0, 1, 2, 3}
    shutil.rmtree(tmp_path / "sky")


def test_morphology_needs_the_realistic_sky_and_minmax_is_refused_for_it(tmp_path):
    write_params(tmp_path, tiny_params(data={"classes": "morphology"}))
    result = run_stage("prepare", tmp_path)
    assert result.returncode == 2 and "data.classes = morphology" in result.stderr
    write_params(tmp_path, tiny_params(data={"sky": "realistic"}))
    result = run_stage("prepare", tmp_path)
    assert result.returncode == 2 and "data.normalize = minmax with data.sky = realistic" \
        in result.stderr


@pytest.mark.parametrize("case", ["zero padding", "integer padding", "bscale 2", "step 0.01"])
def test_noise_is_measured_right_on_padded_and_quantised_frames(case):
    # Real frames: a mosaic or drizzled frame padded with exact 0 where nothing was observed,
    # and data stored in steps other than 1 (BSCALE): the measured sigma stays the true one.
    rng = np.random.default_rng(3)
    sigma, sky = {"zero padding": (0.005, 0.02), "integer padding": (3.0, 200.0),
                  "bscale 2": (1.0, 500.0), "step 0.01": (0.003, 0.5)}[case]
    frame = sky + sigma * rng.standard_normal((512, 512))
    if case == "zero padding":
        frame[:, :300] = 0.0                      # 59% of the frame is padding
    elif case == "integer padding":
        frame = np.round(frame)
        frame[:300] = 0.0                         # whole rows of an int16 mosaic
    elif case == "bscale 2":
        frame = 2 * np.round(frame / 2)
    else:
        frame = 0.01 * np.round(frame / 0.01)
    level, noise = sky_and_noise(frame)
    true_sigma = np.sqrt(sigma ** 2 + {"zero padding": 0, "integer padding": 1 / 12,
                                       "bscale 2": 4 / 12,
                                       "step 0.01": 1e-4 / 12}[case])  # quantisation noise
    assert noise == pytest.approx(true_sigma, rel=0.15)
    assert level == pytest.approx(sky, abs=0.2 * true_sigma)


def test_noise_normalisation_of_a_field_valid_only_between_the_sampled_rows():
    # Over MAX_SAMPLE pixels only every k-th row is sampled; a field whose valid pixels all
    # lie between those rows still gets a finite normalisation from its valid pixels.
    rng = np.random.default_rng(4)
    image = (100 + 5 * rng.standard_normal((2100, 1000))).astype(np.float32)
    valid = np.zeros(image.shape, bool)
    valid[1::2] = True                            # every sampled row (0, 2, 4, ...) is invalid
    norm = normalize_array(image, valid, "noise", "odd rows")[1]
    assert norm.lo == pytest.approx(100, abs=0.5) and norm.hi - norm.lo == pytest.approx(5, rel=0.1)


def test_make_sky_realistic_writes_counts_with_the_instrument_and_class_masks(tmp_path):
    from astroseg.cli import main as cli_main

    assert cli_main(["make-sky", str(tmp_path), "--sky", "realistic", "--fields", "1",
                     "--size", "96", "--set", "stars=[40,40]", "--set", "galaxies=[4,4]",
                     "--set", "fwhm=[2,2]"]) == 0
    image = fits.getheader(tmp_path / "images" / "field_00.fits")
    mask_hdr = fits.getheader(tmp_path / "masks" / "field_00.fits")
    mask = fits.getdata(tmp_path / "masks" / "field_00.fits")
    assert image["BUNIT"] == "count" and image["PSFFWHM"] == 2.0
    assert {"GAIN", "RDNOISE", "SATURATE"} <= set(image)
    # A class map is not in counts: none of the cards that describe count values.
    assert not {"BUNIT", "GAIN", "SATURATE"} & set(mask_hdr) and "CLASSES" in mask_hdr
    assert set(np.unique(mask)) <= {0, 1, 2, 3} and STAR in mask
    assert cli_main(["make-sky", str(tmp_path / "x"), "--set", "fwhm=[2,2]"]) == 2
    # No sky and no read noise: no noise to draw fluxes in, refused before any work.
    assert cli_main(["make-sky", str(tmp_path / "y"), "--sky", "realistic", "--set",
                     "sky=[0,0]", "--set", "read_noise=[0,0]"]) == 2
    assert not (tmp_path / "y").exists()
