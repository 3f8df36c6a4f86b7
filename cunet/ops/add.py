"""y += x: gradient accumulation where a tensor feeds two consumers (the skip connections)."""
from __future__ import annotations

import numpy as np

from cunet.kernels import kernel_module

from .common import check_float_array, check_same_device, check_same_dtype, check_same_shape, check_writable, grid_1d

ADD_CU = kernel_module("add.cu", threads=256)


def add_inplace(y, x) -> None:
    """Add ``x`` into ``y`` in place (same shape, dtype and device)."""
    check_float_array("add_inplace", "y", y)
    check_writable("add_inplace", "y", y)
    check_float_array("add_inplace", "x", x)
    check_same_shape("add_inplace", y=y, x=x)
    check_same_dtype("add_inplace", y=y, x=x)
    runtime = check_same_device("add_inplace", y=y, x=x)
    if runtime is None:
        np.add(y, x, out=y)
        return
    grid, block = grid_1d(y.size, ADD_CU.threads)
    runtime.launch(ADD_CU, "add_inplace", grid, block, (y, x, np.int32(y.size)))
