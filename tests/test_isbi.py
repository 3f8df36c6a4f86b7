"""cunet.isbi: the ISBI 2012 challenge's scoring of a stack, against hand-worked cases.

The comparison with the independent transliteration of Fiji's Java (tests/isbi_reference.py)
is in tests/test_isbi_against_reference.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cunet import isbi, metrics


def two_cells(size: int = 8) -> np.ndarray:
    """A label: two cells (1) either side of a one-pixel membrane column (0)."""
    label = np.ones((size, size), np.int64)
    label[:, size // 2] = 0
    return label


def prediction(label: np.ndarray, cell: float, membrane: float) -> np.ndarray:
    """A probability map that says ``cell`` on the label's cells and ``membrane`` on its membrane."""
    return np.where(label == 1, cell, membrane).astype(np.float32)


def test_thresholds_are_the_java_loops_doubles():
    t = isbi.CHALLENGE_THRESHOLDS
    assert len(t) == 11 and t[0] == 0.0
    assert t[3] == 0.30000000000000004 and t[-1] == 0.9999999999999999  # accumulated, not 0.3 and 1.0
    assert isbi.challenge_thresholds(0.0, 0.3, 0.1).tolist() == [0.0, 0.1, 0.2]  # 0.30000000000000004 > 0.3


def test_binarise_compares_in_float64():
    prob = np.array([[np.float32(0.3)]])  # 0.30000001192...
    assert isbi.binarise(prob, isbi.CHALLENGE_THRESHOLDS[3])[0, 0]  # Java: (double) 0.3f > 0.30000000000000004
    assert not (prob > np.float32(isbi.CHALLENGE_THRESHOLDS[3]))[0, 0]  # what a float32 comparison would say


def test_one_threshold_for_the_stack_reads_higher_than_per_slice_optima():
    """Slice A shows its membrane only above 0.35, slice B only below 0.3: each slice alone is
    perfect at its own threshold, the stack is not at any single one."""
    label = two_cells()
    a, b = prediction(label, 0.9, 0.35), prediction(label, 0.3, 0.15)
    assert metrics.pixel_error(a, label) == metrics.pixel_error(b, label) == 0  # each at its own optimum
    assert metrics.rand_error(a, label) == metrics.rand_error(b, label) == 0
    result = isbi.score_stack([a, b], [label, label])
    # By hand at th = 0.2 (the first of the best): A is all cell (8 false positives on its
    # membrane), B is exact. Pooled: TP = 2 * 56, FP = 8, FN = 0 -> F = 224 / 232.
    assert result.scores["pixel_error"] == pytest.approx(1 - 224 / 232)
    assert result.best_threshold["pixel_error"] == 0.2
    # Rand at th = 0.2: A merges its two cells (32 + 24 pixels) into one segment: joint =
    # truth = 32^2 + 24^2, proposal = 56^2; B is exact: all three are 32^2 + 24^2.
    cells = 32**2 + 24**2
    joint, truth, proposal = 2 * cells, 2 * cells, 56**2 + cells
    assert result.scores["rand_error"] == pytest.approx(1 - 2 * joint / (truth + proposal))
    assert result.scores["rand_error"] > 0 and result.scores["pixel_error"] > 0


def test_rand_parts_name_merges_and_splits():
    """The Rand F-score's precision falls on a merge, its recall on a split and on cell pixels
    taken for membrane; 2PR/(P+R) is the F the challenge reports."""
    label = two_cells()  # cells of 32 and 24 pixels
    merged = isbi.score_stack([prediction(label, 0.9, 0.9)], [label])  # the membrane missed at every threshold
    assert merged.rand_parts["recall"] == 1.0
    assert merged.rand_parts["precision"] == pytest.approx((32**2 + 24**2) / 56**2)
    thick = prediction(label, 0.9, 0.1)
    thick[:, 3] = 0.1  # the membrane two pixels wide: 8 pixels of the left cell become singletons
    result = isbi.score_stack([thick], [label])
    assert result.rand_parts["precision"] == 1.0
    assert result.rand_parts["recall"] == pytest.approx((24**2 + 24**2 + 8) / (32**2 + 24**2))
    p, r = result.rand_parts["precision"], result.rand_parts["recall"]
    assert result.scores["rand_error"] == pytest.approx(1 - 2 * p * r / (p + r), abs=1e-12)
    assert set(result.as_dict()["rand_parts"]) == {"precision", "recall"}


def test_stack_values_pool_counts_not_errors():
    """Pooling sums TP/FP/FN (and Rand pair counts) over slices before the F-score: a big
    slice weighs more than a small one, unlike a mean of per-slice errors."""
    small, big = two_cells(4), two_cells(16)
    p_small, p_big = prediction(small, 0.9, 0.9), prediction(big, 0.9, 0.1)  # small: membrane missed
    th = 0.5
    stats = [isbi.slice_statistics(p, l, th) for p, l in ((p_small, small), (p_big, big))]
    pooled = isbi.stack_values(stats)["pixel_error"]
    tp = 12 + 240
    assert pooled == pytest.approx(1 - 2 * tp / (2 * tp + 4))
    mean_of_slices = np.mean([isbi.stack_values([s])["pixel_error"] for s in stats])
    assert pooled < mean_of_slices


