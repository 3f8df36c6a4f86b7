"""MALIS weights (cunet/malis.py) against brute force: every pair's maximin pixel found by
thresholding and labelling, the definition itself, with no union-find."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy import ndimage

from cunet.malis import malis_weights, maximin_pair_counts
from cunet.metrics import cell_segments

FOUR = ndimage.generate_binary_structure(2, 1)


def brute_force_pair_counts(prob, objects):
    """For every pair of cell pixels, the pixel at whose value the pair first joins when the
    pixels are added in decreasing value: same-cell pairs over cell pixels only, different-cell
    pairs with the cells present from the start (their value taken as +inf)."""
    same, different = np.zeros(prob.shape), np.zeros(prob.shape)
    cells = np.argwhere(objects > 0)
    for counts, value, pair_kind in ((same, np.where(objects > 0, prob, -np.inf), "same"),
                                     (different, np.where(objects > 0, np.inf, prob), "different")):
        joined_at = {}
        for level in sorted(set(value[np.isfinite(value)].ravel()), reverse=True):
            components, _ = ndimage.label(value >= level, structure=FOUR)
            for i in range(len(cells)):
                for j in range(i + 1, len(cells)):
                    a, b = tuple(cells[i]), tuple(cells[j])
                    if (objects[a] == objects[b]) != (pair_kind == "same") or (i, j) in joined_at:
                        continue
                    if components[a] == components[b] != 0:
                        joined_at[(i, j)] = level
                        counts[tuple(np.argwhere(value == level)[0])] += 1
    return same, different


def random_tile(seed, shape=(6, 7), membrane_fraction=0.35):
    rng = np.random.default_rng(seed)
    labels = (rng.random(shape) > membrane_fraction).astype(np.uint8)
    prob = rng.permutation(labels.size).reshape(shape).astype(np.float64) / labels.size  # distinct values
    return prob, labels


@given(st.integers(0, 10_000))
def test_pair_counts_match_brute_force(seed):
    prob, labels = random_tile(seed)
    objects, count = cell_segments(labels == 1)
    same, different = maximin_pair_counts(prob, objects, count)
    want_same, want_different = brute_force_pair_counts(prob, objects)
    np.testing.assert_array_equal(same, want_same)
    np.testing.assert_array_equal(different, want_different)


def test_every_pair_is_counted_once():
    prob, labels = random_tile(3, shape=(12, 12))
    objects, count = cell_segments(labels == 1)
    same, different = maximin_pair_counts(prob, objects, count)
    sizes = np.bincount(objects.ravel())[1:].astype(float)
    assert same.sum() == (sizes * (sizes - 1) / 2).sum()
    assert different.sum() == (sizes.sum() ** 2 - (sizes ** 2).sum()) / 2


def test_the_leak_between_two_cells_takes_all_the_negative_weight():
    # Two 3-wide cells split by a membrane column; P(cell) is high in one membrane pixel (the leak).
    labels = np.ones((5, 7), np.uint8)
    labels[:, 3] = 0
    prob = np.full((5, 7), 0.9)
    prob[:, 3] = [0.1, 0.2, 0.6, 0.15, 0.05]
    objects, count = cell_segments(labels == 1)
    _, different = maximin_pair_counts(prob, objects, count)
    assert different[2, 3] == 15 * 15 and different.sum() == 15 * 15


def test_a_weak_cell_pixel_decides_its_pairs_with_the_rest_of_its_cell():
    labels = np.ones((4, 4), np.uint8)
    prob = np.full((4, 4), 0.9) - np.arange(16).reshape(4, 4) * 1e-3  # distinct, all high
    prob[3, 3] = 0.05  # a corner pixel the network calls membrane: it joins last
    objects, count = cell_segments(labels == 1)
    same, _ = maximin_pair_counts(prob, objects, count)
    assert same[3, 3] == 15  # its pairs with the other 15 pixels of its cell


def test_weights_land_on_the_true_class_and_average_one():
    prob, labels = random_tile(7, shape=(20, 20), membrane_fraction=0.3)
    objects, count = cell_segments(labels == 1)
    same, different = maximin_pair_counts(prob, objects, count)
    assert np.all(same[labels == 0] == 0) and np.all(different[labels == 1] == 0)
    weights = malis_weights(prob, labels)
    assert weights.dtype == np.float32 and weights.mean() == pytest.approx(1.0, rel=1e-6)


def test_weights_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        malis_weights(np.zeros((4, 4)), np.zeros((4, 5)))
