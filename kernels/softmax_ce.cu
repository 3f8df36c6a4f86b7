/*
 * Weighted softmax cross-entropy over the classes of every pixel: the U-Net's loss.
 *
 *     p_k(x) = exp(z_k(x)) / sum_j exp(z_j(x))                    softmax over K classes
 *     loss   = (1 / (N*H*W)) * sum_x w(x) * -log p_{l(x)}(x)      a MEAN over pixels
 *     dloss/dz_k(x) = w(x) * (p_k(x) - [k == l(x)]) / (N*H*W)
 *
 * z = logits [N, K, H, W], l = labels [N, H, W] (int32, checked to lie in [0, K) on the
 * host before launch; a caller that skips the check, checked=True, still gets memory
 * safety: a label outside [0, K) is never used as an index, and that pixel's loss and
 * gradient are NaN, as on the cpu), w = weights [N, H, W] (the paper's weight
 * map: class balance plus the border term). The normalisation is a mean over all N*H*W
 * pixels of the batch, so the gradient's size, and hence a good learning rate, does not
 * depend on the tile size. (A sum would scale the gradient, and so the right learning
 * rate, with the tile's area: to compare with a summed loss, multiply the rate by N*H*W.)
 *
 * Numerically stable: with m = max_k z_k,
 *     log sum_j exp(z_j) = m + log(sum_j exp(z_j - m)),   -log p_l = (m - z_l) + log(s)
 * Every exponent is <= 0, so nothing overflows however large the logits (|z| ~ 80 would
 * overflow exp in float32 at 88.7); s lies in [1, K], so the log is safe too. m and s come
 * from ONE pass over the K logits ("online softmax", Milakov & Gimelshein 2018): when a
 * new maximum v turns up, the sum so far is rescaled by exp(m_old - v).
 *
 * Work mapping: one thread per pixel q over the whole batch (q = n*H*W + h*W + w), a
 * 1-D grid of SOFTMAX_CE_BLOCK threads rounded up, every thread bounds-checked. The
 * thread loops over the K classes; class k of pixel q sits H*W floats after class k-1,
 * so at each step a warp reads 32 consecutive floats: coalesced. K is small (2 for the
 * ISBI data) but any K >= 2 works: the loops are over K, nothing is sized by it.
 *
 * The loss sum is deterministic, without atomics (prelude rule 6), in two launches:
 *   1. softmax_ce_forward: each block sums its threads' pixel losses with a tree
 *      reduction in shared memory (idle threads contribute 0) into partial[block];
 *   2. softmax_ce_sum: ONE block adds the partials in a fixed order (thread t takes
 *      partials t, t + B, t + 2B, ..., then the same tree), and divides by N*H*W.
 * The same shapes give the same bits on every run. (An atomicAdd of per-block sums
 * would land in whatever order the blocks finish.)
 *
 * The teaching ladder (cunet/kernels/ladder, `python -m benchmarks.ladder softmax_ce`) builds
 * this file three ways, each rung a define, so the three versions sit side by side here:
 *   v1  -DSOFTMAX_CE_TWO_PASS=1: m in one pass over the K logits, s in a second;
 *   v2  the default: one online pass (above);
 *   v3  -DSOFTMAX_CE_WARP_SUM=1: the block sum with warp shuffles on CUDA (portable tree elsewhere).
 *
 * Memory traffic per pixel, K classes: forward reads K logits twice (the second pass
 * mostly hits cache) plus the label's logit, the label (4 B) and the weight (4 B), and
 * writes K probabilities: about 8K + 8 B from DRAM, plus 4 B per block of partials.
 * Backward reads K probabilities, the label and the weight, and writes K gradients:
 * 8K + 8 B. For K = 2 and a 388x388 output that is 3.6 MB per pass: a few microseconds
 * on any recent GPU, so launch overhead, not bandwidth, dominates this loss.
 */
#ifndef SOFTMAX_CE_BLOCK
#error "compile with -DSOFTMAX_CE_BLOCK=<threads per block> (the op code sets it)"
#endif
#if (SOFTMAX_CE_BLOCK & (SOFTMAX_CE_BLOCK - 1)) != 0
#error "SOFTMAX_CE_BLOCK must be a power of two: the tree reduction halves it"
#endif
#ifndef SOFTMAX_CE_TWO_PASS
#define SOFTMAX_CE_TWO_PASS 0
#endif
#ifndef SOFTMAX_CE_WARP_SUM
#define SOFTMAX_CE_WARP_SUM 0
#endif

typedef struct {
    float max;  /* m = max_k z_k */
    float sum;  /* s = sum_k exp(z_k - m), in [1, K] */
} softmax_stats;

/* m and s for one pixel in one pass; z points at its class-0 logit, classes `plane` apart. */
DEVICE softmax_stats pixel_softmax_stats(GLOBAL const float* RESTRICT z, int classes, int plane)
{
    softmax_stats st;
#if SOFTMAX_CE_TWO_PASS
    /* Ladder v1, the textbook way: the maximum first, then the sum of exponentials against
     * it. Each logit is read twice (the second time mostly from cache) and the two loops
     * cannot overlap. The online pass below does it in one. */
    st.max = z[0];
    for (int k = 1; k < classes; ++k) st.max = fmaxf(st.max, z[k * plane]);
    st.sum = 0.0f;
    for (int k = 0; k < classes; ++k) st.sum += expf(z[k * plane] - st.max);
#else
    st.max = z[0];
    st.sum = 1.0f;  /* exp(z_0 - m) with m = z_0 */
    for (int k = 1; k < classes; ++k) {
        float v = z[k * plane];
        if (v > st.max) {   /* a new maximum: rescale the sum so far to it */
            st.sum = st.sum * expf(st.max - v) + 1.0f;
            st.max = v;
        } else {
            st.sum += expf(v - st.max);
        }
    }
#endif
    return st;
}

