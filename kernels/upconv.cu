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
    __shared__ float As[BK * LDA];
    __shared__ float Bs[BK * LDB];
    const int t = threadIdx.x, M = 4 * K, P = H * W, Q = N * P;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;

    const int a_row = t % BM, a_col = t / BM;     /* the pixel this thread loads for A, every step */
    const int q_load = m0 + a_row;
    const int x_column = q_load < Q ? (q_load / P) * C * P + q_load % P : 0;  /* x[n, 0, i, j] */

    float acc[GEMM_ACC];
    gemm_zero(acc);

    for (int r0 = 0; r0 < C; r0 += BK) {
UNROLL
        for (int l = 0; l < A_LOADS; ++l) {
            int r = a_col + l * (THREADS / BM), c = r0 + r;
            As[r * LDA + a_row] = (c < C && q_load < Q) ? x[x_column + c * P] : 0.0f;
        }
UNROLL
        for (int l = 0; l < B_LOADS; ++l) {
            int e = t + l * THREADS, r = e / BN, col = e % BN;
            int c = r0 + r, m = n0 + col;
            Bs[r * LDB + col] = (c < C && m < M) ? w[c * M + m] : 0.0f;
        }
        __syncthreads();
        gemm_tile_product(As, Bs, acc, t);
        __syncthreads();
    }

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
    __shared__ float As[BK * LDA];
    __shared__ float Bs[BK * LDB];
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

    for (int r0 = 0; r0 < R; r0 += BK) {
UNROLL
        for (int l = 0; l < A_LOADS; ++l) {
            int r = a_col + l * (THREADS / BM), m = r0 + r;
            int k = m / 4, a = (m / 2) % 2, ee = m % 2;
            As[r * LDA + a_row] = (m < R && q_load < Q) ? dy[dy_column + (k * 2 * H + a) * 2 * W + ee] : 0.0f;
        }
UNROLL
        for (int l = 0; l < B_LOADS; ++l) {
            int col = b_col + l * (THREADS / BK), c = n0 + col;
            Bs[b_r * LDB + col] = (c < C && r0 + b_r < R) ? w[c * R + r0 + b_r] : 0.0f;
        }
        __syncthreads();
        gemm_tile_product(As, Bs, acc, t);
        __syncthreads();
    }

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
    __shared__ float As[BK * LDA];
    __shared__ float Bs[BK * LDB];
    const int t = threadIdx.x, M = 4 * K, P = H * W, Q = N * P;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int begin = blockIdx.z * chunk, end = min(begin + chunk, Q);
    const int l_r = t % BK, l_col = t / BK;   /* both loaders: the pixel in the step, the tile column */

    float acc[GEMM_ACC];
    gemm_zero(acc);

    for (int r0 = begin; r0 < end; r0 += BK) {
        int pixel = r0 + l_r, live = pixel < end;
        int n = live ? pixel / P : 0, p = live ? pixel % P : 0;
        int x_row = n * C * P + p;                                                  /* x[n, 0, i, j] */
        int dy_row = (n * K * 2 * H + 2 * (p / W)) * 2 * W + 2 * (p % W);          /* dy[n, 0, 2i, 2j] */
UNROLL
        for (int l = 0; l < A_LOADS; ++l) {
            int col = l_col + l * (THREADS / BK), c = m0 + col;
            As[l_r * LDA + col] = (live && c < C) ? x[x_row + c * P] : 0.0f;
        }
UNROLL
        for (int l = 0; l < B_LOADS; ++l) {
            int col = l_col + l * (THREADS / BK), m = n0 + col;
            int k = m / 4, a = (m / 2) % 2, ee = m % 2;
            Bs[l_r * LDB + col] = (live && m < M) ? dy[dy_row + (k * 2 * H + a) * 2 * W + ee] : 0.0f;
        }
        __syncthreads();
        gemm_tile_product(As, Bs, acc, t);
        __syncthreads();
    }

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
