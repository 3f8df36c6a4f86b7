"""2x2 max-pool as Numba CUDA kernels: one thread per window, the grid of kernels/maxpool.cu.

The arrays come as [planes, rows, cols] views (plane = n*C + c), so the index arithmetic
is the split of the flat window index o into (plane, i, j); the comparison and the
routing are the @njit functions the CPU path uses (cunet/ops/maxpool.py), so ties and
NaN resolve identically.
"""
from numba import cuda, float32, uint8

from cunet.ops.maxpool import pool_window, routed


@cuda.jit
def maxpool2x2_forward(x, y, argmax):
    """x [planes, H, W] -> y, argmax [planes, H/2, W/2]; thread o pools window o."""
    planes, Ho, Wo = y.shape
    o = cuda.grid(1)
    if o < planes * Ho * Wo:
        p, i, j = o // (Ho * Wo), (o // Wo) % Ho, o % Wo
        best, where = pool_window(x[p, 2 * i, 2 * j], x[p, 2 * i, 2 * j + 1],
                                  x[p, 2 * i + 1, 2 * j], x[p, 2 * i + 1, 2 * j + 1])
        y[p, i, j] = best
        argmax[p, i, j] = where


@cuda.jit
def maxpool2x2_backward(dy, argmax, dx):
    """dy, argmax [planes, H/2, W/2] -> dx [planes, H, W]; thread o writes window o's four elements."""
    planes, Ho, Wo = dy.shape
    o = cuda.grid(1)
    if o < planes * Ho * Wo:
        p, i, j = o // (Ho * Wo), (o // Wo) % Ho, o % Wo
        g, where = dy[p, i, j], argmax[p, i, j]
        dx[p, 2 * i, 2 * j] = routed(g, where, 0)
        dx[p, 2 * i, 2 * j + 1] = routed(g, where, 1)
        dx[p, 2 * i + 1, 2 * j] = routed(g, where, 2)
        dx[p, 2 * i + 1, 2 * j + 1] = routed(g, where, 3)


PTX_SIGNATURES = {
    maxpool2x2_forward: (float32[:, :, ::1], float32[:, :, ::1], uint8[:, :, ::1]),
    maxpool2x2_backward: (float32[:, :, ::1], uint8[:, :, ::1], float32[:, :, ::1]),
}