def test_perfect_prediction_scores_perfectly():
    label = two_cells()
    result = isbi.score_stack([prediction(label, 1.0, 0.0)], [label])
    assert result.scores == {"pixel_error": 0.0, "rand_error": 0.0, "warping_error": 0.0, "v_rand": 1.0, "v_info": 1.0}


def test_warping_keeps_a_merging_gap_and_forgives_a_shift():
    label = two_cells(8)
    gap = prediction(label, 1.0, 0.0)
    gap[3, 4] = 1.0  # one membrane pixel missing: the cells merge; warping cannot undo a topology change
    assert isbi.warp_as_challenge(gap, label, 0.5) == 1
    shifted = np.roll(prediction(label, 1.0, 0.0), 1, axis=1)  # the membrane a pixel to the right
    shifted[:, 0] = 1.0
    assert isbi.warp_as_challenge(shifted, label, 0.5) == 0  # same topology: every mismatch is warped away


def test_thin_borders_leaves_one_pixel_lines_where_fiji_puts_them():
    cells = np.ones((5, 9), bool)
    cells[:, 3:6] = False  # a three-pixel-wide boundary, columns 3..5
    thinned = isbi.thin_borders(cells)
    assert (thinned[:, 4] == 0).all() and (thinned[:, [3, 5]] > 0).all()  # the middle column stays
    assert len(np.unique(thinned[:, :4])) == 1 and len(np.unique(thinned[:, 5:])) == 1
    cells[:, 5] = True  # two pixels wide, columns 3..4: the left basin's queue goes first (x outer),
    thinned = isbi.thin_borders(cells)  # so column 3 joins it and column 4 is the line
    assert (thinned[:, 4] == 0).all() and (thinned[:, 3] == thinned[0, 0]).all()


def test_thin_borders_without_cells_is_one_segment():
    assert (isbi.thin_borders(np.zeros((4, 4), bool)) == 1).all()  # Fiji: a new basin at level 255


def test_thinning_forgives_a_thick_boundary():
    """V_rand is scored after thinning: a boundary three pixels thick costs Rand error but not V_rand."""
    label = two_cells(9)
    thick = prediction(label, 1.0, 0.0)
    thick[:, 3:6] = 0.0
    result = isbi.score_stack([thick], [label], warping=False)
    assert result.scores["rand_error"] > 0 and result.scores["v_rand"] == pytest.approx(1.0)


def test_information_score_of_a_merge():
    """Truth: two equal cells. Proposal: one segment. H(T) = log 2, H(S) = 0 -> Fiji's P = 1, R = 0, F = 0."""
    truth, _ = metrics.cell_segments(two_cells() == 1)
    merged = np.ones_like(truth)
    assert isbi.information_f_score(truth, merged) == 0.0
    assert isbi.information_f_score(truth, truth) == 1.0


def _simple_in_3d(code: int) -> bool:
    """Fiji's 3-D simple-point question, from the topological numbers (Bertrand and Malandain 1994):
    the patch as the middle plane of a 3x3x3 block with membrane above and below; cells
    6-connected, membrane 26-connected; simple when T6 = T26 = 1."""
    block = np.zeros((3, 3, 3), bool)
    block[1] = ((code >> np.arange(9)) & 1).reshape(3, 3).astype(bool)
    block[1, 1, 1] = False
    offsets = np.abs(np.indices((3, 3, 3)) - 1).sum(axis=0)
    cells = block & (offsets <= 2)  # the 18-neighbourhood
    components, _ = ndimage.label(cells, structure=ndimage.generate_binary_structure(3, 1))
    t6 = len({components[tuple(p)] for p in np.argwhere((offsets == 1) & cells)})
    membrane = ~block
    membrane[1, 1, 1] = False
    _, t26 = ndimage.label(membrane, structure=np.ones((3, 3, 3), bool))
    return t6 == 1 and t26 == 1


def test_fijis_3d_simple_points_are_the_2d_ones():
    """Why isbi reuses cunet.metrics' look-up table: on all 512 patches the 3-D test agrees."""
    in_3d = np.array([_simple_in_3d(code) for code in range(512)])
    assert (in_3d == metrics.SIMPLE_POINT_LUT).all()
    hole = 0b111101111  # every neighbour a cell: filling or opening the centre changes topology in both
    assert not in_3d[hole] and not in_3d[hole | 16]


def test_score_stack_refuses_mismatched_input():
    with pytest.raises(ValueError, match="as many probability maps as labels"):
        isbi.score_stack([np.zeros((4, 4), np.float32)], [])
    with pytest.raises(ValueError, match="same shape"):
        isbi.score_stack([np.zeros((4, 4), np.float32)], [np.zeros((4, 5), np.int64)])
