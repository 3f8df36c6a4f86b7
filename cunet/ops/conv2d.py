"""Unpadded ("valid") 2-D convolution, stride 1, 1x1 or 3x3: forward and both backwards.

    conv2d_forward(x[N,C,H,W], w[K,C,R,R], b[K], relu=False)  -> y[N,K,H-R+1,W-R+1]
    conv2d_backward_input(dy[N,K,OH,OW], w[K,C,R,R])           -> dx[N,C,OH+R-1,OW+R-1]
    conv2d_backward_params(x[N,C,H,W], dy[N,K,OH,OW])          -> (dw[K,C,R,R], db[K])

(Like every deep-learning "convolution", this is a cross-correlation: y[oh,ow] sums
x[oh+r, ow+s] * w[r,s], the filter is not flipped.) With ``relu=True`` the forward
returns max(conv + b, 0): the ReLU costs nothing inside the GEMM epilogue. The autograd
layer applies relu_backward(y, dy) before the backward ops when it was fused.

cuda/opencl: kernels/conv2d.cu, three implicit GEMMs with shared-memory tiles and
register blocking (the file's top comment explains the mapping). The tile shape is
chosen here, by the GEMM's column count (:func:`tile_config`), and so is the split of the
weight gradient's long reduction (:func:`backward_params_split`).

cpu: BLAS. A 3x3 convolution over one image is a matrix product with the "im2col"
matrix, whose rows are the C*9 shifted copies of the image. Built whole it would be huge
(64 channels at 570x570: 750 MB), so it is built a few image rows at a time
(:func:`_im2col_chunks`), each chunk feeding one GEMM while it is still in cache. A
trick makes the shifted copies plain slices: computed on output positions q = oh*W + ow
(the rows of the *input's* width W), tap (r, s) of every output is x_flat[c, q + r*W + s],
so each row of the im2col chunk is one contiguous slice of the flat image. The W - OW
columns per row that this computes beyond the output's edge are thrown away: 2 in 572.
The backward input is a forward over dy zero-padded by R-1 with the flipped, transposed
filter; the backward params is one GEMM per chunk, dy times the im2col chunk transposed.
float32 and float64 both work on cpu (float64 for gradient checks).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from cunet.kernels import kernel_module

from .common import INT32_LIMIT, ceil_div, check_float_array, check_same_device, check_same_dtype, grid_1d

FILTER_SIZES = (1, 3)


# --- tile shapes and kernel modules ---------------------------------------------------------
@dataclass(frozen=True)
class TileConfig:
    """A block tile of BM x BN outputs, reduced BK at a time; TM x TN outputs per thread."""

    name: str
    BM: int
    BN: int
    BK: int
    TM: int
    TN: int

    @property
    def threads(self) -> int:
        """Threads per block: one per TM x TN sub-tile."""
        return (self.BM // self.TM) * (self.BN // self.TN)

    def defines(self) -> dict[str, int]:
        """The -D defines kernels/conv2d.cu is compiled with (plus FILTER)."""
        return dict(BM=self.BM, BN=self.BN, BK=self.BK, TM=self.TM, TN=self.TN)


# Widest first. 128x64 with 8x8 per thread is the classic register-blocked SGEMM shape:
# 64 accumulators + 16 operands per thread (~120 registers, no spills), 128 threads, 6.4 KB
# of shared tiles, 16 shared loads per 64 FMAs. It suits the U-Net's 64..1024 channels.
# With K = 16 (first levels at base 16) it would leave 3/4 of each tile idle, and with
# K = 2 (the last 1x1 layer) or C = 1 (backward input of the first layer) 97%; the
# narrower shapes keep the tile full there. Those layers are cheap and bandwidth-bound,
# so their smaller per-thread tiles (fewer FMAs per shared load) cost little.
TILE_CONFIGS = (
    TileConfig("128x64", BM=128, BN=64, BK=8, TM=8, TN=8),
    TileConfig("64x16", BM=64, BN=16, BK=16, TM=4, TN=4),
    TileConfig("64x4", BM=64, BN=4, BK=16, TM=2, TN=2),
)
CONV2D_CU = {
    (cfg.name, f): kernel_module("conv2d.cu", threads=cfg.threads, FILTER=f, **cfg.defines())
    for cfg in TILE_CONFIGS for f in FILTER_SIZES
}


def tile_config(n_columns: int) -> TileConfig:
    """The narrowest tile that is at least ``n_columns`` wide, else the widest.

    ``n_columns`` is the GEMM's N: K for the forward and the weight gradient, C for the
    backward input.
    """
    fitting = [cfg for cfg in TILE_CONFIGS if cfg.BN >= n_columns]
    return min(fitting, key=lambda cfg: cfg.BN) if fitting else TILE_CONFIGS[0]


# The weight gradient reduces over every output pixel (P = N*OH*OW, 325k at 572x572) into
# a small [C*R*R + 1, K] matrix, so one block per output tile would leave the GPU nearly
# idle. The reduction is split into chunks, one block per (tile, chunk), aiming at about
# BWD_TARGET_BLOCKS blocks (several waves on a 132-SM H100) but never chunks shorter than
# BWD_MIN_CHUNK pixels (a block should read far more than the BM*BN partials it writes).
# The partial buffer is then at most ~BWD_TARGET_BLOCKS * BM * BN floats (32 MB).
BWD_TARGET_BLOCKS = 1024
BWD_MIN_CHUNK = 256


def backward_params_split(pixels: int, rows: int, cols: int, cfg: TileConfig) -> tuple[int, int]:
    """(splits, chunk) for the weight-gradient GEMM: ``splits`` chunks of ``chunk`` pixels.

    ``rows`` = C*R*R + 1 (the bias row included), ``cols`` = K. ``chunk`` is a multiple
    of BK; the last chunk may be short. Depends on shapes only, so results are reproducible.
    """
    tiles = ceil_div(rows, cfg.BM) * ceil_div(cols, cfg.BN)
    splits = max(1, min(ceil_div(pixels, BWD_MIN_CHUNK), ceil_div(BWD_TARGET_BLOCKS, tiles)))
    chunk = ceil_div(ceil_div(pixels, splits), cfg.BK) * cfg.BK
    return ceil_div(pixels, chunk), chunk


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


# --- cpu --------------------------------------------------------------------------------------
# Elements of one chunk's im2col matrix plus its GEMM output (8 MB in float32). Every BLAS
# call has a fixed cost (waking its threads, packing panels), so fewer, bigger chunks won
# in measurements here (2^18 to 2^22 tried; 2^21 was fastest for 16 to 256 channels); the
# chunk still sits in the last-level cache when the GEMM and the epilogue read it.
CPU_CHUNK_ELEMENTS = 1 << 21
# The two Numba helpers below are deliberately serial: BLAS already runs each chunk's GEMM
# on every core, and alternating between Numba's thread pool and OpenBLAS's made each pool
# wait for the other's spinning threads to yield (measured: up to 10x slower overall).


def _chunk_rows(C: int, K: int, R: int, W: int) -> int:
    """Output rows per chunk: (C*R*R + K) * rows * W elements fit in CPU_CHUNK_ELEMENTS."""
    return max(1, CPU_CHUNK_ELEMENTS // ((C * R * R + K) * W))


@njit(cache=True)
def _gather_im2col(x_img, R, W, q0, n, cols):
    """cols[(c, r, s), q] = x_img[c, q0 + q + r*W + s] for q < n: C*R*R contiguous copies."""
    RR = R * R
    for i in range(cols.shape[0]):
        c = i // RR
        r = (i - c * RR) // R
        start = q0 + r * W + (i - c * RR - r * R)
        for q in range(n):
            cols[i, q] = x_img[c, start + q]


@njit(cache=True)
def _bias_relu_epilogue(wide, b, relu, out):
    """out[k, i, j] = wide[k, i, j] + b[k], then max(., 0) if relu, over out's shape."""
    K, count, OW = out.shape
    for k in range(K):
        for i in range(count):
            for j in range(OW):
                v = wide[k, i, j] + b[k]
                out[k, i, j] = (v if v > 0.0 else 0.0) if relu else v   # NaN -> 0, as fmaxf


