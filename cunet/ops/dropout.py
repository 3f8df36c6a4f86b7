"""Inverted drop-out on every device, with masks that a seed makes identical everywhere.

    forward:   y  = x  * keep / (1 - p)
    backward:  dx = dy * keep / (1 - p)
    keep_i   = [u_i >= p],  u_i = unit_float(Philox4x32-10({i // 4, stream, 0, 0}, split_seed(seed))[i % 4])

The U-Net paper puts drop-out at the end of the contracting path; it is on in training
and skipped at inference (dividing by 1 - p during training keeps E[y] = x, so inference
needs no rescaling).

No mask is stored between forward and backward. Philox is counter-based: keep_i is a
pure function of (seed, stream, i), so the backward regenerates the forward's mask from
the same (seed, stream). This saves a mask tensor per drop-out layer and the memory
traffic to write and read it, and it is why the same seed gives bit-identical masks on
the cpu, in kernels/dropout.cu (CUDA and OpenCL) and in the Numba CUDA kernel: all of them
evaluate the same function. ``p`` is compared in float32 on every device, so not even an
element with u_i right at p can differ between devices.

cpu: Numba, parallel over groups of four elements (one Philox call each), in the input's
precision (float32 or float64). cuda/opencl: kernels/dropout.cu; on cuda the Numba
alternate (ops/numba_cuda/dropout.py) runs instead when the runtime asks for it.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from cunet.cpu.parallel import njit_serial_or_parallel
from cunet.kernels import kernel_module

from .common import ceil_div, check_float_array, check_output_size, check_real, check_shape, grid_1d
from .random import check_stream, philox4x32_10, split_seed, unit_float

DROPOUT_CU = kernel_module("dropout.cu", threads=256)
WORDS_PER_CALL = 4  # one Philox4x32 call gives four 32-bit words: four elements


# --- per-element math, shared by the CPU loop and the Numba CUDA kernels --------------
# dropout_group and mask_group are the only functions here that touch arrays; the Numba
# CUDA module compiles their Python source as CUDA device functions (see there). On the
# cpu they are inlined into the loops: a Numba call that passes arrays pays atomic
# reference counting per call (see softmax_ce.py, where it cost 13x the arithmetic).
@njit(cache=True)
def keep_element(word, p):
    """Whether the element drawn from this Philox word survives: u >= p, in float32."""
    return unit_float(word) >= p


@njit(cache=True, inline="always")
def dropout_group(x, y, group, n, p, scale, key0, key1, stream):
    """y[i] = x[i] * keep_i * scale for the (up to) four elements i of this Philox group."""
    words = philox4x32_10(group, stream, 0, 0, key0, key1)
    for j in range(WORDS_PER_CALL):
        i = WORDS_PER_CALL * group + j
        if i < n:
            if keep_element(words[j], p):
                y[i] = x[i] * scale
            else:
                y[i] = 0  # a dropped element is 0 even if x is inf or NaN, as in dropout.cu


@njit(cache=True, inline="always")
def mask_group(mask, group, n, p, key0, key1, stream):
    """mask[i] = keep_i (0 or 1) for the (up to) four elements of this Philox group."""
    words = philox4x32_10(group, stream, 0, 0, key0, key1)
    for j in range(WORDS_PER_CALL):
        i = WORDS_PER_CALL * group + j
        if i < n:
            mask[i] = 1 if keep_element(words[j], p) else 0


# --- cpu ----------------------------------------------------------------------------
# Ten Philox rounds per four elements cost far more than a copy: the parallel loop pays
# off from far fewer elements than common.PARALLEL_MIN_WORK (`python -m benchmarks.threshold`
# on 2 idle cores: parallel 1.7x faster from 2,048 elements, 2.7x at 4,096).
PHILOX_MIN_WORK = 1 << 12


@njit_serial_or_parallel(PHILOX_MIN_WORK)
def _dropout_cpu(x, y, p, scale, key0, key1, stream):
    n = x.size
    for group in prange((n + WORDS_PER_CALL - 1) // WORDS_PER_CALL):
        dropout_group(x, y, group, n, p, scale, key0, key1, stream)


@njit_serial_or_parallel(PHILOX_MIN_WORK)
def _mask_cpu(mask, p, key0, key1, stream):
    n = mask.size
    for group in prange((n + WORDS_PER_CALL - 1) // WORDS_PER_CALL):
        mask_group(mask, group, n, p, key0, key1, stream)


# --- shared launch glue ---------------------------------------------------------------
def dropout_grid(n: int):
    """(grid, block): one thread per group of four elements, the grid rounded up.

    The largest index a thread touches is 4 * (groups rounded up to 256) - 1, which stays
    below 2**31 for every n < 2**31 (2**29 groups is a multiple of 256): int is enough.
    """
    return grid_1d(ceil_div(n, WORDS_PER_CALL), DROPOUT_CU.threads)


def _check_rate(op: str, p, seed, stream) -> tuple[np.float32, int, int, int]:
    """Validate (p, seed, stream); returns (p as float32, key0, key1, stream)."""
    p = check_real(op, "p", p, low=0.0, high=1.0)  # 1 - p divides: p < 1, in float32 too
    key0, key1 = split_seed(seed, op)
    return np.float32(p), key0, key1, check_stream(op, stream)


def _apply(op: str, name: str, x, p, seed: int, stream: int):
    """The arithmetic forward and backward share: out = x * keep * (1 / (1 - p))."""
    runtime = check_float_array(op, name, x)
    p32, key0, key1, stream = _check_rate(op, p, seed, stream)
    scale = 1.0 / (1.0 - float(p))
    if runtime is None:
        out = np.empty_like(x)
        _dropout_cpu(x.reshape(-1), out.reshape(-1), p32, x.dtype.type(scale), key0, key1, stream, work=x.size)
        return out
    out = runtime.empty(x.shape)
    grid, block = dropout_grid(x.size)
    scalars = (np.int32(x.size), p32, np.float32(scale), np.uint32(key0), np.uint32(key1), np.uint32(stream))
    if runtime.use_numba_kernels:
        from .numba_cuda import dropout as numba_dropout

        runtime.launch_numba(numba_dropout.dropout_apply, grid, block, (x.reshape(-1), out.reshape(-1)) + scalars)
    else:
        runtime.launch(DROPOUT_CU, "dropout_apply", grid, block, (x, out) + scalars)
    return out


# --- public ops -----------------------------------------------------------------------
def dropout_forward(x, p: float, seed: int, stream: int = 0):
    """y = x * keep / (1 - p); any shape; keep comes from (seed, stream), see the module docstring.

    ``p`` in [0, 1) is the drop probability (p = 0 gives y == x); ``seed`` in [0, 2**64);
    ``stream`` in [0, 2**32) tells apart masks drawn from one seed (e.g. one per layer).
    Any Python or NumPy number whose value is in range works (p must stay below 1 in
    float32); a bool, a float seed or an out-of-range value is refused by name.
    Returns a new array on x's device, of x's shape and dtype.
    """
    return _apply("dropout_forward", "x", x, p, seed, stream)


def dropout_backward(dy, p: float, seed: int, stream: int = 0):
    """dx = dy * keep / (1 - p), regenerating the forward's mask from the same (p, seed, stream)."""
    return _apply("dropout_backward", "dy", dy, p, seed, stream)


