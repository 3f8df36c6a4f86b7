"""ReLU as Numba CUDA kernels: one thread per element, the same grid as kernels/relu.cu."""
from numba import cuda, float32, int32

from cunet.ops.relu import relu_grad_value, relu_value


@cuda.jit
def relu_forward(x, y, n):
    """y[i] = max(x[i], 0) for i < n."""
    i = cuda.grid(1)
    if i < n:
        y[i] = relu_value(x[i])


@cuda.jit
def relu_backward(y, dy, dx, n):
    """dx[i] = dy[i] where y[i] > 0, else 0, for i < n."""
    i = cuda.grid(1)
    if i < n:
        dx[i] = relu_grad_value(y[i], dy[i])


PTX_SIGNATURES = {
    relu_forward: (float32[::1], float32[::1], int32),
    relu_backward: (float32[::1], float32[::1], float32[::1], int32),
}
