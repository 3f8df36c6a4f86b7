"""Augmentation: identity, the elastic field (reference, smoothness, statistics),
flips/rotations/shifts against NumPy/SciPy references, and labels moving with images."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from cunet.data.augment import (AugmentConfig, GeometricTransform, augment, coarse_to_dense, draw_transform,
                                elastic_displacement, resample, source_coordinates)
from cunet.data.mirror import mirror_index

OFF = AugmentConfig(elastic_sigma=0.0, rotate=False, flip=False, gamma_log_std=0.0, contrast_log_std=0.0,
                    brightness_std=0.0)


def _centre(shape):
    return ((shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0)


def _blobs(shape, seed, n_classes=2):
    """A label image of smooth blobs with classes 0..n_classes-1."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 3.0)
    edges = np.quantile(noise, np.linspace(0, 1, n_classes + 1)[1:-1])
    return np.digitize(noise, edges).astype(np.uint8)


# ----------------------------------------------------------------- mirror convention


@given(st.integers(1, 9), st.integers(-40, 0), st.integers(1, 80))
def test_mirror_index_matches_numpy_reflect(n, start, length):
    row = np.arange(n)
    pad = max(-start, start + length - n, 0)
    reference = np.pad(row, pad, mode="reflect")[start + pad:start + pad + length]  # np.pad repeats reflections
    np.testing.assert_array_equal(mirror_index(np.arange(start, start + length), n), reference)


# ----------------------------------------------------------------- identity


@pytest.mark.parametrize("order", [0, 1, 3])
def test_zero_displacement_is_the_identity(order):
    image = np.random.default_rng(0).random((23, 31)).astype(np.float32)
    coords = source_coordinates(GeometricTransform.identity(), image.shape, _centre(image.shape))
    np.testing.assert_array_equal(coords, np.mgrid[0:23, 0:31])  # the map itself is exact
    # Orders 0 and 1 at integer points return the samples exactly; the cubic B-spline
    # interpolates its samples, up to the float64 rounding of the prefilter (~1e-15)
    # and the float32 cast: hence 1e-6.
    np.testing.assert_allclose(resample(image, coords, order), image, rtol=0, atol=1e-6 if order == 3 else 0)


def test_augment_with_everything_off_returns_its_inputs():
    rng = np.random.default_rng(3)
    image = rng.random((20, 24)).astype(np.float32)
    label, weight = _blobs((20, 24), 1), rng.random((20, 24)).astype(np.float32)
    ids = rng.integers(0, 9, (20, 24)).astype(np.int32)
    out = augment(image, label, weight, ids, rng=rng, config=OFF)
    np.testing.assert_allclose(out[0], image, atol=1e-6)  # cubic at integer points, see above
    for got, expected in zip(out[1:], (label, weight, ids)):
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == expected.dtype


# ----------------------------------------------------------------- elastic field


def test_dense_field_is_the_bicubic_zoom_of_the_coarse_grid():
    coarse = np.random.default_rng(5).normal(0, 10, size=(2, 3, 3))
    dense = coarse_to_dense(coarse, (41, 26))
    # Independent reference: ndimage.zoom with corner-aligned grids (grid_mode=False)
    # puts coarse node k at pixel k (n - 1) / 2, as the paper's 3 x 3 grid over the tile.
    reference = np.stack([ndimage.zoom(c, (41 / 3, 26 / 3), order=3, mode="mirror", grid_mode=False) for c in coarse])
    np.testing.assert_allclose(dense, reference, rtol=0, atol=1e-9)
    # The spline passes through the nodes: rows 0, 20, 40; columns 0 and 25 (the middle
    # column node sits at 12.5, between pixels).
    np.testing.assert_allclose(dense[:, ::20][:, :, [0, 25]], coarse[:, :, [0, 2]], atol=1e-9)


def test_dense_field_is_smooth():
    rng = np.random.default_rng(6)
    for _ in range(20):
        coarse = rng.normal(0, 10, size=(2, 3, 3))
        dense = coarse_to_dense(coarse, (101, 101))
        h, top = 50.0, np.abs(coarse).max()  # node spacing, largest displacement
        # A cubic spline through nodes h apart changes by O(top / h) per pixel and bends
        # by O(top / h^2); nearest or linear upsampling, or per-pixel noise, would not.
        for axis in (1, 2):
            assert np.abs(np.diff(dense, 1, axis=axis)).max() <= 4 * top / h
            assert np.abs(np.diff(dense, 2, axis=axis)).max() <= 16 * top / h**2


@pytest.mark.parametrize("sigma", [3.0, 10.0])
def test_field_spread_matches_sigma(sigma):
    rng = np.random.default_rng(7)
    fields = np.stack([elastic_displacement(rng, (33, 33), sigma=sigma) for _ in range(500)])
    nodes = fields[:, :, ::16, ::16]  # the 3 x 3 nodes, where the field equals the draws
    # 9000 N(0, sigma) values: the sample std is within 4 standard errors (~1.2%) of sigma.
    assert abs(nodes.std() / sigma - 1) < 4 / np.sqrt(2 * nodes.size)
    assert abs(nodes.mean()) < 4 * sigma / np.sqrt(nodes.size)
    between = fields[:, :, 8, 8]  # between nodes the spline averages: smaller, not vanishing
    assert 0.4 * sigma < between.std() < sigma


