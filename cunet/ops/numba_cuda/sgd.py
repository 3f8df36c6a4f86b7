"""The fused SGD-with-momentum update and the weights' running average as Numba CUDA kernels (one thread per element)."""
from numba import cuda, float32, int32

from cunet.ops.sgd import average_step, momentum_step


@cuda.jit
def sgd_momentum_update(param, velocity, grad, lr, momentum, weight_decay, n):
    """In place: v = momentum*v - lr*(g + weight_decay*p); p += v, for i < n."""
    i = cuda.grid(1)
    if i < n:
        param[i], velocity[i] = momentum_step(param[i], velocity[i], grad[i], lr, momentum, weight_decay)


@cuda.jit
def weight_average_update(average, param, rate, n):
    """In place: average += rate * (param - average), for i < n (rate = 1 - decay)."""
    i = cuda.grid(1)
    if i < n:
        average[i] = average_step(average[i], param[i], rate)


PTX_SIGNATURES = {
    sgd_momentum_update: (float32[::1], float32[::1], float32[::1], float32, float32, float32, int32),
    weight_average_update: (float32[::1], float32[::1], float32, int32),
}
