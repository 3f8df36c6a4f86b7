/*
 * SGD with momentum, one fused update per parameter tensor (Caffe's convention,
 * the one the U-Net paper's Caffe code used):
 *
 *     v <- momentum * v - lr * (g + weight_decay * p)
 *     p <- p + v
 *
 * (PyTorch writes the same method as v <- momentum * v + g; p <- p - lr * v. With a
 * constant learning rate the two produce the same parameters: v_caffe = -lr * v_torch.)
 *
 * Work mapping: one element per thread over the flat tensor. Memory traffic per
 * element: reads p, v, g (12 B), writes p, v (8 B). Fusing the three steps into one
 * kernel moves 20 B per parameter instead of the 36 B of three separate passes.
 */

KERNEL void sgd_momentum_update(GLOBAL float* RESTRICT param, GLOBAL float* RESTRICT velocity,
                                GLOBAL const float* RESTRICT grad, float lr, float momentum,
                                float weight_decay, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float p = param[i];
        float v = momentum * velocity[i] - lr * (grad[i] + weight_decay * p);
        velocity[i] = v;
        param[i] = p + v;
    }
}

/*
 * The running average of the weights (Polyak averaging: an exponential moving average),
 * updated after each SGD step:
 *
 *     a <- a + (1 - decay) * (p - a)        (= decay * a + (1 - decay) * p)
 *
 * SGD with a batch of one tile wanders around a minimum; the average of the recent
 * weights sits nearer its centre. Written as one multiply-add on the difference, so a
 * weight that stopped changing (p = a) keeps its average exactly.
 *
 * Work mapping: one element per thread. Reads a, p (8 B), writes a (4 B).
 */
KERNEL void weight_average_update(GLOBAL float* RESTRICT average, GLOBAL const float* RESTRICT param,
                                  float rate, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float a = average[i];
        average[i] = a + rate * (param[i] - a);
    }
}
