"""Drop-out against a pure-Python Philox reference, on cpu and PoCL, and under Oclgrind.

The reference mask is built element by element from test_random.philox_reference (Python
integers, straight from the paper), so these tests check the element -> (counter, word)
mapping, the float32 threshold and the scaling, not just that two devices agree.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cunet.ops import dropout_backward, dropout_forward, dropout_mask
from cunet.ops.random import split_seed
from helpers import assert_oclgrind_clean, run_under_oclgrind
from test_random import philox_reference

# One block makes 256 threads x 4 elements = 1024 elements: sizes around 4 and 1024.
sizes = st.one_of(st.sampled_from([0, 1, 3, 4, 5, 1023, 1024, 1025, 2049]), st.integers(0, 2500))
shapes = st.one_of(sizes.map(lambda n: (n,)), st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9), st.integers(1, 11)))
rates = st.one_of(st.sampled_from([0.0, 0.5, 0.1, 0.9]), st.floats(0.0, 0.99))
seeds = st.integers(0, 2**64 - 1)
streams = st.integers(0, 2**32 - 1)


def keep_reference(n, p, seed, stream):
    """keep_i = [u_i >= p] with u_i from counter {i // 4, stream, 0, 0}, word i % 4, in float32."""
    key = split_seed(seed)
    keep = np.empty(n, bool)
    for i in range(n):
        word = philox_reference((i // 4, stream, 0, 0), key)[i % 4]
        keep[i] = np.float32((word >> 8) / 2**24) >= np.float32(p)  # u is exact: 24 bits
    return keep


def dropout_reference(x, keep, p):
    """x * keep / (1 - p), with the scale rounded to x's precision once, as the op does."""
    scale = x.dtype.type(1.0 / (1.0 - p))
    out = np.zeros_like(x)
    for i in range(x.size):
        if keep.flat[i]:
            out.flat[i] = x.flat[i] * scale
    return out


@given(shape=shapes, p=rates, seed=seeds, stream=streams)
def test_dropout_matches_reference(device, shape, p, seed, stream):
    rng = np.random.default_rng(seed % 2**32)
    x, dy = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    keep = keep_reference(math.prod(shape), p, seed, stream).reshape(shape)
    y = device.to_host(dropout_forward(device.to_device(x), p, seed, stream))
    dx = device.to_host(dropout_backward(device.to_device(dy), p, seed, stream))
    mask = device.to_host(dropout_mask(shape, p, seed, stream, device.runtime))
    # Selecting and one float32 multiply: exact on every device.
    np.testing.assert_array_equal(mask, keep.astype(np.uint8))
    np.testing.assert_array_equal(y, dropout_reference(x, keep, p))
    np.testing.assert_array_equal(dx, dropout_reference(dy, keep, p))


@given(n=st.integers(0, 6000), p=rates, seed=seeds, stream=streams)
def test_masks_are_bit_identical_on_cpu_and_device(gpu_device, n, p, seed, stream):
    cpu = dropout_mask((n,), p, seed, stream)
    gpu = gpu_device.to_host(dropout_mask((n,), p, seed, stream, gpu_device.runtime))
    np.testing.assert_array_equal(gpu, cpu)
    x = np.ones(n, np.float32)  # and the forward's zeros sit exactly where the mask's do
    y = gpu_device.to_host(dropout_forward(gpu_device.to_device(x), p, seed, stream))
    np.testing.assert_array_equal(y != 0, cpu == 1)


def test_seeds_and_streams_give_different_masks(device):
    def mask(seed, stream=0):
        return device.to_host(dropout_mask((4096,), 0.5, seed, stream, device.runtime))

    base = mask(7)
    for other in (mask(8), mask(7, stream=1), mask(7 + 2**32)):  # key word 0, stream, key word 1
        # Independent masks at p = 0.5 agree on half the elements (sd 32 of 4096).
        agreement = np.mean(other == base)
        assert 0.45 < agreement < 0.55, agreement
    np.testing.assert_array_equal(mask(7), base)  # and the same (seed, stream) repeats exactly


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_fraction_is_one_minus_p(device, p):
    n = 2**18
    keep = device.to_host(dropout_mask((n,), p, seed=2015, stream=3, runtime=device.runtime)).astype(np.float64)
    five_sigma = 5 * math.sqrt(p * (1 - p) / (n // 4))  # per lane: n/4 draws
    # Each of the four words of a Philox call (lane i % 4) must be uniform on its own ...
    for lane in range(4):
        assert abs(keep[lane::4].mean() - (1 - p)) < five_sigma, (lane, keep[lane::4].mean())
    # ... and neighbours (same call, and across calls) independent: P(both kept) = (1-p)^2.
    both = keep[:-1] * keep[1:]
    assert abs(both.mean() - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 / n)


def test_backward_uses_the_forward_mask(device, rng):
    x = rng.uniform(0.5, 1.5, (2, 3, 17, 19)).astype(np.float32)  # never 0, so y == 0 means dropped
    dy = rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    y = device.to_host(dropout_forward(device.to_device(x), 0.3, seed=11, stream=2))
    dx = device.to_host(dropout_backward(device.to_device(dy), 0.3, seed=11, stream=2))
    np.testing.assert_array_equal(dx == 0, y == 0)
    kept = y != 0
    np.testing.assert_array_equal(dx[kept], dy[kept] * np.float32(1 / (1 - 0.3)))
    assert 0.6 < kept.mean() < 0.8


def test_p_zero_is_identity(device, rng):
    x = rng.standard_normal((3, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(device.to_host(dropout_forward(device.to_device(x), 0.0, seed=5)), x)
    np.testing.assert_array_equal(device.to_host(dropout_backward(device.to_device(x), 0, seed=5)), x)


def test_dropped_inf_and_nan_become_zero_on_every_device(device):
    x = np.full(64, np.inf, np.float32)
    x[::2] = np.nan
    keep = dropout_mask((64,), 0.5, seed=1) == 1
    y = device.to_host(dropout_forward(device.to_device(x), 0.5, seed=1))
    assert np.all(y[~keep] == 0)
    np.testing.assert_array_equal(y[keep], x[keep])  # inf and NaN survive where kept


def test_float64_on_cpu_uses_the_same_mask(rng):
    x = rng.standard_normal((4, 33))
    y = dropout_forward(x, 0.25, seed=9)
    assert y.dtype == np.float64
    keep = keep_reference(x.size, 0.25, 9, 0).reshape(x.shape)
    np.testing.assert_array_equal(y, np.where(keep, x * (1 / 0.75), 0.0))


@pytest.fixture
def refuse_launches(device, monkeypatch):
    """Make any kernel launch fail the test: errors must come before the first launch."""
    if device.runtime is not None:
        def refuse(*args, **kwargs):
            raise AssertionError("a kernel was launched before the inputs were validated")

        monkeypatch.setattr(device.runtime, "launch", refuse)


def test_bad_input(device, rng, refuse_launches):
    x = device.to_device(rng.standard_normal((4, 4)).astype(np.float32))
    for p in (-0.1, 1.0, 1.5, float("nan"), 1 - 1e-9):  # 1 - 1e-9 rounds to 1 in float32
        with pytest.raises(ValueError, match=r"dropout_forward: p must be in \[0, 1\)"):
            dropout_forward(x, p, seed=0)
    with pytest.raises(TypeError, match="dropout_backward: p must be a real number"):
        dropout_backward(x, True, seed=0)
    with pytest.raises(ValueError, match=r"dropout_forward: seed must be in \[0, 2\*\*64\)"):
        dropout_forward(x, 0.5, seed=2**64)
    with pytest.raises(ValueError, match="dropout_mask: stream must be in"):
        dropout_mask((4,), 0.5, seed=0, stream=-1, runtime=device.runtime)
    with pytest.raises(TypeError, match="dropout_forward: x has dtype int32"):
        dropout_forward(device.to_device(np.zeros(4, np.int32)), 0.5, seed=0)
    with pytest.raises(ValueError, match=r"dropout_mask: shape\[1\] must be in \[0, 2\*\*31\), got -1"):
        dropout_mask((2, -1), 0.5, seed=0, runtime=device.runtime)


@pytest.mark.parametrize("p,seed,stream", [
    (np.float64(0.3), np.int64(7), np.int64(1)),     # NumPy 64-bit scalars
    (np.float32(0.3), np.uint64(7), np.uint32(1)),
])
def test_numpy_scalars_give_the_python_numbers_mask(device, p, seed, stream):
    x = device.to_device(np.ones((5, 9), np.float32))
    expected = device.to_host(dropout_forward(x, float(np.float32(p)), int(seed), int(stream)))
    np.testing.assert_array_equal(device.to_host(dropout_forward(x, p, seed, stream)), expected)


def test_seeds_above_32_bits_work(device):
    """A seed is 64 bits (two Philox key words): 2**33 + 5 is a valid seed, not an overflow."""
    seed = 2**33 + 5
    got = device.to_host(dropout_mask((100,), 0.5, seed, 2, device.runtime))
    np.testing.assert_array_equal(got, keep_reference(100, 0.5, seed, 2).astype(np.uint8))


@pytest.mark.parametrize("op", ["dropout_forward", "dropout_backward", "dropout_mask"])
@pytest.mark.parametrize("name,value,error,message", [
    ("p", True, TypeError, "p must be a real number .*got True \\(bool\\)"),
    ("p", "0.5", TypeError, "p must be a real number"),
    ("seed", 1.5, TypeError, "seed must be an integer in \\[0, 2\\*\\*64\\), got 1.5 \\(float\\)"),  # was a bare TypeError
    ("seed", 3.0, TypeError, "seed must be an integer"),
    ("seed", True, TypeError, "seed must be an integer .*got True \\(bool\\)"),           # was accepted as 1
    ("seed", -1, ValueError, "seed must be in \\[0, 2\\*\\*64\\), got -1"),
    ("stream", 2.0, TypeError, "stream must be an integer"),                            # was accepted as 2
    ("stream", 2**32, ValueError, "stream must be in \\[0, 2\\*\\*32\\), got 4294967296"),
    ("stream", np.int64(-1), ValueError, "stream must be in"),
])
def test_bad_scalars_name_the_op_argument_and_value(device, refuse_launches, op, name, value, error, message):
    args = dict(p=0.5, seed=1, stream=0) | {name: value}
    x = device.to_device(np.ones(8, np.float32))
    call = {"dropout_forward": lambda: dropout_forward(x, **args), "dropout_backward": lambda: dropout_backward(x, **args),
            "dropout_mask": lambda: dropout_mask((8,), runtime=device.runtime, **args)}[op]
    with pytest.raises(error, match=f"{op}: {message}"):
        call()


def test_mask_shape_must_be_integers(device):
    with pytest.raises(TypeError, match=r"dropout_mask: shape\[0\] must be an integer .*got 2.5"):  # was truncated to 2
        dropout_mask((2.5, 4), 0.5, seed=0, runtime=device.runtime)
    with pytest.raises(TypeError, match="dropout_mask: shape must be a sequence of integers"):
        dropout_mask(8, 0.5, seed=0, runtime=device.runtime)
    with pytest.raises(ValueError, match="dropout_mask: mask would have shape"):
        dropout_mask((2**16, 2**16), 0.5, seed=0, runtime=device.runtime)


def oclgrind_case_dropout(device):
    """Forward, backward and mask over a ragged size: two blocks, the last group partial."""
    rng = np.random.default_rng(0)
    n = 1024 + 7
    x = device.to_device(rng.standard_normal(n).astype(np.float32))
    device.to_host(dropout_backward(dropout_forward(x, 0.5, seed=3, stream=1), 0.5, seed=3, stream=1))
    device.to_host(dropout_mask((n,), 0.5, seed=3, stream=1, runtime=device.runtime))


@pytest.mark.oclgrind
def test_dropout_under_oclgrind(tmp_path):
    assert_oclgrind_clean(run_under_oclgrind("test_dropout", "oclgrind_case_dropout", tmp_path))
