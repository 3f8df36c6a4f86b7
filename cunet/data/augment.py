"""Data augmentation: the paper's elastic deformation plus shifts, rotations, flips and
grey-value changes, with mirrored borders.

The geometric part is written as **one coordinate map**: for every output pixel p we
compute where in the source image it comes from,

    s(p) = c_src + shift + R(-angle) F (p - c_out) + D(p)

with c_out the centre of the output grid, c_src the point of the source that lands
there, F a diagonal flip (+-1 per axis), R a rotation and D the dense elastic
displacement field (drawn in the output frame: the field is isotropic, so which frame
it lives in changes nothing statistically). Image, label, weight map and instance ids
are then each resampled *once* along the same s(p): the image with cubic (or linear)
interpolation, the discrete maps with nearest neighbour. Resampling once keeps the
image sharp (every interpolation blurs a little) and guarantees that all of them move
together.

Borders are mirrored (`cunet.data.mirror`, ``scipy.ndimage`` mode ``'mirror'``),
never zero-filled: a rotated or displaced tile that reaches outside the image sees the
mirror image of the tissue, not a black wedge the network would learn to expect.

The elastic field follows the paper: a coarse 3 x 3 grid of displacement vectors, each
component drawn from N(0, 10 px), interpolated bicubically to every pixel. The coarse
nodes sit at the corners, edge midpoints and centre of the output grid, and the cubic
spline interpolates them, so the field equals the drawn vectors at the nodes (its
spread there is exactly ``elastic_sigma``) and is smaller and smooth in between.

All randomness comes from a `numpy.random.Generator` passed in by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from .mirror import NDIMAGE_MODE


@dataclass(frozen=True)
class AugmentConfig:
    """What to randomise, and how much.

    ``elastic_sigma`` px std of the coarse displacements (0 turns elastic off);
    ``elastic_grid`` coarse nodes per axis; ``rotate`` any angle in [0, 2 pi);
    ``flip`` each axis with probability 1/2; ``max_shift`` px, uniform per axis (the
    training sampler's random tile placement already shifts, so it defaults to 0);
    ``image_order`` 3 cubic, 1 linear (0 nearest, for tests); grey values:
    ``gamma = exp(N(0, gamma_log_std))``, ``contrast = exp(N(0, contrast_log_std))``
    around the mean, ``brightness ~ N(0, brightness_std)``.
    """

    elastic_sigma: float = 10.0
    elastic_grid: int = 3
    rotate: bool = True
    flip: bool = True
    max_shift: float = 0.0
    image_order: int = 3
    gamma_log_std: float = 0.2
    contrast_log_std: float = 0.15
    brightness_std: float = 0.05


@dataclass(frozen=True)
class GeometricTransform:
    """One draw of the geometric augmentation (see the module docstring's s(p))."""

    coarse: np.ndarray  # [2, g, g] displacement vectors (rows, cols) in px
    angle: float = 0.0  # radians; positive turns the content counter-clockwise as displayed
    flip: tuple[bool, bool] = (False, False)  # (rows, cols)
    shift: tuple[float, float] = (0.0, 0.0)  # px (rows, cols)

    @classmethod
    def identity(cls, grid: int = 3) -> "GeometricTransform":
        """The transform that moves nothing."""
        return cls(np.zeros((2, grid, grid)))


@dataclass(frozen=True)
class GreyTransform:
    """One draw of the grey-value augmentation: x -> contrast (x^gamma - mean) + mean + brightness."""

    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0


# ----------------------------------------------------------------- drawing at random


def draw_transform(rng: np.random.Generator, config: AugmentConfig = AugmentConfig()) -> GeometricTransform:
    """Draw a geometric transform; always the same sequence of draws for a config."""
    g = config.elastic_grid
    coarse = rng.normal(0.0, config.elastic_sigma, size=(2, g, g)) if config.elastic_sigma > 0 else np.zeros((2, g, g))
    angle = rng.uniform(0.0, 2 * np.pi) if config.rotate else 0.0
    flip = tuple(bool(f) for f in rng.integers(0, 2, size=2)) if config.flip else (False, False)
    shift = tuple(rng.uniform(-config.max_shift, config.max_shift, size=2)) if config.max_shift > 0 else (0.0, 0.0)
    return GeometricTransform(coarse, float(angle), flip, (float(shift[0]), float(shift[1])))


def draw_grey(rng: np.random.Generator, config: AugmentConfig = AugmentConfig()) -> GreyTransform:
    """Draw a grey-value transform (three normal draws)."""
    log_gamma, log_contrast, brightness = rng.normal(size=3)
    return GreyTransform(float(np.exp(config.gamma_log_std * log_gamma)),
                         float(np.exp(config.contrast_log_std * log_contrast)),
                         float(config.brightness_std * brightness))


# ----------------------------------------------------------------- the coordinate map


@lru_cache(maxsize=64)
def cubic_weights(n: int, grid: int) -> np.ndarray:
    """[n, grid] matrix M with M @ values = cubic spline through ``grid`` nodes, at n pixels.

    Node k sits at pixel k (n - 1) / (grid - 1). Column k is the spline through the unit
    vector e_k, so any node values interpolate as a matrix product (the spline is linear
    in its data). Bicubic in 2-D = this in y times this in x (a tensor product).
    """
    positions = np.arange(n) * ((grid - 1) / max(n - 1, 1))
    columns = [ndimage.map_coordinates(np.eye(grid)[k], [positions], order=3, mode=NDIMAGE_MODE) for k in range(grid)]
    weights = np.stack(columns, axis=1)
    weights.setflags(write=False)
    return weights


def coarse_to_dense(coarse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bicubically interpolate coarse displacements [2, g, g] to a dense field [2, H, W]."""
    rows = cubic_weights(shape[0], coarse.shape[1])
    cols = cubic_weights(shape[1], coarse.shape[2])
    dense = np.zeros((2, *shape))
    for axis in range(2):
        partial = rows @ coarse[axis]  # [H, g]: interpolated down the columns of the grid
        # ... then along the rows: a sum of g outer products. Written out rather than as
        # one [H, g] @ [g, W] product, which hands a tiny job to a multithreaded BLAS.
        for k in range(coarse.shape[2]):
            dense[axis] += partial[:, k, None] * cols[None, :, k]
    return dense


def elastic_displacement(rng: np.random.Generator, shape: tuple[int, int], sigma: float = 10.0, grid: int = 3) -> np.ndarray:
    """A dense elastic displacement field [2, H, W] drawn as in the paper."""
    return coarse_to_dense(rng.normal(0.0, sigma, size=(2, grid, grid)), shape)


def source_coordinates(transform: GeometricTransform, out_shape: tuple[int, int], source_centre) -> np.ndarray:
    """s(p) for every output pixel p: float64 [2, H, W] (rows, cols) into the source."""
    h, w = out_shape
    # p - c_out, flipped, as a column of row offsets and a row of column offsets: the
    # rotation below broadcasts them, so no [2, H, W] grid of pixel indices is built.
    dy = (np.arange(h) - (h - 1) / 2.0) * (-1.0 if transform.flip[0] else 1.0)
    dx = (np.arange(w) - (w - 1) / 2.0) * (-1.0 if transform.flip[1] else 1.0)
    # Sampling the source at R(-angle) q turns the content by +angle: counter-clockwise
    # as displayed (row axis down), the convention of np.rot90 and ndimage.rotate.
    cos, sin = np.cos(transform.angle), np.sin(transform.angle)
    coords = coarse_to_dense(transform.coarse, out_shape)  # D(p), a fresh array we add onto
    coords[0] += cos * dy[:, None] + sin * dx[None, :]
    coords[1] += -sin * dy[:, None] + cos * dx[None, :]
    coords[0] += source_centre[0] + transform.shift[0]
    coords[1] += source_centre[1] + transform.shift[1]
    return coords


# ----------------------------------------------------------------- resampling


def spline_coefficients(image: np.ndarray, order: int = 3) -> np.ndarray:
    """B-spline coefficients of an image under mirrored borders (cache and pass ``prefiltered=True``)."""
    if order <= 1:
        return np.asarray(image, np.float64)
    return ndimage.spline_filter(image, order=order, mode=NDIMAGE_MODE, output=np.float64)


def resample(array: np.ndarray, coords: np.ndarray, order: int, prefiltered: bool = False) -> np.ndarray:
    """Sample a 2-D array at ``coords`` [2, ...] with mirrored borders.

    ``order`` 0 (nearest: labels, ids, weight maps), 1 (linear) or 3 (cubic). With
    ``prefiltered=True`` ``array`` holds `spline_coefficients` (saves the prefilter per
    call). The result keeps the input dtype, except coefficients which give float32.
    """
    output = np.float32 if prefiltered else array.dtype
    return ndimage.map_coordinates(array, coords, order=order, mode=NDIMAGE_MODE, prefilter=not prefiltered, output=output)


def apply_grey(image: np.ndarray, grey: GreyTransform) -> np.ndarray:
    """Gamma, then contrast around the mean and brightness, clipped to [0, 1], float32."""
    x = np.power(np.clip(image, 0.0, 1.0), grey.gamma)
    x = grey.contrast * (x - x.mean()) + x.mean() + grey.brightness
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def augment(image: np.ndarray, label: np.ndarray | None = None, weight: np.ndarray | None = None,
            instances: np.ndarray | None = None, *, rng: np.random.Generator,
            config: AugmentConfig = AugmentConfig()) -> tuple:
    """Augment a whole 2-D image and its maps with one random transform.

    Returns ``(image, label, weight, instances)`` of the input shapes (None stays None):
    the image resampled with ``config.image_order`` and grey-value changed, the others
    with nearest neighbour along the same coordinates. Draws the geometric transform,
    then the grey transform, from ``rng``.
    """
    transform = draw_transform(rng, config)
    grey = draw_grey(rng, config)
    centre = ((image.shape[0] - 1) / 2.0, (image.shape[1] - 1) / 2.0)
    coords = source_coordinates(transform, image.shape, centre)
    out_image = apply_grey(resample(np.asarray(image, np.float32), coords, config.image_order), grey)
    others = [None if a is None else resample(a, coords, 0) for a in (label, weight, instances)]
    return (out_image, *others)
