/*
 * 2x2 max-pool with stride 2, forward and backward (the U-Net's down-sampling step).
 *
 *     y[n,c,i,j]      = max of the window x[n,c,2i..2i+1,2j..2j+1]
 *     argmax[n,c,i,j] = where that maximum sits in the window, row-major:
 *                           0 | 1        0 = (2i,   2j)    1 = (2i,   2j+1)
 *                           --+--        2 = (2i+1, 2j)    3 = (2i+1, 2j+1)
 *                           2 | 3
 *     dx              = dy routed to the argmax position of each window, 0 elsewhere.
 *
 * The windows do not overlap (kernel = stride = 2), so every input element belongs to
 * exactly one window. That is what makes the backward easy: one thread per window
 * writes all four of its dx elements (the gradient at the argmax, zero at the other
 * three), so every dx element is written exactly once: no memset first, no atomics.
 * The host refuses odd H or W (the U-Net's size arithmetic only ever pools even sizes).
 *
 * Ties and NaN, the same on every device: the window is scanned in the order 0, 1, 2, 3
 * and a value replaces the running best only if it is strictly greater (so on a tie the
 * FIRST maximum wins: a window of four equal values gives argmax 0), or if it is NaN and
 * the best so far is not (so NaN propagates, as in PyTorch, and the first NaN wins).
 * The comparison is written out in window_beats() below and mirrored exactly by the CPU
 * and Numba paths (cunet/ops/maxpool.py: beats), which is why they agree bit for bit.
 *
 * Work mapping: a 1-D grid over the N*C*(H/2)*(W/2) outputs, one window per thread,
 * blocks of 256 threads (MAXPOOL_CU.threads in cunet/ops/maxpool.py), the grid rounded up and every thread bounds-checked.
 * The flat output index o splits into (plane, i, j) with plane = n*C + c; the window's
 * top-left input element sits at plane*H*W + 2i*W + 2j.
 *
 * Memory traffic per output: forward reads 16 B (two 8-byte pairs on adjacent rows) and
 * writes 4 B + 1 B (the uint8 argmax: a quarter of a float index's traffic); backward
 * reads 4 B + 1 B and writes 16 B. A warp's 32 windows cover 256 contiguous bytes on
 * each of two input rows, so the loads coalesce. Pure bandwidth: the U-Net's largest
 * pool ([1,64,568,568] at base 64: 83 MB in, 26 MB out) is about 35 us at an H100's
 * 3.35 TB/s.
 */

#ifdef CUNET_CUDA
typedef unsigned char uchar;  /* OpenCL C has uchar built in */
#endif

/* Should v replace the running maximum best? Strictly greater (first maximum wins ties),
 * or NaN replacing a non-NaN (NaN propagates; the first NaN wins). */
DEVICE int window_beats(float v, float best)
{
    return v > best || (v != v && best == best);
}

KERNEL void maxpool2x2_forward(GLOBAL const float* RESTRICT x, GLOBAL float* RESTRICT y,
                               GLOBAL uchar* RESTRICT argmax, int n_out, int H, int W)
{
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o < n_out) {
        int Wo = W / 2, Ho = H / 2;
        int j = o % Wo;
        int i = (o / Wo) % Ho;
        int plane = o / (Wo * Ho);
        GLOBAL const float* top = x + plane * H * W + (2 * i) * W + 2 * j;
        float window[4] = {top[0], top[1], top[W], top[W + 1]};
        float best = window[0];
        int where = 0;
        for (int q = 1; q < 4; ++q) {
            if (window_beats(window[q], best)) {
                best = window[q];
                where = q;
            }
        }
        y[o] = best;
        argmax[o] = (uchar)where;
    }
}

KERNEL void maxpool2x2_backward(GLOBAL const float* RESTRICT dy, GLOBAL const uchar* RESTRICT argmax,
                                GLOBAL float* RESTRICT dx, int n_out, int H, int W)
{
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o < n_out) {
        int Wo = W / 2, Ho = H / 2;
        int j = o % Wo;
        int i = (o / Wo) % Ho;
        int plane = o / (Wo * Ho);
        GLOBAL float* top = dx + plane * H * W + (2 * i) * W + 2 * j;
        float g = dy[o];
        int where = argmax[o];
        top[0]     = where == 0 ? g : 0.0f;
        top[1]     = where == 1 ? g : 0.0f;
        top[W]     = where == 2 ? g : 0.0f;
        top[W + 1] = where == 3 ? g : 0.0f;
    }
}
