"""An independent reference implementation of the ISBI 2012 challenge's segmentation scores.

Transliterated from the challenge's own Java source, Fiji's Trainable_Segmentation
(package ``trainableSegmentation.metrics`` and ``trainableSegmentation.utils``, mirror
commit 41c7083382816b8d40deffbb06c9c3eace0b1e55), plus the two library classes it leans on:
``util.FindConnectedRegions`` (VIB-lib, behind ``Utils.connectedComponents``) and
``ij.process.ByteProcessor`` (ImageJ, for ``getMin()``/``getMax()``). It exists so the tests
can check the project's own implementation against a second one written only from the Java;
it is deliberately literal and slow-ish rather than clever.

What the challenge's scripts call, for a stack of slices, and what this module reproduces:

=================  =====================================================================
pixel error        1 - PixelError.getPixelErrorMaximalFScore(0.0, 1.0, 0.1)
Rand error         1 - RandError.getForegroundRestrictedRandIndexMaximalFScore(0.0, 1.0, 0.1)
warping error      WarpingError.getMinimumMetricValue(0.0, 1.0, 0.1)   (Metrics.java)
V_rand             RandError.getMaximalVRandAfterThinning(0.0, 1.0, 0.1, true)
V_info             VariationOfInformation.getMaximalVInfoAfterThinning(0.0, 1.0, 0.1)
=================  =====================================================================

Conventions. Inputs are lists of 2-D NumPy arrays indexed ``[y, x]``: ``probs`` (probability
of *cell*, converted to float32 like ``ImageProcessor.convertToFloat``) and ``labels`` (1 =
cell / white / foreground, 0 = membrane). Java images are indexed ``[x][y]`` and most loops
scan x outer, y inner; where that order matters (the watershed's pixel list and FIFO, the
warping's mismatch list and its sort ties) this module scans the same way, i.e. in NumPy
column-major order. A float32 pixel compared with a double threshold is promoted to double
in Java, so every comparison here is ``np.float64(pixel) > th``, never in float32.

Divisions that Java lets produce NaN/Infinity (0/0, x/0) must not raise here: the Numba
kernels use ``error_model="numpy"`` and the plain-Python parts go through ``_jdiv``.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from scipy import ndimage

__all__ = ["THRESHOLDS", "reference_scores", "reference_curves"]


# ---------------------------------------------------------------------------------------
# Thresholds
# ---------------------------------------------------------------------------------------

def java_threshold_loop(min_threshold: float = 0.0, max_threshold: float = 1.0,
                        step_threshold: float = 0.1) -> tuple[float, ...]:
    """``for (double th = minThreshold; th <= maxThreshold; th += stepThreshold)``.

    Java: every ``get*Stats(min, max, step)`` / ``getMinimumMetricValue`` loop in
    PixelError.java, RandError.java, VariationOfInformation.java and Metrics.java. The
    thresholds are *accumulated* doubles, so with 0.0/1.0/0.1 the list is 0.0, 0.1, 0.2,
    0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.7999999999999999, 0.8999999999999999,
    0.9999999999999999: 11 values, and 1.0 itself is never tried.
    """
    out = []
    th = float(min_threshold)
    while th <= max_threshold:
        out.append(th)
        th += step_threshold
    return tuple(out)


THRESHOLDS: tuple[float, ...] = java_threshold_loop(0.0, 1.0, 0.1)


def _jdiv(a: float, b: float) -> float:
    """Java double division: x/0 is +-Infinity and 0/0 is NaN instead of an exception."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(a) / np.float64(b))


def _as_float_slice(image) -> np.ndarray:
    """``ImageProcessor.convertToFloat()``: the slice as float32 pixels, indexed [y, x]."""
    return np.asarray(image, dtype=np.float32)


def java_max_score(values) -> float:
    """``double max = 0; for (f : values) if (f > max) max = f;``

    Java: PixelError.getPixelErrorMaximalFScore, RandError.getForegroundRestrictedRandIndex-
    MaximalFScore, RandError.getMaximalVRandAfterThinning,
    VariationOfInformation.getMaximalVInfoAfterThinning. The running maximum starts at 0 and
    a NaN never compares greater, so NaN entries are skipped and an all-NaN list gives 0.
    """
    best = 0.0
    for f in values:
        if f > best:
            best = f
    return float(best)


def java_min_metric(values) -> float:
    """``double min = 1.0; for (...) { error = getMetricValue(th); if (min > error) min = error; }``

    Java: Metrics.getMinimumMetricValue (used by WarpingError). Starts at 1.0.
    """
    best = 1.0
    for e in values:
        if best > e:
            best = e
    return float(best)


# ---------------------------------------------------------------------------------------
# ClassificationStatistics.java
# ---------------------------------------------------------------------------------------

class ClassificationStatistics:
    """Java: ClassificationStatistics(truePositives, trueNegatives, falsePositives,
    falseNegatives, metricValue) -- the constructor's precision/recall/F-score rules:
    no false positives => precision 1, no false negatives => recall 1, and the F-score
    stays 0 unless precision + recall > 0 (so a NaN precision or recall gives F = 0)."""

    def __init__(self, tp: float, tn: float, fp: float, fn: float, metric_value: float):
        self.true_positives = float(tp)
        self.true_negatives = float(tn)
        self.false_positives = float(fp)
        self.false_negatives = float(fn)
        self.metric_value = float(metric_value)

        total_negatives = tn + fp
        self.specificity = _jdiv(tn, total_negatives) if total_negatives > 0 else 0.0

        # no false positives involves maximum precision
        if fp == 0:
            self.precision = 1.0
        else:
            self.precision = _jdiv(tp, tp + fp)
        # no false negatives involves maximum recall
        if fn == 0:
            self.recall = 1.0
        else:
            self.recall = _jdiv(tp, tp + fn)

        self.f_score = 0.0
        if (self.precision + self.recall) > 0:
            self.f_score = _jdiv(2.0 * self.precision * self.recall, self.precision + self.recall)


# ---------------------------------------------------------------------------------------
# PixelError.java
# ---------------------------------------------------------------------------------------

