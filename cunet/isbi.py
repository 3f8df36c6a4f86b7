"""The ISBI 2012 challenge's scores, computed the way the challenge computed them.

``cunet.metrics`` scores one image at a time and lets each image pick its own best
threshold: useful diagnostics, but not the challenge's numbers. The challenge scored a
whole *stack* with Fiji's ``trainableSegmentation.metrics`` (Arganda-Carreras et al.
2015), and this module follows that code, not our reading of the paper:

* **One threshold per metric for the whole stack**, from the grid the scripts loop over,
  ``for (double th = 0.0; th <= 1.0; th += 0.1)``: eleven accumulated doubles, 0.0, 0.1,
  0.2, 0.30000000000000004, ..., 0.9999999999999999 (``CHALLENGE_THRESHOLDS``). A pixel
  is cell when ``prob > th`` (strictly), compared in float64: Fiji promotes the float
  pixel to double, and a float32 comparison would flip pixels equal to float32(th).
* **Statistics pooled over the stack**, as each script pools them:

  ==============  ===========================================================  ==========
  pixel_error     1 - max_t F(TP, FP, FN summed over slices)                   PixelError
  rand_error      1 - max_t F(Rand pair counts summed over slices)             RandError
  warping_error   min_t mean over slices of (mismatches / pixels)              WarpingError
  v_rand          max_t mean over slices of the Rand F after border thinning   RandError
  v_info          max_t mean over slices of the information F after thinning   VariationOfInformation
  ==============  ===========================================================  ==========

  (the Fiji calls: ``getPixelErrorMaximalFScore``, ``getForegroundRestrictedRandIndex
  MaximalFScore``, ``getMinimumMetricValue`` of ``WarpingError``, ``getMaximalVRandAfter
  Thinning(..., true)``, ``getMaximalVInfoAfterThinning``, all over 0.0..1.0 step 0.1).
  The F-score is ``ClassificationStatistics``': precision 1 when there is no false
  positive, recall 1 when there is no false negative, F = 2PR / (P + R).
* **V_rand and V_info** are the scores the challenge's final leaderboard ranks by (higher
  is better): before scoring, the proposal's boundary is thinned to one pixel by a
  watershed of the binary image (``thin_borders``), so a boundary drawn thicker than the
  truth's no longer costs singletons.
* **The warping error** is Fiji's (``warp_as_challenge``): the same simple points as the
  greedy warp of ``cunet.metrics``, flipped in another order, in sweeps over the
  mismatches sorted by decreasing |prob - th|, repeated until a sweep flips nothing.

``tests/isbi_reference.py`` is an independent transliteration of the Java, written from
the Java alone; the tests hold the two to 1e-6 on real predictions and on hand-made cases.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from numba import njit

from cunet.metrics import SIMPLE_POINT_LUT, cell_segments, contingency_table, rand_sums


def challenge_thresholds(start: float = 0.0, stop: float = 1.0, step: float = 0.1) -> np.ndarray:
    """The thresholds Fiji's ``for (double th = start; th <= stop; th += step)`` visits, bit for bit."""
    values, th = [], start
    while th <= stop:
        values.append(th)
        th += step
    return np.array(values, dtype=np.float64)


CHALLENGE_THRESHOLDS = challenge_thresholds()
METRICS = ("pixel_error", "rand_error", "warping_error", "v_rand", "v_info")
# Which way is better, and how the best threshold is chosen.
LOWER_IS_BETTER = {"pixel_error": True, "rand_error": True, "warping_error": True, "v_rand": False, "v_info": False}


