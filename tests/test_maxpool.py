"""2x2 max-pool forward/backward against naive window loops, on cpu and PoCL, and under Oclgrind."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cunet.gradcheck import check_backward
from cunet.ops import maxpool2x2_backward, maxpool2x2_forward
from helpers import assert_oclgrind_clean, run_under_oclgrind

# Output sizes from 1x1 up, batch up to 3; up to 3*4*6*7 = 504 windows, so two
# 256-thread blocks with a ragged second one.
shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 6), st.integers(1, 7)).map(
    lambda s: (s[0], s[1], 2 * s[2], 2 * s[3])
)


def window_reference(values):
    """(max, position) of one window listed row-major: the first NaN if any, else the first maximum."""
    values = list(values)
    nans = [q for q, v in enumerate(values) if math.isnan(v)]
    if nans:
        return values[nans[0]], nans[0]
    best = max(values)
    return best, values.index(best)


def maxpool_reference(x):
    """y and argmax by looping over every window."""
    N, C, H, W = x.shape
    y, argmax = np.empty((N, C, H // 2, W // 2), x.dtype), np.empty((N, C, H // 2, W // 2), np.uint8)
    for n, c, i, j in np.ndindex(y.shape):
        window = [x[n, c, 2 * i, 2 * j], x[n, c, 2 * i, 2 * j + 1], x[n, c, 2 * i + 1, 2 * j], x[n, c, 2 * i + 1, 2 * j + 1]]
        y[n, c, i, j], argmax[n, c, i, j] = window_reference(window)
    return y, argmax


def maxpool_backward_reference(dy, argmax):
    """dx: each dy value placed at its window's argmax, zeros elsewhere."""
    N, C, Ho, Wo = dy.shape
    dx = np.zeros((N, C, 2 * Ho, 2 * Wo), dy.dtype)
    for n, c, i, j in np.ndindex(dy.shape):
        a = int(argmax[n, c, i, j])
        dx[n, c, 2 * i + a // 2, 2 * j + a % 2] = dy[n, c, i, j]
    return dx


def values_with_ties(rng, shape, dtype=np.float32):
    """Random values; half the time drawn from {-1, 0, 1} so that windows often tie."""
    if rng.random() < 0.5:
        return rng.integers(-1, 2, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_maxpool_matches_reference(device, shape, seed):
    rng = np.random.default_rng(seed)
    x = values_with_ties(rng, shape)
    y, argmax = maxpool2x2_forward(device.to_device(x))
    y_ref, argmax_ref = maxpool_reference(x)
    # Max-pool only selects values: exact, ties included, on every device.
    np.testing.assert_array_equal(device.to_host(y), y_ref)
    np.testing.assert_array_equal(device.to_host(argmax), argmax_ref)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx = maxpool2x2_backward(device.to_device(dy), argmax, shape)
    np.testing.assert_array_equal(device.to_host(dx), maxpool_backward_reference(dy, argmax_ref))


def test_maxpool_backward_overwrites_every_element(device):
    """dx comes from an uninitialised allocation: the three non-argmax positions must be written as 0."""
    dy = np.full((1, 2, 3, 4), np.float32(7))
    argmax = (np.arange(dy.size) % 4).astype(np.uint8).reshape(dy.shape)
    for _ in range(3):  # fresh allocations may reuse memory holding earlier non-zero data
        dx = device.to_host(maxpool2x2_backward(device.to_device(dy), device.to_device(argmax), (1, 2, 6, 8)))
        np.testing.assert_array_equal(dx, maxpool_backward_reference(dy, argmax))


def test_all_equal_windows_give_argmax_zero(device):
    x = np.full((2, 3, 4, 6), 0.5, np.float32)
    y, argmax = maxpool2x2_forward(device.to_device(x))
    assert (device.to_host(argmax) == 0).all()
    assert (device.to_host(y) == 0.5).all()


# One window per row, row-major (0 1 / 2 3), and the argmax the rule prescribes.
TIE_PATTERN = [
    ([1, 3, 3, 0], 1),            # tie between 1 and 2: the first
    ([0, 0, 5, 5], 2),            # tie on the bottom row
    ([4, 0, 0, 4], 0),            # tie between the corners
    ([-2, -1, -1, -1], 1),        # three-way tie of negatives
    ([-0.0, 0.0, 0.0, -0.0], 0),  # -0 == +0: a tie, so the first
    ([1, 2, np.nan, 9], 2),       # NaN propagates, beating the larger 9
    ([np.nan, 1, np.nan, 2], 0),  # the first NaN wins
    ([-np.inf, -np.inf, -np.inf, -np.inf], 0),
    ([-np.inf, np.inf, np.inf, 1], 1),
]


def tie_pattern_input():
    """The TIE_PATTERN windows laid out as a [1, 1, 2, 2 * len] tensor."""
    windows = np.array([w for w, _ in TIE_PATTERN], np.float32)  # [n, 4]
    return windows.reshape(-1, 2, 2).transpose(1, 0, 2).reshape(1, 1, 2, -1).copy()


def test_tie_and_nan_pattern_is_the_same_on_every_device(device):
    x = tie_pattern_input()
    y, argmax = maxpool2x2_forward(device.to_device(x))
    expected = [a for _, a in TIE_PATTERN]
    np.testing.assert_array_equal(device.to_host(argmax).ravel(), expected)
    np.testing.assert_array_equal(device.to_host(y), maxpool_reference(x)[0])


def test_maxpool_float64_on_cpu(rng):
    x = values_with_ties(rng, (2, 3, 6, 4), np.float64)
    y, argmax = maxpool2x2_forward(x)
    assert y.dtype == np.float64 and argmax.dtype == np.uint8
    np.testing.assert_array_equal(y, maxpool_reference(x)[0])
    dx = maxpool2x2_backward(np.ones_like(y), argmax, x.shape)
    assert dx.dtype == np.float64


def test_maxpool_gradient_matches_finite_differences(rng):
    """float64, tie-free input (a permutation of well-separated values), every input element perturbed."""
    shape = (2, 1, 4, 6)
    x = rng.permutation(np.arange(np.prod(shape), dtype=np.float64)).reshape(shape) * 0.1
    r = rng.standard_normal((2, 1, 2, 3))  # L = sum(r * y)
    _, argmax = maxpool2x2_forward(x)
    dx = maxpool2x2_backward(r, argmax, shape)
    # h well under the 0.1 spacing: no argmax moves (forward returns (y, argmax): check_backward takes y)
    check_backward(maxpool2x2_forward, [x], [dx], r, h=1e-3, rtol=1e-7, atol=1e-9)


def test_maxpool_bad_input(device):
    x = device.to_device(np.zeros((1, 2, 4, 6), np.float32))
    with pytest.raises(ValueError, match=r"maxpool2x2_forward: input height and width must be even.*W=5"):
        maxpool2x2_forward(device.to_device(np.zeros((1, 2, 4, 5), np.float32)))
    with pytest.raises(ValueError, match=r"maxpool2x2_forward: x must be \[N, C, H, W\], got shape \(2, 4, 6\)"):
        maxpool2x2_forward(device.to_device(np.zeros((2, 4, 6), np.float32)))
    with pytest.raises(TypeError, match="maxpool2x2_forward: x has dtype int32"):
        maxpool2x2_forward(device.to_device(np.zeros((1, 2, 4, 6), np.int32)))
    y, argmax = maxpool2x2_forward(x)
    with pytest.raises(TypeError, match="maxpool2x2_backward: argmax must be the uint8 array"):
        maxpool2x2_backward(y, device.to_device(np.zeros((1, 2, 2, 3), np.int32)), (1, 2, 4, 6))
    with pytest.raises(ValueError, match=r"argmax shape \(1, 2, 2, 2\) must equal dy shape \(1, 2, 2, 3\)"):
        maxpool2x2_backward(y, device.to_device(np.zeros((1, 2, 2, 2), np.uint8)), (1, 2, 4, 6))
    with pytest.raises(ValueError, match=r"input_shape \(1, 2, 4, 7\) does not match dy shape \(1, 2, 2, 3\); expected \(1, 2, 4, 6\)"):
        maxpool2x2_backward(y, argmax, (1, 2, 4, 7))
    if device.name != "cpu":
        with pytest.raises(ValueError, match="one device"):
            maxpool2x2_backward(y, device.to_host(argmax), (1, 2, 4, 6))


@pytest.mark.parametrize("code", [4, 7, 255])
def test_argmax_codes_above_3_are_refused(device, code):
    """A code outside 0..3 is not a window position: an error naming it, never a silently zero gradient."""
    rng = np.random.default_rng(code)
    y, argmax = maxpool2x2_forward(device.to_device(rng.standard_normal((2, 3, 4, 6)).astype(np.float32)))
    bad = device.to_host(argmax).copy()
    bad[1, 2, 0, 1] = code
    with pytest.raises(ValueError, match=rf"maxpool2x2_backward: argmax must hold window positions 0..3.*1 hold "
                                         rf"other values, e.g. argmax\[1, 2, 0, 1\] = {code}"):
        maxpool2x2_backward(y, device.to_device(bad), (2, 3, 4, 6))


def test_checked_argmax_skips_the_device_copy_and_stays_memory_safe(gpu_device, monkeypatch):
    """checked=True: no copy to the host for the check, and a bad code still only routes the gradient nowhere."""
    dy = np.full((1, 2, 3, 4), np.float32(7))
    argmax = (np.arange(dy.size) % 4).astype(np.uint8).reshape(dy.shape)
    argmax[0, 1, 2, 3] = 200
    dy_dev, argmax_dev = gpu_device.to_device(dy), gpu_device.to_device(argmax)
    copies = []
    original = gpu_device.runtime.to_host
    monkeypatch.setattr(gpu_device.runtime, "to_host", lambda a: (copies.append(a.dtype), original(a))[1])
    dx = maxpool2x2_backward(dy_dev, argmax_dev, (1, 2, 6, 8), checked=True)
    assert copies == []
    monkeypatch.undo()
    expected = maxpool_backward_reference(dy, np.where(argmax < 4, argmax, 0))
    expected[0, 1, 4:6, 6:8] = 0  # the bad window: no gradient anywhere in it, and nothing outside it touched
    np.testing.assert_array_equal(gpu_device.to_host(dx), expected)


def test_input_shape_must_be_integers(device):
    y, argmax = maxpool2x2_forward(device.to_device(np.zeros((1, 2, 4, 6), np.float32)))
    with pytest.raises(TypeError, match=r"maxpool2x2_backward: input_shape\[2\] must be an integer .*got 4.5"):
        maxpool2x2_backward(y, argmax, (1, 2, 4.5, 6))


def oclgrind_case_maxpool(device):
    """Forward and backward over 270 windows: two blocks, the second mostly idle."""
    rng = np.random.default_rng(0)
    x = values_with_ties(rng, (1, 5, 12, 18))
    y, argmax = maxpool2x2_forward(device.to_device(x))
    dx = maxpool2x2_backward(device.to_device(rng.standard_normal(y.shape).astype(np.float32)), argmax, x.shape)
    np.testing.assert_array_equal(device.to_host(argmax), maxpool_reference(x)[1])
    device.to_host(dx)


@pytest.mark.oclgrind
def test_maxpool_under_oclgrind(tmp_path):
    assert_oclgrind_clean(run_under_oclgrind("test_maxpool", "oclgrind_case_maxpool", tmp_path))
