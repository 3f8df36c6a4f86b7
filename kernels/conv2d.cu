/*
 * 2-D convolution, stride 1, no padding ("valid"), as implicit GEMM: the heart of cunet.
 *
 * What is computed (NCHW, filter FILTER x FILTER, FILTER in {1, 3}; OH = H-F+1, OW = W-F+1):
 *
 *   forward          y[n,k,oh,ow] = b[k] + sum_{c,r,s} x[n,c,oh+r,ow+s] * w[k,c,r,s]
 *                    (optionally max(., 0): the ReLU fused into the epilogue)
 *   backward input   dx[n,c,h,w]  = sum_{k,r,s} dy[n,k,h-r,w-s] * w[k,c,r,s]
 *                    with dy read as 0 outside [0,OH) x [0,OW): the "full" correlation of
 *                    dy, zero-padded by F-1, with the flipped filter, written without
 *                    ever building the padded dy or the flipped w
 *   backward params  dw[k,c,r,s]  = sum_{n,oh,ow} dy[n,k,oh,ow] * x[n,c,oh+r,ow+s]
 *                    db[k]        = sum_{n,oh,ow} dy[n,k,oh,ow]
 *
 * Each of the three is a matrix product C[M,N] = A[M,KG] * B[KG,N] whose operands are
 * never stored: every element of A and B is a gather from x, dy or w, computed from its
 * (row, column) index when the tile that needs it is loaded. CUTLASS calls this
 * "implicit GEMM"; the big im2col matrix of the textbook method exists only one
 * shared-memory tile at a time.
 *
 *   kernel                   M (rows)          N (columns)   KG (reduction)  A gathers  B gathers
 *   conv2d_forward           batch*OH*OW       K             C*F*F           x          w
 *   conv2d_backward_input    batch*H*W         C             K*F*F           dy         w
 *   conv2d_backward_params   C*F*F + 1         K             batch*OH*OW     x (and 1)  dy
 *
 * The backward-params GEMM computes dw transposed, and its last row is the bias: a row of
 * A that is 1 everywhere makes C[C*F*F, k] = sum_p dy[p,k] = db[k]. (The bias gradient is
 * the weight gradient of a constant input channel.) Its reduction dimension is the long
 * one (up to 325k pixels for a 572x572 tile), and M*N is small, so it is split: block z
 * of the grid sums the pixels [z*chunk, (z+1)*chunk) into partial[z], and
 * conv2d_sum_partials adds the partials in the order z = 0, 1, 2, ...: the same result
 * on every run, with no atomics (prelude rule 6).
 *
 * Work mapping (the same for the three GEMMs): the main loop of gemm.h
 * ------------------------------------------------------------------------
 * A block of THREADS threads owns a BM x BN tile of C. It walks the reduction BK at a
 * time: all threads gather a BK x BM slice of A and a BK x BN slice of B into shared
 * memory, wait at a barrier, then gemm_tile_product() adds the slice into each thread's
 * accumulators (FP32 FMAs on CUDA cores, or TF32 mma.sync on tensor cores: -DMATH_TF32),
 * and the block waits again before the next slice overwrites the tiles. The tile shape
 * comes in as -D defines, picked by the host from the GEMM's N (cunet/ops/gemm.py:
 * TILE_CONFIGS): 128x64 tiles when N is large, 64x16 and 64x8 when N = 16 or 2 would
 * leave most of a 64-wide tile idle (K = 16 in the first layers at base 16, K = 2 in the
 * last 1x1 layer). gemm.h explains the two ways of doing the arithmetic.
 *
 * Why it is fast, in numbers (FP32, the 128x64x8 tile, 8x8 per thread): per BK = 8 slice
 * a block loads (128 + 64) * 8 floats and does 128 * 64 * 8 multiply-adds: 43 FMAs per
 * float fetched from global memory (mostly L1/L2 hits: the 3x3 windows of neighbouring
 * pixels overlap). A naive kernel, one thread per output looping over c, r, s, fetches
 * 2 floats (x and w) per FMA: 85x the traffic. Inside the block, each thread reads
 * TM + TN = 16 shared-memory words per TM * TN = 64 FMAs, so shared memory is not the
 * bottleneck either. The registers pay for it: 64 accumulators plus 16 operands make
 * ~120 registers per thread, 128 threads per block, so 4 blocks (16 warps, 25% occupancy)
 * per SM on sm_80; 64 independent FMAs per step hide latency instead of more warps.
 * (siboehm's SGEMM of this shape, "2-D block tiling", ran at ~70% of cuBLAS on an
 * A6000; warp tiling and vector loads took it to ~94%. These kernels have not been
 * timed on a GPU yet: they are checked by NVRTC, PoCL and Oclgrind.)
 *
 * Arithmetic intensity of the whole op, forward, U-Net layer x[1,64,570,570] -> 64:
 * 2*M*N*KG = 2 * 324900 * 64 * 576 = 24 GFLOP against (x + w + y) = 83 + 0.15 + 83 MB
 * of compulsory traffic: about 145 FLOP per byte, well into the compute-bound regime
 * of any GPU (an A100's ridge point is ~13 FLOP/B for fp32).
 *
 * Edges: M, N and KG need not be multiples of BM, BN, BK. Out-of-range elements of A and
 * B are loaded as 0 (so they add nothing), and the epilogue stores only rows < M and
 * columns < N. Every thread reaches both barriers of every iteration (rule 5).
 */

