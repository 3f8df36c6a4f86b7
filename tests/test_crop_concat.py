"""Crop-and-concatenate forward/backward against naive loops, on cpu and PoCL, and under Oclgrind."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cunet.gradcheck import check_backward
from cunet.ops import crop_concat_backward, crop_concat_forward
from helpers import assert_oclgrind_clean, run_under_oclgrind

# (N, Cs, Cu, H, W, margin_y, margin_x): outputs from 1x1, odd widths, zero margins, batch up to 3.
cases = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.integers(1, 7), st.integers(1, 9),
                  st.integers(0, 3), st.integers(0, 3))


def crop_concat_reference(skip, up):
    """y[n, c, i, j] element by element: skip's centre window for c < Cs, then up."""
    N, Cs, Hs, Ws = skip.shape
    _, Cu, H, W = up.shape
    oy, ox = (Hs - H) // 2, (Ws - W) // 2
    y = np.empty((N, Cs + Cu, H, W), up.dtype)
    for n, c, i, j in np.ndindex(y.shape):
        y[n, c, i, j] = skip[n, c, oy + i, ox + j] if c < Cs else up[n, c - Cs, i, j]
    return y


def crop_concat_backward_reference(dy, skip_shape):
    """dskip element by element (dy inside the centre window, 0 outside) and dup."""
    N, Cs, Hs, Ws = skip_shape
    H, W = dy.shape[2:]
    oy, ox = (Hs - H) // 2, (Ws - W) // 2
    dskip = np.empty(skip_shape, dy.dtype)
    for n, c, ii, jj in np.ndindex(skip_shape):
        inside = oy <= ii < oy + H and ox <= jj < ox + W
        dskip[n, c, ii, jj] = dy[n, c, ii - oy, jj - ox] if inside else 0
    dup = np.empty((N, dy.shape[1] - Cs, H, W), dy.dtype)
    for n, c, i, j in np.ndindex(dup.shape):
        dup[n, c, i, j] = dy[n, Cs + c, i, j]
    return dskip, dup


def make(rng, case, dtype=np.float32):
    N, Cs, Cu, H, W, my, mx = case
    skip = rng.standard_normal((N, Cs, H + 2 * my, W + 2 * mx)).astype(dtype)
    up = rng.standard_normal((N, Cu, H, W)).astype(dtype)
    return skip, up


@given(case=cases, seed=st.integers(0, 2**32 - 1))
def test_crop_concat_matches_reference(device, case, seed):
    rng = np.random.default_rng(seed)
    skip, up = make(rng, case)
    y = crop_concat_forward(device.to_device(skip), device.to_device(up))
    np.testing.assert_array_equal(device.to_host(y), crop_concat_reference(skip, up))  # a copy: exact
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dskip, dup = crop_concat_backward(device.to_device(dy), skip.shape)
    dskip_ref, dup_ref = crop_concat_backward_reference(dy, skip.shape)
    np.testing.assert_array_equal(device.to_host(dskip), dskip_ref)
    np.testing.assert_array_equal(device.to_host(dup), dup_ref)


def test_crop_concat_at_unet_shapes_on_cpu(rng):
    """The top level of the 572x572 U-Net at base 4: skip 568 cropped to 392 (margin 88)."""
    skip, up = make(rng, (1, 4, 4, 392, 392, 88, 88))
    y = crop_concat_forward(skip, up)
    np.testing.assert_array_equal(y[:, :4], skip[:, :, 88:480, 88:480])
    np.testing.assert_array_equal(y[:, 4:], up)


def test_crop_concat_float64_gradient_matches_finite_differences(rng):
    """L = sum(r * y): perturb every element of skip and up (skip's border must get 0)."""
    skip, up = make(rng, (2, 2, 1, 2, 3, 1, 2), np.float64)
    r = rng.standard_normal((2, 3, 2, 3))
    dskip, dup = crop_concat_backward(r, skip.shape)
    assert dskip.dtype == dup.dtype == np.float64
    check_backward(crop_concat_forward, [skip, up], [dskip, dup], r, rtol=1e-7, atol=1e-9)


def test_crop_concat_bad_input(device):
    def dev(shape, dtype=np.float32):
        return device.to_device(np.zeros(shape, dtype))

    with pytest.raises(ValueError, match=r"crop_concat_forward: cannot centre-crop skip \(1, 2, 9, 8\) to up \(1, 3, 4, 4\): the height difference 9 - 4 = 5 must be even"):
        crop_concat_forward(dev((1, 2, 9, 8)), dev((1, 3, 4, 4)))
    with pytest.raises(ValueError, match="the width difference 3 - 4 = -1 must be even and >= 0"):
        crop_concat_forward(dev((1, 2, 4, 3)), dev((1, 3, 4, 4)))
    with pytest.raises(ValueError, match="crop_concat_forward: skip has batch 2 but up has batch 1"):
        crop_concat_forward(dev((2, 2, 6, 6)), dev((1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"crop_concat_forward: up must be \[N, Cu, H, W\], got shape \(3, 4, 4\)"):
        crop_concat_forward(dev((1, 2, 6, 6)), dev((3, 4, 4)))
    with pytest.raises(TypeError, match="crop_concat_forward: skip has dtype int32"):
        crop_concat_forward(dev((1, 2, 6, 6), np.int32), dev((1, 3, 4, 4)))
    with pytest.raises(ValueError, match="crop_concat_backward: skip_shape must be .* with Cs <= dy's 5 channels"):
        crop_concat_backward(dev((1, 5, 4, 4)), (1, 6, 6, 6))
    with pytest.raises(ValueError, match="crop_concat_backward: cannot centre-crop .* height difference 7 - 4 = 3"):
        crop_concat_backward(dev((1, 5, 4, 4)), (1, 2, 7, 6))
    with pytest.raises(ValueError, match=r"crop_concat_backward: dskip would have shape \(1, 1, 65536, 32770\) = 2147614720 elements"):
        crop_concat_backward(dev((1, 2, 2, 2)), (1, 1, 2**16, 2**15 + 2))  # refused before allocating 8 GB
    if device.name == "cpu":
        with pytest.raises(ValueError, match="crop_concat_forward: dtypes must match"):
            crop_concat_forward(np.zeros((1, 2, 6, 6)), np.zeros((1, 3, 4, 4), np.float32))
    else:
        with pytest.raises(ValueError, match="crop_concat_forward: all arguments must be on one device"):
            crop_concat_forward(dev((1, 2, 6, 6)), np.zeros((1, 3, 4, 4), np.float32))


def oclgrind_case_crop_concat(device):
    """294 outputs and 440 dskip elements (two blocks each, ragged), 126 dup elements (one block)."""
    rng = np.random.default_rng(0)
    skip, up = make(rng, (1, 4, 3, 6, 7, 2, 2))
    y = crop_concat_forward(device.to_device(skip), device.to_device(up))
    np.testing.assert_array_equal(device.to_host(y), crop_concat_reference(skip, up))
    dskip, dup = crop_concat_backward(y, skip.shape)
    device.to_host(dskip), device.to_host(dup)


@pytest.mark.oclgrind
def test_crop_concat_under_oclgrind(tmp_path):
    assert_oclgrind_clean(run_under_oclgrind("test_crop_concat", "oclgrind_case_crop_concat", tmp_path))
