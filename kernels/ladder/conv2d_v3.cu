/*
 * Ladder rung v3: 1-D register blocking. Each thread computes TM outputs, not one.
 *
 * In v2 every multiply-add costs two shared-memory loads. Let each thread own TM = 8
 * pixels of one channel (a column strip of the C tile): per reduction step it loads one B
 * value (its channel's tap) into a register and TM A values, and does TM multiply-adds.
 * That is (TM + 1) / TM ~ 1.1 shared loads per multiply-add instead of 2, and a block of
 * BM x BN = 64 x 32 outputs loads (64 + 32) floats per step for 64*32 multiply-adds: 21
 * FMAs per float from global memory (v2: 8). The accumulators live in registers (acc[TM]).
 * siboehm's SGEMM walkthrough measured this step at ~2x the shared-memory kernel.
 *
 * Work mapping: 256 threads; thread t owns channel n0 + t / (BM/TM) and pixels
 * m0 + (t % (BM/TM)) * TM + i, i < TM. Loads as in v2 (every thread one element of each
 * slice per pass, BK = 8 taps deep), with the same barriers.
 */

#ifndef FILTER
#error "conv2d_v3.cu needs -DFILTER (1 or 3)"
#endif
#define FF (FILTER * FILTER)
#define BM 64   /* pixels per block */
#define BN 32   /* channels per block */
#define BK 8    /* taps per step */
#define TM 8    /* pixels per thread */
#define THREADS (BM / TM * BN)   /* 256 */

KERNEL void LAUNCH_BOUNDS(THREADS) conv2d_forward(
    GLOBAL const float* RESTRICT x, GLOBAL const float* RESTRICT w, GLOBAL const float* RESTRICT bias,
    GLOBAL float* RESTRICT y, int batch, int C, int H, int W, int K, int relu)
{
    __shared__ float As[BK][BM + 1];
    __shared__ float Bs[BK][BN + 1];
    const int OH = H - FILTER + 1, OW = W - FILTER + 1, OHW = OH * OW;
    const int M = batch * OHW, KG = C * FF;
    const int t = threadIdx.x, m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int strip = t % (BM / TM), channel = t / (BM / TM);   /* this thread's outputs */

    float acc[TM];
    for (int i = 0; i < TM; ++i) acc[i] = 0.0f;

    for (int k0 = 0; k0 < KG; k0 += BK) {
        /* A slice: BK x BM = 512 elements, 2 per thread; neighbouring threads, neighbouring pixels. */
        for (int e = t; e < BK * BM; e += THREADS) {
            int kk = k0 + e / BM, m = m0 + e % BM;
            float a = 0.0f;
            if (m < M && kk < KG) {
                int n = m / OHW, p = m - n * OHW, oh = p / OW, ow = p - oh * OW;
                int c = kk / FF, rs = kk - c * FF, r = rs / FILTER, s = rs - r * FILTER;
                a = x[n * C * H * W + c * H * W + (oh + r) * W + ow + s];
            }
            As[e / BM][e % BM] = a;
        }
        /* B slice: BK x BN = 256 elements, 1 per thread; neighbouring threads, neighbouring taps. */
        {
            int kk = k0 + t % BK, k = n0 + t / BK;
            Bs[t % BK][t / BK] = (k < K && kk < KG) ? w[k * KG + kk] : 0.0f;
        }
        __syncthreads();
        for (int j = 0; j < BK; ++j) {
            float b = Bs[j][channel];
            for (int i = 0; i < TM; ++i) acc[i] += As[j][strip * TM + i] * b;
        }
        __syncthreads();
    }
    int k = n0 + channel;
    for (int i = 0; i < TM; ++i) {
        int m = m0 + strip * TM + i;
        if (m < M && k < K) {
            int n = m / OHW, p = m - n * OHW;
            float v = acc[i] + bias[k];
            y[(n * K + k) * OHW + p] = relu ? fmaxf(v, 0.0f) : v;
        }
    }
}