#ifndef FILTER
#error "conv2d.cu needs -DFILTER (1 or 3), and the tile defines of gemm.h"
#endif

#include "gemm.h"

#define FF (FILTER * FILTER)

#if THREADS % BM || THREADS % BK || (BM * BK) % THREADS || (BN * BK) % THREADS
#error "conv2d.cu: the tile shape must satisfy THREADS % BM == 0, THREADS % BK == 0 and BM*BK, BN*BK multiples of THREADS"
#endif
#define A_LOADS (BM * BK / THREADS)  /* elements of the A slice each thread gathers per step */
#define B_LOADS (BN * BK / THREADS)

/*
 * Forward: y = conv(x, w) + b, optionally ReLU. Grid (ceil(M/BM), ceil(K/BN)).
 *
 * A[m, kk] = x[n, c, oh+r, ow+s] with m = (n, oh, ow) and kk = (c, r, s). Each thread
 * always gathers the same row m of A (m = t % BM, as THREADS is a multiple of BM), so
 * it decodes m into a base offset once; per element it only decodes kk (divisions by
 * the constants FF and FILTER: a multiply and a shift). Neighbouring threads read
 * neighbouring ow: coalesced. B[kk, k] = w[k, kk]: neighbouring threads read
 * neighbouring kk, i.e. consecutive floats of one filter.
 */
KERNEL void LAUNCH_BOUNDS(THREADS) conv2d_forward(
    GLOBAL const float* RESTRICT x, GLOBAL const float* RESTRICT w, GLOBAL const float* RESTRICT bias,
    GLOBAL float* RESTRICT y, int batch, int C, int H, int W, int K, int relu)
{
    GEMM_TILES;
    const int OH = H - FILTER + 1, OW = W - FILTER + 1, OHW = OH * OW;
    const int M = batch * OHW, KG = C * FF;
    const int t = threadIdx.x;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;

    /* This thread's row of A, decoded once. */
    const int a_row = t % BM, a_col = t / BM;
    const int a_m = m0 + a_row;
    const bool a_live = a_m < M;
    int a_base = 0;
    if (a_live) {
        int n = a_m / OHW, p = a_m - n * OHW, oh = p / OW, ow = p - oh * OW;
        a_base = n * C * H * W + oh * W + ow;
    }
    const int b_kk = t % BK, b_col = t / BK;

    float acc[GEMM_ACC];
    gemm_zero(acc);

#define FORWARD_SLICE(K0, AS, BS)                                                                     \
    do {                                                                                              \
        UNROLL for (int i = 0; i < A_LOADS; ++i) {                                                    \
            int col = a_col + i * (THREADS / BM), kk = (K0) + col;                                    \
            int c = kk / FF, rs = kk - c * FF, r = rs / FILTER, s = rs - r * FILTER;                  \
            gemm_stage(&(AS)[col * LDA + a_row], x + a_base + c * H * W + r * W + s, a_live && kk < KG); \
        }                                                                                             \
        UNROLL for (int i = 0; i < B_LOADS; ++i) {                                                    \
            int col = b_col + i * (THREADS / BK), k = n0 + col, kk = (K0) + b_kk;                     \
            gemm_stage(&(BS)[b_kk * LDB + col], w + k * KG + kk, k < K && kk < KG);                   \
        }                                                                                             \
    } while (0)
    GEMM_MAIN_LOOP(0, KG, FORWARD_SLICE);
#undef FORWARD_SLICE

    /* Epilogue: bias, optional ReLU, store. Row m = (n, p) goes to y[n, k, p]. */
UNROLL
    for (int e = 0; e < GEMM_ACC; ++e) {
        int m = m0 + gemm_row(t, e), k = n0 + gemm_col(t, e);
        if (m < M && k < K) {
            int n = m / OHW, p = m - n * OHW;
            float v = acc[e] + bias[k];
            y[(n * K + k) * OHW + p] = relu ? fmaxf(v, 0.0f) : v;
        }
    }
}

