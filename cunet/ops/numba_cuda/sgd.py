"""The fused SGD-with-momentum update as a Numba CUDA kernel (one thread per element)."""
from numba import cuda, float32, int32

from cunet.ops.sgd import momentum_step


@cuda.jit
def sgd_momentum_update(param, velocity, grad, lr, momentum, weight_decay, n):
    """In place: v = momentum*v - lr*(g + weight_decay*p); p += v, for i < n."""
    i = cuda.grid(1)
    if i < n:
        param[i], velocity[i] = momentum_step(param[i], velocity[i], grad[i], lr, momentum, weight_decay)


PTX_SIGNATURES = {
    sgd_momentum_update: (float32[::1], float32[::1], float32[::1], float32, float32, float32, int32),
}
