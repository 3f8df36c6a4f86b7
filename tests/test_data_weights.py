"""The loss weight map against a naive reference: one full-image distance transform per
instance, stacked and sorted (exactly what the windowed code avoids)."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from cunet.data.weights import class_balance_weights, instances_from_labels, weight_map

CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])  # 4-connectivity, written out


def reference_border(instances, w0, sigma):
    """w0 exp(-(d1 + d2)^2 / (2 sigma^2)) from a full [K, H, W] stack of distances."""
    ids = [i for i in np.unique(instances) if i != 0]
    if len(ids) < 2:
        return np.zeros(instances.shape)  # d2 = infinity: the term is 0
    stack = np.sort(np.stack([ndimage.distance_transform_edt(instances != i) for i in ids]), axis=0)
    return w0 * np.exp(-((stack[0] + stack[1]) ** 2) / (2 * sigma**2))


def reference_class_weights(labels):
    """1 / freq(class), rescaled so its mean over the image is 1."""
    classes, counts = np.unique(labels, return_counts=True)
    inverse_freq = dict(zip(classes.tolist(), (labels.size / counts).tolist()))
    wc = np.vectorize(inverse_freq.get)(labels).astype(np.float64)
    return wc / wc.mean()


@st.composite
def layouts(draw):
    """A small label image: a Voronoi partition with 1 px borders, some cells dropped."""
    h, w = draw(st.integers(4, 36)), draw(st.integers(4, 36))
    k = draw(st.integers(0, 8))
    seeds = np.array([[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] for _ in range(k)]).reshape(k, 2)
    if k == 0:
        return np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[0:h, 0:w]
    owner = np.argmin((yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2, axis=0) + 1
    border = np.zeros((h, w), bool)
    border[:-1] |= owner[:-1] != owner[1:]
    border[:, :-1] |= owner[:, :-1] != owner[:, 1:]
    dropped = [i + 1 for i in range(k) if draw(st.booleans()) and draw(st.booleans())]
    owner[border | np.isin(owner, dropped)] = 0
    return owner.astype(np.int32)


@given(layouts(), st.floats(0.5, 20.0), st.floats(1.0, 8.0), st.sampled_from([1e-6, 1e-3, 0.5]))
def test_weight_map_matches_full_reference(instances, w0, sigma, tol):
    labels = (instances > 0).astype(np.uint8)
    border = reference_border(instances, w0, sigma)
    reference = reference_class_weights(labels) + border
    result = weight_map(labels, instances, w0=w0, sigma=sigma, border_on="all", tol=tol)
    assert result.dtype == np.float32 and result.shape == labels.shape
    # Documented guarantee: exact (to float32 rounding) where the border term exceeds
    # tol; within tol (plus rounding) everywhere.
    strong = border > tol
    np.testing.assert_allclose(result[strong], reference[strong], rtol=2e-6, atol=0)
    np.testing.assert_allclose(result, reference, rtol=2e-6, atol=tol)


@given(layouts(), st.floats(1.0, 6.0))
def test_background_only_border_and_derived_instances(instances, sigma):
    labels = (instances > 0).astype(np.uint8)
    components, _ = ndimage.label(labels, structure=CROSS)
    border = np.where(labels == 0, reference_border(components, 10.0, sigma), 0.0)
    reference = reference_class_weights(labels) + border
    np.testing.assert_allclose(weight_map(labels, sigma=sigma), reference, rtol=2e-6, atol=1e-6)


@given(st.lists(st.integers(0, 3), min_size=1, max_size=60), st.integers(1, 6))
def test_class_balance_averages_one_and_balances_classes(values, width):
    labels = np.resize(np.array(values, np.uint8), (len(values), width))
    wc = class_balance_weights(labels).astype(np.float64)
    assert wc.mean() == pytest.approx(1.0, rel=1e-6)  # the documented sum: N
    present = np.unique(labels)
    totals = [wc[labels == c].sum() for c in present]
    np.testing.assert_allclose(totals, labels.size / len(present), rtol=1e-6)  # N / K per class


def test_border_term_is_zero_with_fewer_than_two_cells():
    labels = np.zeros((20, 20), np.uint8)
    labels[5:10, 5:10] = 1
    w = weight_map(labels, border_on="all")
    np.testing.assert_array_equal(w, class_balance_weights(labels))


def test_border_term_peaks_in_a_one_pixel_gap():
    labels = np.ones((9, 21), np.uint8)
    labels[:, 10] = 0  # two cells, one membrane column
    w = weight_map(labels, w0=10.0, sigma=5.0, class_balance=False)
    # d1 = d2 = 1 on the membrane: 1 + 10 exp(-4 / 50); nothing on the cells.
    np.testing.assert_allclose(w[:, 10], 1 + 10 * np.exp(-4 / 50), rtol=1e-6)
    np.testing.assert_array_equal(w[:, :10], 1.0)


def test_instances_use_four_connectivity_per_class():
    labels = np.array([[1, 0, 2],
                       [0, 1, 2],
                       [0, 0, 0]], np.uint8)
    instances = instances_from_labels(labels)
    # The two diagonal 1s are two cells; the touching 2s one; a 1 and a 2 never share an id.
    assert len(np.unique(instances[instances > 0])) == 3
    assert instances[0, 0] != instances[1, 1] and instances[0, 2] == instances[1, 2]
    np.testing.assert_array_equal(instances == 0, labels == 0)


def test_memory_stays_linear_in_pixels():
    # 256 x 256 with ~400 cells: a K x H x W float64 stack would take ~200 MB.
    yy, xx = np.mgrid[0:256, 0:256]
    labels = ((yy % 13 != 0) & (xx % 13 != 0)).astype(np.uint8)
    tracemalloc.start()
    weight_map(labels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * labels.size * 8, f"peak {peak / 1e6:.1f} MB"  # a handful of H x W float64 arrays


def test_sparse_instance_ids_give_the_same_map():
    labels = np.ones((16, 24), np.uint8)  # no membrane at all: every pixel belongs to a cell
    instances = np.where(np.arange(24) < 9, 7, 2_000_000_011)[None].repeat(16, 0)
    reference = reference_class_weights(labels) + reference_border(instances, 10.0, 5.0)
    np.testing.assert_allclose(weight_map(labels, instances, border_on="all"), reference, rtol=2e-6, atol=1e-6)
