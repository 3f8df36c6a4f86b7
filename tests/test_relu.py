"""ReLU forward/backward against a naive NumPy reference, on cpu and PoCL, and under Oclgrind."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cunet.ops import relu_backward, relu_forward
from helpers import assert_oclgrind_clean, run_under_oclgrind

# Sizes around the 256-thread block: empty, one element, exact multiples, ragged tails.
sizes = st.one_of(st.sampled_from([0, 1, 255, 256, 257, 512, 1024]), st.integers(0, 3000))
shapes = st.one_of(sizes.map(lambda n: (n,)), st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9), st.integers(1, 11)))


def relu_reference(x):
    """max(x, 0), written out element by element."""
    out = np.empty_like(x)
    for i, v in enumerate(x.flat):
        out.flat[i] = v if v > 0 else 0
    return out


def with_zeros(rng, shape, dtype=np.float32):
    """Random values with exact zeros mixed in (the edge of the ReLU)."""
    x = rng.standard_normal(shape).astype(dtype)
    x[rng.random(shape) < 0.1] = 0
    return x


@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_relu_matches_reference(device, shape, seed):
    rng = np.random.default_rng(seed)
    x, dy = with_zeros(rng, shape), rng.standard_normal(shape).astype(np.float32)
    y = relu_forward(device.to_device(x))
    dx = relu_backward(y, device.to_device(dy))
    # ReLU only selects values: results are exact, on every device.
    np.testing.assert_array_equal(device.to_host(y), relu_reference(x))
    np.testing.assert_array_equal(device.to_host(dx), np.where(relu_reference(x) > 0, dy, 0))


def test_relu_float64_on_cpu(rng):
    x = with_zeros(rng, (2, 3, 5, 7), np.float64)
    y = relu_forward(x)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, relu_reference(x))


def test_relu_nan_maps_to_zero_like_fmaxf(device):
    x = np.array([np.nan, -1.0, 2.0], np.float32)
    np.testing.assert_array_equal(device.to_host(relu_forward(device.to_device(x))), [0.0, 0.0, 2.0])


def test_relu_bad_input(device, rng):
    x = rng.standard_normal((4, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="relu_forward: x has dtype int32; expected float32"):
        relu_forward(device.to_device(x.astype(np.int32)))
    with pytest.raises(ValueError, match="relu_backward: shapes must match"):
        relu_backward(device.to_device(x), device.to_device(x[:2].copy()))
    if device.name == "cpu":
        with pytest.raises(ValueError, match="C-contiguous"):
            relu_forward(x[:, ::2])
    else:
        with pytest.raises(TypeError, match="expected float32"):
            relu_forward(device.to_device(x.astype(np.float64)))
        with pytest.raises(ValueError, match="one device"):
            relu_backward(device.to_device(x), x)


def oclgrind_case_relu(device):
    """Forward and backward over a ragged size (two blocks, the second partly idle)."""
    rng = np.random.default_rng(0)
    x = device.to_device(with_zeros(rng, (300,)))
    device.to_host(relu_backward(relu_forward(x), device.to_device(rng.standard_normal(300).astype(np.float32))))


@pytest.mark.oclgrind
def test_relu_under_oclgrind(tmp_path):
    assert_oclgrind_clean(run_under_oclgrind("test_relu", "oclgrind_case_relu", tmp_path))
