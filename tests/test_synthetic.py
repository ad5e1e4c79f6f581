"""The synthetic sky: per-image streams, the notebook's distributions, unmasked extras."""

from __future__ import annotations

import dataclasses

import numpy as np

from astroseg.params import DataParams
from astroseg.data.synthetic import generate, render

P = DataParams(height=64, width=64, galaxies=dataclasses.replace(DataParams().galaxies, margin=12.0))


def test_image_i_does_not_depend_on_n_or_chunking():
    whole = render(P, "train", range(0, 12))
    part = render(P, "train", range(5, 9))
    assert np.array_equal(whole.images[5:9], part.images)
    assert np.array_equal(whole.masks[5:9], part.masks)
    chunked = [c for _, c in generate(dataclasses.replace(P, chunk=5), {"train": 12})]
    assert [c.start for c in chunked] == [0, 5, 10]
    assert np.array_equal(np.concatenate([c.images for c in chunked]), whole.images)


def test_splits_and_seeds_give_different_images():
    train = render(P, "train", range(4)).images
    assert not np.array_equal(train, render(P, "val", range(4)).images)
    assert not np.array_equal(train, render(dataclasses.replace(P, seed=7), "train", range(4)).images)


def test_images_are_minmax_normalised_and_masks_binary():
    c = render(P, "test", range(16))
    assert c.images.dtype == np.float32 and c.masks.dtype == np.uint8
    assert np.allclose(c.images.min(axis=(1, 2)), 0.0)
    assert np.all(c.images.max(axis=(1, 2)) <= 1.0) and np.all(c.images.max(axis=(1, 2)) > 0.999)
    assert set(np.unique(c.masks)) <= {0, 1}
    assert np.all(c.masks.sum(axis=(1, 2)) > 0)  # every image has at least one galaxy


def test_counts_and_feature_rates_follow_the_notebook():
    c = render(DataParams(), "train", range(600))
    assert set(np.unique(c.meta['n_sources'])) == {1, 2, 3}
    # P(image has a spiral) = E[1 - 0.7^n] over n uniform in {1, 2, 3} = 0.487; bars: 0.608.
    assert abs(c.meta['has_spiral'].mean() - 0.487) < 0.06
    assert abs(c.meta['has_bar'].mean() - 0.608) < 0.06
    # Mask fraction of a galaxy: area pi * a * b * 2 ln 10 over 128^2 pixels, about 6% per galaxy.
    assert 0.05 < c.masks.mean() < 0.2


def test_bars_and_spirals_change_pixels_but_never_the_mask():
    plain = dataclasses.replace(P, bar=dataclasses.replace(P.bar, probability=0.0),
                                spiral=dataclasses.replace(P.spiral, probability=0.0))
    busy = dataclasses.replace(P, bar=dataclasses.replace(P.bar, probability=1.0),
                               spiral=dataclasses.replace(P.spiral, probability=1.0))
    a, b = render(plain, "train", range(8)), render(busy, "train", range(8))
    assert np.array_equal(a.masks, b.masks)
    assert not a.meta['has_spiral'].any() and b.meta['has_spiral'].all() and b.meta['has_bar'].all()
    assert not np.allclose(a.images, b.images)


def test_mask_is_the_ellipse_where_the_profile_exceeds_its_level():
    # One noiseless galaxy, no extras: the mask must be {profile > mask_level * peak}.
    p = dataclasses.replace(
        P, galaxies=dataclasses.replace(P.galaxies, count=(1, 1)),
        bar=dataclasses.replace(P.bar, probability=0.0),
        spiral=dataclasses.replace(P.spiral, probability=0.0),
        noise=dataclasses.replace(P.noise, gaussian_sigma=0.0, poisson_scale=0.0))
    c = render(p, "val", range(3))
    for img, msk in zip(c.images, c.masks):
        # Normalised image = profile / peak (min is ~0 far from the galaxy), so the mask is
        # where the image exceeds mask_level, give or take the normalisation's tiny epsilon.
        inside = img > p.galaxies.mask_level + 1e-4
        outside = img < p.galaxies.mask_level - 1e-4
        assert msk[inside].all() and not msk[outside].any()


def test_seeds_above_2_to_the_63_give_distinct_streams():
    # A key list with such a seed would pass through float64 and collide with its neighbours.
    a = render(dataclasses.replace(P, seed=2 ** 63), "train", range(2)).images
    b = render(dataclasses.replace(P, seed=2 ** 63 + 1000), "train", range(2)).images
    c = render(dataclasses.replace(P, seed=2 ** 64 - 1), "train", range(2)).images
    assert not np.array_equal(a, b) and not np.array_equal(b, c)


def test_truth_per_galaxy_matches_what_was_drawn_and_rendered():
    p = DataParams()
    chunk = render(p, "val", range(40))
    k = p.galaxies.count[1]
    for name, values in chunk.objects.items():
        assert values.shape == (40, k) and values.dtype == np.float32, name
    present = ~np.isnan(chunk.objects["gal_cx"])
    assert (present.sum(1) == chunk.meta['n_sources']).all()
    o = {name: v[present] for name, v in chunk.objects.items()}
    np.testing.assert_allclose(o["gal_flux"], 2 * np.pi * o["gal_a"] * o["gal_b"] * o["gal_peak"],
                               rtol=1e-5)
    sigma = np.hypot(p.noise.gaussian_sigma, p.noise.poisson_scale * np.sqrt(p.noise.poisson_rate))
    np.testing.assert_allclose(o["gal_snr"], o["gal_peak"] / sigma, rtol=1e-5)
    # Every recorded centre is inside the mask, and the centres are where the light is.
    rows, cols = np.nonzero(present)
    ys, xs = np.rint(o["gal_cy"]).astype(int), np.rint(o["gal_cx"]).astype(int)
    assert chunk.masks[rows, ys, xs].all()
    assert (chunk.images[rows, ys, xs] > np.median(chunk.images, axis=(1, 2))[rows] + 0.2).all()
    # The truth is part of what the rest of the images are: the same index, the same truth.
    again = render(p, "val", range(20, 30))
    for name in chunk.objects:
        np.testing.assert_array_equal(again.objects[name], chunk.objects[name][20:30])
