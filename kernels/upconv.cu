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
 *     forward          Y[m, q]  = sum_c   W[c, m]  X[c, q]      M = 4K, reduce over C
 *     backward_input   dX[c, q] = sum_m   W[c, m]  dY[m, q]     M = C,  reduce over 4K
 *     backward_params  dW[c, m] = sum_q   X[c, q]  dY[m, q]     M = C,  reduce over N*H*W
 *
 * where W[c, m] is w itself read as a [C, 4K] matrix, X[c, q] = x[n, c, i, j] and
 * dY[m, q] = dy[n, k, 2i+a, 2j+e]. All three have the one shape
 *
 *     out[m, q] = sum_r A[r, m] * B[r, q]
 *
 * with different index maps for A, B and out: so there is one tiled GEMM (the shared
 * tile product below) and three kernels that differ only in how they load tiles and where
 * they write results. The "scatter" of the up-convolution (row m of Y lands at pixel
 * (2i+a, 2j+e)) is done by the forward's epilogue, and the "gather" of the backward by
 * its tile loaders, so neither needs a separate pass or a temporary.
 *
 * Tiling (siboehm's SGEMM walkthrough, kernel 5: 2-D block tiling)
 * ---------------------------------------------------------------
 * A block computes a TILE_M x TILE_N tile of out; its THREADS = (TILE_M/THREAD_M) *
 * (TILE_N/THREAD_N) threads each own THREAD_M x THREAD_N outputs, kept in registers.
 * The reduction walks in steps of TILE_K: the block loads A's TILE_K x TILE_M slice and
 * B's TILE_K x TILE_N slice into shared memory (each thread a few elements), waits, and
 * every thread does TILE_K rank-1 updates of its register tile from shared memory.
 * With the defaults (64 x 64 x 8, 4 x 4 per thread, 256 threads) each shared-memory
 * value a thread reads feeds 4 multiply-adds, and each global value a block loads feeds
 * 64: 16 FLOP per byte loaded from global memory, against 0.25 for a loop per output
 * that reads both operands of every multiply-add from global memory.
 *
 * A thread's outputs are strided, not adjacent: thread (tm, tn) owns rows
 * tm + i*(TILE_M/THREAD_M) and columns tn + j*(TILE_N/THREAD_N). So the 16 tn of a warp
 * read 16 consecutive shared-memory words (no bank conflicts) and, in the epilogue, write
 * 16 consecutive columns q (coalesced). In the forward a warp's two tm are e = 0 and 1
 * of one (k, a), so it writes 32 consecutive floats of one output row.
 *
 * Shared tiles are stored [r][m] with a leading dimension padded by TILE_PAD words: the
 * loaders that walk along r (when A or B is contiguous in r) then store to 32 distinct
 * banks instead of hitting one bank TILE_K times.
 *
 * Determinism: backward_params reduces over all N*H*W pixels, a long reduction into a
 * small [C, 4K] result. It is split (split-K): block z sums only its chunk of pixels and
 * writes a partial [C, 4K] tile, and upconv2x2_sum_splits adds the partials in a fixed
 * order. db is a block-per-channel tree reduction. No atomics; run-to-run identical.
 *
 * Memory traffic per output of the forward: 2C FLOP, and C/TILE_N + C/TILE_M = C/32
 * floats loaded from global memory (mostly L2 hits: A and B are re-read once per tile
 * of out they feed), so 16 FLOP per byte, plus 4 B written once. The backward kernels
 * have the same ratio with their own reduction length. Every load outside the matrices
 * reads 0 and every store is bounds-checked; the reduction loop's bounds are the same
 * for all threads of a block, so every thread reaches every barrier.
 */

#define THREADS_M (TILE_M / THREAD_M)
#define THREADS_N (TILE_N / THREAD_N)
#define THREADS (THREADS_M * THREADS_N)
#define LD_A (TILE_M + TILE_PAD)  /* leading dimension of the shared A tile */
#define LD_B (TILE_N + TILE_PAD)
#define LOADS_A (TILE_K * TILE_M / THREADS)  /* elements of A each thread loads per step */
#define LOADS_B (TILE_K * TILE_N / THREADS)

#if (THREADS % TILE_M) || (THREADS % TILE_N) || (THREADS % TILE_K) || (THREADS & (THREADS - 1))
#error "THREADS must be a power of two and a multiple of TILE_M, TILE_N and TILE_K"
#endif

/*
 * The heart of every kernel here: TILE_K rank-1 updates of the thread's THREAD_M x
 * THREAD_N register tile from the shared tiles. acc is the thread's accumulator array;
 * inlined, it stays in registers.
 */
DEVICE void tile_product(SHARED const float* As, SHARED const float* Bs, float* acc, int tm, int tn)
{
    for (int kk = 0; kk < TILE_K; ++kk) {
        float a[THREAD_M], b[THREAD_N];
        for (int i = 0; i < THREAD_M; ++i) a[i] = As[kk * LD_A + tm + i * THREADS_M];
        for (int j = 0; j < THREAD_N; ++j) b[j] = Bs[kk * LD_B + tn + j * THREADS_N];
        for (int i = 0; i < THREAD_M; ++i)
            for (int j = 0; j < THREAD_N; ++j)
                acc[i * THREAD_N + j] += a[i] * b[j];
    }
}

/* ------------------------------------------------------------------------------------
 * Forward: Y[m, q] = sum_c W[c, m] X[c, q], written to y[n, k, 2i+a, 2j+e] with + b[k].
 * Grid: (ceil(Q / TILE_N), ceil(4K / TILE_M)), Q = N*H*W.
 * A = W is contiguous along m and B = X along q (within an image), so both loaders let
 * consecutive threads take consecutive m (or q): coalesced. A thread's load column stays
 * the same in every step (THREADS is a multiple of TILE_N), so its pixel's address is
 * worked out once, before the loop.
 */
KERNEL void LAUNCH_BOUNDS(THREADS) upconv2x2_forward(GLOBAL const float* RESTRICT x, GLOBAL const float* RESTRICT w,
                                                     GLOBAL const float* RESTRICT b, GLOBAL float* RESTRICT y,
                                                     int N, int C, int H, int W, int K)
{
    __shared__ float As[TILE_K * LD_A];
    __shared__ float Bs[TILE_K * LD_B];
    int t = threadIdx.x, tm = t / THREADS_N, tn = t % THREADS_N;
    int M = 4 * K, P = H * W, Q = N * P;
    int m0 = blockIdx.y * TILE_M, q0 = blockIdx.x * TILE_N;

    int q_load = q0 + t % TILE_N;  /* the pixel this thread loads for B, every step */
    int x_column = q_load < Q ? (q_load / P) * C * P + q_load % P : 0;  /* x[n, 0, i, j] */

    float acc[THREAD_M * THREAD_N];
    for (int i = 0; i < THREAD_M * THREAD_N; ++i) acc[i] = 0.0f;

    for (int r0 = 0; r0 < C; r0 += TILE_K) {
        for (int l = 0; l < LOADS_A; ++l) {
            int e = t + l * THREADS, r = e / TILE_M, mm = e % TILE_M;
            int c = r0 + r, m = m0 + mm;
            As[r * LD_A + mm] = (c < C && m < M) ? w[c * M + m] : 0.0f;
        }
        for (int l = 0; l < LOADS_B; ++l) {
            int e = t + l * THREADS, r = e / TILE_N, qq = e % TILE_N;
            int c = r0 + r;
            Bs[r * LD_B + qq] = (c < C && q_load < Q) ? x[x_column + c * P] : 0.0f;
        }
        __syncthreads();
        tile_product(As, Bs, acc, tm, tn);
        __syncthreads();
    }

    for (int j = 0; j < THREAD_N; ++j) {
        int q = q0 + tn + j * THREADS_N;
        if (q >= Q) continue;
        int n = q / P, p = q % P, i = p / W, jj = p % W;
        for (int i_m = 0; i_m < THREAD_M; ++i_m) {
            int m = m0 + tm + i_m * THREADS_M;
            if (m >= M) continue;
            int k = m / 4, a = (m / 2) % 2, e = m % 2;
            y[((n * K + k) * 2 * H + 2 * i + a) * 2 * W + 2 * jj + e] = acc[i_m * THREAD_N + j] + b[k];
        }
    }
}

/* ------------------------------------------------------------------------------------
 * Backward to the input: dX[c, q] = sum_m W[c, m] dY[m, q], written to dx[n, c, i, j].
 * Grid: (ceil(Q / TILE_N), ceil(C / TILE_M)).
 * A[r, c] = W[c, r] is contiguous along r, so its loader lets consecutive threads take
 * consecutive r (runs of TILE_K floats; the padded tile keeps the transposed store free
 * of bank conflicts). B[r, q] = dy[n, k, 2i+a, 2j+e] is the gather: consecutive threads
 * take consecutive pixels j, reading every other float; the other half is read by the
 * same block for the neighbouring r = m + 1 (e = 1), from L1.
 */
KERNEL void LAUNCH_BOUNDS(THREADS) upconv2x2_backward_input(GLOBAL const float* RESTRICT dy, GLOBAL const float* RESTRICT w,
                                                            GLOBAL float* RESTRICT dx, int N, int C, int H, int W, int K)
{
    __shared__ float As[TILE_K * LD_A];
    __shared__ float Bs[TILE_K * LD_B];
    int t = threadIdx.x, tm = t / THREADS_N, tn = t % THREADS_N;
    int R = 4 * K, P = H * W, Q = N * P;
    int m0 = blockIdx.y * TILE_M, q0 = blockIdx.x * TILE_N;

    int q_load = q0 + t % TILE_N;  /* the pixel this thread loads for B, every step */
    int dy_column = 0;             /* dy[n, 0, 2i, 2j] */
    if (q_load < Q) {
        int n = q_load / P, p = q_load % P;
        dy_column = (n * K * 2 * H + 2 * (p / W)) * 2 * W + 2 * (p % W);
    }

    float acc[THREAD_M * THREAD_N];
    for (int i = 0; i < THREAD_M * THREAD_N; ++i) acc[i] = 0.0f;

    for (int r0 = 0; r0 < R; r0 += TILE_K) {
        for (int l = 0; l < LOADS_A; ++l) {
            int e = t + l * THREADS, r = e % TILE_K, mm = e / TILE_K;
            int c = m0 + mm;
            As[r * LD_A + mm] = (c < C && r0 + r < R) ? w[c * R + r0 + r] : 0.0f;
        }
        for (int l = 0; l < LOADS_B; ++l) {
            int e = t + l * THREADS, r = e / TILE_N, qq = e % TILE_N;
            int m = r0 + r, k = m / 4, a = (m / 2) % 2, ee = m % 2;
            Bs[r * LD_B + qq] = (m < R && q_load < Q) ? dy[dy_column + (k * 2 * H + a) * 2 * W + ee] : 0.0f;
        }
        __syncthreads();
        tile_product(As, Bs, acc, tm, tn);
        __syncthreads();
    }

    for (int j = 0; j < THREAD_N; ++j) {
        int q = q0 + tn + j * THREADS_N;
        if (q >= Q) continue;
        int n = q / P, p = q % P;
        for (int i_m = 0; i_m < THREAD_M; ++i_m) {
            int c = m0 + tm + i_m * THREADS_M;
            if (c < C) dx[(n * C + c) * P + p] = acc[i_m * THREAD_N + j];
        }
    }
}

/* ------------------------------------------------------------------------------------
 * Backward to the weights, one split of the pixel reduction per blockIdx.z:
 *     partial[z, c, m] = sum over pixels q in chunk z of X[c, q] dY[m, q]
 * Grid: (ceil(4K / TILE_N), ceil(C / TILE_M), splits); chunk is a multiple of TILE_K.
 * Here both operands are contiguous along the reduction (pixels), so both loaders let
 * consecutive threads take consecutive pixels. A thread's pixel r is the same for its A
 * and B loads, so it is decoded (n, i, j) once per step.
 */
KERNEL void LAUNCH_BOUNDS(THREADS) upconv2x2_backward_params(GLOBAL const float* RESTRICT x, GLOBAL const float* RESTRICT dy,
                                                             GLOBAL float* RESTRICT partial, int N, int C, int H, int W,
                                                             int K, int chunk)
{
    __shared__ float As[TILE_K * LD_A];
    __shared__ float Bs[TILE_K * LD_B];
    int t = threadIdx.x, tm = t / THREADS_N, tn = t % THREADS_N;
    int M = 4 * K, P = H * W, Q = N * P;
    int m0 = blockIdx.y * TILE_M, q0 = blockIdx.x * TILE_N;
    int begin = blockIdx.z * chunk, end = min(begin + chunk, Q);

    float acc[THREAD_M * THREAD_N];
    for (int i = 0; i < THREAD_M * THREAD_N; ++i) acc[i] = 0.0f;

    for (int r0 = begin; r0 < end; r0 += TILE_K) {
        int r = t % TILE_K, pixel = r0 + r;  /* the same for every l below */
        int live = pixel < end;
        int n = live ? pixel / P : 0, p = live ? pixel % P : 0;
        int x_row = n * C * P + p;                                                  /* x[n, 0, i, j] */
        int dy_row = (n * K * 2 * H + 2 * (p / W)) * 2 * W + 2 * (p % W);          /* dy[n, 0, 2i, 2j] */
        for (int l = 0; l < LOADS_A; ++l) {
            int c = m0 + (t + l * THREADS) / TILE_K;
            As[r * LD_A + c - m0] = (live && c < C) ? x[x_row + c * P] : 0.0f;
        }
        for (int l = 0; l < LOADS_B; ++l) {
            int qq = (t + l * THREADS) / TILE_K, m = q0 + qq;
            int k = m / 4, a = (m / 2) % 2, e = m % 2;
            Bs[r * LD_B + qq] = (live && m < M) ? dy[dy_row + (k * 2 * H + a) * 2 * W + e] : 0.0f;
        }
        __syncthreads();
        tile_product(As, Bs, acc, tm, tn);
        __syncthreads();
    }

    GLOBAL float* out = partial + blockIdx.z * C * M;
    for (int i_m = 0; i_m < THREAD_M; ++i_m) {
        int c = m0 + tm + i_m * THREADS_M;
        for (int j = 0; j < THREAD_N; ++j) {
            int m = q0 + tn + j * THREADS_N;
            if (c < C && m < M) out[c * M + m] = acc[i_m * THREAD_N + j];
        }
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
