"""The softmax cross-entropy Numba CUDA kernels under the simulator (NUMBA_ENABLE_CUDASIM=1), tiny shapes.

Launched exactly as ops/softmax_ce.py launches them: flat arrays, one thread per pixel on
the grid of softmax_ce_grid(pixels), then one block to sum the per-block partials.
Compared with the naive float64 reference of tests/test_softmax_ce.py.
"""
import numpy as np
import pytest
from numba import config

from cunet.ops.numba_cuda import softmax_ce
from cunet.ops.softmax_ce import BLOCK, softmax_ce_grid
from test_softmax_ce import grad_reference, make_inputs, softmax_ce_reference

assert config.ENABLE_CUDASIM, "run with NUMBA_ENABLE_CUDASIM=1 (tests/test_numba_cuda.py does)"


def run_forward(logits, labels, weights):
    n, classes, h, w = logits.shape
    pixels = n * h * w
    grid, block = softmax_ce_grid(pixels)
    probs, partial, loss = np.full(logits.size, np.nan, np.float32), np.zeros(grid[0], np.float32), np.zeros(1, np.float32)
    softmax_ce.softmax_ce_forward[grid, block](logits.ravel(), labels.ravel().astype(np.int32), weights.ravel(),
                                               probs, partial, np.int32(pixels), np.int32(classes), np.int32(h * w))
    softmax_ce.softmax_ce_sum[(1, 1, 1), block](partial, loss, np.int32(grid[0]), np.int32(pixels))
    return loss, probs.reshape(logits.shape)


@pytest.mark.parametrize("shape", [(2, 3, 3, 5), (1, 2, 5, 60)], ids=["one-block", "two-blocks"])
def test_numba_forward_and_backward(shape):
    logits, labels, weights = make_inputs(np.random.default_rng(5), shape, scale=30.0)
    loss, probs = run_forward(logits, labels, weights)
    ref_loss, ref_probs = softmax_ce_reference(logits, labels, weights)
    np.testing.assert_allclose(probs, ref_probs, rtol=2e-5, atol=1e-6)  # as in test_softmax_ce.py
    np.testing.assert_allclose(loss[0], ref_loss, rtol=1e-5)

    n, classes, h, w = shape
    grad_loss = 0.5
    dlogits = np.full(logits.size, np.nan, np.float32)
    grid, block = softmax_ce_grid(n * h * w)
    softmax_ce.softmax_ce_backward[grid, block](
        probs.ravel(), labels.ravel().astype(np.int32), weights.ravel(), dlogits,
        np.int32(n * h * w), np.int32(classes), np.int32(h * w), np.float32(grad_loss / (n * h * w)))
    np.testing.assert_allclose(dlogits.reshape(shape), grad_reference(probs, labels, weights, grad_loss), rtol=1e-5, atol=1e-30)


def test_numba_sum_of_more_partials_than_threads():
    partial = np.random.default_rng(6).random(2 * BLOCK + 37).astype(np.float32)
    loss = np.zeros(1, np.float32)
    softmax_ce.softmax_ce_sum[(1, 1, 1), (BLOCK, 1, 1)](partial, loss, np.int32(partial.size), np.int32(1000))
    np.testing.assert_allclose(loss[0], partial.astype(np.float64).sum() / 1000, rtol=1e-6)
