"""SGD with momentum, and the running average of the weights: in-place updates, on every device.

Caffe's convention (the U-Net paper trained with Caffe):

    v <- momentum * v - lr * (g + weight_decay * p)
    p <- p + v

``param`` and ``velocity`` are updated in place (so they must be writable); ``grad`` is
only read (a read-only array is fine). The hyper-parameters may be any Python or NumPy
real number whose value fits a float32: lr >= 0, 0 <= momentum < 1, weight_decay >= 0.

``weight_average_update`` keeps an exponential moving average of the weights (Polyak
averaging, ``--weight-average`` in cunet.train): a <- a + (1 - decay) * (p - a).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from cunet.cpu.parallel import njit_serial_or_parallel
from cunet.kernels import kernel_module

from .common import (check_float_array, check_real, check_same_device, check_same_dtype, check_same_shape,
                     check_writable, grid_1d)

SGD_CU = kernel_module("sgd.cu", threads=256)


@njit(cache=True)
def momentum_step(p, v, g, lr, momentum, weight_decay):
    """One element's update: returns (new p, new v)."""
    v = momentum * v - lr * (g + weight_decay * p)
    return p + v, v


# Serial for small tensors (biases, 1x1 and bottom-level weights), parallel for large ones.
@njit_serial_or_parallel()
def _sgd_cpu(param, velocity, grad, lr, momentum, weight_decay):
    for i in prange(param.size):
        param[i], velocity[i] = momentum_step(param[i], velocity[i], grad[i], lr, momentum, weight_decay)


def sgd_momentum_update(param, velocity, grad, lr: float, momentum: float, weight_decay: float = 0.0) -> None:
    """Update ``param`` and ``velocity`` in place from ``grad``; any shape, all three alike."""
    op = "sgd_momentum_update"
    for name, a in (("param", param), ("velocity", velocity), ("grad", grad)):
        check_float_array(op, name, a)
    check_same_shape(op, param=param, velocity=velocity, grad=grad)
    check_same_dtype(op, param=param, velocity=velocity, grad=grad)
    runtime = check_same_device(op, param=param, velocity=velocity, grad=grad)
    check_writable(op, "param", param)
    check_writable(op, "velocity", velocity)
    if runtime is None and np.may_share_memory(param, velocity):  # each element's p and v are one store apart
        raise ValueError(f"{op}: param and velocity share memory; the update needs two separate arrays")
    lr = check_real(op, "lr", lr, low=0.0)
    momentum = check_real(op, "momentum", momentum, low=0.0, high=1.0)
    weight_decay = check_real(op, "weight_decay", weight_decay, low=0.0)
    if runtime is None:
        scalar = param.dtype.type  # do the arithmetic in the parameters' precision
        _sgd_cpu(param.reshape(-1), velocity.reshape(-1), grad.reshape(-1), scalar(lr), scalar(momentum), scalar(weight_decay),
                 work=param.size)
        return
    grid, block = grid_1d(param.size, SGD_CU.threads)
    scalars = (np.float32(lr), np.float32(momentum), np.float32(weight_decay), np.int32(param.size))
    if runtime.use_numba_kernels:
        from .numba_cuda import sgd as numba_sgd

        flat = tuple(a.reshape(-1) for a in (param, velocity, grad))
        runtime.launch_numba(numba_sgd.sgd_momentum_update, grid, block, flat + scalars)
    else:
        runtime.launch(SGD_CU, "sgd_momentum_update", grid, block, (param, velocity, grad) + scalars)


@njit(cache=True)
def average_step(a, p, rate):
    """One element's running average, moved ``rate`` (= 1 - decay) of the way to p."""
    return a + rate * (p - a)


@njit_serial_or_parallel()
def _average_cpu(average, param, rate):
    for i in prange(average.size):
        average[i] = average_step(average[i], param[i], rate)


def weight_average_update(average, param, decay: float) -> None:
    """``average`` <- decay * ``average`` + (1 - decay) * ``param``, in place; 0 <= decay <= 1, any shape, both alike."""
    op = "weight_average_update"
    check_float_array(op, "average", average)
    check_float_array(op, "param", param)
    check_same_shape(op, average=average, param=param)
    check_same_dtype(op, average=average, param=param)
    runtime = check_same_device(op, average=average, param=param)
    check_writable(op, "average", average)
    decay = check_real(op, "decay", decay, low=0.0, high=1.0, high_open=False)
    rate = 1.0 - decay   # the kernels take the step towards p: exact for decay 1 (rate 0) and near it
    if runtime is None:
        _average_cpu(average.reshape(-1), param.reshape(-1), average.dtype.type(rate), work=average.size)
        return
    grid, block = grid_1d(average.size, SGD_CU.threads)
    scalars = (np.float32(rate), np.int32(average.size))
    if runtime.use_numba_kernels:
        from .numba_cuda import sgd as numba_sgd

        runtime.launch_numba(numba_sgd.weight_average_update, grid, block,
                             (average.reshape(-1), param.reshape(-1)) + scalars)
    else:
        runtime.launch(SGD_CU, "weight_average_update", grid, block, (average, param) + scalars)
