/*
 * 2x2 up-convolution with stride 2 (a transposed convolution), forward and backward.
 *
 *     y[n, k, 2i+a, 2j+e] = b[k] + sum_c x[n, c, i, j] * w[c, k, a, e]       a, e in {0, 1}
 *
 * w is [C, K, 2, 2] (PyTorch's ConvTranspose2d layout: in, out, kh, kw). Kernel = stride,
 * so the 2x2 output blocks of different input pixels do not overlap: each input pixel
 * "paints" its own 2x2 block of every output channel. No output sums over neighbours,
 * which is what makes this a plain matrix product rather than a convolution.
 *
 * The matrix product
 * ------------------
 * Number the K*2*2 = 4K outputs of one pixel m = (k, a, e) = 4k + 2a + e (exactly w's
 * memory order after c) and the N*H*W input pixels q = (n, i, j). Then
 *
 *     forward          Y[q, m]  = sum_c  X[c, q]  W[c, m]     rows Q pixels, columns 4K, reduce over C
 *     backward_input   dX[q, c] = sum_m  dY[m, q] W[c, m]     rows Q pixels, columns C,  reduce over 4K
 *     backward_params  dW[c, m] = sum_q  X[c, q]  dY[m, q]    rows C, columns 4K, reduce over N*H*W
 *
 * where W[c, m] is w itself read as a [C, 4K] matrix, X[c, q] = x[n, c, i, j] and
 * dY[m, q] = dy[n, k, 2i+a, 2j+e]. All three have the shape of gemm.h,
 *
 *     C[rows, columns] = sum_r A[r, row] * B[r, column],
 *
 * with the pixels as rows where there are pixels, as in conv2d.cu: so the one main loop of
 * gemm.h (FP32 or TF32 tensor cores), and three kernels that differ only in how they load
 * tiles and where they write results. The "scatter" of the up-convolution (column m of Y
 * lands at pixel (2i+a, 2j+e)) is done by the forward's epilogue, and the "gather" of the
 * backward by its tile loaders, so neither needs a separate pass or a temporary.
 *
 * Tiling, loads and stores
 * ------------------------
 * The block tile, the threads and the arithmetic are gemm.h's; the host picks the tile
 * shape by the GEMM's column count, as for conv2d (cunet/ops/gemm.py). The loaders: where
 * a GEMM's rows are pixels, each thread gathers the same pixel row of A in every step (its
 * address worked out once, before the loop) and neighbouring threads take neighbouring
 * pixels: coalesced reads of x and dy. W is contiguous along m, so the forward's B loader
 * lets neighbouring threads take neighbouring m, and the backward input's (which reduces
 * over m) neighbouring r. In the FP32 forward, a warp's 32 threads hold 16 neighbouring
 * pixels for e = 0 and 1 of one (k, a): its stores are 32 consecutive floats of one row.
 *
 * Determinism: backward_params reduces over all N*H*W pixels, a long reduction into a
 * small [C, 4K] result. It is split (split-K, the policy of cunet/ops/gemm.py): block z
 * sums only its chunk of pixels and writes a partial [C, 4K] tile, and
 * upconv2x2_sum_splits adds the partials in a fixed order. db is a block-per-channel tree
 * reduction. No atomics; run-to-run identical.
 *
 * Every load outside the matrices reads 0 and every store is bounds-checked; the
 * reduction loop's bounds are the same for all threads of a block, so every thread
 * reaches every barrier.
 */

#include "gemm.h"

#if THREADS % BM || THREADS % BN || THREADS % BK || (THREADS & (THREADS - 1)) || (BM * BK) % THREADS || (BN * BK) % THREADS
#error "upconv.cu: THREADS must be a power of two and a multiple of BM, BN and BK, and divide BM*BK and BN*BK"
#endif
#define A_LOADS (BM * BK / THREADS)  /* elements of the A slice each thread loads per step */
#define B_LOADS (BN * BK / THREADS)

/* ------------------------------------------------------------------------------------
 * Forward: Y[q, m] = sum_c X[c, q] W[c, m], written to y[n, k, 2i+a, 2j+e] with + b[k].
 * Grid: (ceil(Q / BM), ceil(4K / BN)), Q = N*H*W.
 */
