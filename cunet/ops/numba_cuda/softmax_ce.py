"""Weighted softmax cross-entropy as Numba CUDA kernels: the same three kernels as kernels/softmax_ce.cu.

One thread per pixel; the per-pixel math is the cpu path's ``@njit`` functions
(cunet/ops/softmax_ce.py). The loss is summed deterministically in two launches, as in
the CUDA C file: per-block tree sums in shared memory into ``partial``, then one block
adds the partials in a fixed order. Launch with BLOCK threads per block (the shared
arrays are sized by it) and the grid from ``softmax_ce_grid``.
"""
from numba import cuda, float32, int32

from cunet.ops import softmax_ce as ops

BLOCK = ops.BLOCK

# The per-pixel functions take arrays, so they are compiled from their Python source as
# CUDA device functions (the scalar @njit helpers they call compile for the GPU as they
# are). On a GPU calling the @njit versions would work too; the simulator, though, hands
# kernels its own array type, which CPU-compiled functions cannot take.
pixel_forward = cuda.jit(device=True)(ops.pixel_forward.py_func)
pixel_backward = cuda.jit(device=True)(ops.pixel_backward.py_func)


@cuda.jit(device=True)
def block_sum(buf, value):
    """Sum of ``value`` over the block's BLOCK threads, a tree in shared memory; every thread must call it, once."""
    t = cuda.threadIdx.x
    buf[t] = value
    cuda.syncthreads()
    stride = BLOCK // 2
    while stride > 0:
        if t < stride:
            buf[t] += buf[t + stride]
        cuda.syncthreads()
        stride //= 2
    return buf[0]


@cuda.jit
def softmax_ce_forward(logits, labels, weights, probs, partial, pixels, classes, plane):
    """Probabilities, and partial[block] = this block's sum of w * -log p_label."""
    buf = cuda.shared.array(BLOCK, float32)
    q = cuda.grid(1)
    loss = float32(0)
    if q < pixels:  # no return: every thread must reach block_sum's barriers
        loss = pixel_forward(logits, labels, weights, probs, q, classes, plane)
    total = block_sum(buf, loss)
    if cuda.threadIdx.x == 0:
        partial[cuda.blockIdx.x] = total


@cuda.jit
def softmax_ce_sum(partial, loss, n_partials, pixels):
    """One block: loss[0] = (the partials summed in a fixed order) / pixels."""
    buf = cuda.shared.array(BLOCK, float32)
    acc = float32(0)
    for i in range(cuda.threadIdx.x, n_partials, BLOCK):
        acc += partial[i]
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        loss[0] = total / float32(pixels)


@cuda.jit
def softmax_ce_backward(probs, labels, weights, dlogits, pixels, classes, plane, scale):
    """dlogits = scale * w * (p - onehot(label)) for each pixel q < pixels."""
    q = cuda.grid(1)
    if q < pixels:
        pixel_backward(probs, labels, weights, dlogits, q, classes, plane, scale)


PTX_SIGNATURES = {
    softmax_ce_forward: (float32[::1], int32[::1], float32[::1], float32[::1], float32[::1], int32, int32, int32),
    softmax_ce_sum: (float32[::1], float32[::1], int32, int32),
    softmax_ce_backward: (float32[::1], int32[::1], float32[::1], float32[::1], int32, int32, int32, float32),
}
