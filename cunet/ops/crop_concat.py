"""Crop and concatenate (the U-Net's skip connection), forward and backward, on every device.

    y     = concat([centre_crop(skip, H, W), up], channels)   skip channels first, as in the paper
    dskip = dy[:, :Cs] placed back in the centre window, zeros in the cropped-off border
    dup   = dy[:, Cs:]

The crop offset is ((Hs - H) / 2, (Ws - W) / 2). For a valid input size the U-Net's size
arithmetic makes both differences even (572 input: 568-392, 280-200, 136-104, 64-56, that
is 176, 80, 32, 8), so an odd or negative margin means the shapes are wrong, and is
refused rather than rounded.

cpu: NumPy slice assignment. It is pure copying, and NumPy's strided copy is as fast
as a parallel Numba loop over planes here (measured on 2 cores: 23 vs 30-48 ms forward
at the largest base-64 shape), so the plainest code wins.
cuda/opencl: kernels/crop_concat.cu; on cuda the Numba alternates
(ops/numba_cuda/crop_concat.py) run instead when the runtime asks for them.
"""
from __future__ import annotations

import numpy as np

from cunet.kernels import kernel_module

from .common import check_float_array, check_output_size, check_same_device, check_same_dtype, check_shape, grid_1d

CROP_CONCAT_CU = kernel_module("crop_concat.cu", threads=256)


def _margins(skip_shape, small_shape) -> tuple[int, int]:
    """(oy, ox): where the centre crop of size small_shape[2:] starts in skip (both checked even)."""
    return (skip_shape[2] - small_shape[2]) // 2, (skip_shape[3] - small_shape[3]) // 2


# --- checks ---------------------------------------------------------------------------
def _check_margins(op: str, skip_shape, up_shape, up_name: str) -> None:
    """Same batch, and a centre crop with even, non-negative margins."""
    (Ns, _, Hs, Ws), (N, _, H, W) = skip_shape, up_shape
    if Ns != N:
        raise ValueError(f"{op}: skip has batch {Ns} but {up_name} has batch {N}; they must match")
    for axis, big, small in (("height", Hs, H), ("width", Ws, W)):
        if big < small or (big - small) % 2:
            raise ValueError(
                f"{op}: cannot centre-crop skip {tuple(skip_shape)} to {up_name} {tuple(up_shape)}: the {axis} "
                f"difference {big} - {small} = {big - small} must be even and >= 0 (the U-Net's size "
                "arithmetic guarantees this for valid input sizes)"
            )


# --- public ops -----------------------------------------------------------------------
def crop_concat_forward(skip, up):
    """skip [N, Cs, Hs, Ws], up [N, Cu, H, W] -> y [N, Cs + Cu, H, W]: centre crop of skip, then up."""
    op = "crop_concat_forward"
    runtime = check_float_array(op, "skip", skip, 4, "N, Cs, Hs, Ws")
    check_float_array(op, "up", up, 4, "N, Cu, H, W")
    check_same_dtype(op, skip=skip, up=up)
    check_same_device(op, skip=skip, up=up)
    _check_margins(op, skip.shape, up.shape, "up")
    N, Cs, Hs, Ws = skip.shape
    _, Cu, H, W = up.shape
    check_output_size(op, "y", (N, Cs + Cu, H, W))
    if runtime is None:
        oy, ox = _margins(skip.shape, up.shape)
        y = np.empty((N, Cs + Cu, H, W), up.dtype)
        y[:, :Cs] = skip[:, :, oy:oy + H, ox:ox + W]
        y[:, Cs:] = up
        return y
    y = runtime.empty((N, Cs + Cu, H, W), np.float32)
    sizes = (N, Cs, Hs, Ws, Cu, H, W)
    _launch(runtime, "crop_concat_forward", (skip, up, y), sizes, y.size)
    return y


def crop_concat_backward(dy, skip_shape):
    """dy [N, Cs + Cu, H, W] -> (dskip [N, Cs, Hs, Ws] = skip_shape, zero outside the window; dup [N, Cu, H, W])."""
    op = "crop_concat_backward"
    runtime = check_float_array(op, "dy", dy, 4, "N, Cs + Cu, H, W")
    skip_shape = check_shape(op, "skip_shape", skip_shape)
    if len(skip_shape) != 4 or not 0 <= skip_shape[1] <= dy.shape[1]:
        raise ValueError(f"{op}: skip_shape must be [N, Cs, Hs, Ws] with Cs <= dy's {dy.shape[1]} channels, got {skip_shape}")
    _check_margins(op, skip_shape, dy.shape, "dy")
    N, Cs, Hs, Ws = skip_shape
    _, C, H, W = dy.shape
    Cu = C - Cs
    check_output_size(op, "dskip", skip_shape)
    if runtime is None:
        oy, ox = _margins(skip_shape, dy.shape)
        dskip = np.zeros(skip_shape, dy.dtype)
        dskip[:, :, oy:oy + H, ox:ox + W] = dy[:, :Cs]
        return dskip, dy[:, Cs:].copy()  # a copy: dup must be contiguous, and not alias dy
    dskip, dup = runtime.empty(skip_shape, np.float32), runtime.empty((N, Cu, H, W), np.float32)
    sizes = (N, Cs, Hs, Ws, Cu, H, W)
    _launch(runtime, "crop_concat_backward_skip", (dy, dskip), sizes, dskip.size)
    _launch(runtime, "crop_concat_backward_up", (dy, dup), (N, Cs, Cu, H, W), dup.size)
    return dskip, dup


# --- launch glue, shared by the cuda and opencl runtimes -------------------------------
def _launch(runtime, kernel: str, arrays, sizes, n_threads: int) -> None:
    """One thread per element of the kernel's output; ``sizes`` are the kernel's int arguments."""
    grid, block = grid_1d(n_threads, CROP_CONCAT_CU.threads)
    if runtime.use_numba_kernels:
        from .numba_cuda import crop_concat as numba_crop_concat

        # The Numba kernels read the sizes off the 4-D arrays themselves.
        runtime.launch_numba(getattr(numba_crop_concat, kernel), grid, block, arrays)
    else:
        runtime.launch(CROP_CONCAT_CU, kernel, grid, block, arrays + tuple(np.int32(s) for s in sizes))
