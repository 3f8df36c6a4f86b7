"""Random training tiles for the overlap-tile U-Net.

An unpadded U-Net maps an ``in_size`` input tile to a smaller ``out_size`` output
(572 -> 388 in the paper): each output pixel needs ``margin = (in - out) / 2`` pixels
of context on every side. Training therefore draws an *output window* that lies fully
inside the image (the labels exist there) and feeds the network the input window
around it, with the context mirrored where it falls outside the image. The input tile
may be larger than the whole image (572 on 512): mirroring is repeated as often as
needed (`cunet.data.mirror`).

With augmentation on, the input tile is sampled along one composed coordinate map
(`cunet.data.augment`): the tile is rotated, flipped and elastically warped around the
centre of the drawn output window, and the label and weight tiles are the centre crop
``[margin:margin+out]`` of the *same* map, sampled with nearest neighbour. So
``y[i, j]`` and ``w[i, j]`` always describe the source pixel that ``x`` shows at
``[margin + i, margin + j]``. (A rotated or warped output window can reach a little
past the image edge at its corners; the labels read there are the mirrored labels,
which is exactly what the mirrored image shows.)

Weight maps are precomputed once per training image from its labels, as in the paper,
and warped along with them (nearest neighbour, so each (y, w) pair comes from one
source pixel). Warping stretches distances by a few percent, so a warped map is close
to, not equal to, the map of the warped labels; ``recompute_weights=True`` computes
the map of every warped label tile instead (exact, slower; its instances are the
tile's 4-connected cell components, so cells that touch without a membrane merge).

Sample k of a run is a pure function of (seed, k): `sample_at` draws it from a generator
seeded with (seed, SAMPLE_STREAM, k), a counter-based stream like the drop-out masks'
Philox. Nothing carries over from one sample to the next, so samples can be prepared
ahead, in any order, by worker processes (`cunet.data.stream`), and a resumed run draws
exactly the samples an uninterrupted one would, for any number of workers: step s of a
run with batch B takes samples s*B .. s*B+B-1, so the step is all the state there is.
"""

from __future__ import annotations

import numpy as np

from .augment import AugmentConfig, apply_grey, draw_grey, draw_transform, resample, source_coordinates, spline_coefficients
from .mirror import mirror_window
from .weights import weight_map

# A fixed word mixed into every sample's seed, so the sample stream never shares a
# generator with other draws seeded from the run's seed (synthetic slice i uses [seed, i]).
SAMPLE_STREAM = 0x53414D50  # "SAMP"


def _as_list(arrays, name: str) -> list[np.ndarray]:
    """A stack [N, H, W] or a sequence of 2-D arrays, as a list of 2-D arrays."""
    out = [np.asarray(a) for a in arrays]
    if not out or any(a.ndim != 2 for a in out):
        raise ValueError(f"{name}: expected a non-empty stack [N, H, W] or a list of 2-D arrays")
    return out