def precision_recall_stats(label, proposal, binary_threshold: float) -> ClassificationStatistics:
    """Java: PixelError.precisionRecallStats(label, proposal, binaryThreshold) (no mask).

    ``pix1 = labelPix > 0``, ``pix2 = proposalPix > binaryThreshold`` (float promoted to
    double); counts tp/tn/fp/fn and the per-slice pixel error (mismatches / pixels).
    """
    label_pix = _as_float_slice(label).astype(np.float64)
    proposal_pix = _as_float_slice(proposal).astype(np.float64)
    pix1 = label_pix > 0
    pix2 = proposal_pix > binary_threshold
    tp = float(np.count_nonzero(pix2 & pix1))
    fp = float(np.count_nonzero(pix2 & ~pix1))
    fn = float(np.count_nonzero(~pix2 & pix1))
    tn = float(np.count_nonzero(~pix2 & ~pix1))
    pixel_error = float(np.count_nonzero(pix1 != pix2)) / (label_pix.shape[0] * label_pix.shape[1])
    return ClassificationStatistics(tp, tn, fp, fn, pixel_error)


def get_precision_recall_stats(labels, probs, binary_threshold: float) -> ClassificationStatistics:
    """Java: PixelError.getPrecisionRecallStats(double binaryThreshold).

    tp/tn/fp/fn summed (pooled) over the slices; the metric value is the mean pixel error.
    """
    pixel_error = tp = tn = fp = fn = 0.0
    for label, prob in zip(labels, probs):
        cs = precision_recall_stats(label, prob, binary_threshold)
        pixel_error += cs.metric_value
        tp += cs.true_positives
        tn += cs.true_negatives
        fp += cs.false_positives
        fn += cs.false_negatives
    return ClassificationStatistics(tp, tn, fp, fn, pixel_error / len(labels))


def get_pixel_error_maximal_fscore_curve(labels, probs, thresholds=THRESHOLDS) -> list[float]:
    """Java: PixelError.getPrecisionRecallStats(min, max, step) -> the F-score per threshold."""
    return [get_precision_recall_stats(labels, probs, th).f_score for th in thresholds]


def get_pixel_error_maximal_fscore(labels, probs, thresholds=THRESHOLDS) -> float:
    """Java: PixelError.getPixelErrorMaximalFScore(min, max, step)."""
    return java_max_score(get_pixel_error_maximal_fscore_curve(labels, probs, thresholds))


# ---------------------------------------------------------------------------------------
# Utils.connectedComponents (-> VIB-lib util.FindConnectedRegions)
# ---------------------------------------------------------------------------------------

_FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


def connected_components(binary) -> np.ndarray:
    """Java: Utils.connectedComponents(new ImagePlus(..., binaryByteProcessor), 4).allRegions.

    FindConnectedRegions.run(diagonal=false, mustHaveSameValue=false, valuesOver=0,
    minimumPointsInRegion=1): 4-connected components of the pixels with value > 0, as a
    16-bit image, 0 = background. Regions are numbered 1, 2, ... in the order in which the
    scan (y outer, x inner -- row-major) first meets them; this function renumbers SciPy's
    labels to that order so that the floating-point sums downstream run in the Java's order.
    """
    binary = np.asarray(binary) > 0
    lab, count = ndimage.label(binary, structure=_FOUR_CONNECTED)
    if count == 0:
        return np.zeros(binary.shape, dtype=np.int64)
    flat = lab.ravel()  # row-major = y outer, x inner
    ids, first = np.unique(flat, return_index=True)
    keep = ids != 0
    ids, first = ids[keep], first[keep]
    order = ids[np.argsort(first, kind="stable")]
    mapping = np.zeros(count + 1, dtype=np.int64)
    mapping[order] = np.arange(1, count + 1)
    return mapping[lab]


def _to_short_processor(labels_image) -> np.ndarray:
    """``convertToShortProcessor(false)``: no scaling; negative values clamp to 0.

    (FindConnectedRegions would overflow past 65535 regions; that never happens here and
    is not reproduced.)
    """
    out = np.asarray(labels_image, dtype=np.int64).copy()
    out[out < 0] = 0
    out[out > 65535] = 65535
    return out


# ---------------------------------------------------------------------------------------
# RandError.java
# ---------------------------------------------------------------------------------------

@numba.njit(cache=False, error_model="numpy")
def _foreground_restricted_rand_index_stats_n2(pixels1, pixels2, n_labels_a, n_labels_b):
    """Java: RandError.getForegroundRestrictedRandIndexStatsN2(ShortProcessor cluster1,
    ShortProcessor cluster2) -- loops kept in the Java's order. Returns (tp, tn, fp, fn,
    randIndex); 1 - randError is the metric value."""
    # n: number of non-background pixels in the ground truth
    n = 0.0
    for i in range(pixels1.shape[0]):
        if pixels1[i] != 0:
            n += 1
    # compute overlap matrix
    pij = np.zeros((n_labels_a + 1, n_labels_b + 1), dtype=np.float64)
    for i in range(pixels1.shape[0]):
        pij[pixels1[i], pixels2[i]] += 1
    for i in range(n_labels_a + 1):
        for j in range(n_labels_b + 1):
            pij[i, j] /= n
    # sum of squares of sums of rows (skip background objects in the first cluster)
    ai = np.zeros(pij.shape[0], dtype=np.float64)
    for i in range(1, pij.shape[0]):
        for j in range(pij.shape[1]):
            ai[i] += pij[i, j]
    # sum of squares of sums of columns (prune out the zero component in the labeling)
    bj = np.zeros(pij.shape[1], dtype=np.float64)
    for j in range(1, pij.shape[1]):
        for i in range(1, pij.shape[0]):
            bj[j] += pij[i, j]
    pi0 = np.zeros(pij.shape[0], dtype=np.float64)
    aux = 0.0
    for i in range(1, pij.shape[0]):
        pi0[i] = pij[i, 0]
        aux += pi0[i]
    sum_a2 = 0.0
    for i in range(ai.shape[0]):
        sum_a2 += ai[i] * ai[i]
    sum_b2 = 0.0
    for j in range(bj.shape[0]):
        sum_b2 += bj[j] * bj[j]
    sum_b2 += aux / n
    sum_ab2 = 0.0
    for i in range(1, pij.shape[0]):
        for j in range(1, pij.shape[1]):
            sum_ab2 += pij[i, j] * pij[i, j]
    sum_ab2 += aux / n
    n2 = n * n
    tp = n2 * sum_ab2
    fp = n2 * sum_b2 - tp
    fn = n2 * sum_a2 - tp
    tn = n2 - tp - fp - fn
    rand_error = (fp + fn) / n2
    return tp, tn, fp, fn, 1 - rand_error


