"""Unpadded ("valid") 2-D convolution, stride 1, 1x1 or 3x3: forward and both backwards.

    conv2d_forward(x[N,C,H,W], w[K,C,R,R], b[K], relu=False)  -> y[N,K,H-R+1,W-R+1]
    conv2d_backward_input(dy[N,K,OH,OW], w[K,C,R,R])           -> dx[N,C,OH+R-1,OW+R-1]
    conv2d_backward_params(x[N,C,H,W], dy[N,K,OH,OW])          -> (dw[K,C,R,R], db[K])

(Like every deep-learning "convolution", this is a cross-correlation: y[oh,ow] sums
x[oh+r, ow+s] * w[r,s], the filter is not flipped.) With ``relu=True`` the forward
returns max(conv + b, 0): the ReLU costs nothing inside the GEMM epilogue. The autograd
layer applies relu_backward(y, dy) before the backward ops when it was fused.

cuda/opencl: kernels/conv2d.cu, three implicit GEMMs on the main loop of kernels/gemm.h
(FP32 on CUDA cores, or TF32 on tensor cores: ``runtime.math``; the files' top comments
explain the mapping). The tile shape is chosen by the GEMM's column count and the weight
gradient's long reduction is split by the policy both GEMM ops share (cunet/ops/gemm.py).

cpu: cunet/cpu/conv2d.py, three algorithms picked per op by the layer's shape: the C++
kernels of kernels/host/ for the float32 3x3 ops (direct sums for layers with few channels,
Winograd F(4x4, 3x3) for those with many), im2col + BLAS for the rest (that file's top
comment says why).
float32 and float64 both work on cpu (float64 for gradient checks).
"""
from __future__ import annotations

import numpy as np

from cunet.cpu import conv2d as cpu

from .common import INT32_LIMIT, ceil_div, check_float_array, check_same_device, check_same_dtype, grid_1d
from .gemm import TileConfig, declare_modules, gemm_module, split_k, tile_config

FILTER_SIZES = (1, 3)


# Every (tile, math, filter) module, declared here so the compile check finds them all.
for _filter in FILTER_SIZES:
    declare_modules("conv2d.cu", FILTER=_filter)
del _filter


# --- input checks --------------------------------------------------------------------------
def _check_filter(op: str, w) -> int:
    """w must be [K, C, R, R] with R in FILTER_SIZES; returns R."""
    K, C, R, S = w.shape
    if R != S:
        raise ValueError(f"{op}: w {tuple(w.shape)} is [K, C, R, S] with a non-square {R}x{S} filter; expected R == S")
    if R not in FILTER_SIZES:
        raise ValueError(f"{op}: w {tuple(w.shape)} has a {R}x{R} filter; only 1x1 and 3x3 are supported")
    if K < 1 or C < 1:
        raise ValueError(f"{op}: w {tuple(w.shape)} has no filters or no channels")
    return R


def _check_batch(op: str, name: str, a) -> None:
    if a.shape[0] < 1:
        raise ValueError(f"{op}: {name} {tuple(a.shape)} has batch size 0; expected >= 1")


def _check_fits_int32(op: str, name: str, shape) -> None:
    if int(np.prod(shape)) >= INT32_LIMIT:
        raise ValueError(f"{op}: the {name} would have shape {tuple(shape)}, 2**31 elements or more; "
                         "kernels index with 32-bit ints (split the batch or use smaller tiles)")


def _check_operands(op: str, **arrays):
    """Rank, dtype, contiguity, one dtype, one device; returns the runtime (None: cpu)."""
    layouts = dict(x="N, C, H, W", w="K, C, R, R", b="K", dy="N, K, OH, OW")
    for name, a in arrays.items():
        check_float_array(op, name, a, ndim=len(layouts[name].split(",")), layout=layouts[name])
    check_same_dtype(op, **arrays)
    return check_same_device(op, **arrays)


# --- devices: the launch code shared by the cuda and opencl runtimes -------------------------
def _i32(*values) -> tuple:
    return tuple(np.int32(v) for v in values)


def _module(runtime, cfg: TileConfig, R: int):
    return gemm_module("conv2d.cu", cfg, runtime.math, FILTER=R)


def _forward_device(runtime, x, w, b, relu):
    N, C, H, W = x.shape
    K, R = w.shape[0], w.shape[2]
    OH, OW = H - R + 1, W - R + 1
    y = runtime.empty((N, K, OH, OW))
    cfg = tile_config(K)
    grid, block = (ceil_div(N * OH * OW, cfg.BM), ceil_div(K, cfg.BN), 1), (cfg.threads, 1, 1)
    runtime.launch(_module(runtime, cfg, R), "conv2d_forward", grid, block, (x, w, b, y) + _i32(N, C, H, W, K, relu))
    return y


