/*
 * Ladder rung v1: one thread per output. The convolution as it is written down.
 *
 *   y[n,k,oh,ow] = b[k] + sum_{c,r,s} x[n,c,oh+r,ow+s] * w[k,c,r,s]      (then ReLU if asked)
 *
 * Thread (m, k) with m = (n, oh, ow) loops over the C*F*F taps of its window and writes
 * one output. Neighbouring threads take neighbouring pixels of one channel k (blockIdx.y),
 * so their reads of x are coalesced and their reads of w[k, ...] are one broadcast address.
 *
 * What it costs: every multiply-add reads two floats, x and w, from memory (L1/L2 if it is
 * lucky): 2 FLOPs per 8 bytes = 0.25 FLOP/byte. An A100 feeds its 19.5 TFLOP/s of FP32
 * only from ~13 FLOP/byte up; at 0.25 the loads bound it to a few percent of peak, whatever
 * the cache does. Every rung after this one is about reusing a loaded value many times.
 *
 * The same signature and epilogue as the production kernel (kernels/conv2d.cu), so the
 * ladder driver (python -m benchmarks.ladder conv2d) validates and times every rung alike.
 * FILTER (1 or 3) comes in as a -D define, as for conv2d.cu.
 */

#ifndef FILTER
#error "conv2d_v1.cu needs -DFILTER (1 or 3)"
#endif
#define FF (FILTER * FILTER)

KERNEL void conv2d_forward(
    GLOBAL const float* RESTRICT x, GLOBAL const float* RESTRICT w, GLOBAL const float* RESTRICT bias,
    GLOBAL float* RESTRICT y, int batch, int C, int H, int W, int K, int relu)
{
    const int OH = H - FILTER + 1, OW = W - FILTER + 1, OHW = OH * OW;
    const int m = blockIdx.x * blockDim.x + threadIdx.x, k = blockIdx.y;
    if (m < batch * OHW) {
        int n = m / OHW, p = m - n * OHW, oh = p / OW, ow = p - oh * OW;
        GLOBAL const float* window = x + n * C * H * W + oh * W + ow;   /* x[n, 0, oh, ow] */
        GLOBAL const float* filter = w + k * C * FF;                     /* w[k, 0, 0, 0] */
        float sum = bias[k];
        for (int c = 0; c < C; ++c)
            for (int r = 0; r < FILTER; ++r)
                for (int s = 0; s < FILTER; ++s)
                    sum += window[c * H * W + r * W + s] * filter[c * FF + r * FILTER + s];
        y[(n * K + k) * OHW + p] = relu ? fmaxf(sum, 0.0f) : sum;
    }
}