# ----------------------------------------------------------------- geometry


def test_flips_match_numpy():
    image = np.random.default_rng(8).random((9, 14)).astype(np.float32)
    for flip in [(True, False), (False, True), (True, True)]:
        transform = GeometricTransform(np.zeros((2, 3, 3)), 0.0, flip)
        got = resample(image, source_coordinates(transform, image.shape, _centre(image.shape)), 0)
        np.testing.assert_array_equal(got, np.flip(image, axis=[a for a in (0, 1) if flip[a]]))


@pytest.mark.parametrize("degrees", [90, 23.5, -140])
def test_rotation_matches_ndimage_rotate(degrees):
    image = np.random.default_rng(9).random((31, 31))
    transform = GeometricTransform(np.zeros((2, 3, 3)), np.deg2rad(degrees))
    got = resample(image, source_coordinates(transform, image.shape, _centre(image.shape)), 1)
    # Same centre ((n-1)/2), same mirrored border; both interpolate linearly in float64.
    reference = ndimage.rotate(image, degrees, reshape=False, order=1, mode="mirror")
    np.testing.assert_allclose(got, reference, atol=1e-9)
    if degrees == 90:
        np.testing.assert_allclose(got, np.rot90(image), atol=1e-12)


def test_integer_shift_mirrors_the_border():
    image = np.random.default_rng(10).random((12, 15))
    transform = GeometricTransform(np.zeros((2, 3, 3)), shift=(5.0, -7.0))
    got = resample(image, source_coordinates(transform, image.shape, _centre(image.shape)), 0)
    padded = np.pad(image, 20, mode="reflect")  # whole-sample mirror
    np.testing.assert_array_equal(got, padded[20 + 5:20 + 5 + 12, 20 - 7:20 - 7 + 15])


def test_rotated_borders_are_mirrored_not_zero_filled():
    ones = np.ones((40, 40), np.float32)
    transform = GeometricTransform(np.full((2, 3, 3), 15.0), np.deg2rad(45), shift=(30.0, 0.0))
    out = resample(ones, source_coordinates(transform, ones.shape, _centre(ones.shape)), 3)
    np.testing.assert_allclose(out, 1.0, atol=1e-6)


# ----------------------------------------------------------------- labels move with images


@given(st.integers(0, 10_000))
def test_labels_stay_in_their_set(seed):
    rng = np.random.default_rng(seed)
    label = _blobs((40, 36), seed, n_classes=3)
    ids = ndimage.label(label == 1)[0].astype(np.int32)
    config = AugmentConfig(max_shift=10.0)
    _, out_label, _, out_ids = augment(np.zeros(label.shape, np.float32), label, None, ids, rng=rng, config=config)
    assert set(np.unique(out_label)) <= {0, 1, 2}
    assert set(np.unique(out_ids)) <= set(np.unique(ids))


@given(st.integers(0, 10_000), st.sampled_from([0, 1, 3]))
def test_image_and_label_move_together(seed, order):
    label = _blobs((48, 48), seed)
    config = AugmentConfig(max_shift=8.0, image_order=order, gamma_log_std=0.0, contrast_log_std=0.0,
                           brightness_std=0.0)
    image, out_label, *_ = augment(label.astype(np.float32), label, rng=np.random.default_rng(seed), config=config)
    disagree = (image > 0.5) != (out_label == 1)
    if order == 0:
        assert not disagree.any()  # same coordinates, same rounding: identical
        return
    # Where did each output pixel come from? augment() draws the geometric transform
    # first (documented), so replaying the seed gives the same coordinates.
    transform = draw_transform(np.random.default_rng(seed), config)
    coords = source_coordinates(transform, label.shape, ((48 - 1) / 2, (48 - 1) / 2))
    # Interpolating a 0/1 image can only cross 0.5 differently from the nearest source
    # pixel where the interpolation support holds both labels: the 2 x 2 source pixels
    # around the point (linear) or 4 x 4 (cubic; its ringing decays within a pixel or two).
    lo, hi = (0, 1) if order == 1 else (-1, 2)
    rows, cols = np.floor(coords[0]).astype(int), np.floor(coords[1]).astype(int)
    window = [label[np.ix_(*[mirror_index(np.arange(r + lo, r + hi + 1), 48) for r in (y, x)])]
              for y, x in zip(rows[disagree], cols[disagree])]
    assert all(w.min() != w.max() for w in window)
    assert disagree.mean() < 0.05


def test_same_generator_state_same_result():
    image = np.random.default_rng(11).random((30, 30)).astype(np.float32)
    a = augment(image, rng=np.random.default_rng(42), config=AugmentConfig(max_shift=5))[0]
    b = augment(image, rng=np.random.default_rng(42), config=AugmentConfig(max_shift=5))[0]
    c = augment(image, rng=np.random.default_rng(43), config=AugmentConfig(max_shift=5))[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
