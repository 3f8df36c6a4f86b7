"""The fused SGD-with-momentum update and the weights' running average against float64 references,
on cpu and PoCL, and under Oclgrind."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cunet.ops import sgd_momentum_update, weight_average_update
from helpers import assert_oclgrind_clean, run_under_oclgrind

sizes = st.one_of(st.sampled_from([0, 1, 255, 256, 257, 4096]), st.integers(0, 3000))
hyper = st.tuples(st.floats(0, 0.1), st.sampled_from([0.0, 0.9, 0.99]), st.sampled_from([0.0, 5e-4]))


def sgd_reference(p, v, g, lr, momentum, weight_decay):
    """Caffe's update in float64, element by element."""
    p, v = p.astype(np.float64), v.astype(np.float64)
    for i in range(p.size):
        v[i] = momentum * v[i] - lr * (g[i] + weight_decay * p[i])
        p[i] = p[i] + v[i]
    return p, v


@given(n=sizes, hp=hyper, steps=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_sgd_matches_reference(device, n, hp, steps, seed):
    lr, momentum, wd = hp
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(np.float32)
    v = (0.01 * rng.standard_normal(n)).astype(np.float32)
    p_dev, v_dev = device.to_device(p), device.to_device(v)
    p_ref, v_ref = p.astype(np.float64), v.astype(np.float64)
    for _ in range(steps):
        g = rng.standard_normal(n).astype(np.float32)
        sgd_momentum_update(p_dev, v_dev, device.to_device(g), lr, momentum, wd)
        p_ref, v_ref = sgd_reference(p_ref, v_ref, g, lr, momentum, wd)
    # float32 arithmetic (a GPU may fuse multiply-adds): a few ulps of |p| ~ 1 per step.
    np.testing.assert_allclose(device.to_host(p_dev), p_ref, rtol=1e-6, atol=3e-7 * steps)
    np.testing.assert_allclose(device.to_host(v_dev), v_ref, rtol=1e-6, atol=3e-7 * steps)


def test_sgd_float64_on_cpu_is_exact_to_double(rng):
    p, v, g = (rng.standard_normal(50) for _ in range(3))
    p_ref, v_ref = sgd_reference(p.copy(), v.copy(), g, 0.01, 0.99, 1e-3)
    sgd_momentum_update(p, v, g, 0.01, 0.99, 1e-3)
    np.testing.assert_allclose(p, p_ref, rtol=1e-15)
    np.testing.assert_allclose(v, v_ref, rtol=1e-15)


def test_sgd_matches_pytorch_convention_with_constant_lr(rng):
    """Caffe's v' = m v - lr g; p += v' equals PyTorch's b' = m b + g; p -= lr b' (v = -lr b)."""
    p = rng.standard_normal(20)
    p_torch, b = p.copy(), np.zeros(20)
    v = np.zeros(20)
    for _ in range(5):
        g = rng.standard_normal(20)
        sgd_momentum_update(p, v, g, 0.05, 0.9)
        b = 0.9 * b + g
        p_torch = p_torch - 0.05 * b
    np.testing.assert_allclose(p, p_torch, rtol=1e-12)


def test_sgd_bad_input(device):
    p = device.to_device(np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="sgd_momentum_update: shapes must match"):
        sgd_momentum_update(p, device.to_device(np.zeros(8, np.float32)), device.to_device(np.zeros(7, np.float32)), 0.1, 0.9)
    with pytest.raises(ValueError, match=r"sgd_momentum_update: momentum must be in \[0, 1\), got 1.5"):
        sgd_momentum_update(p, device.to_device(np.zeros(8, np.float32)), device.to_device(np.zeros(8, np.float32)), 0.1, 1.5)


def sgd_case(device, rng):
    """(param, velocity, grad) on the device, fresh for each call."""
    return tuple(device.to_device(rng.standard_normal(40).astype(np.float32)) for _ in range(3))


@pytest.mark.parametrize("lr,momentum,weight_decay", [
    (np.float64(0.01), np.float64(0.9), np.float64(5e-4)),   # NumPy 64-bit scalars
    (np.float32(0.01), np.float32(0.9), np.float32(5e-4)),
    (0, 0, 0),                                                # plain ints
    (np.int64(0), np.int8(0), np.uint64(0)),
])
def test_sgd_takes_any_numeric_scalar_that_fits_float32(device, lr, momentum, weight_decay):
    """The kernels take float32: every real scalar type whose value fits gives the Python float's result."""
    p, v, g = sgd_case(device, np.random.default_rng(1))
    p_ref, v_ref, _ = sgd_case(device, np.random.default_rng(1))
    sgd_momentum_update(p, v, g, lr, momentum, weight_decay)
    sgd_momentum_update(p_ref, v_ref, g, float(lr), float(momentum), float(weight_decay))
    np.testing.assert_array_equal(device.to_host(p), device.to_host(p_ref))
    np.testing.assert_array_equal(device.to_host(v), device.to_host(v_ref))


@pytest.mark.parametrize("name,value,error,message", [
    ("lr", True, TypeError, "lr must be a real number"),                       # a bool is not a rate
    ("lr", "0.1", TypeError, "lr must be a real number .* got '0.1' \\(str\\)"),
    ("lr", np.array([0.1]), TypeError, "lr must be a real number"),          # was a Numba TypingError
    ("weight_decay", None, TypeError, "weight_decay must be a real number"),
    ("lr", float("nan"), ValueError, "lr must be finite and >= 0, got nan"),
    ("lr", float("inf"), ValueError, "lr must be finite and >= 0, got inf"),  # was accepted
    ("lr", 1e300, ValueError, "lr must be finite and >= 0 in float32.*rounds to inf"),  # was accepted
    ("lr", -0.1, ValueError, "lr must be finite and >= 0"),
    ("momentum", 1, ValueError, r"momentum must be in \[0, 1\), got 1"),
    ("momentum", np.float64(1 - 1e-9), ValueError, "momentum must be in .* in float32"),
    ("weight_decay", -1, ValueError, "weight_decay must be finite and >= 0"),
])
def test_sgd_bad_scalars_name_the_argument_and_value(device, name, value, error, message):
    p, v, g = sgd_case(device, np.random.default_rng(2))
    before = device.to_host(p).copy()
    hyper = dict(lr=0.01, momentum=0.9, weight_decay=0.0) | {name: value}
    with pytest.raises(error, match=f"sgd_momentum_update: {message}"):
        sgd_momentum_update(p, v, g, **hyper)
    np.testing.assert_array_equal(device.to_host(p), before)  # refused before anything was written


def test_sgd_read_only_grad_works_read_only_state_is_refused(rng):
    """grad is only read (a read-only array is fine); param and velocity are written in place."""
    p, v, g = (rng.standard_normal(10).astype(np.float32) for _ in range(3))
    g.setflags(write=False)
    p_ref, v_ref = p.copy(), v.copy()
    sgd_momentum_update(p, v, g, 0.1, 0.9)
    sgd_momentum_update(p_ref, v_ref, g.copy(), 0.1, 0.9)
    np.testing.assert_array_equal(p, p_ref)
    for name in ("param", "velocity"):
        arrays = dict(param=p.copy(), velocity=v.copy())
        arrays[name].setflags(write=False)
        with pytest.raises(ValueError, match=f"sgd_momentum_update: {name} is read-only"):  # was a Numba TypingError
            sgd_momentum_update(arrays["param"], arrays["velocity"], g, 0.1, 0.9)


def test_sgd_refuses_param_and_velocity_in_one_array(rng):
    p = rng.standard_normal(10).astype(np.float32)
    with pytest.raises(ValueError, match="sgd_momentum_update: param and velocity share memory"):
        sgd_momentum_update(p, p, np.ones_like(p), 0.1, 0.9)


def oclgrind_case_sgd(device):
    """Two updates over a ragged size."""
    rng = np.random.default_rng(0)
    p, v = device.to_device(rng.standard_normal(300).astype(np.float32)), device.zeros((300,))
    for _ in range(2):
        sgd_momentum_update(p, v, device.to_device(rng.standard_normal(300).astype(np.float32)), 0.01, 0.99, 5e-4)
    device.to_host(p)


@pytest.mark.oclgrind
def test_sgd_under_oclgrind(tmp_path):
    assert_oclgrind_clean(run_under_oclgrind("test_sgd", "oclgrind_case_sgd", tmp_path))


def average_reference(a, p, decay):
    """The running average's update in float64, element by element: decay * a + (1 - decay) * p."""
    a = a.astype(np.float64)
    for i in range(a.size):
        a[i] = decay * a[i] + (1 - decay) * float(p[i])
    return a


@given(n=sizes, decay=st.one_of(st.sampled_from([0.0, 0.5, 0.9995, 1.0]), st.floats(0, 1)), steps=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_weight_average_matches_reference(device, n, decay, steps, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n).astype(np.float32)
    a_dev, a_ref = device.to_device(a), a.astype(np.float64)
    for _ in range(steps):
        p = rng.standard_normal(n).astype(np.float32)
        weight_average_update(a_dev, device.to_device(p), decay)
        a_ref = average_reference(a_ref, p, decay)
    # float32: a + rate * (p - a) rounds three times per step, each within an ulp of |a|, |p| ~ 1..4
    np.testing.assert_allclose(device.to_host(a_dev), a_ref, rtol=1e-6, atol=1e-6 * steps)


def test_weight_average_ends_and_fixed_point_are_exact(device, rng):
    """decay 1 keeps the average and p = a leaves it exactly as it is (a + rate * 0); decay 0
    lands on the weights within the rounding of a + (p - a)."""
    a, p = (rng.standard_normal(300).astype(np.float32) for _ in range(2))
    a_dev = device.to_device(a)
    weight_average_update(a_dev, device.to_device(p), 1.0)
    np.testing.assert_array_equal(device.to_host(a_dev), a)
    weight_average_update(a_dev, device.to_device(p), 0.0)
    np.testing.assert_allclose(device.to_host(a_dev), p, rtol=0, atol=4e-7)
    a_dev = device.to_device(a)
    weight_average_update(a_dev, device.to_device(a), 0.9995)
    np.testing.assert_array_equal(device.to_host(a_dev), a)


@pytest.mark.parametrize("decay,error,message", [
    (1.5, ValueError, r"decay must be in \[0, 1\], got 1.5"),
    (-0.1, ValueError, r"decay must be in \[0, 1\]"),
    (float("nan"), ValueError, "decay must be in"),
    (True, TypeError, "decay must be a real number"),
])
def test_weight_average_bad_decay_names_it(device, rng, decay, error, message):
    a = device.to_device(rng.standard_normal(8).astype(np.float32))
    before = device.to_host(a).copy()
    with pytest.raises(error, match=f"weight_average_update: {message}"):
        weight_average_update(a, device.to_device(np.zeros(8, np.float32)), decay)
    np.testing.assert_array_equal(device.to_host(a), before)


def test_weight_average_bad_arrays(rng):
    a, p = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    with pytest.raises(ValueError, match="weight_average_update: shapes must match"):
        weight_average_update(a, p[:7], 0.9)
    p.setflags(write=False)
    weight_average_update(a, p, 0.9)   # param is only read
    a.setflags(write=False)
    with pytest.raises(ValueError, match="weight_average_update: average is read-only"):
        weight_average_update(a, p, 0.9)


def oclgrind_case_weight_average(device):
    """Two updates of a ragged size, checked against the reference: Oclgrind runs the OpenCL
    kernel on any CPU, so its arithmetic is checked where PoCL cannot run."""
    rng = np.random.default_rng(0)
    a0 = rng.standard_normal(300).astype(np.float32)
    a, a_ref = device.to_device(a0), a0.astype(np.float64)
    for _ in range(2):
        p = rng.standard_normal(300).astype(np.float32)
        weight_average_update(a, device.to_device(p), 0.99)
        a_ref = average_reference(a_ref, p, 0.99)
    np.testing.assert_allclose(device.to_host(a), a_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.oclgrind
def test_weight_average_under_oclgrind(tmp_path):
    assert_oclgrind_clean(run_under_oclgrind("test_sgd", "oclgrind_case_weight_average", tmp_path))
