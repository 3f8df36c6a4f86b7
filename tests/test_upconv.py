"""2x2 up-convolution forward/backward against naive window loops, on cpu and PoCL, and under Oclgrind.

Tolerances come from the float32 error bound for a sum of R products (Higham, "Accuracy
and Stability of Numerical Algorithms", 3.1): |fl(s) - s| <= gamma_R * sum |x_i y_i|,
gamma_R ~ R * 2^-24. The references compute both s and sum |x_i y_i| in float64, so each
element is checked against its own bound: tight where the terms are small, never flaky,
and far below the O(1) error of a wrong index. In TF32 (``gemm_device``'s tf32 devices) the
GEMM operands are rounded first, as the kernels' tensor-core loads do, and the same bound
holds for the float32 sums of the (exact) products; the bias gradient is a plain float32
reduction of dy, not a GEMM, and is compared unrounded.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cunet.ops import upconv2x2_backward_input, upconv2x2_backward_params, upconv2x2_forward
import cunet.ops.gemm as gemm_module
from cunet.gradcheck import check_backward
from helpers import assert_oclgrind_clean, gemm_reference_inputs, run_under_oclgrind

EPS32 = 2.0**-24

# (N, C, H, W, K): 1x1 inputs, odd widths, channel counts on both sides of the 64-wide
# tiles (C up to 70 for backward_input's rows, 4K up to 160 for the forward's), batch to 3.
shapes = st.tuples(st.integers(1, 3), st.integers(1, 70), st.integers(1, 4), st.integers(1, 7), st.integers(1, 40))
# Fixed shapes on and just past the tile edges: columns (4K forward and weight gradient, C
# backward input) of 4, 8, 16, 17, 64, 65 pick the 64x8, 64x16 and 128x64 tiles.
EDGE_SHAPES = [(1, 1, 1, 1, 1), (1, 64, 2, 4, 16), (2, 65, 3, 5, 17), (1, 8, 8, 8, 2), (3, 9, 1, 1, 33),
               (1, 16, 4, 4, 4), (2, 17, 3, 3, 4)]


def upconv_reference(x, w, b):
    """y and sum|terms| in float64, one output pixel (2i+a, 2j+e) at a time."""
    x, w, b = (a.astype(np.float64) for a in (x, w, b))
    N, C, H, W = x.shape
    K = w.shape[1]
    y, y_abs = np.empty((N, K, 2 * H, 2 * W)), np.empty((N, K, 2 * H, 2 * W))
    for i, j, a, e in np.ndindex(H, W, 2, 2):
        y[:, :, 2 * i + a, 2 * j + e] = x[:, :, i, j] @ w[:, :, a, e] + b
        y_abs[:, :, 2 * i + a, 2 * j + e] = np.abs(x[:, :, i, j]) @ np.abs(w[:, :, a, e]) + np.abs(b)
    return y, y_abs


def backward_input_reference(dy, w):
    """dx[n, c, i, j] = sum over the 2x2 output block of pixel (i, j) and over k; and sum|terms|."""
    dy, w = dy.astype(np.float64), w.astype(np.float64)
    N, K, H2, W2 = dy.shape
    dx, dx_abs = np.zeros((N, w.shape[0], H2 // 2, W2 // 2)), np.zeros((N, w.shape[0], H2 // 2, W2 // 2))
    for i, j, a, e in np.ndindex(H2 // 2, W2 // 2, 2, 2):
        dx[:, :, i, j] += dy[:, :, 2 * i + a, 2 * j + e] @ w[:, :, a, e].T
        dx_abs[:, :, i, j] += np.abs(dy[:, :, 2 * i + a, 2 * j + e]) @ np.abs(w[:, :, a, e]).T
    return dx, dx_abs


def backward_params_reference(x, dy):
    """dw[c, k, a, e] and db[k] by looping over every input pixel; and sum|terms| for each."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    N, C, H, W = x.shape
    K = dy.shape[1]
    dw, dw_abs = np.zeros((C, K, 2, 2)), np.zeros((C, K, 2, 2))
    for n, i, j, a, e in np.ndindex(N, H, W, 2, 2):
        g = dy[n, :, 2 * i + a, 2 * j + e]
        dw[:, :, a, e] += np.outer(x[n, :, i, j], g)
        dw_abs[:, :, a, e] += np.outer(np.abs(x[n, :, i, j]), np.abs(g))
    return dw, dw_abs, dy.sum(axis=(0, 2, 3)), np.abs(dy).sum(axis=(0, 2, 3))


