"""Synthetic EM-like training data, generated on the fly (never downloaded).

What the generator imitates, and why each part is there (the point is a data set on
which a *bad* model scores badly):

* **Tightly packed cells of many sizes.** Disks with log-normal radii (plus a few big
  "axons") are dropped at random without overlapping, biggest first; every pixel then
  belongs to the disk whose *power distance* |x - s|^2 - r^2 is smallest (a power
  diagram: unlike plain Voronoi, a big disk keeps a big cell). The plane is warped by a
  smooth random field first, so membranes curve like real ones instead of being
  straight polygon edges.
* **Thin membranes (1-3 px) that are sometimes faint or broken.** The label marks
  pixels within t(x)/2 of a cell boundary (t varies smoothly across the image between
  1 and 3 px) and always separates neighbouring cells in the 4-connected sense. The
  *image* draws each membrane with its own strength (about a seventh are faint) times a smooth
  field that opens gaps: the network must close broken contours from context.
* **Dark organelles that are not membranes.** Mitochondria-like ellipses with dark
  rims and striped interiors, solid dark blobs and clusters of small vesicles, as dark
  as membranes, all labelled as cell. So thresholding intensity does not segment.
* **Microscope effects.** Per-cell cytoplasm brightness, granular texture, a few dark
  diffuse smudges, Gaussian blur, uneven illumination, Poisson (shot) noise and
  Gaussian (read) noise.

Labels follow the ISBI in-out convention: 1 = cell, 0 = membrane. Instance ids (int32,
0 on membranes) are the 4-connected components of the cell class, so they agree with
what `cunet.data.weights.instances_from_labels` finds.

Determinism: image i of ``make_synthetic(n, seed=s)`` comes from its own generator
seeded with ``(s, i)``, so it is the same whatever ``n`` is.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from scipy import ndimage
from scipy.spatial import cKDTree

from .augment import cubic_weights
from .weights import FOUR_CONNECTED


def make_synthetic(n_images: int, size: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``n_images`` EM-like slices of ``size`` x ``size``.

    Returns ``(images float32 [N, S, S] in [0, 1], labels uint8 [N, S, S] with
    1 = cell / 0 = membrane, instances int32 [N, S, S] with 0 on membranes)``.
    """
    if n_images < 0 or size < 8:
        raise ValueError(f"need n_images >= 0 and size >= 8, got {n_images}, {size}")
    slices = [synthetic_slice(np.random.default_rng([seed, i]), size) for i in range(n_images)]
    if not slices:
        return (np.zeros((0, size, size), np.float32), np.zeros((0, size, size), np.uint8),
                np.zeros((0, size, size), np.int32))
    images, labels, instances = (np.stack(parts) for parts in zip(*slices))
    return images, labels, instances


