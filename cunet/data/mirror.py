"""Mirrored borders, the one convention every part of `cunet.data` shares.

The U-Net sees context around every output pixel (92 px each side for the paper's
572 -> 388 network). Where that context falls outside the image, the paper fills it
by mirroring the image at its border (its Fig. 2). There are two ways to mirror a row
``a b c d``:

    whole-sample ("mirror"):  ... c b | a b c d | c b a ...   the edge pixel is the axis
    half-sample ("reflect"):  ... b a | a b c d | d c b ...   the edge pixel is repeated

cunet uses **whole-sample mirroring everywhere**: `scipy.ndimage` calls it
``mode='mirror'`` and `numpy.pad` calls it ``mode='reflect'`` (the names are swapped
between the two libraries, a classic trap). It never duplicates the edge row, so a
membrane lying on the border is not artificially thickened, and as a continuous
function the mirrored image is symmetric about the edge pixel centres, which is what
interpolation (`scipy.ndimage.map_coordinates(..., mode='mirror')`) assumes.

Context wider than the image (a 572 px input tile on a 512 px image, or any tile on a
tiny image) is handled by *repeated* mirroring: the mirrored image is periodic with
period 2 (n - 1), so any integer coordinate folds back into [0, n).
"""

from __future__ import annotations

import numpy as np

#: `scipy.ndimage` mode name of the convention above.
NDIMAGE_MODE = "mirror"
#: `numpy.pad` mode name of the same convention.
NUMPY_PAD_MODE = "reflect"


def mirror_index(index: np.ndarray | int, n: int) -> np.ndarray:
    """Fold integer coordinates into ``[0, n)`` by repeated whole-sample mirroring.

    ``mirror_index(-1, 4) == 1``, ``mirror_index(4, 4) == 2``, ``mirror_index(9, 4) == 3``.
    A length-1 axis mirrors onto its only pixel.
    """
    if n < 1:
        raise ValueError(f"cannot mirror into an empty axis (n={n})")
    index = np.asarray(index, dtype=np.int64)
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    folded = np.mod(index, period)  # np.mod is non-negative for a positive period
    return np.where(folded < n, folded, period - folded)


def mirror_window(image: np.ndarray, y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """Cut the window ``[y0, y0+height) x [x0, x0+width)`` out of the mirrored image.

    The window may start at negative coordinates and be larger than the image; every
    pixel outside the image is taken from its mirror image inside. Works on the last two
    axes, so ``image`` may be [H, W] or [..., H, W]. Returns a new array.
    """
    rows = mirror_index(np.arange(y0, y0 + height), image.shape[-2])
    cols = mirror_index(np.arange(x0, x0 + width), image.shape[-1])
    # Two 1-D fancy indexes (rather than np.ix_) keep leading axes untouched.
    return image[..., rows, :][..., :, cols]
