"""ReLU, SGD and weight-average Numba CUDA kernels under the simulator (NUMBA_ENABLE_CUDASIM=1), tiny shapes."""
import numpy as np
from numba import config

from cunet.ops.common import grid_1d
from cunet.ops.numba_cuda import relu, sgd

assert config.ENABLE_CUDASIM, "run with NUMBA_ENABLE_CUDASIM=1 (tests/test_numba_cuda.py does)"


def test_relu_kernels():
    rng = np.random.default_rng(1)
    n = 70  # one partial block of 256 threads: exercises the bounds check
    x, dy = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    y, dx = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
    grid, block = grid_1d(n, 256)
    relu.relu_forward[grid, block](x, y, np.int32(n))
    relu.relu_backward[grid, block](y, dy, dx, np.int32(n))
    np.testing.assert_array_equal(y, np.where(x > 0, x, 0))
    np.testing.assert_array_equal(dx, np.where(x > 0, dy, 0))


def test_sgd_kernel():
    rng = np.random.default_rng(2)
    n = 70
    p, v, g = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    p_ref, v_ref = p.astype(np.float64), v.astype(np.float64)
    v_ref = 0.9 * v_ref - 0.1 * (g + 1e-3 * p_ref)
    p_ref = p_ref + v_ref
    grid, block = grid_1d(n, 256)
    sgd.sgd_momentum_update[grid, block](p, v, g, np.float32(0.1), np.float32(0.9), np.float32(1e-3), np.int32(n))
    np.testing.assert_allclose(p, p_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(v, v_ref, rtol=1e-6, atol=1e-6)


def test_weight_average_kernel():
    rng = np.random.default_rng(3)
    n = 70
    a, p = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    a_ref = 0.9 * a.astype(np.float64) + 0.1 * p
    grid, block = grid_1d(n, 256)
    sgd.weight_average_update[grid, block](a, p, np.float32(0.1), np.int32(n))
    np.testing.assert_allclose(a, a_ref, rtol=1e-6, atol=1e-6)