def synthetic_slice(rng: np.random.Generator, size: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One (image, label, instances) triple drawn from ``rng``."""
    centres, radii = _pack_disks(rng, size)
    cell, boundary_dist, neighbour = _power_diagram(rng, centres, radii, size)
    thickness = 1.0 + 2.0 * _unit_noise(rng, size, 48)  # 1..3 px, varying smoothly
    membrane = _membrane_mask(cell, boundary_dist, thickness)
    instances = _instances(membrane)
    labels = (instances > 0).astype(np.uint8)
    image = _render(rng, cell, neighbour, boundary_dist, thickness, instances)
    return image, labels, instances


# ----------------------------------------------------------------- random fields


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Smooth random field, zero mean and unit std, with features about ``scale`` px wide.

    White noise on a coarse grid, cubic-spline interpolated up as two small matrix
    products (the bicubic interpolation of `cunet.data.augment`): far cheaper than a
    wide Gaussian filter, or `scipy.ndimage.zoom`, on the full image.
    """
    grid = int(size / scale) + 2
    up = cubic_weights(size, grid)
    field = up @ rng.normal(size=(grid, grid)) @ up.T
    return (field - field.mean()) / (field.std() + 1e-12)


def _unit_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Smooth random field in [0, 1] (a squashed `_smooth_noise`)."""
    return 0.5 + 0.5 * np.tanh(_smooth_noise(rng, size, scale))


# ----------------------------------------------------------------- geometry


def _pack_disks(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping disks of log-normal radii (a few large ones), biggest placed first.

    Each radius gets 24 random positions; the first that keeps clear of every disk
    placed so far wins, or the radius is dropped. Cells end up tightly packed because
    the power diagram later hands the gaps between disks to their neighbours.
    """
    # Cell sizes are in pixels whatever the image size (a smaller image is a smaller field
    # of view at the same magnification), so the number of disks scales with the area.
    n_draw = int(900 * (size / 512.0) ** 2) + 4
    radii = np.exp(rng.normal(np.log(8.0), 0.45, n_draw))
    big = rng.random(n_draw) < 0.04
    radii[big] = rng.uniform(18.0, 40.0, big.sum())
    radii = np.sort(np.clip(radii, 3.5, 45.0))[::-1].copy()
    # Centres may lie a little outside the image, so border cells are cut like real ones.
    tries = rng.random((n_draw, 24, 2)) * (size + 0.6 * radii[:, None, None]) - 0.3 * radii[:, None, None]
    keep = _place_disks(radii, tries)
    return tries[np.arange(n_draw), np.maximum(keep, 0)][keep >= 0], radii[keep >= 0]


@njit(cache=True)
def _place_disks(radii, tries):  # pragma: no cover - compiled
    """For each radius (in order) the index of its first try clear of all placed disks, or -1.

    A plain double loop: compiled with Numba it takes a millisecond, where the NumPy
    version (one broadcast per radius) took a hundred.
    """
    n = len(radii)
    choice = np.full(n, -1)
    placed = np.empty((n, 3))
    count = 0
    for k in range(n):
        for t in range(tries.shape[1]):
            y, x = tries[k, t, 0], tries[k, t, 1]
            clear = True
            for j in range(count):
                dy, dx, reach = y - placed[j, 0], x - placed[j, 1], radii[k] + placed[j, 2]
                if dy * dy + dx * dx <= reach * reach:
                    clear = False
                    break
            if clear:
                choice[k] = t
                placed[count, 0], placed[count, 1], placed[count, 2] = y, x, radii[k]
                count += 1
                break
    return choice


def _power_diagram(rng: np.random.Generator, centres: np.ndarray, radii: np.ndarray, size: int):
    """Which disk owns each pixel (smallest |x - s|^2 - r^2), and the distance to the cell boundary.

    Lifting trick: |x - s|^2 - r^2 = |(x, 0) - (s, h)|^2 - R^2 with h = sqrt(R^2 - r^2),
    so the power-nearest disk is the plain Euclidean nearest neighbour of (x, 0) among
    the lifted points (s, h): one k-d tree query with k = 2 gives the owner i and the
    runner-up j. Their boundary is the line where the power distances are equal;
    f = (p_j - p_i) / (2 |s_i - s_j|) is the distance to that line.

    The query runs at warped points y = x + u(x) (curvy membranes), where f is a
    distance in y. Back in pixels, to first order, the distance is f / |(I + grad u)^T n|
    with n the line's unit normal: the warp's Jacobian stretches distances.
    """
    lift = np.sqrt(radii.max() ** 2 + 1.0 - radii ** 2)
    tree = cKDTree(np.column_stack([centres, lift]))
    warp = 5.0 * np.stack([_smooth_noise(rng, size, 40), _smooth_noise(rng, size, 40)])
    warp += 1.2 * np.stack([_smooth_noise(rng, size, 12), _smooth_noise(rng, size, 12)])
    warped = np.mgrid[0:size, 0:size].astype(np.float64) + warp
    dist, owner = tree.query(np.column_stack([warped.reshape(2, -1).T, np.zeros(size * size)]), k=2, workers=-1)
    between = centres[owner[:, 0]] - centres[owner[:, 1]]
    spacing = np.linalg.norm(between, axis=1)
    f = (dist[:, 1] ** 2 - dist[:, 0] ** 2) / (2.0 * spacing)
    normal = (between / spacing[:, None]).T.reshape(2, size, size)
    (duy_dy, duy_dx), (dux_dy, dux_dx) = np.gradient(warp[0]), np.gradient(warp[1])
    stretch = np.hypot(normal[0] * (1 + duy_dy) + normal[1] * dux_dy, normal[0] * duy_dx + normal[1] * (1 + dux_dx))
    boundary_dist = f.reshape(size, size) / stretch
    return owner[:, 0].reshape(size, size), boundary_dist, owner[:, 1].reshape(size, size)


def _membrane_mask(cell: np.ndarray, boundary_dist: np.ndarray, thickness: np.ndarray) -> np.ndarray:
    """Membrane pixels: within thickness/2 of a boundary, and always separating cells.

    The band alone may leave two 4-adjacent pixels of different cells both unmarked
    (the warp bends distances a little); for every such pair the one nearer the
    boundary is added, so each cell is 4-separated from its neighbours.
    """
    membrane = boundary_dist < thickness / 2.0
    for axis in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        leak = (cell[a] != cell[b]) & ~membrane[a] & ~membrane[b]
        first_nearer = boundary_dist[a] <= boundary_dist[b]
        membrane[a] |= leak & first_nearer
        membrane[b] |= leak & ~first_nearer
    return membrane


def _instances(membrane: np.ndarray, min_area: int = 6) -> np.ndarray:
    """4-connected cell components, numbered 1..K; slivers under ``min_area`` px become membrane."""
    components, count = ndimage.label(~membrane, structure=FOUR_CONNECTED)
    areas = np.bincount(components.ravel(), minlength=count + 1)
    keep = areas >= min_area
    keep[0] = False
    renumber = np.zeros(count + 1, np.int32)
    renumber[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
    return renumber[components]


# ----------------------------------------------------------------- rendering


def _render(rng, cell, neighbour, boundary_dist, thickness, instances) -> np.ndarray:
    """Draw the EM-like image for a cell layout (see the module docstring)."""
    image = _cytoplasm(rng, cell)
    image *= 1.0 - _membrane_darkness(rng, cell, neighbour, boundary_dist, thickness)
    _draw_organelles(rng, image, instances)
    _draw_smudges(rng, image)
    return _microscope(rng, image)


def _cytoplasm(rng, cell) -> np.ndarray:
    """Per-cell brightness, mottling, and dark granules whose density differs per cell."""
    n_cells = int(cell.max()) + 1
    image = rng.uniform(0.6, 0.74, n_cells)[cell]
    image += 0.03 * _smooth_noise(rng, cell.shape[0], 6)
    granules = rng.random(cell.shape) < rng.uniform(0.002, 0.025, n_cells)[cell]
    image *= 1.0 - np.minimum(2.6 * ndimage.gaussian_filter(granules.astype(np.float64), 0.9), 0.6)
    return image


def _membrane_darkness(rng, cell, neighbour, boundary_dist, thickness) -> np.ndarray:
    """How much each pixel is darkened by membrane, 0..0.85.

    A Gaussian profile across the boundary, times a strength per pair of cells (about
    one in seven faint), times a smooth field that drops to zero in places (broken membranes).
    """
    size = cell.shape[0]
    n_cells = int(max(cell.max(), neighbour.max())) + 1
    pair = np.minimum(cell, neighbour).astype(np.int64) * n_cells + np.maximum(cell, neighbour)
    pairs, which = np.unique(pair, return_inverse=True)  # one strength per pair of neighbours
    faint = rng.random(len(pairs)) < 0.15
    strength = np.where(faint, rng.uniform(0.2, 0.45, len(pairs)), rng.uniform(0.7, 1.0, len(pairs)))
    gaps = np.clip((_smooth_noise(rng, size, 12) + 1.5) / 0.6, 0.0, 1.0)  # 0 in ~7% of the area
    profile = np.exp(-0.5 * (boundary_dist / (0.4 * thickness + 0.2)) ** 2)
    return 0.85 * strength[which].reshape(size, size) * gaps * profile


def _ellipse_window(centre, semi_axes, angle, shape):
    """Slices of a window holding the ellipse, and its normalised radius r (1 on the rim) there."""
    reach = int(np.ceil(max(semi_axes))) + 3
    y0, x0 = max(int(centre[0]) - reach, 0), max(int(centre[1]) - reach, 0)
    y1 = max(min(int(centre[0]) + reach + 1, shape[0]), y0)  # empty, never negative, off the image
    x1 = max(min(int(centre[1]) + reach + 1, shape[1]), x0)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dy, dx = yy - centre[0], xx - centre[1]
    u = np.cos(angle) * dy + np.sin(angle) * dx
    v = -np.sin(angle) * dy + np.cos(angle) * dx
    return (slice(y0, y1), slice(x0, x1)), np.sqrt((u / semi_axes[0]) ** 2 + (v / semi_axes[1]) ** 2), u


def _draw_organelles(rng, image, instances) -> None:
    """Darken mitochondria, solid blobs and vesicle clusters into cell interiors (in place)."""
    depth = ndimage.distance_transform_edt(instances > 0)
    candidates = np.argwhere(depth > 5.0)
    if len(candidates) == 0:
        return
    n = int(rng.poisson(len(candidates) / 2500.0))
    for y, x in candidates[rng.choice(len(candidates), size=min(n, len(candidates)), replace=False)]:
        room = depth[y, x] - 1.5
        kind = rng.choice(3, p=[0.45, 0.3, 0.25])
        if kind == 2:
            _draw_vesicles(rng, image, (y, x), room)
            continue
        a = rng.uniform(3.5, min(18.0, room) + 1e-9)
        b = rng.uniform(0.4, 0.85) * a
        window, r, u = _ellipse_window((y, x), (a, b), rng.uniform(0, np.pi), image.shape)
        inside = np.clip((1.0 - r) * b, 0.0, 1.0)  # anti-aliased fill
        if kind == 0:  # mitochondrion: dark double rim, striped grey interior (cristae)
            rim = np.exp(-0.5 * ((r - 0.92) * b / 0.8) ** 2)
            stripes = np.maximum(np.cos(2 * np.pi * u / rng.uniform(3.0, 4.5)), 0.0)
            dark = np.maximum(0.7 * rim, inside * (0.3 + 0.45 * stripes))
        else:  # solid blob, as dark as a membrane
            dark = inside * rng.uniform(0.6, 0.85)
        image[window] *= 1.0 - dark


def _draw_vesicles(rng, image, centre, room) -> None:
    """A cluster of small dark rings around ``centre`` within ``room`` px (in place)."""
    for _ in range(int(rng.integers(3, 9))):
        offset = rng.uniform(-1, 1, 2) * max(room - 3.0, 0.0) * 0.7
        radius = rng.uniform(1.3, 2.5)
        window, r, _ = _ellipse_window((centre[0] + offset[0], centre[1] + offset[1]), (radius, radius), 0.0,
                                       image.shape)
        image[window] *= 1.0 - 0.55 * np.exp(-0.5 * ((r - 1.0) * radius / 0.7) ** 2)


def _draw_smudges(rng, image) -> None:
    """A few dark diffuse blotches (like synaptic densities) that ignore cell borders (in place)."""
    size = image.shape[0]
    for _ in range(int(rng.poisson(4 * (size / 512.0) ** 2))):
        centre = rng.uniform(0, size, 2)
        radius = rng.uniform(5.0, 14.0)
        window, r, _ = _ellipse_window(centre, (radius, radius * rng.uniform(0.5, 1.0)), rng.uniform(0, np.pi),
                                       image.shape)
        image[window] *= 1.0 - rng.uniform(0.25, 0.5) * np.exp(-2.0 * r ** 2)


def _microscope(rng, image) -> np.ndarray:
    """Blur, uneven illumination, Poisson and Gaussian noise, detector blur; float32 in [0, 1]."""
    size = image.shape[0]
    image = ndimage.gaussian_filter(image, rng.uniform(0.6, 1.0))
    image *= 1.0 + 0.12 * _smooth_noise(rng, size, 150)
    photons = rng.uniform(25.0, 60.0)  # expected counts at intensity 1
    image = rng.poisson(np.clip(image, 0, None) * photons) / photons
    image += rng.normal(0.0, rng.uniform(0.015, 0.035), image.shape)
    image = ndimage.gaussian_filter(image, 0.5)  # the detector's own blur: correlated grain
    return np.clip(image, 0.0, 1.0).astype(np.float32)
