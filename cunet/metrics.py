"""Segmentation metrics, each written from its definition.

Conventions (the whole project uses them):

* ``prob`` [H, W] is the predicted probability of the *cell* class (class 1). In ISBI
  2012's in-out masks white = cell interior = 1 and black = membrane (boundary) = 0.
* ``label`` [H, W] holds class indices: 1 = cell, 0 = membrane.
* ``pred`` [H, W] is a hard class map (``probs.argmax(axis=0)``), same indices.
* A threshold t turns ``prob`` into cells: a pixel is cell when ``prob >= t``.
* Cells are **4-connected**: two cell pixels belong to the same cell (segment, instance)
  when a path of edge-sharing cell pixels joins them. Membrane is then 8-connected (a
  one-pixel-thin diagonal membrane line separates two cells). This is the pairing the
  ISBI 2012 scripts use, and the one under which "topology" in the warping error is sound.

The metrics (formulas in each function's docstring):

================  ==========================================================================
pixel_error       1 - max_t F1(cell pixels)                      (ISBI 2012 "pixel error")
rand_error        1 - max_t Rand F-score, foreground-restricted   (ISBI 2012 "Rand error")
warping_error     min_t (pixels left wrong after a topology-preserving warp) / pixels
                                                                  (Jain et al. 2010)
iou, dice         per class, on the hard prediction
seg               mean Jaccard of matched instances (Cell Tracking Challenge SEG)
================  ==========================================================================

The "max over thresholds" metrics are each maximised on their own (one metric's best
threshold need not be another's), as the challenge did. The challenge's Fiji scripts used
``prob > t`` for t = 0.0, 0.1, ..., 1.0; here it is ``prob >= t`` over ``DEFAULT_THRESHOLDS``
(0.05 ... 0.95), which avoids the two trivial all-cell / no-cell binarisations.

References: Arganda-Carreras et al. (2015), "Crowdsourcing the creation of image
segmentation algorithms for connectomics", Front. Neuroanat. 9:142; Jain et al. (2010),
"Boundary learning by optimization with topological constraints", CVPR; Ulman et al.
(2017), "An objective comparison of cell-tracking algorithms", Nat. Methods (SEG).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from numba import njit
from scipy import ndimage, sparse

DEFAULT_THRESHOLDS = np.linspace(0.05, 0.95, 19)

# Structuring elements for scipy.ndimage.label: which neighbours join a component.
FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------------------
# Pixel metrics
# --------------------------------------------------------------------------------------

def f1_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """F1 = 2 TP / (2 TP + FP + FN) of two boolean masks; 1 when both are empty.

    TP = |pred ∧ truth|, FP = |pred ∧ ¬truth|, FN = |¬pred ∧ truth|. F1 is the harmonic
    mean of precision TP / (TP + FP) and recall TP / (TP + FN).
    """
    tp = np.count_nonzero(pred & truth)
    denominator = 2 * tp + np.count_nonzero(pred & ~truth) + np.count_nonzero(~pred & truth)
    return 1.0 if denominator == 0 else 2 * tp / denominator


def pixel_error(prob: np.ndarray, label: np.ndarray, thresholds=DEFAULT_THRESHOLDS) -> float:
    """ISBI 2012 pixel error: 1 - max over thresholds t of F1(prob >= t, label == 1).

    The F-score is that of the *cell* (foreground, white) pixels; every pixel counts.
    0 for a perfect binarisation at some threshold; 1 when no threshold finds a single
    cell pixel right. Both masks empty (no cells anywhere) scores F1 = 1, error 0.
    """
    _check_same_shape(prob, label)
    truth = label == 1
    return 1.0 - max(f1_score(prob >= t, truth) for t in thresholds)


def iou(pred: np.ndarray, label: np.ndarray, cls: int) -> float:
    """Intersection over union (Jaccard) of class ``cls``: |P ∩ L| / |P ∪ L|.

    P = {pred == cls}, L = {label == cls}; 1 when both are empty.
    """
    p, t = pred == cls, label == cls
    union = np.count_nonzero(p | t)
    return 1.0 if union == 0 else np.count_nonzero(p & t) / union


def dice(pred: np.ndarray, label: np.ndarray, cls: int) -> float:
    """Dice coefficient of class ``cls``: 2 |P ∩ L| / (|P| + |L|), i.e. F1; 1 when both are empty."""
    return f1_score(pred == cls, label == cls)


# --------------------------------------------------------------------------------------
# Segments (connected components) and the contingency table
# --------------------------------------------------------------------------------------

def cell_segments(cells: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the 4-connected components of a boolean cell mask.

    Returns (segments, count): segments[y, x] = 1..count for cell pixels, 0 for membrane.
    """
    segments, count = ndimage.label(cells, structure=FOUR_CONNECTED)
    return segments, int(count)


