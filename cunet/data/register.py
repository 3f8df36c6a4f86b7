"""Registering images to their labels' pixel grid: measure the offset, resample the image.

Why it matters. ISBI 2012's labels do not sit exactly on the pixels they annotate: on the
training slices 0-19 the membranes of ``train-labels.tif`` lie 0.61 px above and 0.15 px
left of the dark membranes of ``train-volume.tif`` (``label_offset`` below). A network can
learn a fixed offset, but training rotates and flips every sample, so it sees the offset
in every direction at once, cannot learn it, and learns a membrane blurred by it instead:
thicker than the truth's on every side, which is what the Rand error punishes most (a
cell pixel taken for membrane is a lost pixel of its cell). Registering the image to the
labels once, before training and before every prediction, removes the offset from the data
so that rotations and flips keep image and label aligned.

* ``label_offset(images, labels)`` measures (dy, dx): label pixel (y, x) annotates image
  point (y + dy, x + dx). It correlates the image with the class-0 (membrane) mask, both
  centred, at every integer shift in [-search, search]^2 and refines the peak to a fraction
  of a pixel with a parabola through the peak and its two neighbours on each axis. It
  assumes only that class 0 is brighter or darker on average than the rest (membranes are
  dark in EM): the sign is taken from the correlation at zero shift.
* ``register(image, offset)`` resamples the image so that pixel (y, x) shows image point
  (y + dy, x + dx): a cubic spline (``scipy.ndimage.shift``, order 3) with cunet's
  whole-sample mirrored borders. A zero offset returns the image untouched, bit for bit.

The offset is part of the trained model (``UNet.config["input_shift"]``, like the input
normalisation): prediction registers every image by the offset the network was trained on.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .mirror import NDIMAGE_MODE

#: Pixels a block needs beyond the ones it registers for ``register`` of the block to equal
#: ``register`` of the whole image to ~1e-9: the cubic spline's prefilter is recursive over
#: the whole row, but the influence of a pixel d px away falls as |z|^d with z = sqrt(3) - 2
#: (|z|^16 = 7e-10). Chunked prediction (cunet.scale.dask_predict) reads this halo.
SPLINE_HALO = 16


def _correlations(images: np.ndarray, membrane: np.ndarray, search: int) -> np.ndarray:
    """[2s+1, 2s+1] mean of image * membrane-mask-moved-by-(sy, sx), both centred, borders trimmed."""
    image = images - images.mean()
    mask = membrane - membrane.mean()
    s, (h, w) = search, images.shape[-2:]
    inner = image[..., s:h - s, s:w - s]
    table = np.empty((2 * s + 1, 2 * s + 1))
    for i, sy in enumerate(range(-s, s + 1)):
        for j, sx in enumerate(range(-s, s + 1)):
            # The mask moved down by sy and right by sx: its pixel (y, x) lands on (y + sy, x + sx).
            table[i, j] = float(np.mean(inner * mask[..., s - sy:h - s - sy, s - sx:w - s - sx]))
    return table


def _parabola_vertex(before: float, peak: float, after: float) -> float:
    """Offset in (-0.5, 0.5) of the vertex of the parabola through (-1, before), (0, peak), (1, after)."""
    curvature = before - 2.0 * peak + after
    return 0.0 if curvature == 0 else 0.5 * (before - after) / curvature


def label_offset(images: np.ndarray, labels: np.ndarray, search: int = 2) -> tuple[float, float]:
    """(dy, dx) such that label pixel (y, x) annotates image point (y + dy, x + dx), to ~0.05 px.

    ``images`` [N, H, W] or [H, W] floats, ``labels`` of the same shape with class 0 the
    membranes (boundaries). ValueError where the labels hold one class only, or where the
    best integer shift is ``search`` px or more away (the labels may not belong to these
    images, or a larger ``search`` is needed).
    """
    images, labels = np.asarray(images, np.float64), np.asarray(labels)
    if images.shape != labels.shape or images.ndim not in (2, 3):
        raise ValueError(f"label_offset: expected images and labels of one shape [N, H, W] or [H, W], "
                         f"got {images.shape} and {labels.shape}")
    if min(images.shape[-2:]) <= 4 * search:
        raise ValueError(f"label_offset: images of {images.shape[-2:]} are too small to search +-{search} px")
    membrane = (labels == 0).astype(np.float64)
    if membrane.min() == membrane.max():
        raise ValueError("label_offset: the labels hold one class only; nothing to align the image with")
    table = _correlations(images, membrane, search)
    table *= np.sign(table[search, search]) or 1.0  # membranes darker or brighter: the peak is a maximum
    i, j = np.unravel_index(int(np.argmax(table)), table.shape)
    if i in (0, 2 * search) or j in (0, 2 * search):
        raise ValueError(f"label_offset: the best match is {i - search, j - search} px away, at the edge of the "
                         f"+-{search} px searched: are these the images the labels annotate?")
    # The mask moved by +s matches the image best: label pixel y annotates image point y + s.
    dy = i - search + _parabola_vertex(table[i - 1, j], table[i, j], table[i + 1, j])
    dx = j - search + _parabola_vertex(table[i, j - 1], table[i, j], table[i, j + 1])
    return float(dy), float(dx)


def register(image: np.ndarray, offset) -> np.ndarray:
    """``image`` [..., H, W] resampled so that pixel (y, x) shows point (y + dy, x + dx); float32.

    ``offset`` is ``label_offset``'s (dy, dx). A zero offset returns ``image`` itself.
    """
    dy, dx = (float(v) for v in offset)
    if dy == 0.0 and dx == 0.0:
        return image
    shift = (0.0,) * (image.ndim - 2) + (-dy, -dx)
    return ndimage.shift(np.asarray(image, np.float64), shift, order=3, mode=NDIMAGE_MODE).astype(np.float32)
