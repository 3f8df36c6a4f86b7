"""Drop-out as Numba CUDA kernels: one thread per group of four elements, as kernels/dropout.cu.

The per-group work (one Philox4x32-10 call, four keep decisions) is the very ``@njit``
function the cpu path runs (cunet/ops/dropout.py), so the Numba mask equals the cpu mask,
which the tests show equals the CUDA C / OpenCL mask.
"""
from numba import cuda, float32, int32, uint8, uint32

from cunet.ops import dropout as ops

# The per-group functions take arrays, so they are compiled from their Python source as
# CUDA device functions (philox4x32_10 and keep_element, scalar @njit functions, compile
# for the GPU as they are). On a GPU calling the @njit versions would work too; the
# simulator, though, hands kernels its own array type, which CPU-compiled functions cannot take.
dropout_group = cuda.jit(device=True)(ops.dropout_group.py_func)
mask_group = cuda.jit(device=True)(ops.mask_group.py_func)


@cuda.jit
def dropout_apply(x, y, n, p, scale, key0, key1, stream):
    """y[i] = x[i] * keep_i * scale for the four elements of this thread's group, i < n."""
    group = cuda.grid(1)
    if ops.WORDS_PER_CALL * group < n:
        dropout_group(x, y, group, n, p, scale, key0, key1, stream)


@cuda.jit
def dropout_mask(mask, n, p, key0, key1, stream):
    """mask[i] = keep_i (0 or 1) for the four elements of this thread's group, i < n."""
    group = cuda.grid(1)
    if ops.WORDS_PER_CALL * group < n:
        mask_group(mask, group, n, p, key0, key1, stream)


PTX_SIGNATURES = {
    dropout_apply: (float32[::1], float32[::1], int32, float32, float32, uint32, uint32, uint32),
    dropout_mask: (uint8[::1], int32, float32, uint32, uint32, uint32),
}
