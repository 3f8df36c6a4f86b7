"""2x2 max-pool with stride 2, forward and backward, on every device.

    y[n,c,i,j]      = max(x[n,c,2i:2i+2,2j:2j+2])
    argmax[n,c,i,j] = position of that maximum in the window, row-major (0 1 / 2 3), uint8
    dx              = dy at each window's argmax position, 0 at the other three

Ties go to the first maximum in the order 0, 1, 2, 3; NaN propagates (the first NaN in
the window wins). :func:`beats` is that rule, shared by the CPU loop and the Numba CUDA
kernels, and kernels/maxpool.cu spells the same comparison, so every device picks the
same argmax. The argmax is stored as uint8 (a quarter of the traffic of an int32 index);
the backward needs only it and the input shape, not the input.

The backward trusts nothing but the argmax codes' range: a code outside 0..3 (not one
maxpool2x2_forward wrote) is refused with a ValueError. The cpu loop counts such codes
as it goes (one comparison per window, no extra pass); a device's argmax is copied to
the host for the check unless the caller passes ``checked=True`` (the argmax came from
maxpool2x2_forward). Either way the loops are memory-safe: a code only selects which of
its window's four positions gets the gradient, never an address, so a bad one routes the
gradient nowhere.

H and W must be even. The U-Net's size arithmetic guarantees it (a valid input size
makes every pooled map even), so an odd size here is a bug upstream, and refused rather
than silently cropped.

cpu: Numba, over planes (in parallel when the map is large enough to pay for it).
cuda/opencl: kernels/maxpool.cu; on cuda the Numba alternates (ops/numba_cuda/maxpool.py)
run instead when the runtime asks for them.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from cunet.cpu.parallel import njit_serial_or_parallel
from cunet.kernels import kernel_module

from .common import check_float_array, check_output_size, check_same_device, check_shape, grid_1d

MAXPOOL_CU = kernel_module("maxpool.cu", threads=256)
WINDOW = 4  # positions per 2x2 window: argmax codes are 0..WINDOW-1


# --- per-window math, shared by the CPU loops and the Numba CUDA kernels -------------
@njit(cache=True)
def beats(v, best):
    """Whether v replaces the running maximum: strictly greater, or NaN over a non-NaN."""
    return v > best or (v != v and best == best)


@njit(cache=True)
def pool_window(v0, v1, v2, v3):
    """(maximum, its position 0..3) of a window given in row-major order; first maximum wins."""
    best, where = v0, 0
    if beats(v1, best):
        best, where = v1, 1
    if beats(v2, best):
        best, where = v2, 2
    if beats(v3, best):
        best, where = v3, 3
    return best, where


@njit(cache=True)
def routed(g, where, q):
    """The gradient window position q receives: g at the argmax, else 0."""
    # A float32 zero: unifies with float32 g (no float64 on the GPU) and widens for float64 g.
    # Not g * 0, which is NaN when g is: the three other positions must get exactly 0.
    return g if where == q else np.float32(0.0)


# --- cpu ------------------------------------------------------------------------------
# One parallel task per plane (channel of an image): the U-Net pools 16 to 512 planes, plenty
# for 2 to 16 cores. (One task per output row, p and i computed as row // Ho and row % Ho,
# balanced better in theory but ran 16x slower serially on 1024 planes of 64x64 here: the
# loop nest below is what LLVM vectorises well.)
@njit_serial_or_parallel()
def _forward_cpu(x, y, argmax):
    """x [planes, H, W] -> y, argmax [planes, H/2, W/2]."""
    planes, Ho, Wo = y.shape
    for p in prange(planes):
        for i in range(Ho):
            for j in range(Wo):
                best, where = pool_window(x[p, 2 * i, 2 * j], x[p, 2 * i, 2 * j + 1],
                                          x[p, 2 * i + 1, 2 * j], x[p, 2 * i + 1, 2 * j + 1])
                y[p, i, j] = best
                argmax[p, i, j] = where


@njit_serial_or_parallel()
def _backward_cpu(dy, argmax, dx):
    """dy, argmax [planes, H/2, W/2] -> dx [planes, H, W], every element written.

    Returns how many argmax codes lie outside 0..3 (their windows get dx = 0): counted
    here, in the loop that reads them anyway, rather than in a second pass.
    """
    planes, Ho, Wo = dy.shape
    invalid = 0
    for p in prange(planes):
        for i in range(Ho):
            for j in range(Wo):
                g, where = dy[p, i, j], argmax[p, i, j]
                if where >= WINDOW:
                    invalid += 1  # a prange reduction: summed over the threads after the loop
                dx[p, 2 * i, 2 * j] = routed(g, where, 0)
                dx[p, 2 * i, 2 * j + 1] = routed(g, where, 1)
                dx[p, 2 * i + 1, 2 * j] = routed(g, where, 2)
                dx[p, 2 * i + 1, 2 * j + 1] = routed(g, where, 3)
    return invalid


# --- checks ---------------------------------------------------------------------------
def _check_even(op: str, shape) -> None:
    N, C, H, W = shape
    if H % 2 or W % 2:
        raise ValueError(
            f"{op}: input height and width must be even for a 2x2 stride-2 pool, got shape "
            f"{tuple(shape)} (H={H}, W={W}); the U-Net's size arithmetic only pools even maps, "
            "so pick a valid input size rather than cropping here"
        )


def _planes(shape) -> tuple[int, int, int]:
    """[N, C, H, W] as [N*C, H, W]: pooling treats every (n, c) plane alike."""
    N, C, H, W = shape
    return (N * C, H, W)


# --- public ops -----------------------------------------------------------------------
def maxpool2x2_forward(x):
    """x [N, C, H, W] (H, W even) -> (y [N, C, H/2, W/2], argmax uint8 [N, C, H/2, W/2])."""
    op = "maxpool2x2_forward"
    runtime = check_float_array(op, "x", x, 4, "N, C, H, W")
    _check_even(op, x.shape)
    N, C, H, W = x.shape
    out_shape = (N, C, H // 2, W // 2)
    if runtime is None:
        y, argmax = np.empty(out_shape, x.dtype), np.empty(out_shape, np.uint8)
        _forward_cpu(x.reshape(_planes(x.shape)), y.reshape(_planes(out_shape)), argmax.reshape(_planes(out_shape)),
                     work=x.size)
        return y, argmax
    y, argmax = runtime.empty(out_shape, np.float32), runtime.empty(out_shape, np.uint8)
    _launch(runtime, "maxpool2x2_forward", (x, y, argmax), x.shape)
    return y, argmax


def maxpool2x2_backward(dy, argmax, input_shape, checked: bool = False):
    """dy, argmax [N, C, H/2, W/2] -> dx [N, C, H, W] (input_shape), dy routed to each argmax.

    ``argmax`` holds window positions 0..3, as maxpool2x2_forward returns them; any other
    code is a ValueError. ``checked=True`` says the argmax comes straight from
    maxpool2x2_forward, which skips the device's copy to the host for that check (the cpu
    checks inside its loop, for free, either way); the kernels stay memory-safe regardless.
    """
    op = "maxpool2x2_backward"
    runtime = check_float_array(op, "dy", dy, 4, "N, C, H/2, W/2")
    _check_argmax(op, argmax, dy)
    check_same_device(op, dy=dy, argmax=argmax)
    input_shape = _check_input_shape(op, input_shape, dy.shape)
    check_output_size(op, "dx", input_shape)
    if runtime is None:
        dx = np.empty(input_shape, dy.dtype)
        invalid = _backward_cpu(dy.reshape(_planes(dy.shape)), argmax.reshape(_planes(dy.shape)),
                                dx.reshape(_planes(input_shape)), work=dx.size)
        if invalid:
            _check_argmax_codes(op, argmax)
        return dx
    if not checked:
        _check_argmax_codes(op, runtime.to_host(argmax))
    dx = runtime.empty(input_shape, np.float32)
    _launch(runtime, "maxpool2x2_backward", (dy, argmax, dx), input_shape)
    return dx


def _check_argmax(op: str, argmax, dy) -> None:
    if getattr(argmax, "dtype", None) != np.uint8:
        raise TypeError(f"{op}: argmax must be the uint8 array maxpool2x2_forward returned, got {getattr(argmax, 'dtype', type(argmax).__name__)}")
    if tuple(argmax.shape) != tuple(dy.shape):
        raise ValueError(f"{op}: argmax shape {tuple(argmax.shape)} must equal dy shape {tuple(dy.shape)}")
    if not argmax.flags.c_contiguous:
        raise ValueError(f"{op}: argmax must be C-contiguous (got a strided view); copy it first")


def _check_argmax_codes(op: str, argmax: np.ndarray) -> None:
    """Host argmax codes lie in 0..3; else a ValueError naming how many do not, and the first."""
    bad = argmax >= WINDOW
    if not bad.any():
        return
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{op}: argmax must hold window positions 0..{WINDOW - 1}, as maxpool2x2_forward returns them; "
                     f"{int(bad.sum())} hold other values, e.g. argmax[{', '.join(map(str, first))}] = {argmax[first]}")


def _check_input_shape(op: str, input_shape, dy_shape) -> tuple[int, int, int, int]:
    input_shape = check_shape(op, "input_shape", input_shape)
    expected = (dy_shape[0], dy_shape[1], 2 * dy_shape[2], 2 * dy_shape[3])
    if input_shape != expected:
        raise ValueError(f"{op}: input_shape {input_shape} does not match dy shape {tuple(dy_shape)}; expected {expected}")
    return input_shape


# --- launch glue, shared by the cuda and opencl runtimes -------------------------------
def _launch(runtime, kernel: str, arrays, input_shape) -> None:
    """One thread per window. ``arrays`` in kernel order; ``input_shape`` is x's [N, C, H, W]."""
    N, C, H, W = input_shape
    n_out = N * C * (H // 2) * (W // 2)
    grid, block = grid_1d(n_out, MAXPOOL_CU.threads)
    if runtime.use_numba_kernels:
        from .numba_cuda import maxpool as numba_maxpool

        # The Numba kernels index [planes, rows, cols] views rather than flat memory.
        views = tuple(a.reshape(_planes(a.shape)) for a in arrays)
        runtime.launch_numba(getattr(numba_maxpool, kernel), grid, block, views)
    else:
        runtime.launch(MAXPOOL_CU, kernel, grid, block, arrays + (np.int32(n_out), np.int32(H), np.int32(W)))