def get_foreground_restricted_rand_index_stats_n2_clusters(cluster1, cluster2) -> ClassificationStatistics:
    """Java: RandError.getForegroundRestrictedRandIndexStatsN2(ShortProcessor, ShortProcessor).

    ``cluster1`` = ground-truth components (0 = background, pruned), ``cluster2`` = proposal
    components (0 = background: each such pixel counts as its own singleton segment, the
    ``aux / n`` terms). ``resetMinAndMax(); getMax()`` sizes the overlap matrix.
    """
    c1 = np.ascontiguousarray(cluster1, dtype=np.int64).ravel()  # Java pixel arrays are row-major
    c2 = np.ascontiguousarray(cluster2, dtype=np.int64).ravel()
    n_labels_a = int(c1.max()) if c1.size else 0
    n_labels_b = int(c2.max()) if c2.size else 0
    tp, tn, fp, fn, rand_index = _foreground_restricted_rand_index_stats_n2(c1, c2, n_labels_a, n_labels_b)
    return ClassificationStatistics(tp, tn, fp, fn, rand_index)


def get_foreground_restricted_rand_index_stats_n2(label, proposal, binary_threshold: float) -> ClassificationStatistics:
    """Java: RandError.getForegroundRestrictedRandIndexStatsN2(ImageProcessor label,
    ImageProcessor proposal, double binaryThreshold).

    Both images are binarised with the *same* threshold (``label > th`` and
    ``proposal > th``: the ground truth too, not ``label > 0``), then 4-connected components.
    """
    label_pix = _as_float_slice(label).astype(np.float64)
    proposal_pix = _as_float_slice(proposal).astype(np.float64)
    binary_label = np.where(label_pix > binary_threshold, 255, 0)
    binary_proposal = np.where(proposal_pix > binary_threshold, 255, 0)
    components1 = connected_components(binary_label)
    components2 = connected_components(binary_proposal)
    return get_foreground_restricted_rand_index_stats_n2_clusters(components1, components2)


def get_foreground_restricted_rand_index_stats(labels, probs, binary_threshold: float) -> ClassificationStatistics:
    """Java: RandError.getForegroundRestrictedRandIndexStats(double binaryThreshold).

    tp/tn/fp/fn pooled (summed) over the slices, F-score from the pooled counts.
    """
    rand_index = tp = tn = fp = fn = 0.0
    for label, prob in zip(labels, probs):
        cs = get_foreground_restricted_rand_index_stats_n2(label, prob, binary_threshold)
        rand_index += cs.metric_value
        tp += cs.true_positives
        tn += cs.true_negatives
        fp += cs.false_positives
        fn += cs.false_negatives
    return ClassificationStatistics(tp, tn, fp, fn, rand_index / len(labels))


def get_foreground_restricted_rand_index_fscore_curve(labels, probs, thresholds=THRESHOLDS) -> list[float]:
    """Java: RandError.getForegroundRestrictedRandIndexStats(min, max, step) -> F per threshold."""
    return [get_foreground_restricted_rand_index_stats(labels, probs, th).f_score for th in thresholds]


def get_foreground_restricted_rand_index_maximal_fscore(labels, probs, thresholds=THRESHOLDS) -> float:
    """Java: RandError.getForegroundRestrictedRandIndexMaximalFScore(min, max, step)."""
    return java_max_score(get_foreground_restricted_rand_index_fscore_curve(labels, probs, thresholds))


def _binarize_for_thinning(label, proposal, binary_threshold: float):
    """The binarisation shared by RandError.getForegroundRestrictedRandAfterThinningStatsN2 and
    VariationOfInformation.foregroundRestrictedScoreAfterThinningN2: ground truth
    ``label > th ? 255 : 0``; proposal *inverted*, ``proposal > th ? 0 : 255`` (borders white)."""
    label_pix = _as_float_slice(label).astype(np.float64)
    proposal_pix = _as_float_slice(proposal).astype(np.float64)
    binary_label = np.where(label_pix > binary_threshold, 255, 0).astype(np.uint8)
    binary_proposal = np.where(proposal_pix > binary_threshold, 0, 255).astype(np.uint8)
    return binary_label, binary_proposal


def get_foreground_restricted_rand_after_thinning_stats_n2(label, proposal, binary_threshold: float) -> ClassificationStatistics:
    """Java: RandError.getForegroundRestrictedRandAfterThinningStatsN2(label, proposal, th).

    Ground truth: 4-connected components. Proposal: WatershedTransform2D(binaryProposal,
    4).apply().convertToShortProcessor(false) -- basins labelled 1.., dams (WSHED) 0.
    """
    binary_label, binary_proposal = _binarize_for_thinning(label, proposal, binary_threshold)
    components1 = connected_components(binary_label)
    components2 = _to_short_processor(watershed_transform_2d(binary_proposal, 4))
    return get_foreground_restricted_rand_index_stats_n2_clusters(components1, components2)


def get_foreground_restricted_rand_after_thinning_stats(labels, probs, binary_threshold: float,
                                                        per_slice_average: bool = True) -> ClassificationStatistics:
    """Java: RandError.getForegroundRestrictedRandAfterThinningStats(th, perSliceAverage).

    Counts pooled as above; with ``perSliceAverage`` the returned F-score is replaced by
    the mean of the per-slice F-scores (macro average), which is what the challenge uses.
    """
    rand_index = tp = tn = fp = fn = f_score = 0.0
    for label, prob in zip(labels, probs):
        cs = get_foreground_restricted_rand_after_thinning_stats_n2(label, prob, binary_threshold)
        rand_index += cs.metric_value
        tp += cs.true_positives
        tn += cs.true_negatives
        fp += cs.false_positives
        fn += cs.false_negatives
        f_score += cs.f_score
    cs = ClassificationStatistics(tp, tn, fp, fn, rand_index / len(labels))
    if per_slice_average:
        cs.f_score = f_score / len(labels)
    return cs


