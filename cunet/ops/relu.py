"""ReLU, forward and backward, on every device.

    y  = max(x, 0)
    dx = dy * [y > 0]

The backward reads the forward's output y rather than its input (y > 0 exactly where
x > 0), so autograd keeps one tensor alive instead of two.

cpu: Numba, parallel over elements when the array is large enough to pay for it. cuda/opencl: kernels/relu.cu; on cuda the Numba
alternate (ops/numba_cuda/relu.py) runs instead when the runtime asks for Numba kernels.
Both Numba paths call the same per-element functions below.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from cunet.cpu.parallel import njit_serial_or_parallel
from cunet.kernels import kernel_module

from .common import check_float_array, check_same_device, check_same_dtype, check_same_shape, check_writable, grid_1d

RELU_CU = kernel_module("relu.cu", threads=256)


# --- per-element math, shared by the CPU loop and the Numba CUDA kernels --------------
@njit(cache=True)
def relu_value(x):
    """max(x, 0); NaN maps to 0, as fmaxf does on the GPU."""
    return x if x > 0.0 else 0.0


@njit(cache=True)
def relu_grad_value(y, dy):
    """dy where the forward output was positive, else 0."""
    return dy if y > 0.0 else 0.0


# --- cpu ----------------------------------------------------------------------------
# Compiled serially and in parallel; the call picks by size (common.SerialOrParallel).
@njit_serial_or_parallel()
def _relu_forward_cpu(x, y):
    for i in prange(x.size):
        y[i] = relu_value(x[i])


@njit_serial_or_parallel()
def _relu_backward_cpu(y, dy, dx):
    for i in prange(y.size):
        dx[i] = relu_grad_value(y[i], dy[i])


# --- public ops -----------------------------------------------------------------------
def relu_forward(x):
    """y = max(x, 0), elementwise; any shape."""
    runtime = check_float_array("relu_forward", "x", x)
    if runtime is None:
        y = np.empty_like(x)
        _relu_forward_cpu(x.reshape(-1), y.reshape(-1), work=x.size)
        return y
    y = runtime.empty(x.shape)
    grid, block = grid_1d(x.size, RELU_CU.threads)
    if runtime.use_numba_kernels:
        from .numba_cuda import relu as numba_relu

        runtime.launch_numba(numba_relu.relu_forward, grid, block, (x.reshape(-1), y.reshape(-1), np.int32(x.size)))
    else:
        runtime.launch(RELU_CU, "relu_forward", grid, block, (x, y, np.int32(x.size)))
    return y


def relu_backward(y, dy, out=None):
    """dx = dy where y > 0, else 0; ``y`` is relu_forward's output.

    ``out``: where to write dx (like y and dy; it may be ``dy`` itself: each element is read
    before it is written, on every device). Writing into a gradient the caller no longer
    needs saves an activation-sized allocation per layer; by default dx is a new array.
    """
    check_float_array("relu_backward", "y", y)
    check_float_array("relu_backward", "dy", dy)
    check_same_shape("relu_backward", y=y, dy=dy)
    check_same_dtype("relu_backward", y=y, dy=dy)
    runtime = check_same_device("relu_backward", y=y, dy=dy)
    if out is not None:
        check_float_array("relu_backward", "out", out)
        check_writable("relu_backward", "out", out)
        check_same_shape("relu_backward", y=y, out=out)
        check_same_dtype("relu_backward", y=y, out=out)
        check_same_device("relu_backward", y=y, out=out)
    if runtime is None:
        dx = np.empty_like(dy) if out is None else out
        _relu_backward_cpu(y.reshape(-1), dy.reshape(-1), dx.reshape(-1), work=y.size)
        return dx
    dx = runtime.empty(dy.shape) if out is None else out
    grid, block = grid_1d(y.size, RELU_CU.threads)
    args = (y, dy, dx, np.int32(y.size))
    if runtime.use_numba_kernels:
        from .numba_cuda import relu as numba_relu

        flat = tuple(a.reshape(-1) for a in args[:3]) + args[3:]
        runtime.launch_numba(numba_relu.relu_backward, grid, block, flat)
    else:
        runtime.launch(RELU_CU, "relu_backward", grid, block, args)
    return dx
