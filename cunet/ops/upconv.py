"""2x2 up-convolution with stride 2 (transposed convolution), forward and backward, on every device.

    y[n, k, 2i+a, 2j+e] = b[k] + sum_c x[n, c, i, j] * w[c, k, a, e]

x [N, C, H, W], w [C, K, 2, 2] (PyTorch's ConvTranspose2d layout), b [K], y [N, K, 2H, 2W].
In the U-Net it halves the channels (K = C/2) and doubles the size at each step up.

Kernel = stride, so the windows do not overlap and the op is exactly one matrix product
per image: with w read as a [C, 4K] matrix W (column m = 4k + 2a + e) and x[n] as a
[C, H*W] matrix X,

    Y = W^T X       [4K, H*W], then y[n, k, 2i+a, 2j+e] = Y[4k+2a+e, i*W+j] + b[k]
    dX = W dY       dY[4k+2a+e, i*W+j] = dy[n, k, 2i+a, 2j+e]
    dW = sum_n X dY^T,   db[k] = sum of dy[:, k]

cpu: cunet/cpu/upconv.py (float32: the C++ kernels of kernels/host/ for all three;
float64: BLAS).
cuda/opencl: kernels/upconv.cu, the GEMM main loop of kernels/gemm.h (FP32 or TF32 tensor
cores, ``runtime.math``; the tile and split-K policy of cunet/ops/gemm.py, shared with
conv2d) with the scatter/gather in its loaders and epilogue; the weight gradient is split
over pixels and summed in a fixed order (deterministic, no atomics). There is no Numba
alternate: this op is compute-bound GEMM, not one of the memory-bound ops, so the CUDA C
kernels run on cuda whatever ``use_numba_kernels`` says.
"""
from __future__ import annotations

import numpy as np

from cunet.cpu import upconv as cpu

from .common import ceil_div, check_float_array, check_output_size, check_same_device, check_same_dtype, grid_1d
from .gemm import declare_modules, gemm_module, split_k, tile_config

declare_modules("upconv.cu")  # every (tile, math) module, so the compile check finds them all


# --- checks ---------------------------------------------------------------------------
def _check_nonempty(op: str, **arrays) -> None:
    for name, a in arrays.items():
        if a.size == 0:
            raise ValueError(f"{op}: {name} is empty (shape {tuple(a.shape)}); every dimension must be >= 1")


def _check_weight(op: str, w, C: int | None, K: int | None) -> None:
    """w is [C, K, 2, 2] with the given C and K (None: any)."""
    wC, wK, kh, kw = w.shape
    if (kh, kw) != (2, 2) or (C is not None and wC != C) or (K is not None and wK != K):
        expected = f"[{C if C is not None else 'C'}, {K if K is not None else 'K'}, 2, 2]"
        raise ValueError(f"{op}: w must be {expected} (in, out, kh, kw), got shape {tuple(w.shape)}")


def _check_dy_even(op: str, dy) -> None:
    if dy.shape[2] % 2 or dy.shape[3] % 2:
        raise ValueError(f"{op}: dy must be [N, K, 2H, 2W] (even height and width), got shape {tuple(dy.shape)}")


# --- public ops -----------------------------------------------------------------------
def upconv2x2_forward(x, w, b):
    """x [N, C, H, W], w [C, K, 2, 2], b [K] -> y [N, K, 2H, 2W]."""
    op = "upconv2x2_forward"
    runtime = check_float_array(op, "x", x, 4, "N, C, H, W")
    check_float_array(op, "w", w, 4, "C, K, 2, 2")
    check_float_array(op, "b", b, 1, "K")
    check_same_dtype(op, x=x, w=w, b=b)
    check_same_device(op, x=x, w=w, b=b)
    _check_nonempty(op, x=x, w=w)
    N, C, H, W = x.shape
    _check_weight(op, w, C, None)
    K = w.shape[1]
    if tuple(b.shape) != (K,):
        raise ValueError(f"{op}: b must be [K] = [{K}] (w has {K} output channels), got shape {tuple(b.shape)}")
    check_output_size(op, "y", (N, K, 2 * H, 2 * W))
    if runtime is None:
        return cpu.forward(x, w, b)
    y = runtime.empty((N, K, 2 * H, 2 * W), np.float32)
    module, grid, block = _gemm_launch(runtime, rows=N * H * W, columns=4 * K)
    runtime.launch(module, "upconv2x2_forward", grid, block, (x, w, b, y) + _ints(N, C, H, W, K))
    return y