def get_v_rand_curve(labels, probs, thresholds=THRESHOLDS, per_slice_average: bool = True) -> list[float]:
    """Java: RandError.getForegroundRestrictedRandAfterThinningStats(min, max, step, perSliceAverage)."""
    return [get_foreground_restricted_rand_after_thinning_stats(labels, probs, th, per_slice_average).f_score
            for th in thresholds]


def get_maximal_v_rand_after_thinning(labels, probs, thresholds=THRESHOLDS, per_slice_average: bool = True) -> float:
    """Java: RandError.getMaximalVRandAfterThinning(min, max, step, perSliceAverage)."""
    return java_max_score(get_v_rand_curve(labels, probs, thresholds, per_slice_average))


# ---------------------------------------------------------------------------------------
# utils/WatershedTransform2D.java (with Neighborhood2DC4, PixelRecord)
# ---------------------------------------------------------------------------------------

_MASK = -2     # initial value of a threshold level
_WSHED = 0     # value of pixels belonging to watersheds
_INIT = -1     # initial value of output pixels
_INQUEUE = -3  # value assigned to pixels put into the queue

# Neighborhood2DC4.getNeighbors(): (x-1, y), (x, y-1), (x+1, y), (x, y+1)
_C4_DX = np.array([-1, 0, 1, 0], dtype=np.int64)
_C4_DY = np.array([0, -1, 0, 1], dtype=np.int64)


@numba.njit(cache=False)
def _watershed_flooding(values, xs, ys, size1, size2, h_min, h_max, dxs, dys):
    """Java: WatershedTransform2D.apply(hMin, hMax), the flooding, kept statement by statement.

    ``values/xs/ys`` is the pixel list already sorted as ``Collections.sort(pixelList)``
    leaves it. ``tab_labels`` is indexed [x][y] as in the Java. Note ``flag`` is declared
    once, before the loop, and never reset per pixel (unlike Vincent & Soille's pseudocode).
    """
    n_pixels = values.shape[0]
    tab_labels = np.full((size1, size2), _INIT, dtype=np.int64)
    current_label = 0
    flag = False

    # FIFO (LinkedList addLast / poll); every push takes a pixel out of MASK, so <= n pushes
    fifo_x = np.empty(n_pixels + 1, dtype=np.int64)
    fifo_y = np.empty(n_pixels + 1, dtype=np.int64)
    head = 0
    tail = 0

    # initial height
    h = h_min
    # find corresponding pixel index
    current_index = 0
    while h < h_min:
        h = values[current_index]
        current_index += 1
    height_index1 = current_index
    height_index2 = current_index

    # for h <- h_min to h_max; geodesic SKIZ of level h-1 inside level h
    while current_index < n_pixels and h <= h_max:
        h = values[current_index]

        for pixel_index in range(height_index1, n_pixels):
            if values[pixel_index] != h:
                # this pixel is at level h+1
                height_index1 = pixel_index
                break
            i = xs[pixel_index]
            j = ys[pixel_index]
            # set label to MASK
            tab_labels[i, j] = _MASK
            # initialize queue with neighbors at level h of current basins or watersheds
            for k in range(4):
                u = i + dxs[k]
                v = j + dys[k]
                if u >= 0 and u < size1 and v >= 0 and v < size2 and tab_labels[u, v] >= _WSHED:
                    fifo_x[tail] = i
                    fifo_y[tail] = j
                    tail += 1
                    tab_labels[i, j] = _INQUEUE
                    break

        while head < tail:
            # retrieve point p
            i = fifo_x[head]
            j = fifo_y[head]
            head += 1
            for k in range(4):
                # labeling current point by inspecting neighbors
                u = i + dxs[k]
                v = j + dys[k]
                if u >= 0 and u < size1 and v >= 0 and v < size2:
                    if tab_labels[u, v] > 0:  # the pixel belongs to an already labeled basin
                        if tab_labels[i, j] == _INQUEUE or (tab_labels[i, j] == _WSHED and flag):
                            tab_labels[i, j] = tab_labels[u, v]
                        elif tab_labels[i, j] > 0 and tab_labels[i, j] != tab_labels[u, v]:
                            tab_labels[i, j] = _WSHED
                            flag = False
                    elif tab_labels[u, v] == _WSHED:
                        if tab_labels[i, j] == _INQUEUE:
                            tab_labels[i, j] = _WSHED
                            flag = True
                    elif tab_labels[u, v] == _MASK:
                        tab_labels[u, v] = _INQUEUE
                        fifo_x[tail] = u
                        fifo_y[tail] = v
                        tail += 1
        head = 0  # the queue is empty: reuse the buffer
        tail = 0

        # check for new minima at level h
        for pixel_index in range(height_index2, n_pixels):
            if values[pixel_index] != h:
                # this pixel is at level h+1
                height_index2 = pixel_index
                break
            i = xs[pixel_index]
            j = ys[pixel_index]
            if tab_labels[i, j] == _MASK:  # the pixel is inside a new minimum
                current_label += 1
                fifo_x[tail] = i
                fifo_y[tail] = j
                tail += 1
                tab_labels[i, j] = current_label
                while head < tail:
                    i2 = fifo_x[head]
                    j2 = fifo_y[head]
                    head += 1
                    for k in range(4):  # inspect neighbors of p2
                        u = i2 + dxs[k]
                        v = j2 + dys[k]
                        if u >= 0 and u < size1 and v >= 0 and v < size2 and tab_labels[u, v] == _MASK:
                            fifo_x[tail] = u
                            fifo_y[tail] = v
                            tail += 1
                            tab_labels[u, v] = current_label
                head = 0
                tail = 0
            # the Java's for-update is "pixelIndex ++, currentIndex++": it runs after each
            # completed iteration, never on the break above
            current_index += 1

    # Create result label image: INIT pixels -> 0
    out = np.empty((size1, size2), dtype=np.int64)
    for i in range(size1):
        for j in range(size2):
            if tab_labels[i, j] == _INIT:
                out[i, j] = 0
            else:
                out[i, j] = tab_labels[i, j]
    return out


