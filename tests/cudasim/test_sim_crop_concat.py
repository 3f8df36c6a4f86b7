"""The crop-and-concatenate Numba CUDA kernels under the simulator (NUMBA_ENABLE_CUDASIM=1), tiny shapes.

Launched as ops/crop_concat.py launches them: one thread per output element, grid_1d(size, 256).
"""
import numpy as np
from numba import config

from cunet.ops.common import grid_1d
from cunet.ops.crop_concat import CROP_CONCAT_CU
from cunet.ops.numba_cuda import crop_concat

assert config.ENABLE_CUDASIM, "run with NUMBA_ENABLE_CUDASIM=1 (tests/test_numba_cuda.py does)"


def launch(kernel, out, *inputs):
    grid, block = grid_1d(out.size, CROP_CONCAT_CU.threads)
    kernel[grid, block](*inputs, out)


def test_crop_concat_kernels():
    rng = np.random.default_rng(4)
    skip = rng.standard_normal((2, 2, 5, 7)).astype(np.float32)  # margins (1, 2)
    up = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    y = np.full((2, 3, 3, 3), np.nan, np.float32)
    launch(crop_concat.crop_concat_forward, y, skip, up)
    expected = np.empty_like(y)
    for n, c, i, j in np.ndindex(y.shape):
        expected[n, c, i, j] = skip[n, c, 1 + i, 2 + j] if c < 2 else up[n, c - 2, i, j]
    np.testing.assert_array_equal(y, expected)

    dskip, dup = np.full(skip.shape, np.nan, np.float32), np.full(up.shape, np.nan, np.float32)
    launch(crop_concat.crop_concat_backward_skip, dskip, y)
    launch(crop_concat.crop_concat_backward_up, dup, y)
    expected_dskip = np.zeros_like(skip)
    for n, c, ii, jj in np.ndindex(skip.shape):
        if 1 <= ii < 4 and 2 <= jj < 5:
            expected_dskip[n, c, ii, jj] = y[n, c, ii - 1, jj - 2]
    np.testing.assert_array_equal(dskip, expected_dskip)
    np.testing.assert_array_equal(dup, up)