def contingency_table(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero entries of the contingency table of two paired label arrays.

    n_ij = number of positions k with rows[k] == i and cols[k] == j. Returned as three
    arrays (i, j, n_ij) over the pairs that occur. Built as a sparse matrix: COO
    triplets (i, j, 1) whose duplicates the CSR conversion sums, O(pixels) memory
    instead of a dense (#row labels x #column labels) table.
    """
    rows, cols = np.ravel(rows).astype(np.int64), np.ravel(cols).astype(np.int64)
    if rows.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    ones = np.ones(rows.size, dtype=np.int64)
    table = sparse.coo_matrix((ones, (rows, cols)), shape=(rows.max() + 1, cols.max() + 1)).tocsr()
    table.sum_duplicates()
    coo = table.tocoo()
    return coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data.astype(np.int64)


# --------------------------------------------------------------------------------------
# Rand error (foreground-restricted, ISBI 2012)
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RandScores:
    """Rand split and merge scores and their F-score (all in [0, 1], 1 = perfect).

    split: 1 when no ground-truth segment is split by the proposal (a "recall").
    merge: 1 when no proposal segment merges ground-truth segments (a "precision").
    fscore: 2 split merge / (split + merge).
    """

    split: float
    merge: float
    fscore: float


def adapted_rand(truth_segments: np.ndarray, proposal_segments: np.ndarray,
                 normalization: str = "n2") -> RandScores:
    """Foreground-restricted Rand scores of two label images (ISBI 2012 / SNEMI3D).

    Which pixels count: only those with ``truth_segments > 0`` (ground-truth foreground;
    ground-truth label 0, the membrane, is ignored). Among them, a pixel with
    ``proposal_segments == 0`` (the proposal calls it boundary) is a *singleton*: a
    proposal segment of its own, one pixel big.

    With n counted pixels, n_ij = counted pixels in truth segment i and proposal
    segment j, p_ij = n_ij / n, t_i = sum_j p_ij (truth marginals), s_j = sum_i p_ij
    (proposal marginals, over counted pixels only)::

        V_split = sum_ij p_ij^2 / sum_i t_i^2      V_merge = sum_ij p_ij^2 / sum_j s_j^2
        F       = 2 V_split V_merge / (V_split + V_merge)
                = 2 sum_ij n_ij^2 / (sum_i a_i^2 + sum_j b_j^2)   (a, b: marginals in counts)

    A singleton adds 1 to sum n_ij^2 and 1 to sum b_j^2 (its own segment, one pixel);
    with n_i0 singletons in truth segment i they add sum_i n_i0 to both sums (the 1/n
    factors cancel in the ratios). This is the "N^2" normalisation of the challenge
    paper and of Fiji's ``RandError`` (``sumB += aux/n; sumAB += aux/n``).

    ``normalization="pairs"`` replaces every x^2 by x (x - 1), i.e. counts ordered pairs
    of *distinct* pixels (singletons then add nothing): the "N choose 2" variant, which
    is what scikit-image computes (see ``rand_error``).

    Reading: sum n_ij^2 counts pixel pairs (p, q) in the same truth segment *and* the
    same proposal segment; sum a_i^2 those in the same truth segment; sum b_j^2 those in
    the same proposal segment. V_split is the fraction of truth-joined pairs the
    proposal keeps together, V_merge the fraction of proposal-joined pairs truth agrees
    with. When nothing is counted (no foreground) every score is 1 (nothing to get wrong).
    """
    return _rand_from_sums(*rand_sums(truth_segments, proposal_segments, normalization))


def rand_sums(truth_segments: np.ndarray, proposal_segments: np.ndarray,
              normalization: str = "n2") -> tuple[int, int, int]:
    """The three pair counts behind ``adapted_rand``: (sum n_ij^2, sum a_i^2, sum b_j^2), singletons included.

    Integers, so that scores pooled over a stack (``cunet.isbi``) add them up exactly
    before dividing. ``normalization="pairs"`` gives the x (x - 1) counts instead.
    """
    if normalization not in ("n2", "pairs"):
        raise ValueError(f"normalization must be 'n2' or 'pairs', got {normalization!r}")
    _check_same_shape(truth_segments, proposal_segments)
    counted = truth_segments > 0
    truth, proposal = truth_segments[counted], proposal_segments[counted]
    singleton = proposal == 0
    _, _, n_ij = contingency_table(truth[~singleton], proposal[~singleton])
    a = np.bincount(truth.astype(np.int64))  # truth marginals (singletons included)
    b = np.bincount(proposal[~singleton].astype(np.int64))  # proposal marginals, non-singletons
    n_singletons = int(np.count_nonzero(singleton))
    if normalization == "n2":
        return _sum_squares(n_ij) + n_singletons, _sum_squares(a), _sum_squares(b) + n_singletons
    return _sum_pairs(n_ij), _sum_pairs(a), _sum_pairs(b)


def rand_scores(prob: np.ndarray, label: np.ndarray, threshold: float = 0.5,
                normalization: str = "n2") -> RandScores:
    """Rand scores of the proposal ``prob >= threshold`` against ``label``.

    Truth segments: 4-connected components of ``label == 1``. Proposal segments:
    4-connected components of ``prob >= threshold``; proposal boundary pixels
    (``prob < threshold``) are singletons. Only ground-truth cell pixels count. See
    ``adapted_rand`` for the formulas.
    """
    _check_same_shape(prob, label)
    truth, _ = cell_segments(label == 1)
    proposal, _ = cell_segments(prob >= threshold)
    return adapted_rand(truth, proposal, normalization)


def rand_error(prob: np.ndarray, label: np.ndarray, thresholds=DEFAULT_THRESHOLDS,
               normalization: str = "n2") -> float:
    """ISBI 2012 Rand error: 1 - max over thresholds t of the foreground-restricted Rand F-score.

    For each t the proposal is the 4-connected components of ``prob >= t``; pixels with
    ``prob < t`` are each their own one-pixel segment (singleton). Only pixels that are
    cell in the ground truth (``label == 1``) are counted; the ground-truth segments are
    the 4-connected components of ``label == 1``. F = 2 sum n_ij^2 / (sum a_i^2 + sum b_j^2)
    (``adapted_rand``). 0 when the best binarisation reproduces every truth cell exactly
    (on the counted pixels); an all-membrane ground truth counts nothing and scores 0.

    Why singletons: without them, all proposal boundary pixels would form one giant
    segment and a thick predicted membrane would "merge" everything it covers.

    Not the same as ``skimage.metrics.adapted_rand_error(truth, proposal)`` with default
    arguments: that function treats proposal label 0 as one ordinary segment (no
    singletons) and counts pairs of distinct pixels (x (x - 1) instead of x^2). It
    agrees to rounding with ``normalization="pairs"`` once the proposal's boundary
    pixels are given unique labels (truth background stays 0, which it ignores by its
    default ``ignore_labels=(0,)``). Note also that skimage's "precision" is this
    module's split score and its "recall" the merge score.

    Left out: the challenge's final ranking first thinned the borders of both
    segmentations to one pixel ("Rand scoring after border thinning"); this scores the
    segmentations as given, so a boundary that is right but thicker than the truth's
    still costs singletons.
    """
    _check_same_shape(prob, label)
    truth, _ = cell_segments(label == 1)
    best = max(adapted_rand(truth, cell_segments(prob >= t)[0], normalization).fscore for t in thresholds)
    return 1.0 - best


def _sum_squares(counts: np.ndarray) -> int:
    counts = counts.astype(np.int64)
    return int(counts @ counts)


def _sum_pairs(counts: np.ndarray) -> int:
    counts = counts.astype(np.int64)
    return int(counts @ counts - counts.sum())


def _rand_from_sums(joint: int, truth_sum: int, proposal_sum: int) -> RandScores:
    """Split = joint / truth_sum, merge = joint / proposal_sum, F = 2 joint / (truth_sum + proposal_sum).

    An empty denominator means no pixel pair is joined on that side, so none can be
    wrongly separated: the score is 1 (joint <= both sums, so joint is 0 there too).
    """
    split = 1.0 if truth_sum == 0 else joint / truth_sum
    merge = 1.0 if proposal_sum == 0 else joint / proposal_sum
    total = truth_sum + proposal_sum
    return RandScores(split, merge, 1.0 if total == 0 else 2 * joint / total)


# --------------------------------------------------------------------------------------
# Warping error (Jain et al. 2010)
# --------------------------------------------------------------------------------------
#
# Digital topology in one paragraph. Take cells as 4-connected and membrane as
# 8-connected. A pixel p is *simple* when flipping it (cell <-> membrane) changes no
# topology: no cell or membrane region appears, disappears, splits or merges, no hole
# opens or closes. In 2D this is decided by the 3x3 neighbourhood alone (Rosenfeld;
# Bertrand & Malandain 1994): with N8*(p) the 8 neighbours of p,
#
#     T4 = number of 4-connected components of cell ∩ N8*(p) that 4-touch p
#     T8 = number of 8-connected components of membrane ∩ N8*(p)
#     p is simple  <=>  T4 == 1 and T8 == 1
#
# (T4 = 0: p alone would be a cell; T4 >= 2: p joins/separates cells; T8 >= 2: p
# joins/separates membrane regions, i.e. opens or closes a hole.) The test ignores the
# value of p itself, so it reads the same before and after the flip. We tabulate it once
# for the 2^9 = 512 neighbourhood codes (bit k = pixel k of the 3x3 in raster order,
# bit 4 = p); the warping loop then costs one table look-up per test.

_FOUR_NEIGHBOURS = (1, 3, 5, 7)  # N, W, E, S in raster order of the 3x3


def _configuration(code: int) -> np.ndarray:
    """The 3x3 boolean patch (True = cell) encoded by ``code`` (bit k = raster position k)."""
    return ((code >> np.arange(9)) & 1).reshape(3, 3).astype(bool)


def _is_simple_configuration(code: int) -> bool:
    """T4(cells) == 1 and T8(membrane) == 1 for the centre of the patch ``code``."""
    patch = _configuration(code)
    patch[1, 1] = False  # the centre itself is not part of its neighbourhood
    cells, _ = ndimage.label(patch, structure=FOUR_CONNECTED)
    touching = {cells.flat[k] for k in _FOUR_NEIGHBOURS if cells.flat[k] > 0}
    membrane = ~patch
    membrane[1, 1] = False
    _, membrane_regions = ndimage.label(membrane, structure=EIGHT_CONNECTED)
    return len(touching) == 1 and membrane_regions == 1


SIMPLE_POINT_LUT = np.array([_is_simple_configuration(code) for code in range(512)], dtype=np.bool_)
"""SIMPLE_POINT_LUT[code] is True when the centre of the 3x3 patch ``code`` is simple
(4-connected cells, 8-connected membrane); bit k of code is raster position k, 1 = cell."""


@njit(cache=True)
def _neighbourhood_code(image, p, width):
    """The 9-bit code of the 3x3 patch centred on flat index p of a padded image."""
    code = 0
    bit = 0
    for dy in (-width, 0, width):
        for dx in (-1, 0, 1):
            code |= np.int64(image[p + dy + dx]) << bit
            bit += 1
    return code


@njit(cache=True)
def _warp_loop(warped, target, confidence, lut, width):
    """Flip simple pixels of ``warped`` towards ``target`` until no disagreeing pixel is simple.

    warped, target: flat uint8 images padded with a one-pixel membrane (0) frame; the
    frame agrees in both and is never queued, so indices never leave the arrays.
    confidence: flat float64, how sure the prediction is at each pixel.

    Jain et al.'s rule: among the disagreeing pixels that are simple *now*, flip the
    one of largest confidence. A max-heap of candidates (key -confidence, then the
    index, so ties go in raster order) gives it: pop the top; if it is simple, flip it,
    else drop it. A dropped pixel cannot become simple until one of its 8 neighbours
    flips, and every flip pushes its disagreeing neighbours back, so the first simple
    pixel popped is the most confident simple one. Each pixel is in the heap at most
    once; each flip turns a disagreement into an agreement, so the loop ends, and it
    ends with every disagreeing pixel tested after its last neighbourhood change and
    found not simple: converged. Returns the number of flips.
    """
    queued = np.zeros(warped.size, np.bool_)
    heap = [(-1.0, np.int64(0))]  # typed seed for Numba; popped straight away
    heapq.heappop(heap)
    for p in np.flatnonzero(warped != target):
        heap.append((-confidence[p], p))
        queued[p] = True
    heapq.heapify(heap)
    flips = 0
    while len(heap) > 0:
        _, p = heapq.heappop(heap)
        queued[p] = False
        if not lut[_neighbourhood_code(warped, p, width)]:
            continue
        warped[p] = target[p]
        flips += 1
        for dy in (-width, 0, width):
            for dx in (-1, 0, 1):
                q = p + dy + dx
                if warped[q] != target[q] and not queued[q]:
                    heapq.heappush(heap, (-confidence[q], q))
                    queued[q] = True
    return flips


@dataclass(frozen=True)
class WarpingResult:
    """The outcome of warping the ground truth towards one binarised prediction.

    error: mismatches / pixels, the warping error at this threshold.
    mismatches: pixels where the warped truth still disagrees with the prediction;
        each belongs to a topological error.
    splits: 8-connected clusters of mismatches where the prediction says membrane and
        the warped truth says cell (extra boundary: a split cell; also a hole punched
        in a cell or a deleted cell, which this count does not tell apart).
    mergers: 8-connected clusters where the prediction says cell and the warped truth
        says membrane (missing boundary: merged cells; also a spurious cell or a
        filled hole).
    threshold: the binarisation threshold (cell = prob >= threshold).
    warped: the warped ground truth, boolean, True = cell.
    """

    error: float
    mismatches: int
    splits: int
    mergers: int
    threshold: float
    warped: np.ndarray


def warp(prob: np.ndarray, label: np.ndarray, threshold: float = 0.5) -> WarpingResult:
    """Warp the ground truth towards ``prob >= threshold`` by simple-point flips (Jain et al. 2010).

    L* = (label == 1) (the ground truth, True = cell), L = (prob >= threshold). Jain et
    al. define the warping error as min over warpings L' of L* of |L' xor L| / pixels,
    where a warping is any image reachable from L* by flipping simple pixels one at a
    time: L' has L*'s topology, and only errors that change topology (splits, mergers,
    spurious or missing cells and holes) survive, while a boundary drawn a pixel off
    costs nothing. Connectivity: cells 4-connected, membrane 8-connected (module header).
    Outside the image counts as membrane: a cell may not leak around the image edge.

    The minimum is approximated greedily, as Jain et al. do: start from L' = L*; while
    some pixel where L' and L disagree is simple, flip the one where the prediction is
    most confident, confidence = |prob - threshold|, ties in raster order. (Jain et al.
    rank by |L'_i - prob_i|, the same order at threshold 0.5; the challenge's Fiji code
    ranks by |prob - threshold| at any threshold, as here.) Stop when no disagreeing pixel is simple: the
    flipping is iterated to convergence, as a flip can make its neighbours simple. The
    errors left behind then sit where the prediction is least sure. Only disagreeing
    pixels are ever flipped, so the result is an upper bound on the true minimum.
    """
    _check_same_shape(prob, label)
    truth, target = label == 1, prob >= threshold
    warped = _warp_towards(truth, target, np.abs(prob - threshold))
    extra_boundary = warped & ~target
    missing_boundary = ~warped & target
    mismatches = int(np.count_nonzero(extra_boundary) + np.count_nonzero(missing_boundary))
    return WarpingResult(
        error=mismatches / truth.size,
        mismatches=mismatches,
        splits=_count_clusters(extra_boundary),
        mergers=_count_clusters(missing_boundary),
        threshold=float(threshold),
        warped=warped,
    )


def warping_error(prob: np.ndarray, label: np.ndarray, thresholds=DEFAULT_THRESHOLDS) -> float:
    """Minimum over thresholds t of the warping error of ``prob >= t`` (see ``warp``).

    Use ``best_warp`` for the splits and mergers at that threshold, or ``warp(prob,
    label, 0.5).error`` for the fixed-threshold variant.
    """
    return best_warp(prob, label, thresholds).error


def best_warp(prob: np.ndarray, label: np.ndarray, thresholds=DEFAULT_THRESHOLDS) -> WarpingResult:
    """The ``warp`` result with the smallest error over ``thresholds`` (the first on ties)."""
    return min((warp(prob, label, t) for t in thresholds), key=lambda r: r.error)


def _warp_towards(truth: np.ndarray, target: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Pad with a membrane frame and run the Numba loop; returns the warped truth (bool)."""
    warped = np.pad(truth, 1).astype(np.uint8)
    flat = warped.ravel()  # a view: the loop flips pixels of ``warped`` in place
    padded_target = np.pad(target, 1).astype(np.uint8).ravel()
    padded_confidence = np.pad(confidence.astype(np.float64), 1).ravel()
    _warp_loop(flat, padded_target, padded_confidence, SIMPLE_POINT_LUT, warped.shape[1])
    return warped[1:-1, 1:-1].astype(bool)


def _count_clusters(mask: np.ndarray) -> int:
    """Number of 8-connected components of a boolean mask."""
    return int(ndimage.label(mask, structure=EIGHT_CONNECTED)[1])


# --------------------------------------------------------------------------------------
# SEG (Cell Tracking Challenge)
# --------------------------------------------------------------------------------------

def seg(pred: np.ndarray, label: np.ndarray) -> float:
    """Cell Tracking Challenge SEG: mean Jaccard of each truth cell with its matching predicted cell.

    Truth instances R: 4-connected components of ``label == 1``. Predicted instances S:
    4-connected components of ``pred == 1``. S matches R when |R ∩ S| > |R| / 2 (strictly:
    more than half of R's pixels); at most one S can, since the S are disjoint. The
    score of R is J(R, S) = |R ∩ S| / |R ∪ S| for its match, 0 when none matches;
    SEG = mean over truth instances. |R ∪ S| uses S's full size, pixels outside the
    truth cells included, so overgrown predictions cost. SEG ignores predicted cells that
    match nothing (false positives are invisible to it). No truth cell at all: 1.0
    (nothing to miss; the same convention as ``iou`` on two empty masks).
    """
    _check_same_shape(pred, label)
    truth, n_truth = cell_segments(label == 1)
    if n_truth == 0:
        return 1.0
    predicted, _ = cell_segments(pred == 1)
    both = (truth > 0) & (predicted > 0)
    i, j, n_ij = contingency_table(truth[both], predicted[both])
    truth_size, predicted_size = np.bincount(truth.ravel()), np.bincount(predicted.ravel())
    matched = 2 * n_ij > truth_size[i]
    jaccard = n_ij[matched] / (truth_size[i[matched]] + predicted_size[j[matched]] - n_ij[matched])
    return float(jaccard.sum() / n_truth)


# --------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------

def basic_metrics(probs: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Pixel error, Rand error, cell IoU, cell Dice and SEG for probabilities [n_classes, H, W] and a label [H, W].

    The subset that training's validation reports each time it runs: all but the warping
    error, which costs about a second per 512x512 image (python -m cunet.evaluate has it).
    Rand error and SEG see the topology (merged and split cells); pixel error does not.
    """
    pred = probs.argmax(axis=0)
    return {"pixel_error": float(pixel_error(probs[1], label)), "rand_error": float(rand_error(probs[1], label)),
            "iou_cell": float(iou(pred, label, 1)), "dice_cell": float(dice(pred, label, 1)), "seg": float(seg(pred, label))}


def all_metrics(probs: np.ndarray, label: np.ndarray, thresholds: Iterable[float] = DEFAULT_THRESHOLDS) -> dict[str, float]:
    """Every metric of this module for probabilities [n_classes, H, W] and a label [H, W], as plain floats.

    pixel_error, rand_error and warping_error binarise ``probs[1]`` (the cell
    probability) at each of ``thresholds`` and keep their own best; the IoU, Dice and
    SEG use the hard prediction ``probs.argmax(axis=0)``.
    """
    if probs.ndim != 3 or probs.shape[1:] != label.shape:
        raise ValueError(f"probs must be [n_classes, H, W] matching label {label.shape}, got {probs.shape}")
    thresholds = list(thresholds)
    prob, pred = probs[1], probs.argmax(axis=0)
    return {
        "pixel_error": float(pixel_error(prob, label, thresholds)),
        "rand_error": float(rand_error(prob, label, thresholds)),
        "warping_error": float(warping_error(prob, label, thresholds)),
        "iou_cell": float(iou(pred, label, 1)),
        "dice_cell": float(dice(pred, label, 1)),
        "iou_membrane": float(iou(pred, label, 0)),
        "dice_membrane": float(dice(pred, label, 0)),
        "seg": float(seg(pred, label)),
    }


def _check_same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two 2-D images of the same shape, got {a.shape} and {b.shape}")