/*
 * Backward input: dx = full correlation of dy with the flipped filter. Grid
 * (ceil(batch*H*W / BM), ceil(C / BN)).
 *
 * A[m, kk] = dy[n, k, h-r, w-s] with m = (n, h, w), kk = (k, r, s), and 0 where h-r or
 * w-s falls outside dy: that bounds test *is* the zero padding of F-1 on every side.
 * B[kk, c] = w[k, c, r, s]. Output pixel (h, w) receives from dy[h-r, w-s] through tap
 * (r, s), which is what correlating the padded dy with w[.., F-1-r, F-1-s] computes.
 */
KERNEL void LAUNCH_BOUNDS(THREADS) conv2d_backward_input(
    GLOBAL const float* RESTRICT dy, GLOBAL const float* RESTRICT w, GLOBAL float* RESTRICT dx,
    int batch, int C, int H, int W, int K)
{
    GEMM_TILES;
    const int OH = H - FILTER + 1, OW = W - FILTER + 1, OHW = OH * OW, HW = H * W;
    const int M = batch * HW, KG = K * FF;
    const int t = threadIdx.x;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;

    const int a_row = t % BM, a_col = t / BM;
    const int a_m = m0 + a_row;
    const bool a_live = a_m < M;
    int a_base = 0, a_h = 0, a_w = 0;
    if (a_live) {
        int n = a_m / HW, p = a_m - n * HW;
        a_h = p / W;
        a_w = p - a_h * W;
        a_base = n * K * OHW;
    }
    const int b_kk = t % BK, b_col = t / BK;

    float acc[GEMM_ACC];
    gemm_zero(acc);

#define BACKWARD_INPUT_SLICE(K0, AS, BS)                                                              \
    do {                                                                                              \
        UNROLL for (int i = 0; i < A_LOADS; ++i) {                                                    \
            int col = a_col + i * (THREADS / BM), kk = (K0) + col;                                    \
            int k = kk / FF, rs = kk - k * FF, r = rs / FILTER, s = rs - r * FILTER;                  \
            int oh = a_h - r, ow = a_w - s;                                                           \
            bool inside = a_live && kk < KG && oh >= 0 && oh < OH && ow >= 0 && ow < OW;              \
            gemm_stage(&(AS)[col * LDA + a_row], dy + a_base + k * OHW + oh * OW + ow, inside);       \
        }                                                                                             \
        UNROLL for (int i = 0; i < B_LOADS; ++i) {                                                    \
            int col = b_col + i * (THREADS / BK), c = n0 + col, kk = (K0) + b_kk;                     \
            int k = kk / FF, rs = kk - k * FF;                                                        \
            gemm_stage(&(BS)[b_kk * LDB + col], w + (k * C + c) * FF + rs, c < C && kk < KG);         \
        }                                                                                             \
    } while (0)
    GEMM_MAIN_LOOP(0, KG, BACKWARD_INPUT_SLICE);
#undef BACKWARD_INPUT_SLICE

UNROLL
    for (int e = 0; e < GEMM_ACC; ++e) {
        int m = m0 + gemm_row(t, e), c = n0 + gemm_col(t, e);
        if (m < M && c < C) {
            int n = m / HW, p = m - n * HW;
            dx[(n * C + c) * HW + p] = acc[e];
        }
    }
}

