"""The drop-out Numba CUDA kernels under the simulator (NUMBA_ENABLE_CUDASIM=1), tiny shapes.

Launched exactly as ops/dropout.py launches them: flat arrays, one thread per group of
four elements on the grid of dropout_grid(n). The point: the Numba mask is the cpu mask
(and so, by tests/test_dropout.py, the CUDA C / OpenCL mask) and the pure-Python one.
"""
import numpy as np
from numba import config

from cunet.ops.dropout import dropout_forward, dropout_grid, dropout_mask
from cunet.ops.numba_cuda import dropout
from cunet.ops.random import split_seed
from test_dropout import keep_reference

assert config.ENABLE_CUDASIM, "run with NUMBA_ENABLE_CUDASIM=1 (tests/test_numba_cuda.py does)"

P, SEED, STREAM = 0.3, 2**40 + 12345, 7  # a seed with both key words non-zero
SCALARS = (np.float32(P), np.uint32(split_seed(SEED)[0]), np.uint32(split_seed(SEED)[1]), np.uint32(STREAM))


def test_numba_mask_equals_cpu_and_reference_mask():
    n = 1030  # 258 groups: two blocks, the last group holding two elements
    grid, block = dropout_grid(n)
    assert grid == (2, 1, 1)
    mask = np.full(n, 9, np.uint8)  # every element must be overwritten
    dropout.dropout_mask[grid, block](mask, np.int32(n), *SCALARS)
    np.testing.assert_array_equal(mask, dropout_mask((n,), P, SEED, STREAM))
    np.testing.assert_array_equal(mask, keep_reference(n, P, SEED, STREAM).astype(np.uint8))


def test_numba_dropout_apply_equals_cpu():
    n = 37  # one block of 256 threads for 10 groups: most threads idle, the last group partial
    x = np.random.default_rng(4).standard_normal(n).astype(np.float32)
    y = np.full(n, np.nan, np.float32)
    grid, block = dropout_grid(n)
    p32, key0, key1, stream = SCALARS
    dropout.dropout_apply[grid, block](x, y, np.int32(n), p32, np.float32(1 / (1 - P)), key0, key1, stream)
    np.testing.assert_array_equal(y, dropout_forward(x, P, SEED, STREAM))