KERNEL void LAUNCH_BOUNDS(THREADS) upconv2x2_forward(GLOBAL const float* RESTRICT x, GLOBAL const float* RESTRICT w,
                                                     GLOBAL const float* RESTRICT b, GLOBAL float* RESTRICT y,
                                                     int N, int C, int H, int W, int K)
{
    GEMM_TILES;
    const int t = threadIdx.x, M = 4 * K, P = H * W, Q = N * P;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;

    const int a_row = t % BM, a_col = t / BM;     /* the pixel this thread loads for A, every step */
    const int q_load = m0 + a_row;
    const bool a_live = q_load < Q;
    GLOBAL const float* x_column = x + (a_live ? (q_load / P) * C * P + q_load % P : 0);  /* &x[n, 0, i, j] */

    float acc[GEMM_ACC];
    gemm_zero(acc);

#define FORWARD_SLICE(R0, AS, BS)                                                                     \
    do {                                                                                              \
        UNROLL for (int l = 0; l < A_LOADS; ++l) {                                                    \
            int r = a_col + l * (THREADS / BM), c = (R0) + r;                                         \
            gemm_stage(&(AS)[r * LDA + a_row], x_column + c * P, a_live && c < C);                    \
        }                                                                                             \
        UNROLL for (int l = 0; l < B_LOADS; ++l) {                                                    \
            int e = t + l * THREADS, r = e / BN, col = e % BN, c = (R0) + r, m = n0 + col;            \
            gemm_stage(&(BS)[r * LDB + col], w + c * M + m, c < C && m < M);                          \
        }                                                                                             \
    } while (0)
    GEMM_MAIN_LOOP(0, C, FORWARD_SLICE);
#undef FORWARD_SLICE

UNROLL
    for (int e = 0; e < GEMM_ACC; ++e) {
        int q = m0 + gemm_row(t, e), m = n0 + gemm_col(t, e);
        if (q < Q && m < M) {
            int n = q / P, p = q - n * P, i = p / W, j = p - i * W;
            int k = m >> 2, a = (m >> 1) & 1, ee = m & 1;     /* m = 4k + 2a + e */
            y[((n * K + k) * 2 * H + 2 * i + a) * 2 * W + 2 * j + ee] = acc[e] + b[k];
        }
    }
}

/* ------------------------------------------------------------------------------------
 * Backward to the input: dX[q, c] = sum_m dY[m, q] W[c, m], written to dx[n, c, i, j].
 * Grid: (ceil(Q / BM), ceil(C / BN)).
 * A[r, q] = dy[n, k, 2i+a, 2j+e] with r = m = (k, a, e): the gather, consecutive threads
 * take consecutive pixels j, reading every other float; the other half is read by the same
 * block for r + 1 (e = 1), from L1. B[r, c] = W[c, r] is contiguous along r.
 */
KERNEL void LAUNCH_BOUNDS(THREADS) upconv2x2_backward_input(GLOBAL const float* RESTRICT dy, GLOBAL const float* RESTRICT w,
                                                            GLOBAL float* RESTRICT dx, int N, int C, int H, int W, int K)
{
    GEMM_TILES;
    const int t = threadIdx.x, R = 4 * K, P = H * W, Q = N * P;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;

    const int a_row = t % BM, a_col = t / BM;
    const int q_load = m0 + a_row;
    int dy_column = 0;             /* dy[n, 0, 2i, 2j] */
    if (q_load < Q) {
        int n = q_load / P, p = q_load % P;
        dy_column = (n * K * 2 * H + 2 * (p / W)) * 2 * W + 2 * (p % W);
    }
    const int b_r = t % BK, b_col = t / BK;

    float acc[GEMM_ACC];
    gemm_zero(acc);

#define BACKWARD_INPUT_SLICE(R0, AS, BS)                                                              \
    do {                                                                                              \
        UNROLL for (int l = 0; l < A_LOADS; ++l) {                                                    \
            int r = a_col + l * (THREADS / BM), m = (R0) + r, k = m >> 2, a = (m >> 1) & 1, ee = m & 1; \
            gemm_stage(&(AS)[r * LDA + a_row], dy + dy_column + (k * 2 * H + a) * 2 * W + ee, m < R && q_load < Q); \
        }                                                                                             \
        UNROLL for (int l = 0; l < B_LOADS; ++l) {                                                    \
            int col = b_col + l * (THREADS / BK), c = n0 + col;                                       \
            gemm_stage(&(BS)[b_r * LDB + col], w + c * R + (R0) + b_r, c < C && (R0) + b_r < R);      \
        }                                                                                             \
    } while (0)
    GEMM_MAIN_LOOP(0, R, BACKWARD_INPUT_SLICE);
#undef BACKWARD_INPUT_SLICE

UNROLL
    for (int e = 0; e < GEMM_ACC; ++e) {
        int q = m0 + gemm_row(t, e), c = n0 + gemm_col(t, e);
        if (q < Q && c < C) dx[((q / P) * C + c) * P + q % P] = acc[e];
    }
}