class TrainingSampler:
    """Draws (input tile, label tile, weight tile) triples for training.

    ``images`` float [N, H, W] or a list of 2-D arrays (sizes may differ); ``labels``
    class indices of the same shapes; ``weights`` the same or None (then precomputed by
    `weight_map` with ``weight_kwargs``, using ``instances`` when given, or per sample
    with ``recompute_weights=True``); ``in_size`` /
    ``out_size`` the network's tile sizes; ``augment`` on/off; ``seed`` for the
    generator; ``config`` the augmentation settings.
    """

    def __init__(self, images, labels, weights=None, in_size: int = 572, out_size: int = 388, *,
                 augment: bool = True, seed: int = 0, config: AugmentConfig = AugmentConfig(),
                 instances=None, weight_kwargs: dict | None = None, recompute_weights: bool = False):
        self.images = [a.astype(np.float32) for a in _as_list(images, "images")]
        self.labels = _as_list(labels, "labels")
        self.in_size, self.out_size, self.margin = in_size, out_size, _margin(in_size, out_size)
        self.augment, self.config = augment, config
        self.weight_kwargs = dict(weight_kwargs or {})
        self.recompute_weights = recompute_weights
        self.instances = None if instances is None else _as_list(instances, "instances")
        self._check_shapes()
        if weights is None and not recompute_weights:
            weights = [weight_map(l, None if self.instances is None else self.instances[i], **self.weight_kwargs)
                       for i, l in enumerate(self.labels)]
        self.weights = None if weights is None else [np.asarray(w, np.float32) for w in _as_list(weights, "weights")]
        self._coefficients: dict[int, np.ndarray] = {}
        self.seed = seed

    def _check_shapes(self) -> None:
        """Labels must match images, and every image must hold a whole output window."""
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        for i, (image, label) in enumerate(zip(self.images, self.labels)):
            if image.shape != label.shape:
                raise ValueError(f"image {i} is {image.shape} but its label is {label.shape}")
            if min(image.shape) < self.out_size:
                raise ValueError(
                    f"image {i} is {image.shape}, smaller than the output tile {self.out_size}: the output window "
                    "must lie inside the image (use a network with a smaller output, or larger images)"
                )

    # ------------------------------------------------------------- the sample stream

    def batch_at(self, first: int, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Samples first .. first+batch_size-1: x float32 [B, 1, in, in], y uint8 [B, out, out], w float32 [B, out, out]."""
        samples = [self.sample_at(k) for k in range(first, first + batch_size)]
        x = np.stack([s[0] for s in samples])[:, None]
        y = np.stack([s[1] for s in samples]).astype(np.uint8)
        w = np.stack([s[2] for s in samples]).astype(np.float32)
        return x, y, w

    def sample_at(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample ``k`` of the stream, (x [in, in], y [out, out], w [out, out]): a pure function of (seed, k)."""
        if k < 0:
            raise ValueError(f"sample index must be >= 0, got {k}")
        rng = np.random.default_rng([self.seed, SAMPLE_STREAM, k])
        index = int(rng.integers(len(self.images)))
        height, width = self.images[index].shape
        top = int(rng.integers(height - self.out_size + 1))
        left = int(rng.integers(width - self.out_size + 1))
        if self.augment:
            return self._augmented(rng, index, top, left)
        return self._plain(index, top, left)

    def _plain(self, index: int, top: int, left: int):
        """No augmentation: integer windows, mirrored context, no interpolation at all."""
        m, n_in, n_out = self.margin, self.in_size, self.out_size
        x = mirror_window(self.images[index], top - m, left - m, n_in, n_in)
        y = self.labels[index][top:top + n_out, left:left + n_out]
        if self.recompute_weights:
            w = self._tile_weights(mirror_window(self.labels[index], top - m, left - m, n_in, n_in))
        else:
            w = self.weights[index][top:top + n_out, left:left + n_out]
        return x, y.copy(), w.copy()

    def _augmented(self, rng: np.random.Generator, index: int, top: int, left: int):
        """One composed coordinate map for the input tile; its centre crop for y and w."""
        m, n_out = self.margin, self.out_size
        transform = draw_transform(rng, self.config)
        grey = draw_grey(rng, self.config)
        centre = (top + (n_out - 1) / 2.0, left + (n_out - 1) / 2.0)
        coords = source_coordinates(transform, (self.in_size, self.in_size), centre)
        x = apply_grey(resample(self._coefficients_of(index), coords, self.config.image_order, prefiltered=True), grey)
        crop = coords[:, m:m + n_out, m:m + n_out]
        y = resample(self.labels[index], crop, 0)
        if self.recompute_weights:
            w = self._tile_weights(resample(self.labels[index], coords, 0))
        else:
            w = resample(self.weights[index], crop, 0)
        return x, y, w

    def _tile_weights(self, label_tile: np.ndarray) -> np.ndarray:
        """Weight map of a whole input-size label tile, cropped to the output window.

        Computed on the input tile, not the output tile, so that cells just outside the
        output window still count as neighbours. Instances are the tile's own connected
        components: warped instance ids would not do, because a mirrored copy of a cell
        keeps its id and one "instance" would then span the original and its copy.
        """
        m, n_out = self.margin, self.out_size
        return weight_map(label_tile, None, **self.weight_kwargs)[m:m + n_out, m:m + n_out]

    def _coefficients_of(self, index: int) -> np.ndarray:
        """Spline coefficients of image ``index``, computed once (the prefilter is global)."""
        if index not in self._coefficients:
            self._coefficients[index] = spline_coefficients(self.images[index], self.config.image_order)
        return self._coefficients[index]


def _margin(in_size: int, out_size: int) -> int:
    """(in - out) / 2, checked to be a whole, non-negative number of pixels."""
    if out_size < 1 or in_size < out_size or (in_size - out_size) % 2:
        raise ValueError(f"in_size {in_size} and out_size {out_size}: expected 1 <= out <= in with in - out even")
    return (in_size - out_size) // 2