/*
 * The sum of `value` over the block, in a fixed order: a tree in shared memory. Each
 * step the lower half of the active threads adds the upper half's values (strides 128,
 * 64, ..., 1 for 256 threads), so log2(SOFTMAX_CE_BLOCK) steps. EVERY thread of the block
 * must call this (it holds barriers), including threads past the end of the data, which
 * pass 0. After the last barrier buf[0] holds the total and every thread may read it.
 * Call it once per kernel: a second call would overwrite buf while slow threads may
 * still be reading buf[0] (it would need another barrier first).
 */
#if defined(CUNET_CUDA) && SOFTMAX_CE_WARP_SUM
/* Ladder v3: the same sum with warp shuffles. The 32 threads of a warp add their values
 * through registers (__shfl_down_sync: strides 16, 8, 4, 2, 1), no shared memory and no
 * barrier; lane 0 of each warp leaves its warp's sum in buf[warp], one barrier, and warp 0
 * adds those the same way. 2 barriers instead of log2(SOFTMAX_CE_BLOCK) + 1; the order of
 * the additions is fixed, so the result is as deterministic as the tree's (not the same
 * bits: another order). OpenCL 1.2 has no shuffles: there the tree below runs. */
DEVICE float block_sum(SHARED float* buf, float value)
{
    int t = threadIdx.x, lane = t % 32, warp = t / 32;
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
    if (lane == 0) buf[warp] = value;
    __syncthreads();
    value = t < SOFTMAX_CE_BLOCK / 32 ? buf[t] : 0.0f;
    if (warp == 0) {
        for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
        if (lane == 0) buf[0] = value;
    }
    __syncthreads();
    return buf[0];
}
#else
DEVICE float block_sum(SHARED float* buf, float value)
{
    int t = threadIdx.x;
    buf[t] = value;
    __syncthreads();
    for (int stride = SOFTMAX_CE_BLOCK / 2; stride > 0; stride /= 2) {
        if (t < stride) {
            buf[t] += buf[t + stride];
        }
        __syncthreads();
    }
    return buf[0];
}
#endif

/* Pass 1: probabilities, and each block's sum of w(x) * -log p_l(x) into partial[block]. */
KERNEL void LAUNCH_BOUNDS(SOFTMAX_CE_BLOCK) softmax_ce_forward(
    GLOBAL const float* RESTRICT logits, GLOBAL const int* RESTRICT labels,
    GLOBAL const float* RESTRICT weights, GLOBAL float* RESTRICT probs,
    GLOBAL float* RESTRICT partial, int pixels, int classes, int plane)
{
    __shared__ float buf[SOFTMAX_CE_BLOCK];
    int q = blockIdx.x * SOFTMAX_CE_BLOCK + threadIdx.x;  /* pixel index over the batch */
    float loss = 0.0f;
    if (q < pixels) {  /* no return here: every thread goes on to block_sum's barriers */
        int n = q / plane;
        int base = n * classes * plane + (q - n * plane);  /* logits[n, 0, h, w] */
        softmax_stats st = pixel_softmax_stats(logits + base, classes, plane);
        float inv_sum = 1.0f / st.sum;
        for (int k = 0; k < classes; ++k) {
            probs[base + k * plane] = expf(logits[base + k * plane] - st.max) * inv_sum;
        }
        int label = labels[q];
        /* one unsigned compare catches negatives too; a bad label poisons the loss, never indexes */
        float z_label = (unsigned int)label < (unsigned int)classes ? logits[base + label * plane] : NAN_F;
        loss = weights[q] * ((st.max - z_label) + logf(st.sum));
    }
    float block_total = block_sum(buf, loss);
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = block_total;
    }
}

/* Pass 2, one block: loss[0] = (sum of the partials, in a fixed order) / pixels. */
KERNEL void LAUNCH_BOUNDS(SOFTMAX_CE_BLOCK) softmax_ce_sum(
    GLOBAL const float* RESTRICT partial, GLOBAL float* RESTRICT loss, int n_partials, int pixels)
{
    __shared__ float buf[SOFTMAX_CE_BLOCK];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < n_partials; i += SOFTMAX_CE_BLOCK) {
        acc += partial[i];
    }
    float total = block_sum(buf, acc);
    if (threadIdx.x == 0) {
        loss[0] = total / (float)pixels;
    }
}

/* dlogits = scale * w(x) * (p_k(x) - [k == l(x)]), scale = grad_loss / (N*H*W) from the host. */
KERNEL void LAUNCH_BOUNDS(SOFTMAX_CE_BLOCK) softmax_ce_backward(
    GLOBAL const float* RESTRICT probs, GLOBAL const int* RESTRICT labels,
    GLOBAL const float* RESTRICT weights, GLOBAL float* RESTRICT dlogits,
    int pixels, int classes, int plane, float scale)
{
    int q = blockIdx.x * SOFTMAX_CE_BLOCK + threadIdx.x;
    if (q < pixels) {
        int n = q / plane;
        int base = n * classes * plane + (q - n * plane);
        int label = labels[q];
        float g = (unsigned int)label < (unsigned int)classes ? scale * weights[q] : NAN_F;
        for (int k = 0; k < classes; ++k) {
            float p = probs[base + k * plane];
            dlogits[base + k * plane] = g * (k == label ? p - 1.0f : p);
        }
    }
}
