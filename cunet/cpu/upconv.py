"""The 2x2 up-convolution (cunet/ops/upconv.py) on the cpu.

Three products of matrices per image (the op's docstring writes them out):

    forward            Y = W^T X, then scattered into the interleaved image y
    backward input     dX = W dY, dY gathered from the interleaved dy
    weight gradient    dW = sum_n X dY^T, db = the sums of dy

float32, with the C++ kernels built (cunet._host, kernels/host/conv2d.cpp "up-convolution"):
register-tiled loops that do the scatter and the gather themselves, like the 3x3
convolutions' direct kernels. Otherwise (float64, the gradient checks' dtype, or no C++
build): np.matmul (BLAS) with one pass each way between the [4K, H*W] matrix order and the
image order.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .conv2d import _host  # cunet._host, or None where it is not built (conv2d.py imports it)
from .parallel import njit_serial_or_parallel


def host_runs(dtype) -> bool:
    """Whether the C++ kernels take an up-convolution: float32, and cunet._host built."""
    return np.dtype(dtype) == np.float32 and _host is not None


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """upconv2x2_forward on the cpu: y [N, K, 2H, 2W]."""
    if not host_runs(x.dtype):
        return _forward_blas(x, w, b)
    N, _, H, W = x.shape
    y = np.empty((N, w.shape[1], 2 * H, 2 * W), x.dtype)
    _host.upconv2x2_forward(np.ascontiguousarray(x), np.ascontiguousarray(w), np.ascontiguousarray(b), y)
    return y


def input_grad(dy: np.ndarray, w: np.ndarray) -> np.ndarray:
    """upconv2x2_backward_input on the cpu: dx [N, C, H, W]."""
    if not host_runs(dy.dtype):
        return _input_grad_blas(dy, w)
    N, _, H2, W2 = dy.shape
    dx = np.empty((N, w.shape[0], H2 // 2, W2 // 2), dy.dtype)
    _host.upconv2x2_backward_input(np.ascontiguousarray(dy), np.ascontiguousarray(w), dx)
    return dx


def params_grad(x: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """upconv2x2_backward_params on the cpu: (dw [C, K, 2, 2], db [K])."""
    if not host_runs(x.dtype):
        return _params_grad_blas(x, dy)
    C, K = x.shape[1], dy.shape[1]
    dw, db = np.empty((C, K, 2, 2), x.dtype), np.empty(K, x.dtype)
    _host.upconv2x2_backward_params(np.ascontiguousarray(x), np.ascontiguousarray(dy), dw, db)
    return dw, db


# --- BLAS ------------------------------------------------------------------------------
def _params_grad_blas(x, dy):
    N, C, H, W = x.shape
    K = dy.shape[1]
    # dW^T = dY X^T, one [4K, H*W] @ [H*W, C] product per image (BLAS reads the transposed
    # view as is). Computing dW = X dY^T instead gives the same numbers, but OpenBLAS's
    # threading handled that orientation badly here (C = 32: 12 ms vs over 1 s when the two
    # cores were busy), so the small transpose of the result is the cheaper path.
    dw_t = np.matmul(_dy_matrix(dy), x.reshape(N, C, H * W).transpose(0, 2, 1)).sum(axis=0)  # [4K, C]
    return np.ascontiguousarray(dw_t.T).reshape(C, K, 2, 2), dy.sum(axis=(0, 2, 3))


def _forward_blas(x, w, b):
    N, C, H, W = x.shape
    K = w.shape[1]
    Y = np.matmul(w.reshape(C, 4 * K).T, x.reshape(N, C, H * W))  # [N, 4K, H*W], one GEMM per image
    y = np.empty((N, K, 2 * H, 2 * W), x.dtype)
    _scatter_rows_cpu(Y, b, y, work=y.size)
    return y


@njit_serial_or_parallel()
def _scatter_rows_cpu(Y, b, y):
    """y[n, k, 2i+a, 2j+e] = Y[n, 4k+2a+e, i*W+j] + b[k], one output plane per parallel task.

    Each output row interleaves two rows of Y (e = 0, 1). NumPy can do this as one strided
    np.add into a [N, K, H, 2, W, 2] view, but its innermost loop then runs over length-2
    axes: 4-20x slower than this loop on 2 cores. (A task per output row, with n, k and
    the row computed by division, ran 2x slower at the U-Net's bottom level: 512 planes
    of 56x56.)
    """
    N, K, H2, W2 = y.shape
    H, W = H2 // 2, W2 // 2
    for nk in prange(N * K):
        n, k = nk // K, nk % K
        bias = b[k]
        for i in range(H):
            for a in range(2):
                top, r = 4 * k + 2 * a, 2 * i + a
                for j in range(W):
                    y[n, k, r, 2 * j] = Y[n, top, i * W + j] + bias
                    y[n, k, r, 2 * j + 1] = Y[n, top + 1, i * W + j] + bias


def _dy_matrix(dy):
    """dy [N, K, 2H, 2W] as the contiguous [N, 4K, H*W] matrix dY (row 4k+2a+e, column i*W+j).

    The gather, as one NumPy copy of a transposed view: about as fast as a Numba loop here.
    """
    N, K, H2, W2 = dy.shape
    H, W = H2 // 2, W2 // 2
    return np.ascontiguousarray(dy.reshape(N, K, H, 2, W, 2).transpose(0, 1, 3, 5, 2, 4)).reshape(N, 4 * K, H * W)


def _input_grad_blas(dy, w):
    N, K, H2, W2 = dy.shape
    C = w.shape[0]
    return np.matmul(w.reshape(C, 4 * K), _dy_matrix(dy)).reshape(N, C, H2 // 2, W2 // 2)