def extract_pixel_values(input_image, h_min: float, h_max: float):
    """Java: WatershedTransform2D.extractPixelValues + Collections.sort(pixelList).

    Pixels are listed x outer, y inner (``for x ... for y ...``); PixelRecord.compareTo orders
    by value and, for equal values, by creation order, i.e. a stable sort of that list.
    ``input_image`` is indexed [y, x]; returns (values, xs, ys) sorted.
    """
    img = np.asarray(input_image)
    size2, size1 = img.shape  # height, width
    by_x = img.T.astype(np.float64)  # [x, y]
    xs, ys = np.meshgrid(np.arange(size1), np.arange(size2), indexing="ij")
    values = by_x.ravel()  # x outer, y inner
    xs = xs.ravel().astype(np.int64)
    ys = ys.ravel().astype(np.int64)
    keep = (values >= h_min) & (values <= h_max)
    values, xs, ys = values[keep], xs[keep], ys[keep]
    order = np.argsort(values, kind="stable")
    return values[order], xs[order], ys[order]


def watershed_transform_2d(input_image, connectivity: int = 4) -> np.ndarray:
    """Java: new WatershedTransform2D(ByteProcessor input, 4).apply().

    ``apply()`` calls ``apply(inputImage.getMin(), inputImage.getMax())``; on a fresh 8-bit
    ByteProcessor those are its *display range*, 0 and 255, whatever the pixels hold. The
    input is 8-bit (0 = cell, 255 = border here), indexed [y, x]; the result is the label
    image (basins 1.., dams 0), indexed [y, x].
    """
    if connectivity != 4:
        raise NotImplementedError("the challenge only uses 4-connectivity")
    img = np.asarray(input_image)
    size2, size1 = img.shape
    h_min, h_max = 0.0, 255.0  # ByteProcessor.getMin() / getMax(): the default display range
    values, xs, ys = extract_pixel_values(img, h_min, h_max)
    tab = _watershed_flooding(values, xs, ys, size1, size2, h_min, h_max, _C4_DX, _C4_DY)
    return tab.T.copy()  # back to [y, x]


# ---------------------------------------------------------------------------------------
# VariationOfInformation.java
# ---------------------------------------------------------------------------------------

@numba.njit(cache=False, error_model="numpy")
def _foreground_restricted_fscore(pixels1, pixels2, n_labels_a, n_labels_b):
    """Java: VariationOfInformation.foregroundRestrictedFscore(ShortProcessor cluster1,
    ShortProcessor cluster2), loops in the Java's order. May return NaN (0/0)."""
    # n: number of non-background pixels in the ground truth
    n = 0.0
    for i in range(pixels1.shape[0]):
        if pixels1[i] != 0:
            n += 1
    # compute overlap matrix
    pij = np.zeros((n_labels_a + 1, n_labels_b + 1), dtype=np.float64)
    for i in range(pixels1.shape[0]):
        pij[pixels1[i], pixels2[i]] += 1
    for i in range(n_labels_a + 1):
        for j in range(n_labels_b + 1):
            pij[i, j] /= n
    # sums of rows (skip background objects in the first cluster)
    ai = np.zeros(pij.shape[0], dtype=np.float64)
    for i in range(1, pij.shape[0]):
        for j in range(pij.shape[1]):
            ai[i] += pij[i, j]
    # sums of columns (prune out the zero component in the labeling)
    bj = np.zeros(pij.shape[1], dtype=np.float64)
    for j in range(1, pij.shape[1]):
        for i in range(1, pij.shape[0]):
            bj[j] += pij[i, j]
    # pi0: pixels marked as BG in cluster2 which are not BG in cluster1
    pi0 = np.zeros(pij.shape[0], dtype=np.float64)
    aux = 0.0
    for i in range(1, pij.shape[0]):
        pi0[i] = pij[i, 0]
        aux += pi0[i]
    sum_a = 0.0
    for i in range(ai.shape[0]):
        if ai[i] != 0:
            sum_a += ai[i] * math.log(ai[i])
    sum_b = 0.0
    for j in range(bj.shape[0]):
        if bj[j] != 0:
            sum_b += bj[j] * math.log(bj[j])
    sum_b -= aux * math.log(n)
    sum_ab = 0.0
    for i in range(1, pij.shape[0]):
        for j in range(1, pij.shape[1]):
            if pij[i, j] != 0:
                sum_ab += pij[i, j] * math.log(pij[i, j])
    sum_ab -= aux * math.log(n)
    ha = -sum_a         # H(A)
    hb = -sum_b         # H(B)
    hab = sum_b - sum_ab  # H(A|B)
    hba = sum_a - sum_ab  # H(B|A)
    # C(A|B) and C(B|A): information-theoretic analogues of Rand precision and recall
    prec = (ha - hab) / ha
    rec = (hb - hba) / hb
    if ha == 0:
        prec = 0.0
        rec = 1.0
    if hb == 0:
        prec = 1.0
        rec = 0.0
    # F-score
    return 2.0 * prec * rec / (prec + rec)


def foreground_restricted_fscore(cluster1, cluster2) -> float:
    """Java: VariationOfInformation.foregroundRestrictedFscore(cluster1, cluster2).

    Edge cases kept: ``ha == 0`` (one ground-truth segment) sets prec = 0, rec = 1; then
    ``hb == 0`` (one proposal segment and no proposal background inside the ground-truth
    foreground) sets prec = 1, rec = 0 -- either way F = 0. prec + rec == 0 gives 0/0 = NaN.
    """
    c1 = np.ascontiguousarray(cluster1, dtype=np.int64).ravel()
    c2 = np.ascontiguousarray(cluster2, dtype=np.int64).ravel()
    n_labels_a = int(c1.max()) if c1.size else 0
    n_labels_b = int(c2.max()) if c2.size else 0
    return float(_foreground_restricted_fscore(c1, c2, n_labels_a, n_labels_b))