/* ------------------------------------------------------------------------------------
 * Backward to the weights, one split of the pixel reduction per blockIdx.z:
 *     partial[z, c, m] = sum over pixels q in chunk z of X[c, q] dY[m, q]
 * Grid: (ceil(C / BM), ceil(4K / BN), splits); chunk is a multiple of BK.
 * Both operands are contiguous along the reduction (pixels), so both loaders let
 * consecutive threads take consecutive pixels. A thread's pixel is the same for its A and
 * B loads, so it is decoded (n, i, j) once per step.
 */
KERNEL void LAUNCH_BOUNDS(THREADS) upconv2x2_backward_params(GLOBAL const float* RESTRICT x, GLOBAL const float* RESTRICT dy,
                                                             GLOBAL float* RESTRICT partial, int N, int C, int H, int W,
                                                             int K, int chunk)
{
    GEMM_TILES;
    const int t = threadIdx.x, M = 4 * K, P = H * W, Q = N * P;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int begin = blockIdx.z * chunk, end = min(begin + chunk, Q);
    const int l_r = t % BK, l_col = t / BK;   /* both loaders: the pixel in the step, the tile column */

    float acc[GEMM_ACC];
    gemm_zero(acc);

#define BACKWARD_PARAMS_SLICE(R0, AS, BS)                                                             \
    do {                                                                                              \
        int pixel = (R0) + l_r;                                                                       \
        bool live = pixel < end;                                                                      \
        int n = live ? pixel / P : 0, p = live ? pixel % P : 0;                                       \
        int x_row = n * C * P + p;                                             /* x[n, 0, i, j] */    \
        int dy_row = (n * K * 2 * H + 2 * (p / W)) * 2 * W + 2 * (p % W);     /* dy[n, 0, 2i, 2j] */ \
        UNROLL for (int l = 0; l < A_LOADS; ++l) {                                                    \
            int col = l_col + l * (THREADS / BK), c = m0 + col;                                       \
            gemm_stage(&(AS)[l_r * LDA + col], x + x_row + c * P, live && c < C);                     \
        }                                                                                             \
        UNROLL for (int l = 0; l < B_LOADS; ++l) {                                                    \
            int col = l_col + l * (THREADS / BK), m = n0 + col, k = m >> 2, a = (m >> 1) & 1, ee = m & 1; \
            gemm_stage(&(BS)[l_r * LDB + col], dy + dy_row + (k * 2 * H + a) * 2 * W + ee, live && m < M); \
        }                                                                                             \
    } while (0)
    GEMM_MAIN_LOOP(begin, end, BACKWARD_PARAMS_SLICE);
#undef BACKWARD_PARAMS_SLICE

    GLOBAL float* out = partial + blockIdx.z * C * M;
UNROLL
    for (int e = 0; e < GEMM_ACC; ++e) {
        int c = m0 + gemm_row(t, e), m = n0 + gemm_col(t, e);
        if (c < C && m < M) out[c * M + m] = acc[e];
    }
}

/* dw[i] = partial[0, i] + partial[1, i] + ... in that order: the deterministic second
 * half of split-K. One thread per weight; reads splits * 4 B, writes 4 B. */
KERNEL void upconv2x2_sum_splits(GLOBAL const float* RESTRICT partial, GLOBAL float* RESTRICT dw, int splits, int count)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) {
        float sum = 0.0f;
        for (int s = 0; s < splits; ++s) sum += partial[s * count + i];
        dw[i] = sum;
    }
}

/* db[k] = sum over n and the whole 2H x 2W plane of dy[n, k]. One block of THREADS
 * threads per k: each thread sums a strided share (consecutive threads, consecutive
 * floats: coalesced), then a shared-memory tree halves the THREADS partial sums
 * log2(THREADS) times. Every thread runs every iteration and reaches every barrier. */
KERNEL void LAUNCH_BOUNDS(THREADS) upconv2x2_bias_grad(GLOBAL const float* RESTRICT dy, GLOBAL float* RESTRICT db,
                                                       int N, int K, int plane)
{
    __shared__ float sums[THREADS];
    int t = threadIdx.x, k = blockIdx.x;
    float sum = 0.0f;
    for (int n = 0; n < N; ++n) {
        GLOBAL const float* channel = dy + (n * K + k) * plane;
        for (int o = t; o < plane; o += THREADS) sum += channel[o];
    }
    sums[t] = sum;
    __syncthreads();
    for (int stride = THREADS / 2; stride > 0; stride /= 2) {
        if (t < stride) sums[t] += sums[t + stride];
        __syncthreads();
    }
    if (t == 0) db[k] = sums[0];
}
