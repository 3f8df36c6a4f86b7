"""The overlap-tile strategy for inference (the paper's Fig. 2).

An unpadded U-Net maps an ``in`` x ``in`` input tile to an ``out`` x ``out`` output
centred in it, ``margin = (in - out) / 2`` pixels in from each side. To segment an
image of any size with bounded memory we:

1. cut the image's output plane into output windows whose starts lie on a grid of
   ``step`` pixels, where ``step`` is ``out`` rounded down to a multiple of ``align``;
2. give every window the input window ``margin`` pixels larger on every side, reading
   pixels outside the image from the mirrored image (`cunet.data.mirror`);
3. run the network on each input window, and let each tile *own* the part of its
   output ``[k*step, (k+1)*step)`` (cut at the image edge), which is where we stitch.

Why ``align``: max-pooling with stride 2, ``depth - 1`` times, makes the network
equivariant only to shifts by multiples of ``align = 2**(depth - 1)``. With every
output window starting on that grid, all tiles are crops of *one* computation on the
mirrored image, so the stitched result has no seams: it is what the network would
output for the whole (mirrored) image at once. Output windows overlap by
``out - step`` pixels (less than ``align``) and the last ones may reach past the
image; those pixels are computed and dropped.

Windows are half-open ``(start, stop)`` pairs in image coordinates, rows then columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .mirror import mirror_window


@dataclass(frozen=True)
class Tile:
    """One tile of a plan: its input window, output window and the part of the image it owns.

    Each field is ``((row_start, row_stop), (col_start, col_stop))`` in image
    coordinates. ``input`` may extend beyond the image (mirrored there); ``output`` may
    extend past the bottom/right edge; ``owned`` lies inside both the image and ``output``.
    """

    input: tuple[tuple[int, int], tuple[int, int]]
    output: tuple[tuple[int, int], tuple[int, int]]
    owned: tuple[tuple[int, int], tuple[int, int]]

    def owned_in_output(self) -> tuple[slice, slice]:
        """Slices that pick the owned part out of this tile's network output."""
        (r0, r1), (c0, c1) = self.owned
        return slice(r0 - self.output[0][0], r1 - self.output[0][0]), slice(c0 - self.output[1][0], c1 - self.output[1][0])


def _check_sizes(in_size: int, out_size: int, align: int) -> int:
    """The step between output windows, after checking the sizes make sense."""
    if align < 1 or out_size < 1 or in_size < out_size or (in_size - out_size) % 2:
        raise ValueError(f"need align >= 1 and 1 <= out_size <= in_size with in - out even; got "
                         f"in_size={in_size}, out_size={out_size}, align={align}")
    if out_size < align:
        raise ValueError(f"out_size {out_size} is smaller than align {align}: output windows could not tile the "
                         "image on the align grid")
    return out_size // align * align


def _axis_plan(length: int, step: int) -> list[tuple[int, int]]:
    """Owned intervals along one axis: [0, step), [step, 2 step), ... cut at ``length``."""
    return [(start, min(start + step, length)) for start in range(0, length, step)]


def plan_tiles(shape: tuple[int, int], in_size: int, out_size: int, align: int = 1) -> list[Tile]:
    """The tiles that segment an image of ``shape`` (H, W) with a network ``in_size`` -> ``out_size``.

    Output-window starts are multiples of ``align`` (``2**(depth-1)`` for a U-Net of
    ``depth`` levels); every image pixel is owned by exactly one tile. Row-major order.
    """
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) with H, W >= 1, got {shape}")
    step = _check_sizes(in_size, out_size, align)
    margin = (in_size - out_size) // 2
    tiles = []
    for r0, r1 in _axis_plan(shape[0], step):
        for c0, c1 in _axis_plan(shape[1], step):
            tiles.append(Tile(input=((r0 - margin, r0 - margin + in_size), (c0 - margin, c0 - margin + in_size)),
                              output=((r0, r0 + out_size), (c0, c0 + out_size)),
                              owned=((r0, r1), (c0, c1))))
    return tiles


def extract_tile(image: np.ndarray, tile: Tile) -> np.ndarray:
    """The network input for ``tile``: the input window of the mirrored image.

    ``image`` is the unpadded image [H, W] (or [C, H, W]); windows beyond its border,
    even wider than the image, are filled by repeated mirroring.
    """
    (r0, r1), (c0, c1) = tile.input
    return mirror_window(image, r0, c0, r1 - r0, c1 - c0)


def stitch(tile_outputs, plan: list[Tile], shape) -> np.ndarray:
    """Assemble per-tile network outputs [..., out, out] into one array [..., H, W].

    ``tile_outputs`` follows ``plan``'s order; ``shape`` is the full output shape, whose
    last two axes are the image's (H, W). Each tile contributes exactly its owned part.
    """
    outputs = list(tile_outputs)
    if len(outputs) != len(plan):
        raise ValueError(f"{len(outputs)} tile outputs for a plan of {len(plan)} tiles")
    result = np.empty(shape, dtype=np.result_type(*[np.asarray(o).dtype for o in outputs]))
    for output, tile in zip(outputs, plan):
        (r0, r1), (c0, c1) = tile.owned
        result[..., r0:r1, c0:c1] = np.asarray(output)[(..., *tile.owned_in_output())]
    return result
