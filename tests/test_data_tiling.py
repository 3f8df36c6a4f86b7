"""Overlap-tile plan: exact cover, the align grid, mirrored context, seamless stitching."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cunet.data.tiling import extract_tile, plan_tiles, stitch


@st.composite
def cases(draw):
    """An image shape and a network (in_size, out_size, align) with in - out even."""
    shape = (draw(st.integers(1, 70)), draw(st.integers(1, 70)))
    align = draw(st.sampled_from([1, 2, 4, 8, 16]))
    out_size = draw(st.integers(align, max(align, 48)))
    margin = draw(st.integers(0, 30))
    return shape, out_size + 2 * margin, out_size, align


def mirrored(image, pad):
    """Reference mirror padding: np.pad 'reflect' (whole-sample; repeats reflections for wide pads)."""
    return np.pad(image, [(0, 0)] * (image.ndim - 2) + [(pad, pad), (pad, pad)], mode="reflect")


def identity_network(tile, margin):
    """An 'unpadded network' that returns its input's centre: the output window itself."""
    return tile[..., margin:tile.shape[-2] - margin, margin:tile.shape[-1] - margin]


@given(cases())
def test_every_pixel_owned_exactly_once_on_the_align_grid(case):
    shape, in_size, out_size, align = case
    margin = (in_size - out_size) // 2
    count = np.zeros(shape, int)
    for tile in plan_tiles(shape, in_size, out_size, align):
        (r0, r1), (c0, c1) = tile.output
        assert r0 % align == 0 and c0 % align == 0
        assert r1 - r0 == out_size and c1 - c0 == out_size
        assert tile.input == ((r0 - margin, r1 + margin), (c0 - margin, c1 + margin))
        (o0, o1), (p0, p1) = tile.owned
        assert r0 <= o0 < o1 <= min(r1, shape[0]) and c0 <= p0 < p1 <= min(c1, shape[1])
        count[o0:o1, p0:p1] += 1
    np.testing.assert_array_equal(count, 1)


@given(cases())
def test_tiles_hold_the_mirrored_image(case):
    shape, in_size, out_size, align = case
    image = np.random.default_rng(0).random((2, *shape))  # with a channel axis
    pad = in_size + max(shape)
    reference = mirrored(image, pad)
    for tile in plan_tiles(shape, in_size, out_size, align):
        (r0, r1), (c0, c1) = tile.input
        np.testing.assert_array_equal(extract_tile(image, tile), reference[:, r0 + pad:r1 + pad, c0 + pad:c1 + pad])


@given(cases())
def test_identity_network_stitches_back_the_image(case):
    shape, in_size, out_size, align = case
    margin = (in_size - out_size) // 2
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    plan = plan_tiles(shape, in_size, out_size, align)
    outputs = [identity_network(extract_tile(image, tile), margin) for tile in plan]
    np.testing.assert_array_equal(stitch(outputs, plan, shape), image)


@given(cases())
def test_stitching_a_translation_equivariant_network_is_seamless(case):
    """A valid-mode filter run tile by tile equals the same filter run once on the mirrored image."""
    shape, in_size, out_size, align = case
    margin = (in_size - out_size) // 2
    image = np.random.default_rng(2).random(shape)

    def network(x):  # valid correlation with a fixed asymmetric kernel spanning the margin
        n = x.shape[-1] - 2 * margin
        return sum(wt * x[margin + dy:margin + dy + n, margin + dx:margin + dx + n]
                   for wt, dy, dx in [(0.5, -margin, margin), (0.3, 0, 0), (0.2, margin, -margin // 2)])

    plan = plan_tiles(shape, in_size, out_size, align)
    stitched = stitch([network(extract_tile(image, t)) for t in plan], plan, shape)
    whole = mirrored(image, margin + max(shape))
    m0 = max(shape)  # network over the whole padded image, cropped back to the image
    full = sum(wt * whole[m0 + margin + dy:m0 + margin + dy + shape[0], m0 + margin + dx:m0 + margin + dx + shape[1]]
               for wt, dy, dx in [(0.5, -margin, margin), (0.3, 0, 0), (0.2, margin, -margin // 2)])
    np.testing.assert_allclose(stitched, full, rtol=0, atol=1e-12)


def test_paper_network_on_an_isbi_slice():
    plan = plan_tiles((512, 512), 572, 388, align=16)
    assert len(plan) == 4  # output starts 0 and 384 (388 rounded down to the 16 grid)
    assert plan[0].input == ((-92, 480), (-92, 480)) and plan[3].owned == ((384, 512), (384, 512))


@pytest.mark.parametrize("in_size, out_size, align", [(10, 7, 1), (6, 8, 1), (40, 8, 16), (40, 8, 0)])
def test_bad_network_sizes(in_size, out_size, align):
    with pytest.raises(ValueError):
        plan_tiles((30, 30), in_size, out_size, align)


def test_stitch_checks_the_tile_count():
    plan = plan_tiles((20, 20), 12, 8, 4)
    with pytest.raises(ValueError, match="tile outputs"):
        stitch([np.zeros((8, 8))], plan, (20, 20))
