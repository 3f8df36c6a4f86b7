"""Training sampler: shapes, where every input pixel comes from, label/weight tiles as
the centre crop of the same source map, mirrored context, and a counter-based stream
(sample k depends on (seed, k) alone), drawn ahead by worker processes.

The trick used throughout: each image pixel holds a code for its own (image, row, col),
so the input tile tells us exactly which source pixel every tile pixel was read from
(with nearest-neighbour resampling), independently of how the sampler drew it."""

import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cunet.data.augment import AugmentConfig
from cunet.data.sampler import TrainingSampler
from cunet.data.weights import weight_map

NO_GREY = dict(gamma_log_std=0.0, contrast_log_std=0.0, brightness_std=0.0)


def coded_images(n, h, w):
    """Images whose pixel (i, r, c) holds (i h w + r w + c + 0.5) / (n h w): unique, in (0, 1)."""
    return ((np.arange(n * h * w).reshape(n, h, w) + 0.5) / (n * h * w)).astype(np.float32)


def decode(tile, n, h, w):
    """(image, row, col) index arrays of the source pixels a tile of coded pixels shows."""
    code = np.floor(tile.astype(np.float64) * (n * h * w)).astype(np.int64)
    return code // (h * w), code // w % h, code % w


def reflect_reference(length, start, count):
    """Source indices of ``count`` positions from ``start`` under whole-sample mirroring (np.pad 'reflect')."""
    pad = max(-start, start + count - length, 0)
    return np.pad(np.arange(length), pad, mode="reflect")[start + pad:start + pad + count]


def fixture(n=2, h=40, w=46, seed=0):
    """Coded images, random binary labels and random weights."""
    rng = np.random.default_rng(seed)
    return coded_images(n, h, w), (rng.random((n, h, w)) < 0.7).astype(np.uint8), rng.random((n, h, w)).astype(np.float32)


def test_batch_shapes_and_dtypes():
    images, labels, weights = fixture()
    x, y, w = TrainingSampler(images, labels, weights, in_size=60, out_size=28, seed=1).batch_at(0, 3)
    assert x.shape == (3, 1, 60, 60) and x.dtype == np.float32
    assert y.shape == (3, 28, 28) and y.dtype == np.uint8
    assert w.shape == (3, 28, 28) and w.dtype == np.float32


@given(st.integers(12, 40), st.integers(12, 40), st.integers(1, 12), st.integers(0, 40), st.integers(0, 99))
def test_plain_tiles_are_mirrored_windows(h, w, out_size, margin, seed):
    """No augmentation: an integer window, context mirrored (repeatedly when wider than the image)."""
    images, labels, weights = fixture(2, h, w, seed)
    in_size = out_size + 2 * margin
    x, y, wt = TrainingSampler(images, labels, weights, in_size, out_size, augment=False, seed=seed).batch_at(0, 2)
    for k in range(2):
        index, rows, cols = decode(x[k, 0], 2, h, w)
        assert (index == index[0, 0]).all()
        top, left = rows[margin, margin], cols[margin, margin]
        assert 0 <= top <= h - out_size and 0 <= left <= w - out_size  # output window inside the image
        np.testing.assert_array_equal(rows, np.broadcast_to(reflect_reference(h, top - margin, in_size)[:, None], rows.shape))
        np.testing.assert_array_equal(cols, np.broadcast_to(reflect_reference(w, left - margin, in_size)[None, :], cols.shape))
        i = index[0, 0]
        np.testing.assert_array_equal(y[k], labels[i, top:top + out_size, left:left + out_size])
        np.testing.assert_array_equal(wt[k], weights[i, top:top + out_size, left:left + out_size])


@given(st.integers(0, 10_000))
def test_augmented_label_and_weight_are_the_centre_crop_of_the_source_map(seed):
    images, labels, weights = fixture(2, 40, 46, seed)
    config = AugmentConfig(image_order=0, max_shift=6.0, **NO_GREY)  # nearest: x shows exact source pixels
    in_size, out_size = 64, 24
    margin = (in_size - out_size) // 2
    x, y, w = TrainingSampler(images, labels, weights, in_size, out_size, seed=seed, config=config).batch_at(0, 2)
    for k in range(2):
        index, rows, cols = (a[margin:margin + out_size, margin:margin + out_size] for a in decode(x[k, 0], 2, 40, 46))
        np.testing.assert_array_equal(y[k], labels[index, rows, cols])
        np.testing.assert_array_equal(w[k], weights[index, rows, cols])


