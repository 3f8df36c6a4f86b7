"""MALIS: extra loss weight on the pixels that decide the Rand error (Turaga et al. 2009).

The ISBI Rand error counts *pairs* of cell pixels: a pair of the same cell must end up in
one segment of ``prob > threshold``, a pair of two cells in two. Whether they do depends on
one pixel per pair, its *maximin* pixel: of all 4-connected paths between the two, take the
one whose weakest pixel (lowest P(cell)) is strongest; that weakest pixel decides at which
threshold the pair joins. Turaga's MALIS puts the pair's loss on that pixel. Counted over
every pair of a tile, a pixel's weight is the number of pairs it decides, which is exactly
what getting it wrong costs the Rand index: a cell pixel drawn as membrane at the edge of a
cell of n pixels decides n pairs; the one pixel that closes a gap between two cells of n and
m pixels decides n*m.

This is the *constrained* form (Funke et al. 2018), in which every weight lands on a pixel
whose true class is known, so MALIS becomes a weight map added to the paper's:

* positive pass, pairs of the same cell: P(cell) of membrane pixels is taken to be 0, so
  paths stay inside their cell; each pair's maximin pixel is a cell pixel whose P(cell) the
  loss should raise (thin membranes, no splits);
* negative pass, pairs of different cells: P(cell) of cell pixels is taken to be 1, so a
  path's weakest pixel is on the membrane between; each pair's maximin pixel is a membrane
  pixel whose P(cell) the loss should lower (no gaps).

Both passes run Kruskal's algorithm: pixels in decreasing P(cell), each joined to its
already-present 4-neighbours with a union-find; a join of components A and B decides
|A| * |B| pairs (positive) or the different-cell pairs between them (negative) at the pixel
being added. Each pass's weights are scaled to sum to half the tile's pixel count, so
``malis_weights`` has mean 1 whatever the tile size, like the weight map it is added to.
``tests/test_malis.py`` checks both passes against brute force: the maximin of every pair
from thresholded connected components.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from cunet.metrics import cell_segments


def malis_weights(cell_prob: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """MALIS weight map of one tile: [H, W] float32, mean 1 where both passes have pairs.

    ``cell_prob`` is the network's P(cell) [H, W]; ``labels`` the true classes (1 = cell,
    0 = membrane). Cells are the 4-connected components of the cell pixels, as the Rand
    error reads them.
    """
    cell_prob, labels = np.asarray(cell_prob), np.asarray(labels)
    if cell_prob.ndim != 2 or cell_prob.shape != labels.shape:
        raise ValueError(f"expected P(cell) and labels as two 2-D arrays of one shape, "
                         f"got {cell_prob.shape} and {labels.shape}")
    objects, count = cell_segments(labels == 1)
    same, different = maximin_pair_counts(cell_prob, objects, count)
    half = cell_prob.size / 2.0
    weights = np.zeros(cell_prob.shape, np.float64)
    for pairs in (same, different):
        total = pairs.sum()
        if total > 0:
            weights += pairs * (half / total)
    return weights.astype(np.float32)


def maximin_pair_counts(cell_prob: np.ndarray, objects: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of the same cell and of different cells decided at each pixel: two [H, W] float64 maps.

    ``objects``: 0 for membrane, 1..count for the cells.
    """
    flat = np.asarray(objects, np.int64).ravel()
    height, width = objects.shape
    # Decreasing P(cell); a stable sort, so ties go in raster order and the result is deterministic.
    order = np.argsort(-np.asarray(cell_prob, np.float64).ravel(), kind="stable")
    cell = flat[order] > 0
    # Positive: no pixel present at first; the cell pixels join, one pair counted per pixel of each side.
    nobody = np.full(flat.size, -1, np.int64)
    same = _kruskal(order[cell], nobody, (flat > 0).astype(np.float64), width, height)
    # Negative: every cell present and whole from the start (P(cell) taken to be 1), one
    # component per cell weighing its pixels; the membrane pixels join, weighing nothing.
    # Two components never share a cell, so every pair a join decides is of different cells.
    first = np.zeros(count + 1, np.int64)  # each cell's first pixel: its component's root
    present, first_index = np.unique(flat, return_index=True)
    first[present] = first_index
    parent = np.where(flat > 0, first[flat], -1)
    mass = np.bincount(parent[flat > 0], minlength=flat.size).astype(np.float64)
    different = _kruskal(order[~cell], parent, mass, width, height)
    return same.reshape(height, width), different.reshape(height, width)


@njit(cache=True)
def _find(parent, x):
    """Root of x's component, halving the path on the way."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@njit(cache=True)
def _kruskal(order, parent, mass, width, height):
    """Add the pixels of ``order`` one by one, each joined to its present 4-neighbours.

    ``parent[x] < 0``: x not present yet; ``mass[root]``: how many counted pixels a
    component holds. Joining components A and B at pixel x decides mass(A) * mass(B) pairs
    there. Returns those counts per pixel. ``parent`` and ``mass`` are updated in place.
    """
    pairs = np.zeros(parent.size, np.float64)
    for x in order:
        parent[x] = x
        y, c = x // width, x % width
        for ny, nc in ((y - 1, c), (y + 1, c), (y, c - 1), (y, c + 1)):
            if ny < 0 or ny >= height or nc < 0 or nc >= width or parent[ny * width + nc] < 0:
                continue
            a, b = _find(parent, x), _find(parent, ny * width + nc)
            if a == b:
                continue
            pairs[x] += mass[a] * mass[b]
            if mass[a] < mass[b]:
                a, b = b, a
            parent[b] = a
            mass[a] += mass[b]
    return pairs
