"""The U-Net loss weight map (Ronneberger et al. 2015, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

* ``w_c`` balances class frequencies. cunet's exact definition, per image:

      w_c(x) = N / (K * n_c(x))

  with N pixels in the image, K the number of classes present in it and n_c the pixel
  count of class c. That is 1 / freq(class) scaled so that **w_c averages exactly 1 over
  the image** (sums to N), and every present class carries the same total weight N / K.
  A one-class image gets w_c = 1 everywhere.

* The border term makes the thin membranes *between two touching cells* expensive to
  get wrong, which is what separates the cells. d1 and d2 are the Euclidean distances
  (in pixels, between pixel centres) to the nearest and the second-nearest cell
  instance; an instance is a 4-connected component of one foreground class (for ISBI
  in-out masks: of the cell class 1). Membranes are 8-connected lines, and a 4-connected
  reading of the cells is what makes such a line separate them.

* Where the border term applies. The paper's formula adds it everywhere, but inside a
  cell d1 = 0 and the term would also weight the cell side of every boundary. Its
  Fig. 3d, and the common reading, put it on the separating background pixels.
  cunet's default is ``border_on="background"``: only class-0 pixels get it.
  ``border_on="all"`` gives the formula word for word.

* Windowed computation, O(H*W) memory. The naive way stacks one distance transform per
  instance (K x H x W floats: 300 cells of 512 x 512 would be 630 MB). Instead each
  instance's distance transform is computed only inside its bounding box grown by a
  margin R, and a running first and second minimum is kept. With

      R = ceil(sigma * sqrt(2 ln(w0 / tol)))       (the "reach")

  a pixel whose border term exceeds ``tol`` has d1 + d2 < R, so both of its nearest
  instances lie within R and inside their windows: there the result equals the full
  computation (to float rounding). Everywhere else the windowed distances can only be
  larger than the true ones, so the term is smaller, and both lie in [0, tol]. Pixels
  with fewer than two instances within reach get exactly 0 (their true term is below
  ``tol``; with fewer than two instances in the image it is 0 by the formula too).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

#: 4-connectivity for connected components (a cross, not a 3x3 square).
FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def instances_from_labels(labels: np.ndarray) -> np.ndarray:
    """Number the cell instances of a class-index mask: int32, 0 on class 0.

    Each 4-connected component of each foreground class (label > 0) gets its own id
    1..K, so touching cells of two different classes stay two instances.
    """
    instances = np.zeros(labels.shape, np.int32)
    next_id = 0
    for cls in np.unique(labels[labels > 0]):
        components, count = ndimage.label(labels == cls, structure=FOUR_CONNECTED)
        instances[components > 0] = components[components > 0] + next_id
        next_id += count
    return instances


def class_balance_weights(labels: np.ndarray) -> np.ndarray:
    """w_c(x) = N / (K * n_c(x)): inverse class frequency, averaging exactly 1 over the image."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    per_class = labels.size / (len(classes) * counts.astype(np.float64))
    return per_class[inverse].reshape(labels.shape).astype(np.float32)


def border_reach(w0: float, sigma: float, tol: float) -> int:
    """The margin R beyond which w0 * exp(-(d1+d2)^2 / (2 sigma^2)) is at most ``tol``.

    The term exceeds ``tol`` only where d1 + d2 < sigma * sqrt(2 ln(w0 / tol)); the
    window margin is that length rounded up to whole pixels (0 when w0 <= tol).
    """
    if sigma <= 0 or tol <= 0:
        raise ValueError(f"sigma and tol must be positive, got sigma={sigma}, tol={tol}")
    if w0 <= tol:
        return 0
    return math.ceil(sigma * math.sqrt(2.0 * math.log(w0 / tol)))


def nearest_two_distances(instances: np.ndarray, reach: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances d1 <= d2 to the nearest and second-nearest instance, within ``reach``.

    Exact wherever the true distance is below ``reach``; +inf where no (second)
    instance lies within the window. Memory: two H x W arrays plus one window.
    """
    if instances.size and instances.max() > instances.size:
        # find_objects lists every id up to the largest: renumber sparse ids 0..K first.
        # (A leading 0 keeps "no instance" at 0 even in an image without any.)
        ranks = np.unique(np.concatenate([[0], instances.ravel()]), return_inverse=True)[1]
        instances = ranks[1:].reshape(instances.shape)
    d1 = np.full(instances.shape, np.inf)
    d2 = np.full(instances.shape, np.inf)
    height, width = instances.shape
    for index, box in enumerate(ndimage.find_objects(instances)):
        if box is None:  # an id that does not occur
            continue
        ys, xs = box
        window = (slice(max(ys.start - reach, 0), min(ys.stop + reach, height)),
                  slice(max(xs.start - reach, 0), min(xs.stop + reach, width)))
        # Distance from every window pixel to the nearest pixel of this instance: the
        # whole instance lies inside its bounding box, so inside the window this is the
        # exact Euclidean distance (distance_transform_edt measures to the nearest zero).
        dist = ndimage.distance_transform_edt(instances[window] != index + 1)
        m1, m2 = d1[window], d2[window]  # views: the updates below write through
        # Keep the two smallest of {m1, m2, dist}, given m1 <= m2.
        np.minimum(m2, np.maximum(m1, dist), out=m2)
        np.minimum(m1, dist, out=m1)
    return d1, d2


def border_term(instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0, tol: float = 1e-6) -> np.ndarray:
    """w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) on every pixel, float32, within ``tol`` of exact."""
    d1, d2 = nearest_two_distances(instances, border_reach(w0, sigma, tol))
    total = d1 + d2  # inf where fewer than two instances are in reach: exp(-inf) = 0
    return (w0 * np.exp(-(total * total) / (2.0 * sigma * sigma))).astype(np.float32)


def weight_map(labels: np.ndarray, instances: np.ndarray | None = None, *, w0: float = 10.0, sigma: float = 5.0,
               border_on: str = "background", class_balance: bool = True, tol: float = 1e-6) -> np.ndarray:
    """The paper's per-pixel loss weight w = w_c + border term, float32 [H, W].

    ``labels``: class indices [H, W] (0 = membrane/background). ``instances``: cell ids
    (0 = none); derived from ``labels`` by 4-connected components when omitted.
    ``border_on``: ``"background"`` (class-0 pixels only, the default) or ``"all"``.
    ``class_balance=False`` replaces w_c by 1. See the module docstring for the exact
    definitions and the ``tol`` guarantee.
    """
    if border_on not in ("background", "all"):
        raise ValueError(f"border_on must be 'background' or 'all', got {border_on!r}")
    if instances is None:
        instances = instances_from_labels(labels)
    if instances.shape != labels.shape:
        raise ValueError(f"instances {instances.shape} and labels {labels.shape} must have one shape")
    wc = class_balance_weights(labels) if class_balance else np.ones(labels.shape, np.float32)
    border = border_term(instances, w0, sigma, tol)
    if border_on == "background":
        border[labels != 0] = 0
    return wc + border


def weight_maps(labels: np.ndarray, instances: np.ndarray | None = None, **kwargs) -> np.ndarray:
    """`weight_map` for every slice of a stack [N, H, W] (instances likewise, or None)."""
    return np.stack([
        weight_map(labels[i], None if instances is None else instances[i], **kwargs) for i in range(len(labels))
    ])