def upconv2x2_backward_input(dy, w):
    """dy [N, K, 2H, 2W], w [C, K, 2, 2] -> dx [N, C, H, W]."""
    op = "upconv2x2_backward_input"
    runtime = check_float_array(op, "dy", dy, 4, "N, K, 2H, 2W")
    check_float_array(op, "w", w, 4, "C, K, 2, 2")
    check_same_dtype(op, dy=dy, w=w)
    check_same_device(op, dy=dy, w=w)
    _check_nonempty(op, dy=dy, w=w)
    _check_dy_even(op, dy)
    N, K, H2, W2 = dy.shape
    _check_weight(op, w, None, K)
    C, H, W = w.shape[0], H2 // 2, W2 // 2
    if runtime is None:
        return cpu.input_grad(dy, w)
    dx = runtime.empty((N, C, H, W), np.float32)
    module, grid, block = _gemm_launch(runtime, rows=N * H * W, columns=C)
    runtime.launch(module, "upconv2x2_backward_input", grid, block, (dy, w, dx) + _ints(N, C, H, W, K))
    return dx


def upconv2x2_backward_params(x, dy):
    """x [N, C, H, W], dy [N, K, 2H, 2W] -> (dw [C, K, 2, 2], db [K]); deterministic."""
    op = "upconv2x2_backward_params"
    runtime = check_float_array(op, "x", x, 4, "N, C, H, W")
    check_float_array(op, "dy", dy, 4, "N, K, 2H, 2W")
    check_same_dtype(op, x=x, dy=dy)
    check_same_device(op, x=x, dy=dy)
    _check_nonempty(op, x=x, dy=dy)
    N, C, H, W = x.shape
    K = dy.shape[1]
    if tuple(dy.shape) != (N, K, 2 * H, 2 * W):
        raise ValueError(f"{op}: dy must be [N, K, 2H, 2W] = [{N}, K, {2 * H}, {2 * W}] for x {tuple(x.shape)}, got {tuple(dy.shape)}")
    if runtime is None:
        return cpu.params_grad(x, dy)
    return _backward_params_device(runtime, x, dy)


# --- launch glue, shared by the cuda and opencl runtimes -------------------------------
def _ints(*values):
    return tuple(np.int32(v) for v in values)


def _gemm_launch(runtime, rows: int, columns: int, splits: int = 1):
    """(module, grid, block) for a GEMM of [rows, columns] outputs: one block per tile (x: rows, y: columns), z: splits."""
    cfg = tile_config(columns)
    module = gemm_module("upconv.cu", cfg, runtime.math)
    return module, (ceil_div(rows, cfg.BM), ceil_div(columns, cfg.BN), splits), (cfg.threads, 1, 1)


def _backward_params_device(runtime, x, dy):
    N, C, H, W = x.shape
    K = dy.shape[1]
    module, grid, block = _gemm_launch(runtime, rows=C, columns=4 * K)
    splits, chunk = split_k(N * H * W, C, 4 * K, tile_config(4 * K))
    dw = runtime.empty((C, K, 2, 2), np.float32)
    # With one split the GEMM writes dw directly; otherwise partials, then an ordered sum.
    partial = dw if splits == 1 else runtime.empty((splits, C, K, 2, 2), np.float32)
    runtime.launch(module, "upconv2x2_backward_params", grid[:2] + (splits,), block,
                   (x, dy, partial) + _ints(N, C, H, W, K, chunk))
    if splits > 1:
        runtime.launch(module, "upconv2x2_sum_splits", *grid_1d(dw.size, module.threads), (partial, dw) + _ints(splits, dw.size))
    db = runtime.empty((K,), np.float32)
    runtime.launch(module, "upconv2x2_bias_grad", (K, 1, 1), block, (dy, db) + _ints(N, K, 4 * H * W))
    return dw, db
