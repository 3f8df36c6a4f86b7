"""The max-pool Numba CUDA kernels under the simulator (NUMBA_ENABLE_CUDASIM=1), tiny shapes.

Launched exactly as ops/maxpool.py launches them: [planes, rows, cols] views and one
thread per window on the grid of grid_1d(windows, 256).
"""
import numpy as np
from numba import config

from cunet.ops.common import grid_1d
from cunet.ops.maxpool import MAXPOOL_CU
from cunet.ops.numba_cuda import maxpool

assert config.ENABLE_CUDASIM, "run with NUMBA_ENABLE_CUDASIM=1 (tests/test_numba_cuda.py does)"


def reference(x):
    """y, argmax by explicit loops: the first NaN in the window, else the first maximum."""
    planes, H, W = x.shape
    y, argmax = np.empty((planes, H // 2, W // 2), x.dtype), np.empty((planes, H // 2, W // 2), np.uint8)
    for p, i, j in np.ndindex(y.shape):
        window = [x[p, 2 * i, 2 * j], x[p, 2 * i, 2 * j + 1], x[p, 2 * i + 1, 2 * j], x[p, 2 * i + 1, 2 * j + 1]]
        nans = [q for q, v in enumerate(window) if v != v]
        q = nans[0] if nans else window.index(max(window))
        y[p, i, j], argmax[p, i, j] = window[q], q
    return y, argmax


def test_maxpool_kernels_with_ties_and_nan():
    rng = np.random.default_rng(3)
    x = rng.integers(-1, 2, (3, 4, 6)).astype(np.float32)  # many ties; 3*2*3 = 18 windows
    x[0, 0, 1] = np.nan
    x[2, 3, 4] = np.nan
    y, argmax = np.full((3, 2, 3), -7, np.float32), np.full((3, 2, 3), 9, np.uint8)
    grid, block = grid_1d(y.size, MAXPOOL_CU.threads)
    maxpool.maxpool2x2_forward[grid, block](x, y, argmax)
    y_ref, argmax_ref = reference(x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, argmax_ref)

    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = np.full(x.shape, np.nan, np.float32)  # every element must be overwritten
    maxpool.maxpool2x2_backward[grid, block](dy, argmax, dx)
    expected = np.zeros_like(x)
    for p, i, j in np.ndindex(dy.shape):
        a = int(argmax_ref[p, i, j])
        expected[p, 2 * i + a // 2, 2 * j + a % 2] = dy[p, i, j]
    np.testing.assert_array_equal(dx, expected)