def test_augmented_tiles_are_deformed_not_plain_windows():
    images, labels, weights = fixture()
    config = AugmentConfig(image_order=0, **NO_GREY)
    x, _, _ = TrainingSampler(images, labels, weights, 40, 20, seed=3, config=config).batch_at(0, 1)
    _, rows, cols = decode(x[0, 0], 2, 40, 46)
    steps = np.abs(np.diff(rows, axis=0)) + np.abs(np.diff(cols, axis=0))
    assert not (steps == 1).all()  # a rotated, warped grid: not every step moves one row


def test_weights_default_to_precomputed_weight_maps():
    images, labels, _ = fixture(1, 30, 30)
    sampler = TrainingSampler(images, labels, None, 30, 30, augment=False, seed=0)
    _, y, w = sampler.batch_at(0, 1)
    np.testing.assert_array_equal(y[0], labels[0])
    np.testing.assert_array_equal(w[0], weight_map(labels[0]))


def test_recomputed_weights_see_the_whole_input_tile():
    images, labels, _ = fixture(1, 30, 30)
    sampler = TrainingSampler(images, labels, None, 50, 20, augment=False, seed=0, recompute_weights=True)
    x, _, w = sampler.batch_at(0, 1)
    _, rows, cols = decode(x[0, 0], 1, 30, 30)
    reference = weight_map(labels[0][rows, cols])[15:35, 15:35]  # the map of the input tile, centre crop
    np.testing.assert_array_equal(w[0], reference)


@pytest.mark.parametrize("augment", [False, True])
def test_sample_k_is_a_pure_function_of_seed_and_k(augment):
    """Drawn in any order, by any sampler object (even one sent through pickle, as to a
    worker), sample k is the same; batch_at(first, n) stacks samples first .. first+n-1."""
    images, labels, weights = fixture()
    make = lambda: TrainingSampler(images, labels, weights, 60, 28, augment=augment, seed=5)  # noqa: E731
    forwards = [make().sample_at(k) for k in range(5)]
    other = pickle.loads(pickle.dumps(make()))
    backwards = [other.sample_at(k) for k in reversed(range(5))][::-1]
    for a, b in zip(forwards, backwards):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    x, y, w = make().batch_at(2, 3)
    for i, k in enumerate(range(2, 5)):
        np.testing.assert_array_equal(x[i, 0], forwards[k][0])
        np.testing.assert_array_equal(y[i], forwards[k][1])
        np.testing.assert_array_equal(w[i], forwards[k][2])
    assert not np.array_equal(forwards[0][0], forwards[1][0])  # successive samples differ


def test_different_seeds_draw_different_tiles():
    images, labels, weights = fixture()
    a = TrainingSampler(images, labels, weights, 60, 28, seed=1).batch_at(0, 1)[0]
    b = TrainingSampler(images, labels, weights, 60, 28, seed=2).batch_at(0, 1)[0]
    assert not np.array_equal(a, b)


def test_input_tile_larger_than_the_image():
    images, labels, weights = fixture(1, 24, 24)
    x, y, _ = TrainingSampler(images, labels, weights, 132, 20, augment=False, seed=0).batch_at(0, 1)
    _, rows, cols = decode(x[0, 0], 1, 24, 24)
    assert rows.min() == 0 and rows.max() == 23 and cols.min() == 0 and cols.max() == 23  # mirrored, repeatedly


@pytest.mark.parametrize("in_size, out_size", [(60, 27), (20, 28), (60, 0)])
def test_bad_tile_sizes(in_size, out_size):
    images, labels, weights = fixture()
    with pytest.raises(ValueError, match="in - out even"):
        TrainingSampler(images, labels, weights, in_size, out_size)


def test_image_smaller_than_output_tile():
    images, labels, weights = fixture(1, 20, 20)
    with pytest.raises(ValueError, match="smaller than the output tile"):
        TrainingSampler(images, labels, weights, 60, 24)