def foreground_restricted_score_after_thinning_n2(label, proposal, binary_threshold: float) -> float:
    """Java: VariationOfInformation.foregroundRestrictedScoreAfterThinningN2(label, proposal, th)."""
    binary_label, binary_proposal = _binarize_for_thinning(label, proposal, binary_threshold)
    components1 = connected_components(binary_label)
    components2 = _to_short_processor(watershed_transform_2d(binary_proposal, 4))
    return foreground_restricted_fscore(components1, components2)


def get_foreground_restricted_score_after_thinning(labels, probs, th: float) -> float:
    """Java: VariationOfInformation.getForegroundRestrictedScoreAfterThinning(th): the sum
    of the per-slice scores divided by the number of slices (one NaN slice makes it NaN)."""
    f_score = 0.0
    for label, prob in zip(labels, probs):
        f_score += foreground_restricted_score_after_thinning_n2(label, prob, th)
    return f_score / len(labels)


def get_v_info_curve(labels, probs, thresholds=THRESHOLDS) -> list[float]:
    """Java: VariationOfInformation.getForegroundRestrictedScoresAfterThinning(min, max, step)."""
    return [get_foreground_restricted_score_after_thinning(labels, probs, th) for th in thresholds]


def get_maximal_v_info_after_thinning(labels, probs, thresholds=THRESHOLDS) -> float:
    """Java: VariationOfInformation.getMaximalVInfoAfterThinning(min, max, step): NaN
    thresholds are skipped by the ``f > maxScore`` comparison."""
    return java_max_score(get_v_info_curve(labels, probs, thresholds))


# ---------------------------------------------------------------------------------------
# WarpingError.java: simple-point test
# ---------------------------------------------------------------------------------------

def nca(inp, con: int, space: int) -> int:
    """Java: WarpingError.nca(float[] input, int con, int space)."""
    if con == 6:
        tsum = (int(inp[4]) + int(inp[10]) + int(inp[12]) + int(inp[14]) + int(inp[16]) + int(inp[22]))
        return (6 * space - tsum) if space == 1 else tsum
    if con == 18:
        tsum = sum(int(inp[k]) for k in (1, 3, 4, 5, 7, 9, 10, 11, 12, 14, 15, 16, 17, 19, 21, 22, 23, 25))
        return (18 * space - tsum) if space == 1 else tsum
    if con == 26:
        tsum = sum(int(inp[k]) for k in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16, 17,
                                         18, 19, 20, 21, 22, 23, 24, 25, 26))
        return (26 * space - tsum) if space == 1 else tsum
    return 0