/*
 * Backward params, step 1: partial sums of dw^T (and db) over one chunk of pixels.
 * Grid (ceil(J / BM), ceil(K / BN), splits) with J = C*F*F + 1.
 *
 * A[j, p] = x[n, c, oh+r, ow+s] for j = (c, r, s) < C*F*F, and 1 for j = C*F*F (the
 * bias row); B[p, k] = dy[n, k, oh, ow]; p = (n, oh, ow) runs over this block's chunk.
 * Here the reduction index p is the one neighbouring threads walk (p = p0 + t % BK), so
 * both gathers read along image rows: coalesced in runs of BK floats. Each thread
 * decodes its p once per step and uses it for its A and its B elements.
 *
 * partial[z, k, j] = sum over chunk z of A[j, p] * B[p, k]: stored k-major, so that
 * the reduction kernel reads partial[z] with the index layout of dw[k, j].
 */
KERNEL void LAUNCH_BOUNDS(THREADS) conv2d_backward_params(
    GLOBAL const float* RESTRICT x, GLOBAL const float* RESTRICT dy, GLOBAL float* RESTRICT partial,
    int batch, int C, int H, int W, int K, int chunk)
{
    GEMM_TILES;
    const int OH = H - FILTER + 1, OW = W - FILTER + 1, OHW = OH * OW, HW = H * W;
    const int J = C * FF + 1, P = batch * OHW;
    const int t = threadIdx.x;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN, z = blockIdx.z;
    const int p_begin = z * chunk, p_end = min(p_begin + chunk, P);

    const int l_p = t % BK, l_col = t / BK;   /* both loaders: reduction index, tile column */

    float acc[GEMM_ACC];
    gemm_zero(acc);

#define BACKWARD_PARAMS_SLICE(K0, AS, BS)                                                             \
    do {                                                                                              \
        int p = (K0) + l_p;                                                                           \
        bool p_live = p < p_end;                                                                      \
        int x_base = 0, dy_base = 0;                                                                  \
        if (p_live) {                                                                                 \
            int n = p / OHW, q = p - n * OHW, oh = q / OW, ow = q - oh * OW;                          \
            x_base = n * C * HW + oh * W + ow;                                                        \
            dy_base = n * K * OHW + q;                                                                \
        }                                                                                             \
        UNROLL for (int i = 0; i < A_LOADS; ++i) {                                                    \
            int col = l_col + i * (THREADS / BK), j = m0 + col;                                       \
            if (j == J - 1) {                                                                         \
                gemm_stage_value(&(AS)[l_p * LDA + col], p_live ? 1.0f : 0.0f);   /* the bias row */  \
            } else {                                                                                  \
                int c = j / FF, rs = j - c * FF, r = rs / FILTER, s = rs - r * FILTER;                \
                gemm_stage(&(AS)[l_p * LDA + col], x + x_base + c * HW + r * W + s, p_live && j < J); \
            }                                                                                         \
        }                                                                                             \
        UNROLL for (int i = 0; i < B_LOADS; ++i) {                                                    \
            int col = l_col + i * (THREADS / BK), k = n0 + col;                                       \
            gemm_stage(&(BS)[l_p * LDB + col], dy + dy_base + k * OHW, p_live && k < K);              \
        }                                                                                             \
    } while (0)
    GEMM_MAIN_LOOP(p_begin, p_end, BACKWARD_PARAMS_SLICE);
#undef BACKWARD_PARAMS_SLICE

UNROLL
    for (int e = 0; e < GEMM_ACC; ++e) {
        int j = m0 + gemm_row(t, e), k = n0 + gemm_col(t, e);
        if (j < J && k < K) partial[(z * K + k) * J + j] = acc[e];
    }
}

/*
 * Backward params, step 2: dw[k, j] = sum_z partial[z, k, j] in the fixed order
 * z = 0, 1, ..., splits-1, and db[k] = the same sum for j = C*F*F. One thread per
 * element of [K, J]; neighbouring threads read neighbouring floats of each partial.
 * Traffic: splits + 1 floats per output; small next to step 1.
 */
KERNEL void LAUNCH_BOUNDS(THREADS) conv2d_sum_partials(
    GLOBAL const float* RESTRICT partial, GLOBAL float* RESTRICT dw, GLOBAL float* RESTRICT db,
    int splits, int K, int J)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < K * J) {
        float sum = 0.0f;
        for (int z = 0; z < splits; ++z) sum += partial[z * K * J + i];
        int k = i / J, j = i - k * J;
        if (j < J - 1) {
            dw[k * (J - 1) + j] = sum;
        } else {
            db[k] = sum;
        }
    }
}