def _im2col_chunks(x_img: np.ndarray, R: int, W: int, OH: int, rows: int):
    """Yield (oh0, cols) with cols[(c, r, s), q] = x_img[c, oh0*W + q + r*W + s].

    ``x_img`` is one image flattened to [C, H*W]; each chunk covers output rows
    [oh0, oh0 + rows) computed at the input's width W, and the last chunk stops R-1
    short of its last row (those columns lie past the output's edge anyway). For a 1x1
    filter the chunk is a slice of x_img itself; otherwise a buffer that is reused for
    the next chunk: use it before asking for the next.
    """
    C = x_img.shape[0]
    length = OH * W - (R - 1)
    buffer = np.empty((C * R * R, rows * W), x_img.dtype) if R > 1 else None
    for oh0 in range(0, OH, rows):
        q0 = oh0 * W
        n = min(rows * W, length - q0)
        if R == 1:
            yield oh0, x_img[:, q0:q0 + n]
        else:
            _gather_im2col(x_img, R, W, q0, n, buffer)
            yield oh0, buffer[:, :n]


def _correlate_cpu(x: np.ndarray, w: np.ndarray, b=None, relu: bool = False) -> np.ndarray:
    """Valid cross-correlation [N, C, H, W] * [K, C, R, R] -> [N, K, OH, OW], plus b, then ReLU.

    Per chunk of output rows: one GEMM into ``wide`` ([K, rows, W]: each row W long, its
    last R-1 values past the output's edge), then, while that is still in cache, the
    epilogue copies the OW valid columns into y, adding the bias and applying the ReLU.
    """
    N, C, H, W = x.shape
    K, R = w.shape[0], w.shape[2]
    OH, OW = H - R + 1, W - R + 1
    rows = min(OH, _chunk_rows(C, K, R, W))
    wmat = w.reshape(K, C * R * R)
    bias = np.zeros(K, x.dtype) if b is None else b
    wide = np.empty((K, rows, W), x.dtype)
    y = np.empty((N, K, OH, OW), x.dtype)
    for n in range(N):
        for oh0, cols in _im2col_chunks(x[n].reshape(C, H * W), R, W, OH, rows):
            np.matmul(wmat, cols, out=wide.reshape(K, rows * W)[:, :cols.shape[1]])
            count = min(rows, OH - oh0)
            _bias_relu_epilogue(wide, bias, relu, y[n, :, oh0:oh0 + count])
    return y