_A6M = [[[0, 1, 0], [1, 5, 1], [0, 1, 0]],
        [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
        [[0, 0, 0], [0, 0, 0], [0, 0, 0]]]
_A18M = [[[0, 0, 0], [0, 1, 1], [0, 0, 0]],
         [[0, 0, 0], [0, 0, 1], [0, 0, 0]],
         [[0, 0, 0], [0, 0, 0], [0, 0, 0]]]
_A26M = [[[0, 0, 0], [0, 1, 1], [0, 1, 1]],
         [[0, 0, 0], [0, 0, 1], [0, 1, 1]],
         [[0, 0, 0], [0, 0, 0], [0, 0, 0]]]
_B18M = [[[0, 1, 0], [0, 1, 9], [0, 1, 0]],
         [[0, 1, 1], [0, 0, 1], [0, 1, 1]],
         [[0, 0, 0], [0, 0, 0], [0, 0, 0]]]
_B26M = [[[0, 0, 0], [0, 1, 1], [0, 1, 7]],
         [[0, 0, 0], [0, 0, 1], [0, 1, 1]],
         [[0, 0, 0], [0, 0, 0], [0, 0, 0]]]


def _jint_add(acc: int, w: int, value: float) -> int:
    """``tsuma[k] += w * input[...]``: int += int * float is ``(int)(acc + w * value)`` in
    Java, a narrowing compound assignment evaluated in float. The operands are small
    integers (weights <= 9, voxels 0/1), so float32 and float64 arithmetic agree exactly."""
    return int(acc + w * value)


def ncb(inp, ctyp: str, con: int, space: int) -> int:
    """Java: WarpingError.ncb(float[] input, char ctyp, int con, int space), literally."""
    tsuma = [0] * 12

    def at(x, y, z):
        return inp[x + y * 3 + z * 3 * 3]

    if ctyp == "a":
        if con == 6:
            m = _A6M
            for x in range(3):
                for y in range(3):
                    for z in range(3):
                        tsuma[0] = _jint_add(tsuma[0], m[x][y][z], at(x, y, z))
                        tsuma[1] = _jint_add(tsuma[1], m[2 - x][y][z], at(x, y, z))
                        tsuma[2] = _jint_add(tsuma[2], m[y][x][z], at(x, y, z))
                        tsuma[3] = _jint_add(tsuma[3], m[2 - y][x][z], at(x, y, z))
                        tsuma[4] = _jint_add(tsuma[4], m[z][y][x], at(x, y, z))
                        tsuma[5] = _jint_add(tsuma[5], m[2 - z][y][x], at(x, y, z))
            return sum(1 if tsuma[i] == (5 - space) else 0 for i in range(6))
        if con == 18:
            m = _A18M
            for x in range(3):
                for y in range(3):
                    for z in range(3):
                        _ncb_18(tsuma, m, x, y, z, at(x, y, z))
            return sum(1 if tsuma[i] == (3 - 3 * space) else 0 for i in range(12))
        if con == 26:
            m = _A26M
            for x in range(3):
                for y in range(3):
                    for z in range(3):
                        _ncb_26(tsuma, m, x, y, z, at(x, y, z))
            return sum(1 if tsuma[i] == (7 - 7 * space) else 0 for i in range(8))
        return 0
    if ctyp == "b":
        if con == 18:
            m = _B18M
            for x in range(3):
                for y in range(3):
                    for z in range(3):
                        _ncb_18(tsuma, m, x, y, z, at(x, y, z))
            return sum(1 if tsuma[i] == (9 - space) else 0 for i in range(12))
        if con == 26:
            m = _B26M
            for x in range(3):
                for y in range(3):
                    for z in range(3):
                        _ncb_26(tsuma, m, x, y, z, at(x, y, z))
            return sum(1 if tsuma[i] == (7 - space) else 0 for i in range(8))
        return 0
    return 0


def _ncb_18(tsuma, m, x, y, z, value):
    """The twelve ``tsuma[k] += m[...][...][...] * input[x+y*3+z*3*3]`` lines of the con == 18 cases."""
    tsuma[0] = _jint_add(tsuma[0], m[x][y][z], value)
    tsuma[1] = _jint_add(tsuma[1], m[x][y][2 - z], value)
    tsuma[2] = _jint_add(tsuma[2], m[2 - x][y][z], value)
    tsuma[3] = _jint_add(tsuma[3], m[2 - x][y][2 - z], value)
    tsuma[4] = _jint_add(tsuma[4], m[y][x][z], value)
    tsuma[5] = _jint_add(tsuma[5], m[y][x][2 - z], value)
    tsuma[6] = _jint_add(tsuma[6], m[2 - y][x][z], value)
    tsuma[7] = _jint_add(tsuma[7], m[2 - y][x][2 - z], value)
    tsuma[8] = _jint_add(tsuma[8], m[x][z][y], value)
    tsuma[9] = _jint_add(tsuma[9], m[x][z][2 - y], value)
    tsuma[10] = _jint_add(tsuma[10], m[2 - x][z][y], value)
    tsuma[11] = _jint_add(tsuma[11], m[2 - x][z][2 - y], value)


def _ncb_26(tsuma, m, x, y, z, value):
    """The eight ``tsuma[k] += m[...][...][...] * input[x+y*3+z*3*3]`` lines of the con == 26 cases."""
    tsuma[0] = _jint_add(tsuma[0], m[x][y][z], value)
    tsuma[1] = _jint_add(tsuma[1], m[2 - x][y][z], value)
    tsuma[2] = _jint_add(tsuma[2], m[x][2 - y][z], value)
    tsuma[3] = _jint_add(tsuma[3], m[x][y][2 - z], value)
    tsuma[4] = _jint_add(tsuma[4], m[2 - x][2 - y][z], value)
    tsuma[5] = _jint_add(tsuma[5], m[x][2 - y][2 - z], value)
    tsuma[6] = _jint_add(tsuma[6], m[2 - x][y][2 - z], value)
    tsuma[7] = _jint_add(tsuma[7], m[2 - x][2 - y][2 - z], value)


def simple3d(inp, region: int) -> bool:
    """Java: WarpingError.simple3d(float[] input, int region)."""
    simple = False
    if region == 26:
        x = inp
    elif region == 6:
        x = [0.0 if v == 1.0 else 1.0 for v in inp]  # input2
    else:
        return False
    if nca(x, 6, 1) == 1:
        simple = True
    elif nca(x, 26, 0) == 1:
        simple = True
    elif ncb(x, "b", 26, 0) == 0:
        if nca(x, 18, 0) == 1:
            simple = True
        elif ((ncb(x, "a", 6, 1) == 0) and (ncb(x, "b", 18, 0) == 0)
              and ((nca(x, 6, 1) - ncb(x, "a", 18, 1) + ncb(x, "a", 26, 1)) == 1)):
            simple = True
    return simple


def simple_2d_bertrand(patch, n: int = 4) -> bool:
    """Java: WarpingError.simple2DBertrand(ImagePlus im, int n).

    ``patch`` is the 3x3 neighbourhood indexed [dy, dx] (the FloatProcessor(3, 3, val) built
    from ``val`` in simplePointWarp2d, whose pixels are row-major). The Java copies it into
    the middle plane of a 27-voxel cube: ``input[i + 9] = center[i]`` (index x + 3y + 9z).
    """
    center = np.asarray(patch, dtype=np.float32).ravel()  # row-major, as FloatProcessor pixels
    inp = [0.0] * 27
    for i in range(9):
        inp[i + 9] = float(center[i])
    if n == 4:
        return simple3d(inp, 6)
    if n == 8:
        return simple3d(inp, 26)
    raise ValueError("Non valid adjacency value")


def _simple_point_table() -> np.ndarray:
    """simple2DBertrand(patch, 4) for all 512 binary 3x3 patches, keyed by
    sum(patch.ravel()[k] << k) (k = dx + 3*dy): the test depends on nothing else."""
    table = np.zeros(512, dtype=np.bool_)
    for code in range(512):
        patch = np.array([(code >> k) & 1 for k in range(9)], dtype=np.float32).reshape(3, 3)
        table[code] = simple_2d_bertrand(patch, 4)
    return table


SIMPLE_POINT_TABLE_4 = _simple_point_table()


# ---------------------------------------------------------------------------------------
# WarpingError.java: simplePointWarp2d
# ---------------------------------------------------------------------------------------

@numba.njit(cache=False)
def _process_mismatches(source_real_pix, mism_x, mism_y, table):
    """The ``for (final Point3f p : mismatches)`` loop of simplePointWarp2d: in list order,
    flip each pixel whose current 3x3 source patch passes simple2DBertrand(patch, 4); the
    flips are in place, so later tests see earlier flips. ``source_real_pix`` is the padded
    source indexed [y, x]. (``p.z < SIMPLE_POINT_THRESHOLD`` = 0 never holds for |.|.)"""
    flips = 0
    for k in range(mism_x.shape[0]):
        x = mism_x[k]
        y = mism_y[k]
        code = 0
        bit = 0
        for dy in range(-1, 2):          # val[] = rows y-1, y, y+1 ...
            for dx in range(-1, 2):      # ... each x-1, x, x+1
                if source_real_pix[y + dy, x + dx] > 0:
                    code |= 1 << bit
                bit += 1
        pix = source_real_pix[y, x]
        if table[code]:
            source_real_pix[y, x] = 0.0 if pix > 0.0 else 1.0
            flips += 1
    return flips


def simple_point_warp_2d(source, target, binary_threshold: float):
    """Java: WarpingError.simplePointWarp2d(source, target, mask = null, binaryThreshold).

    Returns (warpingError, warped source [y, x] without padding). Steps as in the Java:
    pad both images by one pixel of 0; source := source > 0 ? 1 : source; targetBin :=
    target <= th ? 0 : 1; then sweep until ``diff == 0`` or ``diff == diff_before``:
    count the mismatches, list them x outer / y inner, sort by descending
    ``(float) Math.abs(target - th)`` with a stable sort, and process them in that order.
    warpingError = the last mismatch count / (width * height).
    """
    if binary_threshold < 0 or binary_threshold > 1.01:
        binary_threshold = 0.5
    target = _as_float_slice(target)
    source = _as_float_slice(source)
    height, width = target.shape

    # Resize canvas to avoid checking the borders
    target_real = np.zeros((height + 2, width + 2), dtype=np.float32)
    target_real[1:-1, 1:-1] = target
    source_real = np.zeros((height + 2, width + 2), dtype=np.float32)
    source_real[1:-1, 1:-1] = source

    # make sure source and target are binary images
    source_real[source_real > 0] = 1.0
    target_bin = np.where(target_real.astype(np.float64) <= binary_threshold, 0.0, 1.0).astype(np.float32)

    # sort key of every pixel: (float) Math.abs(realTargetPix - binaryThreshold), computed in double
    sort_key = np.abs(target_real.astype(np.float64) - binary_threshold).astype(np.float32)

    diff = 5e-324  # Double.MIN_VALUE
    while True:
        # missclass_points_image = |source - targetBin| (Blitter.DIFFERENCE); mask = null -> all 1
        mismatch = np.abs(source_real - target_bin) != 0
        diff_before = diff
        diff = float(np.count_nonzero(mismatch))
        if diff == 0:
            break
        if diff == diff_before:
            break
        # mismatches listed for x = 1..width (outer), y = 1..height (inner)
        inner = mismatch[1:-1, 1:-1]
        xs, ys = np.nonzero(inner.T)  # transposed: row-major over [x, y] = x outer, y inner
        xs = xs.astype(np.int64) + 1
        ys = ys.astype(np.int64) + 1
        keys = sort_key[ys, xs]
        # Collections.sort(..., Float.compare(o2.z, o1.z)): descending, stable (TimSort)
        order = np.argsort(-keys, kind="stable")
        _process_mismatches(source_real, xs[order], ys[order], SIMPLE_POINT_TABLE_4)

    warping_error = diff / (width * height)
    return warping_error, source_real[1:-1, 1:-1].copy()


def get_warping_metric_value(labels, probs, binary_threshold: float) -> float:
    """Java: WarpingError.getMetricValue(double binaryThreshold): the mean over slices of
    simplePointWarp2d(label, proposal, mask, th).warpingError (source = label, target =
    proposal)."""
    error = 0.0
    for label, prob in zip(labels, probs):
        error += simple_point_warp_2d(label, prob, binary_threshold)[0]
    return error / len(labels)


def get_warping_error_curve(labels, probs, thresholds=THRESHOLDS) -> list[float]:
    """The values Metrics.getMinimumMetricValue(min, max, step) minimises."""
    return [get_warping_metric_value(labels, probs, th) for th in thresholds]


def get_minimum_warping_error(labels, probs, thresholds=THRESHOLDS) -> float:
    """Java: WarpingError.getMinimumMetricValue(min, max, step) (Metrics.java)."""
    return java_min_metric(get_warping_error_curve(labels, probs, thresholds))


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------

def _check_inputs(probs, labels):
    if isinstance(probs, np.ndarray) and probs.ndim == 2:
        probs = [probs]
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        labels = [labels]
    probs = [_as_float_slice(p) for p in probs]
    labels = [_as_float_slice(lab) for lab in labels]
    if len(probs) != len(labels) or not probs:
        raise ValueError("probs and labels must be non-empty lists of the same length")
    for p, lab in zip(probs, labels):
        if p.ndim != 2 or p.shape != lab.shape:
            raise ValueError("each prob / label pair must be 2-D arrays of one shape")
    return probs, labels


def reference_curves(probs, labels) -> dict[str, list[float]]:
    """Per-threshold values (one per entry of THRESHOLDS), to locate a mismatch:

    ``pixel_fscore``  pooled pixel F-score        (pixel_error = 1 - max)
    ``rand_fscore``   pooled foreground-restricted Rand F-score (rand_error = 1 - max)
    ``warping_error`` mean warping error over slices          (warping_error = min, from 1.0)
    ``v_rand``        mean per-slice Rand F after thinning     (v_rand = max, from 0)
    ``v_info``        mean per-slice information F after thinning (v_info = max; may hold NaN)
    """
    probs, labels = _check_inputs(probs, labels)
    return {
        "pixel_fscore": get_pixel_error_maximal_fscore_curve(labels, probs),
        "rand_fscore": get_foreground_restricted_rand_index_fscore_curve(labels, probs),
        "warping_error": get_warping_error_curve(labels, probs),
        "v_rand": get_v_rand_curve(labels, probs, per_slice_average=True),
        "v_info": get_v_info_curve(labels, probs),
    }


def scores_from_curves(curves: dict[str, list[float]]) -> dict[str, float]:
    """Reduce reference_curves() to the five challenge numbers with the Java's reductions."""
    return {
        "pixel_error": 1.0 - java_max_score(curves["pixel_fscore"]),
        "rand_error": 1.0 - java_max_score(curves["rand_fscore"]),
        "warping_error": java_min_metric(curves["warping_error"]),
        "v_rand": java_max_score(curves["v_rand"]),
        "v_info": java_max_score(curves["v_info"]),
    }


def reference_scores(probs, labels) -> dict[str, float]:
    """The five ISBI 2012 numbers for a stack: pixel_error, rand_error, warping_error,
    v_rand, v_info (as the challenge's Fiji scripts compute them)."""
    return scores_from_curves(reference_curves(probs, labels))
