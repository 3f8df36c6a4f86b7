/*
 * Ladder rung v2: shared-memory tiles. The convolution as an (implicit) matrix product.
 *
 * v1 reads 2 floats per multiply-add. Write the convolution as C[M, N] = A[M, KG] * B[KG, N]
 * with M = batch*OH*OW pixels, N = K channels, KG = C*F*F taps: A[m, kk] is x at pixel m's
 * tap kk (a gather: the im2col matrix, never stored), B[kk, k] = w[k, kk]. A block of
 * T x T threads owns a T x T tile of C; it walks the reduction T at a time, each thread
 * loading one element of A's T x T slice and one of B's into shared memory, then every
 * thread reads a row of the one and a column of the other from shared memory. Each float
 * loaded from global memory now serves T multiply-adds: with T = 16, 16 x less traffic
 * (2 FLOPs per 8/16 bytes = 4 FLOP/byte), still below an A100's ridge point (~13), and
 * now shared memory is the bottleneck: 2 shared loads per multiply-add.
 *
 * Barriers: all threads load, wait, multiply, wait (before the next slice overwrites the
 * tiles). Every thread reaches both, even past the matrix edges (prelude rule 5): the
 * loads there read 0 and the stores are bounds-checked.
 */

#ifndef FILTER
#error "conv2d_v2.cu needs -DFILTER (1 or 3)"
#endif
#define FF (FILTER * FILTER)
#define T 16   /* tile side: T x T threads per block */

KERNEL void LAUNCH_BOUNDS(T * T) conv2d_forward(
    GLOBAL const float* RESTRICT x, GLOBAL const float* RESTRICT w, GLOBAL const float* RESTRICT bias,
    GLOBAL float* RESTRICT y, int batch, int C, int H, int W, int K, int relu)
{
    __shared__ float As[T][T + 1];   /* As[kk][m]; +1: the loads down a column hit distinct banks */
    __shared__ float Bs[T][T + 1];   /* Bs[kk][k] */
    const int OH = H - FILTER + 1, OW = W - FILTER + 1, OHW = OH * OW;
    const int M = batch * OHW, KG = C * FF;
    const int tx = threadIdx.x % T, ty = threadIdx.x / T;      /* tx: pixel in the tile, ty: channel */
    const int m = blockIdx.x * T + tx, k = blockIdx.y * T + ty;

    /* This thread's pixel, for loading A (row m) and for storing C. */
    int x_base = 0, n = 0, p = 0;
    if (m < M) {
        n = m / OHW;
        p = m - n * OHW;
        int oh = p / OW, ow = p - oh * OW;
        x_base = n * C * H * W + oh * W + ow;
    }
    float sum = 0.0f;
    for (int k0 = 0; k0 < KG; k0 += T) {
        int kk = k0 + ty;   /* the tap this thread loads for its pixel m */
        float a = 0.0f;
        if (m < M && kk < KG) {
            int c = kk / FF, rs = kk - c * FF, r = rs / FILTER, s = rs - r * FILTER;
            a = x[x_base + c * H * W + r * W + s];
        }
        As[ty][tx] = a;
        int kb = k0 + tx, kw = blockIdx.y * T + ty;   /* B: tap kb of filter kw (neighbours: neighbouring taps) */
        Bs[tx][ty] = (kw < K && kb < KG) ? w[kw * KG + kb] : 0.0f;
        __syncthreads();
        for (int j = 0; j < T; ++j) sum += As[j][tx] * Bs[j][ty];
        __syncthreads();
    }
    if (m < M && k < K) {
        float v = sum + bias[k];
        y[(n * K + k) * OHW + p] = relu ? fmaxf(v, 0.0f) : v;
    }
}