def _backward_input_cpu(dy, w):
    """dx = dy zero-padded by R-1 on each side, correlated with w flipped and transposed."""
    R = w.shape[2]
    if R > 1:
        N, K, OH, OW = dy.shape
        padded = np.zeros((N, K, OH + 2 * (R - 1), OW + 2 * (R - 1)), dy.dtype)
        padded[:, :, R - 1:R - 1 + OH, R - 1:R - 1 + OW] = dy
        dy = padded
    flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # [C, K, R, R]
    return _correlate_cpu(dy, flipped)


def _backward_params_cpu(x, dy):
    """dw[k, (c,r,s)] = sum_q dy[k, q] * cols[(c,r,s), q], one GEMM per im2col chunk; db = sum dy.

    dy is copied a chunk at a time onto rows of the input's width W (the R-1 columns past
    the output's edge stay 0, so the garbage columns of the im2col chunk add nothing).
    """
    N, C, H, W = x.shape
    K, OH, OW = dy.shape[1:]
    R = H - OH + 1
    rows = min(OH, _chunk_rows(C, K, R, W))
    dwmat = np.zeros((K, C * R * R), x.dtype)
    wide = np.zeros((K, rows, W), x.dtype)
    for n in range(N):
        for oh0, cols in _im2col_chunks(x[n].reshape(C, H * W), R, W, OH, rows):
            count = min(rows, OH - oh0)
            wide[:, :count, :OW] = dy[n, :, oh0:oh0 + count]
            dwmat += wide.reshape(K, rows * W)[:, :cols.shape[1]] @ cols.T
    db = dy.reshape(N, K, OH * OW).sum(axis=2).sum(axis=0)
    return dwmat.reshape(K, C, R, R), db


# --- devices: the launch code shared by the cuda and opencl runtimes -------------------------
def _i32(*values) -> tuple:
    return tuple(np.int32(v) for v in values)


def _module(cfg: TileConfig, R: int):
    return CONV2D_CU[(cfg.name, R)]


def _forward_device(runtime, x, w, b, relu):
    N, C, H, W = x.shape
    K, R = w.shape[0], w.shape[2]
    OH, OW = H - R + 1, W - R + 1
    y = runtime.empty((N, K, OH, OW))
    cfg = tile_config(K)
    grid, block = (ceil_div(N * OH * OW, cfg.BM), ceil_div(K, cfg.BN), 1), (cfg.threads, 1, 1)
    runtime.launch(_module(cfg, R), "conv2d_forward", grid, block, (x, w, b, y) + _i32(N, C, H, W, K, relu))
    return y


def _backward_input_device(runtime, dy, w):
    N, K, OH, OW = dy.shape
    C, R = w.shape[1], w.shape[2]
    H, W = OH + R - 1, OW + R - 1
    dx = runtime.empty((N, C, H, W))
    cfg = tile_config(C)
    grid, block = (ceil_div(N * H * W, cfg.BM), ceil_div(C, cfg.BN), 1), (cfg.threads, 1, 1)
    runtime.launch(_module(cfg, R), "conv2d_backward_input", grid, block, (dy, w, dx) + _i32(N, C, H, W, K))
    return dx


def _backward_params_device(runtime, x, dy):
    N, C, H, W = x.shape
    K, OH = dy.shape[1], dy.shape[2]
    R = H - OH + 1
    rows = C * R * R + 1                 # dw^T rows, plus the bias row
    cfg = tile_config(K)
    splits, chunk = backward_params_split(N * OH * dy.shape[3], rows, K, cfg)
    partial = runtime.empty((splits, K, rows))
    dw, db = runtime.empty((K, C, R, R)), runtime.empty((K,))
    module = _module(cfg, R)
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
        return _correlate_cpu(x, w, b, bool(relu))
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
        return _backward_input_cpu(dy, w)
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
        return _backward_params_cpu(x, dy)
    return _backward_params_device(runtime, x, dy)