def _backward_input_device(runtime, dy, w):
    N, K, OH, OW = dy.shape
    C, R = w.shape[1], w.shape[2]
    H, W = OH + R - 1, OW + R - 1
    dx = runtime.empty((N, C, H, W))
    cfg = tile_config(C)
    grid, block = (ceil_div(N * H * W, cfg.BM), ceil_div(C, cfg.BN), 1), (cfg.threads, 1, 1)
    runtime.launch(_module(runtime, cfg, R), "conv2d_backward_input", grid, block, (dy, w, dx) + _i32(N, C, H, W, K))
    return dx


def _backward_params_device(runtime, x, dy):
    N, C, H, W = x.shape
    K, OH = dy.shape[1], dy.shape[2]
    R = H - OH + 1
    rows = C * R * R + 1                 # dw^T rows, plus the bias row
    cfg = tile_config(K)
    splits, chunk = split_k(N * OH * dy.shape[3], rows, K, cfg)
    partial = runtime.empty((splits, K, rows))
    dw, db = runtime.empty((K, C, R, R)), runtime.empty((K,))
    module = _module(runtime, cfg, R)
    grid, block = (ceil_div(rows, cfg.BM), ceil_div(K, cfg.BN), splits), (cfg.threads, 1, 1)
    runtime.launch(module, "conv2d_backward_params", grid, block, (x, dy, partial) + _i32(N, C, H, W, K, chunk))
    grid, block = grid_1d(K * rows, cfg.threads)
    runtime.launch(module, "conv2d_sum_partials", grid, block, (partial, dw, db) + _i32(splits, K, rows))
    return dw, db


# --- public ops ---------------------------------------------------------------------------------
def conv2d_forward(x, w, b, relu: bool = False):
    """y[N,K,H-R+1,W-R+1] = b + valid cross-correlation of x[N,C,H,W] with w[K,C,R,R]; max(., 0) if relu."""
    op = "conv2d_forward"
    runtime = _check_operands(op, x=x, w=w, b=b)
    R = _check_filter(op, w)
    N, C, H, W = x.shape
    K = w.shape[0]
    _check_batch(op, "x", x)
    if C != w.shape[1]:
        raise ValueError(f"{op}: x {tuple(x.shape)} has {C} channels but w {tuple(w.shape)} expects {w.shape[1]} "
                         "(x is [N, C, H, W], w is [K, C, R, R])")
    if b.shape != (K,):
        raise ValueError(f"{op}: b has shape {tuple(b.shape)}; expected ({K},), one bias per filter of w {tuple(w.shape)}")
    if H < R or W < R:
        raise ValueError(f"{op}: x {tuple(x.shape)} is smaller than the {R}x{R} filter; the output would be empty "
                         f"(need H, W >= {R})")
    _check_fits_int32(op, "output", (N, K, H - R + 1, W - R + 1))
    if runtime is None:
        return cpu.correlate(x, w, b, bool(relu))
    return _forward_device(runtime, x, w, b, bool(relu))


def conv2d_backward_input(dy, w):
    """dx[N,C,OH+R-1,OW+R-1]: the gradient of the loss with respect to conv2d_forward's x."""
    op = "conv2d_backward_input"
    runtime = _check_operands(op, dy=dy, w=w)
    R = _check_filter(op, w)
    N, K, OH, OW = dy.shape
    _check_batch(op, "dy", dy)
    if K != w.shape[0]:
        raise ValueError(f"{op}: dy {tuple(dy.shape)} has {K} channels but w {tuple(w.shape)} has {w.shape[0]} filters "
                         "(dy is [N, K, OH, OW], w is [K, C, R, R])")
    if OH < 1 or OW < 1:
        raise ValueError(f"{op}: dy {tuple(dy.shape)} has an empty image; expected OH, OW >= 1")
    _check_fits_int32(op, "input gradient", (N, w.shape[1], OH + R - 1, OW + R - 1))
    if runtime is None:
        return cpu.input_grad(dy, w)
    return _backward_input_device(runtime, dy, w)


def conv2d_backward_params(x, dy):
    """(dw[K,C,R,R], db[K]): the gradients for conv2d_forward's w and b; R = H - OH + 1."""
    op = "conv2d_backward_params"
    runtime = _check_operands(op, x=x, dy=dy)
    N, C, H, W = x.shape
    _, K, OH, OW = dy.shape
    _check_batch(op, "x", x)
    if dy.shape[0] != N:
        raise ValueError(f"{op}: x {tuple(x.shape)} and dy {tuple(dy.shape)} have different batch sizes")
    R, S = H - OH + 1, W - OW + 1
    if R != S or R not in FILTER_SIZES:
        raise ValueError(f"{op}: x {tuple(x.shape)} and dy {tuple(dy.shape)} imply a {R}x{S} filter "
                         f"(R = H - OH + 1, S = W - OW + 1); expected 1x1 or 3x3")
    if OH < 1 or OW < 1 or K < 1:
        raise ValueError(f"{op}: dy {tuple(dy.shape)} is empty; expected K, OH, OW >= 1")
    if runtime is None:
        return cpu.params_grad(x, dy)
    return _backward_params_device(runtime, x, dy)