def dropout_mask(shape, p: float, seed: int, stream: int = 0, runtime=None):
    """The keep mask for a tensor of ``shape``: uint8, 1 = kept, 0 = dropped (for tests and inspection).

    With ``runtime=None`` the cpu computes it (a NumPy array); given a device runtime, the
    ``dropout_mask`` kernel of kernels/dropout.cu does (a device array). Both are identical.
    """
    op = "dropout_mask"
    shape = check_shape(op, "shape", shape)
    check_output_size(op, "mask", shape)
    p32, key0, key1, stream = _check_rate(op, p, seed, stream)
    n = math.prod(shape)
    if runtime is None:
        mask = np.empty(shape, np.uint8)
        _mask_cpu(mask.reshape(-1), p32, key0, key1, stream, work=n)
        return mask
    mask = runtime.empty(shape, np.uint8)
    grid, block = dropout_grid(n)
    scalars = (np.int32(n), p32, np.uint32(key0), np.uint32(key1), np.uint32(stream))
    if runtime.use_numba_kernels:
        from .numba_cuda import dropout as numba_dropout

        runtime.launch_numba(numba_dropout.dropout_mask, grid, block, (mask.reshape(-1),) + scalars)
    else:
        runtime.launch(DROPOUT_CU, "dropout_mask", grid, block, (mask,) + scalars)
    return mask