def binarise(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Cell pixels as the challenge saw them: ``prob > threshold``, compared in float64."""
    return np.asarray(prob, dtype=np.float64) > threshold


def f_score(tp: float, fp: float, fn: float) -> float:
    """Fiji's ``ClassificationStatistics`` F-score: P = 1 without false positives, R = 1 without false negatives.

    NaN counts give 0, as in Java (``precision + recall > 0`` is false for NaN).
    """
    precision = 1.0 if fp == 0 else tp / (tp + fp)
    recall = 1.0 if fn == 0 else tp / (tp + fn)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


# --------------------------------------------------------------------------------------
# Border thinning: the watershed of a binary image (Fiji's WatershedTransform2D)
# --------------------------------------------------------------------------------------
#
# The challenge thins the proposal's boundaries with Vincent and Soille's watershed on the
# binary image "boundary = 255, cell = 0", 4-connected. At level 0 every 4-connected cell
# region becomes a basin. At level 255 the boundary pixels are flooded breadth-first from
# the basins; a pixel reached by two basins becomes watershed line (label 0). Where the
# line falls depends on the order pixels enter the queue, so it is reproduced here exactly:
# Fiji scans its image [x][y] with x outer and y inner (column by column: we work on the
# transposed array) and visits neighbours in the order (x-1, y), (x, y-1), (x+1, y),
# (x, y+1). Boundary pixels no basin reaches (an image with no cell at all) become basins
# of their own at the end, as in Fiji.

_INIT, _MASK, _WATERSHED, _IN_QUEUE = -1, -2, 0, -3
_NEIGHBOURS_4 = np.array([[-1, 0], [0, -1], [1, 0], [0, 1]], dtype=np.int64)  # Fiji's order, in (x, y)


@njit(cache=True)
def _flood_level(labels, level_pixels, neighbours, next_label):
    """One level of Vincent-Soille flooding on ``labels`` [x, y] (int32), in Fiji's order.

    ``level_pixels``: (n, 2) coordinates of this level's pixels in scan order. Returns the
    next unused basin label. The global ``flag`` is Fiji's: it lets a pixel marked as
    watershed (because it touched one) take a basin's label later in the same level.
    """
    width, height = labels.shape
    queue_x = np.empty(width * height, np.int64)
    queue_y = np.empty(width * height, np.int64)
    head, tail = 0, 0
    for k in range(level_pixels.shape[0]):  # mask this level; queue pixels touching a basin or a line
        i, j = level_pixels[k, 0], level_pixels[k, 1]
        labels[i, j] = _MASK
        for n in range(4):
            u, v = i + neighbours[n, 0], j + neighbours[n, 1]
            if 0 <= u < width and 0 <= v < height and labels[u, v] >= _WATERSHED:
                queue_x[tail], queue_y[tail] = i, j
                tail += 1
                labels[i, j] = _IN_QUEUE
                break
    flag = False
    while head < tail:  # flood breadth-first
        i, j = queue_x[head], queue_y[head]
        head += 1
        for n in range(4):
            u, v = i + neighbours[n, 0], j + neighbours[n, 1]
            if not (0 <= u < width and 0 <= v < height):
                continue
            if labels[u, v] > 0:
                if labels[i, j] == _IN_QUEUE or (labels[i, j] == _WATERSHED and flag):
                    labels[i, j] = labels[u, v]
                elif labels[i, j] > 0 and labels[i, j] != labels[u, v]:
                    labels[i, j] = _WATERSHED
                    flag = False
            elif labels[u, v] == _WATERSHED:
                if labels[i, j] == _IN_QUEUE:
                    labels[i, j] = _WATERSHED
                    flag = True
            elif labels[u, v] == _MASK:
                labels[u, v] = _IN_QUEUE
                queue_x[tail], queue_y[tail] = u, v
                tail += 1
    for k in range(level_pixels.shape[0]):  # what no basin reached starts new basins
        i, j = level_pixels[k, 0], level_pixels[k, 1]
        if labels[i, j] != _MASK:
            continue
        next_label += 1
        labels[i, j] = next_label
        queue_x[0], queue_y[0] = i, j
        head, tail = 0, 1
        while head < tail:
            p, q = queue_x[head], queue_y[head]
            head += 1
            for n in range(4):
                u, v = p + neighbours[n, 0], q + neighbours[n, 1]
                if 0 <= u < width and 0 <= v < height and labels[u, v] == _MASK:
                    labels[u, v] = next_label
                    queue_x[tail], queue_y[tail] = u, v
                    tail += 1
    return next_label


def thin_borders(cells: np.ndarray) -> np.ndarray:
    """Segments of a binary cell mask [H, W] after Fiji's border thinning; 0 = the one-pixel lines.

    Every cell region grows over the boundary until it meets another; the meeting pixels
    (label 0) are the thinned boundary. Labels are 1..n in no particular order.
    """
    labels_xy = np.full(cells.T.shape, _INIT, dtype=np.int32)  # Fiji's [x][y]
    cells_xy = np.ascontiguousarray(cells.T)
    next_label = 0
    for level in (cells_xy, ~cells_xy):  # level 0 = cell, level 255 = boundary; scan order x, then y
        pixels = np.argwhere(level).astype(np.int64)
        if len(pixels):
            next_label = _flood_level(labels_xy, pixels, _NEIGHBOURS_4, next_label)
    labels_xy[labels_xy == _INIT] = 0
    return np.ascontiguousarray(labels_xy.T)


# --------------------------------------------------------------------------------------
# Fiji's warping error
# --------------------------------------------------------------------------------------

# Fiji's simple-point test (``simple2DBertrand`` -> ``simple3d(.., 6)``) puts the 3x3 patch in
# the middle plane of a 3x3x3 block whose other planes are membrane and asks whether the
# centre is simple in 3-D (6-connected cells, 26-connected membrane). The two membrane
# planes touch each other only through membrane in the middle plane, so a flip that would
# open or close a hole changes the 3-D topology too: on all 512 patches the test is the
# 2-D one of ``cunet.metrics`` (tests/test_isbi.py checks both, the 3-D one from its
# topological numbers and from Fiji's own formulas). So the warping below differs from
# ``cunet.metrics.warp`` only in its order of flips and its threshold rule.

@njit(cache=True)
def _warp_sweeps(source, target, priority, lut):
    """Fiji's ``simplePointWarp2d`` loop on padded [x, y] arrays; returns the mismatches left.

    Each sweep lists the mismatches in scan order (x outer, y inner), sorts them by
    decreasing priority |prob - th| (stably, as Java's sort is), and flips each one that is
    simple at that moment. Sweeps repeat until one flips nothing.
    """
    width, height = source.shape
    before = -1
    while True:
        xs, ys = np.nonzero(source != target)
        count = xs.shape[0]
        if count == 0 or count == before:
            return count
        before = count
        keys = np.empty(count, np.float32)
        for k in range(count):
            keys[k] = -priority[xs[k], ys[k]]
        for k in np.argsort(keys, kind="mergesort"):
            x, y = xs[k], ys[k]
            code = 0
            bit = 0
            for dy in range(-1, 2):  # the patch in raster order: rows y, columns x
                for dx in range(-1, 2):
                    code |= np.int64(source[x + dx, y + dy]) << bit
                    bit += 1
            if lut[code]:
                source[x, y] = 1 - source[x, y]


def warp_as_challenge(prob: np.ndarray, label: np.ndarray, threshold: float) -> int:
    """Mismatches left after Fiji warps the truth towards ``prob > threshold`` (its warping error x pixels)."""
    pad = lambda a: np.pad(np.ascontiguousarray(a.T), 1)  # noqa: E731 - Fiji's [x][y], one-pixel membrane frame
    source = pad(label > 0).astype(np.uint8)
    target = pad(binarise(prob, threshold)).astype(np.uint8)
    priority = pad(np.abs(np.asarray(prob, dtype=np.float64) - threshold).astype(np.float32))
    return int(_warp_sweeps(source, target, priority, SIMPLE_POINT_LUT))


# --------------------------------------------------------------------------------------
# Information-theoretic score (V_info)
# --------------------------------------------------------------------------------------

def information_f_score(truth_segments: np.ndarray, proposal_segments: np.ndarray) -> float:
    """Fiji's foreground-restricted information F-score (``foregroundRestrictedFscore``).

    Over the n truth-foreground pixels, p_ij = n_ij / n (truth segment i >= 1, proposal
    segment j; j = 0, the proposal's boundary, counts as one-pixel segments). With
    a_i, b_j the marginals (b over j >= 1) and s = sum_i p_i0 the singleton mass:
    H(T) = -sum a log a, H(S) = -(sum b log b - s log n), I = H(T) + H(S) - H(T, S) with
    H(T, S) = -(sum_{j>=1} p log p - s log n). Precision = I / H(T), recall = I / H(S);
    F is their harmonic mean (NaN when both are 0, as in Java). H(T) = 0 gives P = 0,
    R = 1; H(S) = 0 gives P = 1, R = 0 (Fiji's conventions).
    """
    counted = truth_segments > 0
    n = int(np.count_nonzero(counted))
    if n == 0:
        return 0.0  # Fiji: no truth segment makes H(T) = 0, so P = 0, R = 1, F = 0
    truth, proposal = truth_segments[counted], proposal_segments[counted]
    i, j, n_ij = contingency_table(truth, proposal)
    p = n_ij / n
    singleton_mass = p[j == 0].sum()
    a = np.bincount(i, weights=p)
    b = np.bincount(j[j > 0], weights=p[j > 0])
    sum_a = _x_log_x(a)
    sum_b = _x_log_x(b) - singleton_mass * np.log(n)
    sum_ab = _x_log_x(p[j > 0]) - singleton_mass * np.log(n)
    h_truth, h_proposal = -sum_a, -sum_b
    precision = (h_truth - (sum_b - sum_ab)) / h_truth if h_truth != 0 else 0.0
    recall = (h_proposal - (sum_a - sum_ab)) / h_proposal if h_proposal != 0 else 0.0
    if h_truth == 0:
        precision, recall = 0.0, 1.0
    if h_proposal == 0:
        precision, recall = 1.0, 0.0
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 is NaN, as in Java
        return float(np.float64(2 * precision * recall) / np.float64(precision + recall))


def _x_log_x(values: np.ndarray) -> float:
    values = values[values != 0]
    return float(np.sum(values * np.log(values)))


# --------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------

@dataclass
class StackScores:
    """The challenge's scores of a stack, the threshold each chose, and every value on the grid.

    ``curves[name][k]`` is the stack's value of ``name`` at ``thresholds[k]``
    (an error for pixel/rand/warping, a score for v_rand/v_info), so a reader can see how
    flat the optimum is.
    """

    scores: dict[str, float]
    best_threshold: dict[str, float]
    thresholds: list[float]
    curves: dict[str, list[float]] = field(default_factory=dict)
    rand_parts: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-ready: scores, best thresholds, the grid, the curves and the Rand error's parts."""
        return dict(scores=self.scores, best_threshold=self.best_threshold, thresholds=self.thresholds,
                    curves=self.curves, rand_parts=self.rand_parts)


def rand_parts(joint: float, truth_sum: float, proposal_sum: float) -> dict[str, float]:
    """The two halves of the pooled Rand F-score (a diagnostic; the challenge reports only F).

    precision = sum n_ij^2 / sum b_j^2 falls when a proposed segment spans several true
    cells (merges: a gap in a membrane); recall = sum n_ij^2 / sum a_i^2 falls when a true
    cell is cut into several segments or loses pixels to the proposal's membrane (each such
    pixel is a singleton), which a membrane drawn thicker than the truth's does all round.
    """
    return dict(precision=joint / proposal_sum if proposal_sum else 1.0,
                recall=joint / truth_sum if truth_sum else 1.0)


def slice_statistics(prob: np.ndarray, label: np.ndarray, threshold: float, warping: bool = True,
                     truth_segments: np.ndarray | None = None) -> dict:
    """One slice at one threshold: the counts the stack scores pool, and its thinned scores.

    ``truth_segments`` (the 4-connected cells of ``label``) may be passed in, so a caller
    scoring many thresholds labels the truth once.
    """
    if prob.shape != label.shape or prob.ndim != 2:
        raise ValueError(f"expected two 2-D images of the same shape, got {prob.shape} and {label.shape}")
    truth, cells = label > 0, binarise(prob, threshold)
    if truth_segments is None:
        truth_segments, _ = cell_segments(truth)
    proposal_segments, _ = cell_segments(cells)
    thinned = thin_borders(cells)
    if truth.any():
        joint, truth_sum, proposal_sum = rand_sums(truth_segments, proposal_segments)
        thin_joint, thin_truth, thin_proposal = rand_sums(truth_segments, thinned)
    else:  # Fiji divides by n = 0 here: NaN counts, which make every pooled Rand F-score 0
        joint = truth_sum = proposal_sum = thin_joint = thin_truth = thin_proposal = float("nan")
    return dict(
        tp=int(np.count_nonzero(cells & truth)), fp=int(np.count_nonzero(cells & ~truth)),
        fn=int(np.count_nonzero(~cells & truth)),
        rand=(joint, truth_sum, proposal_sum),
        mismatches=warp_as_challenge(prob, label, threshold) if warping else None,
        pixels=prob.size,
        v_rand=f_score(thin_joint, thin_proposal - thin_joint, thin_truth - thin_joint),
        v_info=information_f_score(truth_segments, thinned),
    )


def stack_values(per_slice: list[dict], warping: bool = True) -> dict[str, float]:
    """Pool one threshold's slice statistics the way each Fiji script pools them (and the Rand
    F-score's two parts, ``rand_parts``)."""
    total = lambda key: sum(s[key] for s in per_slice)  # noqa: E731
    joint, truth_sum, proposal_sum = (sum(s["rand"][k] for s in per_slice) for k in range(3))
    values = {
        "rand_parts": rand_parts(joint, truth_sum, proposal_sum),
        "pixel_error": 1.0 - f_score(total("tp"), total("fp"), total("fn")),
        "rand_error": 1.0 - f_score(joint, proposal_sum - joint, truth_sum - joint),
        "v_rand": float(np.mean([s["v_rand"] for s in per_slice])),
        "v_info": float(np.mean([s["v_info"] for s in per_slice])),  # NaN if any slice is NaN, as in Java
    }
    if warping:
        values["warping_error"] = float(np.mean([s["mismatches"] / s["pixels"] for s in per_slice]))
    return values


def score_stack(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray], warping: bool = True,
                thresholds: np.ndarray = CHALLENGE_THRESHOLDS) -> StackScores:
    """The challenge's scores of a stack of cell probabilities [H, W] against labels (1 = cell).

    ``warping=False`` skips the warping error (the slowest part), e.g. during training.
    For each metric the best value over ``thresholds`` is kept; ties keep the first, and a
    NaN never wins (Java's ``>`` and ``<`` are false on NaN).
    """
    if len(probs) != len(labels) or len(probs) == 0:
        raise ValueError(f"need as many probability maps as labels, at least one; got {len(probs)} and {len(labels)}")
    for p, l in zip(probs, labels):
        if p.shape != l.shape or p.ndim != 2:
            raise ValueError(f"expected two 2-D images of the same shape, got {p.shape} and {l.shape}")
    truths = [cell_segments(l > 0)[0] for l in labels]  # the truth does not depend on the threshold
    curves: dict[str, list] = {}
    for th in thresholds:
        values = stack_values([slice_statistics(p, l, th, warping, t) for p, l, t in zip(probs, labels, truths)],
                              warping)
        for name, value in values.items():
            curves.setdefault(name, []).append(value)
    names = [m for m in METRICS if m in curves]
    scores, best, picked = {}, {}, {}
    for name in names:
        picked[name], scores[name] = _best(curves[name], LOWER_IS_BETTER[name])
        best[name] = float(thresholds[picked[name]])
    return StackScores(scores, best, [float(t) for t in thresholds], {n: curves[n] for n in names},
                       curves["rand_parts"][picked["rand_error"]])


def _best(values: list[float], lower_is_better: bool) -> tuple[int, float]:
    """Fiji's search: (index, value) of the best, starting from the worst possible value (error 1,
    score 0) and moving only on a strict improvement."""
    best_k, best = 0, (1.0 if lower_is_better else 0.0)
    for k, value in enumerate(values):
        if (value < best) if lower_is_better else (value > best):
            best_k, best = k, value
    return best_k, float(best)