def assert_within_bound(got, ref, ref_abs, terms):
    """|got - ref| <= (terms + 2) eps32 sum|terms| elementwise (+2: the bias add and the final store)."""
    bound = (terms + 2) * EPS32 * ref_abs + 1e-30
    err = np.abs(got.astype(np.float64) - ref)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert (err <= bound).all(), f"error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}: got {got[worst]}, want {ref[worst]}"


def random_case(rng, shape):
    N, C, H, W, K = shape
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((C, K, 2, 2)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    dy = rng.standard_normal((N, K, 2 * H, 2 * W)).astype(np.float32)
    return x, w, b, dy


def check_all(device, shape, seed):
    """Forward, both backwards, against the references, on ``device``."""
    x, w, b, dy = random_case(np.random.default_rng(seed), shape)
    N, C, H, W, K = shape
    xd, wd, dyd = device.to_device(x), device.to_device(w), device.to_device(dy)
    y = device.to_host(upconv2x2_forward(xd, wd, device.to_device(b)))
    assert_within_bound(y, *upconv_reference(*gemm_reference_inputs(device, x, w), b), terms=C)
    dx = device.to_host(upconv2x2_backward_input(dyd, wd))
    assert_within_bound(dx, *backward_input_reference(*gemm_reference_inputs(device, dy, w)), terms=4 * K)
    dw, db = (device.to_host(a) for a in upconv2x2_backward_params(xd, dyd))
    dw_ref, dw_abs, _, _ = backward_params_reference(*gemm_reference_inputs(device, x, dy))
    _, _, db_ref, db_abs = backward_params_reference(x, dy)
    # dw on a device is a split sum: (splits) partial sums then their sum, within the same bound.
    assert_within_bound(dw, dw_ref, dw_abs, terms=N * H * W)
    assert_within_bound(db, db_ref, db_abs, terms=4 * N * H * W)


@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_upconv_matches_reference(gemm_device, shape, seed):
    check_all(gemm_device, shape, seed)


@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_upconv_tile_edges(gemm_device, shape):
    check_all(gemm_device, shape, seed=sum(shape))


def test_upconv_at_unet_bottom_shape_on_cpu(rng):
    """The deepest up-convolution of the base-16 U-Net (256 -> 128 channels at 28x28), spot-checked."""
    x, w, b, _ = random_case(rng, (1, 256, 28, 28, 128))
    y = upconv2x2_forward(x, w, b)
    for k, r, s in [(0, 0, 0), (127, 55, 55), (64, 17, 30)]:
        i, a, j, e = r // 2, r % 2, s // 2, s % 2
        expected = x[0, :, i, j].astype(np.float64) @ w[:, k, a, e] + b[k]
        np.testing.assert_allclose(y[0, k, r, s], expected, rtol=1e-4, atol=1e-4)  # 256-term float32 sums


def test_weight_gradient_split_is_deterministic_and_split(opencl_device, monkeypatch):
    """Several pixel splits (chunks crossing image boundaries), bitwise the same on a second run."""
    monkeypatch.setattr(gemm_module, "SPLIT_MIN_CHUNK", 8)
    shape = (2, 5, 3, 7, 3)  # 42 pixels, one tile: split into chunks of 16 (BK of the 64x16 tile)
    splits, chunk = gemm_module.split_k(42, 5, 12, gemm_module.tile_config(12))
    assert splits > 1 and (splits - 1) * chunk < 42 <= splits * chunk
    x, _, _, dy = random_case(np.random.default_rng(7), shape)
    dev = opencl_device
    runs = [[dev.to_host(a) for a in upconv2x2_backward_params(dev.to_device(x), dev.to_device(dy))] for _ in range(2)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    dw_ref, dw_abs, _, _ = backward_params_reference(x, dy)
    assert_within_bound(runs[0][0], dw_ref, dw_abs, terms=42)


def test_upconv_gradients_match_finite_differences(rng):
    """float64 on cpu: L = sum(r * y); every element of x, w and b perturbed."""
    x, w, b, _ = (a.astype(np.float64) for a in random_case(rng, (2, 3, 2, 3, 2)))
    r = rng.standard_normal((2, 2, 4, 6))
    dx = upconv2x2_backward_input(r, w)
    dw, db = upconv2x2_backward_params(x, r)
    assert dx.dtype == dw.dtype == db.dtype == np.float64
    check_backward(upconv2x2_forward, [x, w, b], [dx, dw, db], r)


def test_upconv_bad_input(device):
    def dev(shape, dtype=np.float32):
        return device.to_device(np.zeros(shape, dtype))

    x, w, b = dev((1, 3, 2, 2)), dev((3, 4, 2, 2)), dev((4,))
    with pytest.raises(ValueError, match=r"upconv2x2_forward: w must be \[3, K, 2, 2\] \(in, out, kh, kw\), got shape \(4, 3, 2, 2\)"):
        upconv2x2_forward(x, dev((4, 3, 2, 2)), dev((3,)))
    with pytest.raises(ValueError, match=r"upconv2x2_forward: w must be \[3, K, 2, 2\].*\(3, 4, 3, 3\)"):
        upconv2x2_forward(x, dev((3, 4, 3, 3)), b)
    with pytest.raises(ValueError, match=r"upconv2x2_forward: b must be \[K\] = \[4\]"):
        upconv2x2_forward(x, w, dev((3,)))
    with pytest.raises(ValueError, match=r"upconv2x2_forward: x must be \[N, C, H, W\]"):
        upconv2x2_forward(dev((3, 2, 2)), w, b)
    with pytest.raises(ValueError, match=r"upconv2x2_forward: x is empty"):
        upconv2x2_forward(dev((0, 3, 2, 2)), w, b)
    with pytest.raises(TypeError, match="upconv2x2_forward: x has dtype int32"):
        upconv2x2_forward(dev((1, 3, 2, 2), np.int32), w, b)
    with pytest.raises(ValueError, match=r"upconv2x2_backward_input: dy must be \[N, K, 2H, 2W\] \(even height and width\)"):
        upconv2x2_backward_input(dev((1, 4, 3, 4)), w)
    with pytest.raises(ValueError, match=r"upconv2x2_backward_input: w must be \[C, 5, 2, 2\]"):
        upconv2x2_backward_input(dev((1, 5, 4, 4)), w)
    with pytest.raises(ValueError, match=r"upconv2x2_backward_params: dy must be \[N, K, 2H, 2W\] = \[1, K, 4, 4\]"):
        upconv2x2_backward_params(x, dev((1, 4, 4, 6)))
    if device.name == "cpu":
        with pytest.raises(ValueError, match="upconv2x2_forward: dtypes must match"):
            upconv2x2_forward(np.zeros((1, 3, 2, 2)), w, b)
    else:
        with pytest.raises(ValueError, match="upconv2x2_backward_params: all arguments must be on one device"):
            upconv2x2_backward_params(x, np.zeros((1, 4, 4, 4), np.float32))


def oclgrind_case_upconv(device):
    """Every kernel on shapes with ragged tiles: 2 row tiles, several reduction steps
    (C = 9, 4K = 68), pixel splits and their sum, one bias block per k; and the 64x16 tile."""
    gemm_module.SPLIT_MIN_CHUNK = 8  # this runs in a fresh interpreter: no need to restore
    for shape in ((1, 9, 3, 5, 17), (1, 16, 2, 3, 4)):
        x, w, b, dy = random_case(np.random.default_rng(0), shape)
        xd, wd, dyd = device.to_device(x), device.to_device(w), device.to_device(dy)
        y = device.to_host(upconv2x2_forward(xd, wd, device.to_device(b)))
        np.testing.assert_allclose(y, upconv_reference(*gemm_reference_inputs(device, x, w), b)[0], rtol=1e-4, atol=1e-4)
        device.to_host(upconv2x2_backward_input(dyd, wd))
        [device.to_host(a) for a in upconv2x2_backward_params(xd, dyd)]
    # One split, so each block runs several reduction steps (the split path ran one each).
    gemm_module.SPLIT_TARGET_BLOCKS = 1
    device.to_host(upconv2x2_backward_params(xd, dyd)[0])


@pytest.mark.oclgrind
@pytest.mark.parametrize("math", ["fp32", "tf32"])
def test_upconv_under_oclgrind(math, tmp_path):
    assert_oclgrind_clean(run_under_oclgrind("test_upconv", "oclgrind_case_upconv", tmp_path, math=math))
