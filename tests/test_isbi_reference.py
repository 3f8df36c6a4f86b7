"""Tests of tests/isbi_reference.py, the independent transliteration of the ISBI 2012 scores
(Fiji Trainable_Segmentation, PixelError / RandError / WarpingError / VariationOfInformation).

The expected numbers are worked out by hand from the Java formulas; the comments show the
arithmetic. Geometry: arrays are [y, x]; "column x = 3" means ``label[:, 3]``.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import isbi_reference as ref

APPROX = dict(rel=1e-12, abs=1e-15)


def two_cells_6x6():
    """6x6 label, membrane column x = 3: cell A = x in {0,1,2} (18 px), cell B = x in {4,5} (12 px)."""
    label = np.ones((6, 6), dtype=np.int64)
    label[:, 3] = 0
    return label


# ---------------------------------------------------------------------------------------
# thresholds and the float32-vs-double comparison
# ---------------------------------------------------------------------------------------

def test_thresholds_are_the_java_accumulated_doubles():
    expected = (0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7,
                0.7999999999999999, 0.8999999999999999, 0.9999999999999999)
    assert ref.THRESHOLDS == expected
    assert len(ref.THRESHOLDS) == 11
    assert 1.0 not in ref.THRESHOLDS  # 0.9999999999999999 + 0.1 > 1.0 ends the loop: 1.0 is never tried
    assert ref.java_threshold_loop(0.0, 1.0, 0.1) == expected


def test_float32_probability_is_compared_in_double():
    # 0.3f = 0.300000011920928955078125 > 0.30000000000000004 in Java (float promoted to
    # double); in float32 the threshold would round to 0.3f and the comparison would fail.
    th = ref.THRESHOLDS[3]
    p = np.float32(0.3)
    assert not (p > np.float32(th))          # the pitfall
    assert np.float64(p) > th                # the Java
    label = np.ones((1, 1), dtype=np.int64)
    prob = np.full((1, 1), 0.3, dtype=np.float32)
    cs = ref.precision_recall_stats(label, prob, th)
    assert (cs.true_positives, cs.false_negatives) == (1.0, 0.0)
    # the warping's targetBin (proposal <= th ? 0 : 1) sees it as foreground too: no mismatch
    assert ref.simple_point_warp_2d(label, prob, th)[0] == 0.0
    # and 0.9f = 0.89999997615814208984375 is NOT above 0.8999999999999999
    assert not (np.float64(np.float32(0.9)) > ref.THRESHOLDS[9])


def test_java_reductions_skip_nan_and_start_at_0_or_1():
    assert ref.java_max_score([float("nan"), 0.5, float("nan")]) == 0.5
    assert ref.java_max_score([float("nan")] * 3) == 0.0
    assert ref.java_max_score([-1.0]) == 0.0
    assert ref.java_min_metric([0.3, 0.2, 0.4]) == 0.2
    assert ref.java_min_metric([1.5]) == 1.0


# ---------------------------------------------------------------------------------------
# whole-score cases worked by hand
# ---------------------------------------------------------------------------------------

def test_identity_proposal_scores_perfectly():
    label = two_cells_6x6()
    prob = label.astype(np.float32)  # 1.0 > th and 0.0 > th is false at every threshold
    s = ref.reference_scores([prob], [label])
    assert s == {"pixel_error": 0.0, "rand_error": 0.0, "warping_error": 0.0, "v_rand": 1.0, "v_info": 1.0}


def test_identity_with_a_single_cell_gets_v_info_zero():
    # Java quirk: one ground-truth segment gives H(A) == 0 -> prec = 0, rec = 1; then the
    # (identical) proposal also has H(B) == 0 -> prec = 1, rec = 0. Either way F = 0.
    label = np.zeros((5, 5), dtype=np.int64)
    label[1:4, 1:4] = 1
    prob = label.astype(np.float32)
    s = ref.reference_scores([prob], [label])
    assert s["v_info"] == 0.0
    assert s["v_rand"] == 1.0 and s["rand_error"] == 0.0 and s["pixel_error"] == 0.0
    assert s["warping_error"] == 0.0


def test_one_pixel_gap_merging_two_cells():
    label = two_cells_6x6()
    prob = label.astype(np.float32)
    prob[2, 3] = 1.0  # a gap in the membrane: the proposal merges A and B
    s = ref.reference_scores([prob], [label])
    # pixel: tp = 30, fp = 1, fn = 0 -> P = 30/31, R = 1, F = 60/61
    assert s["pixel_error"] == pytest.approx(1 / 61, **APPROX)
    # Rand (N^2): n = 30, one proposal segment holds both cells:
    # sumA2 = 0.6^2 + 0.4^2 = 0.52, sumB2 = 1, sumAB2 = 0.52 -> tp = 468, fp = 432, fn = 0
    # P = 0.52, R = 1, F = 1.04 / 1.52 = 13/19
    assert s["rand_error"] == pytest.approx(6 / 19, **APPROX)
    # warping: the gap pixel would join two objects -> not simple, stays: 1 mismatch / 36
    assert s["warping_error"] == pytest.approx(1 / 36, **APPROX)
    # thinning keeps one segment (every border pixel floods into the single basin): 13/19
    assert s["v_rand"] == pytest.approx(13 / 19, **APPROX)
    # one proposal segment, no proposal background in the foreground: H(B) = 0 -> F = 0
    assert s["v_info"] == 0.0


def test_membrane_bulge_is_warped_away():
    label = two_cells_6x6()
    prob = label.astype(np.float32)
    prob[2, 2] = 0.0  # the membrane is one pixel thicker here: a simple point of cell A
    s = ref.reference_scores([prob], [label])
    assert s["warping_error"] == 0.0
    # pixel: tp = 29, fn = 1 -> F = 58/59
    assert s["pixel_error"] == pytest.approx(1 / 59, **APPROX)
    # Rand: the proposal-background pixel inside A is a singleton (aux = 1/30):
    # sumA2 = 468/900, sumB2 = (17^2 + 12^2)/900 + 1/900 = 434/900 = sumAB2
    # tp = 434, fp = 0, fn = 34 -> F = 868/902 = 434/451
    assert s["rand_error"] == pytest.approx(17 / 451, **APPROX)
    # the watershed puts the bulge pixel back into A's basin
    assert s["v_rand"] == 1.0 and s["v_info"] == 1.0


def test_stack_pools_rand_and_pixel_counts_but_averages_v_rand_and_warping():
    label = two_cells_6x6()
    perfect = label.astype(np.float32)
    merged = perfect.copy()
    merged[2, 3] = 1.0
    s = ref.reference_scores([perfect, merged], [label, label])
    # pixel, pooled: tp = 60, fp = 1 -> F = 120/121
    assert s["pixel_error"] == pytest.approx(1 / 121, **APPROX)
    # Rand, pooled: tp = 468 + 468, fp = 0 + 432, fn = 0 -> P = 936/1368, F = 1872/2304 = 13/16
    assert s["rand_error"] == pytest.approx(3 / 16, **APPROX)
    # V_rand, per-slice average: (1 + 13/19) / 2 = 16/19
    assert s["v_rand"] == pytest.approx(16 / 19, **APPROX)
    # warping, mean over slices: (0 + 1/36) / 2
    assert s["warping_error"] == pytest.approx(1 / 72, **APPROX)
    # V_info, per-slice average: (1 + 0) / 2
    assert s["v_info"] == pytest.approx(0.5, **APPROX)


def test_slice_without_ground_truth_foreground_poisons_the_pooled_rand_error():
    # Java: n = 0 -> pij /= 0 -> tp, fp, fn = NaN for that slice; the NaNs are summed into
    # the pooled counts, ClassificationStatistics then gives F = 0 at every threshold, so the
    # Rand error of the whole stack is 1. Per slice (V_rand) that slice's F is 0.
    label = two_cells_6x6()
    prob = label.astype(np.float32)
    empty_label = np.zeros((6, 6), dtype=np.int64)
    empty_prob = np.zeros((6, 6), dtype=np.float32)
    cs = ref.get_foreground_restricted_rand_index_stats_n2(empty_label, empty_prob, 0.5)
    assert np.isnan(cs.true_positives) and cs.f_score == 0.0
    s = ref.reference_scores([prob, empty_prob], [label, empty_label])
    assert s["rand_error"] == 1.0
    assert s["pixel_error"] == 0.0 and s["warping_error"] == 0.0
    assert s["v_rand"] == pytest.approx(0.5, **APPROX)
    assert s["v_info"] == pytest.approx(0.5, **APPROX)  # ha == 0 -> prec 0, rec 1 -> F 0


def test_curves_over_thresholds():
    label = two_cells_6x6()
    prob = np.full((6, 6), 0.9, dtype=np.float32)
    prob[:, 3] = 0.2          # membrane
    prob[2, 3] = 0.55         # a weak gap in it
    c = ref.reference_curves([prob], [label])
    # th = 0.0, 0.1, 0.2 (0.2f > 0.2 in double!): everything foreground
    # th = 0.3.., 0.4, 0.5: only the gap merges the cells
    # th = 0.6, 0.7, 0.79..: perfect
    # th = 0.89.., 0.99..: 0.9f < 0.8999999999999999 -> everything background
    merged = 13 / 19
    assert c["pixel_fscore"] == pytest.approx([10 / 11] * 3 + [60 / 61] * 3 + [1.0] * 3 + [0.0] * 2, **APPROX)
    # all background: every foreground pixel a singleton: tp = 30, fp = 0, fn = 438 -> F = 10/83
    assert c["rand_fscore"] == pytest.approx([merged] * 6 + [1.0] * 3 + [10 / 83] * 2, **APPROX)
    # all foreground: the 6 membrane pixels each join A and B (not simple) -> 6/36;
    # all background: each cell erodes (simple points) down to one pixel -> 2/36
    assert c["warping_error"] == pytest.approx([6 / 36] * 3 + [1 / 36] * 3 + [0.0] * 3 + [2 / 36] * 2, **APPROX)
    # all background: the watershed input is all 255, a single level whose one "new minimum"
    # floods the whole image -> one segment, i.e. a merger (13/19), not all-singletons
    assert c["v_rand"] == pytest.approx([merged] * 6 + [1.0] * 3 + [merged] * 2, **APPROX)
    assert c["v_info"] == pytest.approx([0.0] * 6 + [1.0] * 3 + [0.0] * 2, **APPROX)
    assert ref.scores_from_curves(c) == {"pixel_error": 0.0, "rand_error": 0.0, "warping_error": 0.0,
                                         "v_rand": 1.0, "v_info": 1.0}


# ---------------------------------------------------------------------------------------
# WatershedTransform2D
# ---------------------------------------------------------------------------------------

def test_watershed_thins_a_three_pixel_border_to_its_middle_column():
    border = np.zeros((3, 9), dtype=np.uint8)
    border[:, 3:6] = 255  # cells x <= 2 and x >= 6
    out = ref.watershed_transform_2d(border)
    expected = np.array([[1, 1, 1, 1, 0, 2, 2, 2, 2]] * 3)
    np.testing.assert_array_equal(out, expected)


def test_watershed_puts_the_dam_of_a_two_pixel_border_on_its_later_column():
    border = np.zeros((3, 9), dtype=np.uint8)
    border[:, 3:5] = 255
    out = ref.watershed_transform_2d(border)
    # x = 3 is popped first and joins the left basin; x = 4 then sees both basins -> dam
    expected = np.array([[1, 1, 1, 1, 0, 2, 2, 2, 2]] * 3)
    np.testing.assert_array_equal(out, expected)


def test_watershed_hand_traced_case_depends_on_the_x_outer_scan():
    # 255 = border. Cells: {(x2,y0), (x2,y1), (x3,y1)} -> basin 2, {(x1,y2)} -> basin 1
    # (basin 1 first because the level-0 list is scanned x outer). Traced by hand through
    # the flooding of level 255 (queue: (0,2) (1,0) (1,1) (2,2) (3,0) (3,2), then (0,1) (0,0)).
    b = np.array([[1, 1, 0, 1],
                  [1, 1, 0, 0],
                  [1, 0, 1, 1]], dtype=np.uint8) * 255
    out = ref.watershed_transform_2d(b)
    expected = np.array([[0, 2, 2, 2],
                         [1, 0, 2, 2],
                         [1, 1, 0, 2]])
    np.testing.assert_array_equal(out, expected)
    # scanning the other way round (= transposing) gives a different partition
    other = ref.watershed_transform_2d(b.T).T
    assert not np.array_equal(other > 0, out > 0)


def test_watershed_single_level_images():
    # no border at all: the cells' 4-connected components, numbered in x-outer order
    cells = np.zeros((4, 4), dtype=np.uint8)
    np.testing.assert_array_equal(ref.watershed_transform_2d(cells), np.ones((4, 4)))
    # border everywhere: one level, one "new minimum" covering the whole image
    np.testing.assert_array_equal(ref.watershed_transform_2d(np.full((4, 4), 255, np.uint8)), np.ones((4, 4)))


@pytest.mark.parametrize("seed", range(5))
def test_watershed_properties_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    b = np.where(rng.random((12, 10)) < 0.45, 255, 0).astype(np.uint8)
    out = ref.watershed_transform_2d(b)
    cells = b == 0
    comp, ncomp = ndimage.label(cells, structure=ref._FOUR_CONNECTED)
    assert (out[cells] > 0).all()                   # dams only on border pixels
    assert out.max() == ncomp                       # one basin per cell component
    for k in range(1, ncomp + 1):                   # each component inside one basin
        assert len(np.unique(out[comp == k])) == 1


# ---------------------------------------------------------------------------------------
# WarpingError
# ---------------------------------------------------------------------------------------

def test_simple_point_test_matches_the_2d_four_eight_definition():
    # simple2DBertrand(patch, 4) -> simple3d(input, 6) agrees, on all 512 patches, with the
    # 2-D rule of WarpingError.simple2D: topo(fg, 4) == 1 and topo(inverted bg, 8) == 1.
    def topo(p, adjacency):
        q = p.copy()
        q[1, 1] = 0
        structure = ref._FOUR_CONNECTED if adjacency == 4 else np.ones((3, 3), bool)
        lab, _ = ndimage.label(q, structure=structure)
        if adjacency == 4:
            for a, b in [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)]:
                lab[a, b] = 0
        return len(set(lab.ravel()) - {0})

    for code in range(512):
        patch = np.array([(code >> k) & 1 for k in range(9)]).reshape(3, 3)
        expected = topo(patch, 4) == 1 and topo(1 - patch, 8) == 1
        assert bool(ref.SIMPLE_POINT_TABLE_4[code]) == expected, patch
        assert ref.simple_2d_bertrand(patch, 4) == expected


def test_simple_point_examples():
    isolated = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    interior = np.ones((3, 3))
    edge = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 0]])
    bridge = np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]])
    assert not ref.simple_2d_bertrand(isolated)   # deleting it deletes an object
    assert not ref.simple_2d_bertrand(interior)   # deleting it makes a hole
    assert ref.simple_2d_bertrand(edge)
    assert not ref.simple_2d_bertrand(bridge)     # deleting it splits an object


def test_warping_ties_are_processed_x_outer_y_inner():
    # Source: all foreground but a diagonal pair of background pixels P1 = (x1, y2) and
    # P2 = (x2, y1) -- one 8-connected hole. Target: all foreground. Filling either is
    # simple; after that the other is a one-pixel hole whose filling deletes the hole.
    label = np.ones((5, 5), dtype=np.int64)
    label[2, 1] = 0  # P1
    label[1, 2] = 0  # P2
    prob = np.ones((5, 5), dtype=np.float32)
    err, warped = ref.simple_point_warp_2d(label, prob, 0.5)
    assert err == pytest.approx(1 / 25, **APPROX)
    # equal keys |1 - 0.5|: the list order decides, x outer -> P1 (x = 1) first
    assert warped[2, 1] == 1.0 and warped[1, 2] == 0.0
    # a larger |proposal - th| goes first: make P1's key 0.1 and P2's 0.5
    prob[2, 1] = 0.6
    err, warped = ref.simple_point_warp_2d(label, prob, 0.5)
    assert err == pytest.approx(1 / 25, **APPROX)
    assert warped[2, 1] == 0.0 and warped[1, 2] == 1.0


def test_warping_spurious_hole_and_object():
    label = np.zeros((7, 7), dtype=np.int64)
    label[1:6, 1:6] = 1
    prob = label.astype(np.float32)
    prob[3, 3] = 0.0           # a hole inside the cell: not simple
    prob[0, 6] = 1.0           # a one-pixel object in the membrane: not simple
    prob[1, 1] = 0.0           # a corner of the cell: simple
    err, warped = ref.simple_point_warp_2d(label, prob, 0.5)
    assert err == pytest.approx(2 / 49, **APPROX)
    assert warped[1, 1] == 0.0 and warped[3, 3] == 1.0 and warped[0, 6] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_warping_preserves_the_source_topology(seed):
    rng = np.random.default_rng(seed)
    label = (ndimage.uniform_filter(rng.random((14, 12)), 3) > 0.5).astype(np.int64)
    prob = rng.random((14, 12)).astype(np.float32)
    err, warped = ref.simple_point_warp_2d(label, prob, 0.5)

    def topology(img):
        padded = np.pad(img > 0, 1)
        fg = ndimage.label(padded, structure=ref._FOUR_CONNECTED)[1]
        bg = ndimage.label(~padded, structure=np.ones((3, 3), bool))[1]
        return fg, bg

    assert topology(warped) == topology(label)
    target = np.float64(prob) > 0.5
    assert err == pytest.approx(np.count_nonzero((warped > 0) != target) / prob.size, **APPROX)


# ---------------------------------------------------------------------------------------
# The N^2 Rand statistics and the information F-score, against brute force
# ---------------------------------------------------------------------------------------

def _singletons(c1, c2):
    """Proposal-background pixels inside the ground-truth foreground as singleton segments."""
    c2 = c2.copy()
    idx = np.flatnonzero((c1.ravel() != 0) & (c2.ravel() == 0))
    c2.ravel()[idx] = c2.max() + 1 + np.arange(idx.size)
    return c2


@pytest.mark.parametrize("seed", range(6))
def test_rand_n2_counts_are_ordered_pair_counts(seed):
    rng = np.random.default_rng(seed)
    c1 = rng.integers(0, 4, (7, 6))
    c2 = rng.integers(0, 5, (7, 6))
    cs = ref.get_foreground_restricted_rand_index_stats_n2_clusters(c1, c2)
    fg = c1.ravel() != 0
    a = c1.ravel()[fg]
    b = _singletons(c1, c2).ravel()[fg]
    same_a = a[:, None] == a[None, :]    # ordered pairs, self-pairs included (N^2)
    same_b = b[:, None] == b[None, :]
    assert cs.true_positives == pytest.approx(np.sum(same_a & same_b), rel=1e-12)
    assert cs.false_positives == pytest.approx(np.sum(~same_a & same_b), rel=1e-12, abs=1e-9)
    assert cs.false_negatives == pytest.approx(np.sum(same_a & ~same_b), rel=1e-12, abs=1e-9)


def _entropy(x):
    _, counts = np.unique(x, return_counts=True)
    p = counts / x.size
    return -np.sum(p * np.log(p))


@pytest.mark.parametrize("seed", range(6))
def test_information_fscore_is_harmonic_mean_of_normalised_mutual_information(seed):
    rng = np.random.default_rng(seed)
    c1 = rng.integers(0, 4, (7, 6))
    c2 = rng.integers(0, 5, (7, 6))
    f = ref.foreground_restricted_fscore(c1, c2)
    fg = c1.ravel() != 0
    a = c1.ravel()[fg]
    b = _singletons(c1, c2).ravel()[fg]
    ha, hb = _entropy(a), _entropy(b)
    mi = ha + hb - _entropy(a * 1000 + b)
    prec, rec = mi / ha, mi / hb
    assert f == pytest.approx(2 * prec * rec / (prec + rec), rel=1e-9)


def test_information_fscore_edge_cases():
    # independent partitions: mutual information 0 -> prec = rec = 0 -> 0/0 = NaN
    f = ref.foreground_restricted_fscore(np.array([[1, 1], [2, 2]]), np.array([[1, 2], [1, 2]]))
    assert np.isnan(f)
    # ha == 0 (one ground-truth segment): F = 0 even for the identical proposal
    assert ref.foreground_restricted_fscore(np.ones((2, 2), int), np.ones((2, 2), int)) == 0.0
    # hb == 0 (one proposal segment, no proposal background): prec 1, rec 0 -> F = 0
    assert ref.foreground_restricted_fscore(np.array([[1, 1], [2, 2]]), np.ones((2, 2), int)) == 0.0
    # no ground-truth foreground: ha == 0 wins over the NaN hb -> F = 0
    assert ref.foreground_restricted_fscore(np.zeros((2, 2), int), np.ones((2, 2), int)) == 0.0


def test_connected_components_use_four_connectivity_and_scan_order():
    binary = np.array([[0, 255, 0],
                       [255, 0, 255],
                       [0, 255, 0]])
    out = ref.connected_components(binary)
    # four separate pixels, numbered in row-major order of their first pixel
    np.testing.assert_array_equal(out, [[0, 1, 0], [2, 0, 3], [0, 4, 0]])
