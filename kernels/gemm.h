/*
 * The GEMM main loop that every GEMM-shaped kernel shares (conv2d.cu, upconv.cu).
 *
 * A kernel that includes this header computes one BM x BN tile of a matrix product
 *
 *     C[m, n] = sum_r A[r, m] * B[r, n]
 *
 * by walking the reduction r in slices of BK. Per slice, its own loaders gather A's
 * BK x BM slice and B's BK x BN slice into shared memory (that gather is what makes a
 * convolution an "implicit GEMM": the operands are never stored whole), then every
 * thread calls gemm_tile_product(), which adds the slice's contribution to the thread's
 * accumulators acc[GEMM_ACC] in registers. The epilogue writes accumulator e of thread t
 * to tile row gemm_row(t, e), column gemm_col(t, e). Loaders and epilogues are the
 * kernels' own; the arithmetic in between is this file's, so conv2d and up-conv run the
 * same main loop with the same tile shapes, names and split-K policy (cunet/ops/gemm.py).
 *
 * Shared tiles are reduction-major: As[r * LDA + m], Bs[r * LDB + n]. Each row is padded
 * by SMEM_PAD words, so a loader that walks r across neighbouring threads (storing down a
 * column) hits distinct banks. In TF32 there are two of each (GEMM_TILES): the main loop
 * (GEMM_MAIN_LOOP) fills one while it multiplies the other, and on sm_80 and newer the
 * fill is cp.async, a copy the SM carries out in the background (gemm_stage below).
 *
 * Defines (-D): BM, BN, BK the block tile; TM, TN the FP32 thread tile; MATH_TF32 0 or 1;
 * with MATH_TF32=1 also WARPS_M, the warps along the tile's rows.
 *
 * Two ways to do the arithmetic
 * -----------------------------
 * MATH_TF32=0, FP32 on CUDA cores (siboehm's "2-D block tiling"): THREADS = (BM/TM) *
 *   (BN/TN) threads; thread t owns TM rows tx, tx + BM/TM, ... and TN columns ty,
 *   ty + BN/TN, ... (tx = t % (BM/TM), ty = t / (BM/TM)). Per reduction step it reads
 *   TM + TN shared words and does TM * TN FMAs. Neighbouring threads own neighbouring
 *   rows: they read neighbouring shared words and store neighbouring outputs.
 *
 * MATH_TF32=1, TF32 on tensor cores (mma.sync.m16n8k8, sm_80 and newer): the block's
 *   THREADS / 32 warps form a WARPS_M x WARPS_N grid; each warp owns a WTM x WTN piece of
 *   the tile (WTM = BM / WARPS_M, WTN = BN / WARPS_N) made of MT x NT tiles of 16 x 8, and
 *   per 8-deep step of the reduction it multiplies a 16 x 8 fragment of A by an 8 x 8
 *   fragment of B into each of them. The operands are rounded to TF32 (10 mantissa bits,
 *   round to nearest, ties away from zero: cvt.rna.tf32.f32) as they are loaded from
 *   shared memory; products and sums are FP32. One mma.sync does 16*8*8 = 1024 FMAs for
 *   the warp, 32 per thread, where an FP32 FMA instruction does 1: that is where an
 *   A100's 156 TFLOP/s (against 19.5 in FP32) comes from.
 *
 *   Who holds what (PTX ISA, "Matrix fragments for mma.m16n8k8", .tf32): lane l of a warp
 *   is in group g = l / 4 with index q = l % 4 within it.
 *     A (16 x 8, row-major)   a0 = A[g][q],  a1 = A[g+8][q],  a2 = A[g][q+4], a3 = A[g+8][q+4]
 *     B (8 x 8, column-major) b0 = B[q][g],  b1 = B[q+4][g]
 *     C (16 x 8, FP32)        c0 = C[g][2q], c1 = C[g][2q+1], c2 = C[g+8][2q], c3 = C[g+8][2q+1]
 *   The accumulators' layout is the contract gemm_row/gemm_col implement; how A and B are
 *   spread over the lanes is the hardware's business, and the emulation below does not
 *   need it.
 *
 * The emulation (OpenCL: PoCL, Oclgrind). OpenCL 1.2 has no warps, let alone tensor cores,
 * so the same three calls (load a fragment, load b fragment, mma) are emulated *by value*:
 * a work-item's fragment holds what it needs for its own four accumulators (A's rows g and
 * g+8, B's columns 2q and 2q+1, all 8 steps of the reduction: 16 + 16 floats), rounded to
 * TF32 with the same rule, bit for bit; its mma does those four dot products in FP32. No
 * work-item reads another's registers, so the result does not depend on the lockstep of
 * a warp that OpenCL does not promise; the accumulator layout, the tile loop, the shared
 * tiles and their barriers are the very text that runs on the GPU, and PoCL and Oclgrind
 * check them. (A wrong lane-to-fragment map for a and b inside the CUDA block is the one
 * thing only a GPU can catch: the GPU check's cuda tests compare against the same
 * TF32-rounded reference.)
 */
#ifndef CUNET_GEMM_H
#define CUNET_GEMM_H

#if !defined(BM) || !defined(BN) || !defined(BK) || !defined(TM) || !defined(TN) || !defined(MATH_TF32)
#error "gemm.h needs -DBM -DBN -DBK (block tile), -DTM -DTN (thread tile) and -DMATH_TF32 (0 or 1)"
#endif

/* Full unrolling keeps the accumulators in registers on the GPU. PoCL and Oclgrind get
 * the plain loops: unrolled and then replicated for every work-item of a group, the
 * 8x8 tile took PoCL most of a minute to compile, and the tests run there. */
#ifdef CUNET_CUDA
#define UNROLL _Pragma("unroll")
#else
#define UNROLL
#endif

#define THREADS_M (BM / TM)          /* FP32: threads along a tile's rows */
#define THREADS_N (BN / TN)          /* FP32: threads along a tile's columns */
#define THREADS (THREADS_M * THREADS_N)
#define GEMM_ACC (TM * TN)           /* accumulators per thread (the same count for TF32) */

#define SMEM_PAD (32 / BK)
#define LDA (BM + SMEM_PAD)
#define LDB (BN + SMEM_PAD)

#if BM % TM || BN % TN
#error "gemm.h: BM must be a multiple of TM and BN of TN"
#endif

DEVICE void gemm_zero(float* acc)
{
UNROLL
    for (int e = 0; e < GEMM_ACC; ++e) acc[e] = 0.0f;
}

/* TF32 rounding, the same bits on every device: round to nearest, ties away from zero, keep
 * 10 of the 23 mantissa bits (the low 13 become 0). On the magnitude's bits, adding half a
 * unit of the 10th bit (0x1000) and truncating does exactly that; a carry into the exponent
 * is the correct rounding up (to infinity past the largest TF32 value, as the hardware
 * does). Infinities and NaNs keep their bits. */
DEVICE float tf32_round(float v)
{
#ifdef CUNET_CUDA
    unsigned int bits;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(bits) : "f"(v));
    return __uint_as_float(bits);
#else
    uint u = as_uint(v);
    if ((u & 0x7f800000u) == 0x7f800000u) return v;   /* inf or NaN */
    return as_float((u + 0x1000u) & 0xffffe000u);
#endif
}

/* Shared-tile buffers: 2 (a double buffer, filled with cp.async on sm_80+) in the tensor-core
 * kernels, 1 in the FP32 ones (GEMM_TILES below says why). */
#ifndef GEMM_STAGES  /* -DGEMM_STAGES=2 double-buffers the FP32 loop too: the teaching ladder's v5 */
#if MATH_TF32
#define GEMM_STAGES 2
#else
#define GEMM_STAGES 1
#endif
#endif

/* ------------------- filling the shared tiles: staged copies ------------------------
 * A kernel's loaders move one element at a time with gemm_stage(dst, src, valid):
 * dst = valid ? *src : 0 (a padding element, or one past the matrix's edge, reads as 0 and
 * adds nothing). In the tensor-core kernels on sm_80 and newer that is cp.async with a
 * source size of 4 or 0 bytes (0: nothing is read, the 4 bytes are zero-filled): the thread
 * issues it and moves on, so the next slice's loads overlap this slice's mma's, which
 * finish too fast to hide them otherwise. Elsewhere it is a plain load and store, the
 * pipeline's steps are the same, and the tests run this portable path (Oclgrind checks
 * the double buffer's barriers). The FP32 kernels stage synchronously into one buffer
 * (GEMM_TILES below says why).
 * Why not 128-bit vector loads: the operands are gathers (a 3x3 window of x, a strided
 * filter, an interleaved up-convolution output): four consecutive elements of a tile row
 * are rarely four consecutive, 16-byte-aligned floats in memory. */
#if defined(CUNET_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && GEMM_STAGES == 2
DEVICE void gemm_stage(SHARED float* dst, GLOBAL const float* src, bool valid)
{
    unsigned int shared_address = (unsigned int)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" :: "r"(shared_address), "l"(src), "r"(valid ? 4 : 0));
}
DEVICE void gemm_stage_commit(void) { asm volatile("cp.async.commit_group;"); }
DEVICE void gemm_stage_wait_previous(void) { asm volatile("cp.async.wait_group 1;"); }
#else
DEVICE void gemm_stage(SHARED float* dst, GLOBAL const float* src, bool valid) { *dst = valid ? *src : 0.0f; }
DEVICE void gemm_stage_commit(void) {}
DEVICE void gemm_stage_wait_previous(void) {}
#endif

/* A value that is not a load (the weight gradient's bias row of ones), into a staged tile. */
DEVICE void gemm_stage_value(SHARED float* dst, float v) { *dst = v; }

/*
 * The shared tiles, declared at the kernel's top scope (prelude rule 4): two of each in
 * the tensor-core kernels (a double buffer), one in the FP32 ones. Measured with the
 * compile check: double-buffering the FP32 128x64 tile made ptxas hold the next slice's
 * loads in registers across the FMAs, 209-254 registers instead of ~120 (occupancy 12%
 * instead of 25%), for a loop whose 64 FMAs per step already hide its loads; the
 * tensor-core loop does 64 accumulators' worth of work in 16 mma's and needs the overlap.
 */
#define GEMM_TILES                                   \
    __shared__ float As[GEMM_STAGES * BK * LDA];     \
    __shared__ float Bs[GEMM_STAGES * BK * LDB]

/*
 * The main loop over the reduction [begin, end), BK at a time. LOAD_SLICE(k0, As_, Bs_) is
 * the kernel's loader (a macro, because it reads the kernel's own variables): it stages
 * the slice of A and B that starts at reduction index k0 into the tiles As_, Bs_. The
 * kernel provides `t` (its thread index) and `acc` (its accumulators).
 *
 * One buffer (FP32):   each step: stage the slice; barrier; multiply; barrier.
 * Two buffers (TF32):  before: stage slice 0 into half 0; commit.
 *                      each step: stage the next slice (if any) into the other half; commit;
 *                      wait until this slice's copies have landed; barrier (everyone's copies
 *                      are visible); multiply this half; barrier (nobody still reads it when
 *                      the next step refills it).
 * Every thread commits a group in every step (an empty one at the end), so "wait for all
 * but the newest group" always means "this slice has landed". The bounds are the same for
 * every thread of the block: everyone reaches every barrier (prelude rule 5).
 */
#if GEMM_STAGES == 1
#define GEMM_MAIN_LOOP(begin, end, LOAD_SLICE)                                                        \
    do {                                                                                              \
        for (int k0_ = (begin); k0_ < (end); k0_ += BK) {                                             \
            LOAD_SLICE(k0_, As, Bs);                                                                  \
            __syncthreads();                                                                          \
            gemm_tile_product(As, Bs, acc, t);                                                        \
            __syncthreads();                                                                          \
        }                                                                                             \
    } while (0)
#else
#define GEMM_MAIN_LOOP(begin, end, LOAD_SLICE)                                                        \
    do {                                                                                              \
        int half_ = 0;                                                                                \
        LOAD_SLICE((begin), As, Bs);                                                                  \
        gemm_stage_commit();                                                                          \
        for (int k0_ = (begin); k0_ < (end); k0_ += BK) {                                             \
            if (k0_ + BK < (end)) LOAD_SLICE(k0_ + BK, As + (1 - half_) * BK * LDA, Bs + (1 - half_) * BK * LDB); \
            gemm_stage_commit();                                                                      \
            gemm_stage_wait_previous();                                                               \
            __syncthreads();                                                                          \
            gemm_tile_product(As + half_ * BK * LDA, Bs + half_ * BK * LDB, acc, t);                  \
            __syncthreads();                                                                          \
            half_ = 1 - half_;                                                                        \
        }                                                                                             \
    } while (0)
#endif

#if MATH_TF32 == 0
/* ----------------------------- FP32 on CUDA cores ----------------------------------- */

DEVICE int gemm_row(int t, int e) { return t % THREADS_M + (e / TN) * THREADS_M; }
DEVICE int gemm_col(int t, int e) { return t / THREADS_M + (e % TN) * THREADS_N; }

/* acc[i][j] += As[r][tx + i*THREADS_M] * Bs[r][ty + j*THREADS_N] for r in the slice. */
DEVICE void gemm_tile_product(SHARED const float* As, SHARED const float* Bs, float* acc, int t)
{
    const int tx = t % THREADS_M, ty = t / THREADS_M;
UNROLL
    for (int r = 0; r < BK; ++r) {
        float a[TM], b[TN];
UNROLL
        for (int i = 0; i < TM; ++i) a[i] = As[r * LDA + tx + i * THREADS_M];
UNROLL
        for (int j = 0; j < TN; ++j) b[j] = Bs[r * LDB + ty + j * THREADS_N];
UNROLL
        for (int i = 0; i < TM; ++i) {
UNROLL
            for (int j = 0; j < TN; ++j) acc[i * TN + j] += a[i] * b[j];
        }
    }
}

#else
/* ----------------------------- TF32 on tensor cores --------------------------------- */
#ifndef WARPS_M
#error "gemm.h: MATH_TF32=1 needs -DWARPS_M (warps along the tile's rows)"
#endif
#define WARPS (THREADS / 32)
#define WARPS_N (WARPS / WARPS_M)
#define WTM (BM / WARPS_M)           /* a warp's rows */
#define WTN (BN / WARPS_N)           /* a warp's columns */
#define MT (WTM / 16)                /* 16 x 8 mma tiles per warp, along rows */
#define NT (WTN / 8)                 /* ... and along columns */

#if THREADS % 32 || WARPS % WARPS_M || WTM % 16 || WTN % 8 || BK % 8 || MT * NT * 4 != GEMM_ACC
#error "gemm.h (TF32): the tile must split into whole 16x8 mma tiles per warp, BK into steps of 8, and MT*NT*4 == TM*TN"
#endif

/* Accumulator e = 4 * (mi * NT + ni) + i of lane (g, q): c_i of mma tile (mi, ni). */
DEVICE int gemm_row(int t, int e)
{
    int warp = t / 32, lane = t % 32, tile = e / 4;
    return (warp % WARPS_M) * WTM + (tile / NT) * 16 + lane / 4 + 8 * ((e % 4) / 2);
}

DEVICE int gemm_col(int t, int e)
{
    int warp = t / 32, lane = t % 32, tile = e / 4;
    return (warp / WARPS_M) * WTN + (tile % NT) * 8 + 2 * (lane % 4) + e % 2;
}

#ifdef CUNET_CUDA
typedef struct { unsigned int x[4]; } frag_a;
typedef struct { unsigned int x[2]; } frag_b;

DEVICE unsigned int tf32_bits(float v) { return __float_as_uint(tf32_round(v)); }

/* A's 16 x 8 fragment at rows m0.., reduction steps r0..: A[m][r] = As[r * LDA + m]. */
DEVICE void load_frag_a(frag_a* f, SHARED const float* As, int m0, int r0, int lane)
{
    int g = lane / 4, q = lane % 4;
    f->x[0] = tf32_bits(As[(r0 + q) * LDA + m0 + g]);
    f->x[1] = tf32_bits(As[(r0 + q) * LDA + m0 + g + 8]);
    f->x[2] = tf32_bits(As[(r0 + q + 4) * LDA + m0 + g]);
    f->x[3] = tf32_bits(As[(r0 + q + 4) * LDA + m0 + g + 8]);
}

/* B's 8 x 8 fragment at columns n0.., reduction steps r0..: B[r][n] = Bs[r * LDB + n]. */
DEVICE void load_frag_b(frag_b* f, SHARED const float* Bs, int n0, int r0, int lane)
{
    int g = lane / 4, q = lane % 4;
    f->x[0] = tf32_bits(Bs[(r0 + q) * LDB + n0 + g]);
    f->x[1] = tf32_bits(Bs[(r0 + q + 4) * LDB + n0 + g]);
}

/* c[0..3] += A (16 x 8) * B (8 x 8), the whole warp at once. */
DEVICE void mma_tf32(float* c, const frag_a* a, const frag_b* b)
{
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a->x[0]), "r"(a->x[1]), "r"(a->x[2]), "r"(a->x[3]), "r"(b->x[0]), "r"(b->x[1]));
}

#else
/* The emulation: fragments by value. a.x[h * 8 + k] = A[g + 8h][k], b.x[h * 8 + k] = B[k][2q + h]. */
typedef struct { float x[16]; } frag_a;
typedef struct { float x[16]; } frag_b;

DEVICE void load_frag_a(frag_a* f, SHARED const float* As, int m0, int r0, int lane)
{
    int g = lane / 4;
    for (int h = 0; h < 2; ++h)
        for (int k = 0; k < 8; ++k) f->x[h * 8 + k] = tf32_round(As[(r0 + k) * LDA + m0 + g + 8 * h]);
}

DEVICE void load_frag_b(frag_b* f, SHARED const float* Bs, int n0, int r0, int lane)
{
    int q = lane % 4;
    for (int h = 0; h < 2; ++h)
        for (int k = 0; k < 8; ++k) f->x[h * 8 + k] = tf32_round(Bs[(r0 + k) * LDB + n0 + 2 * q + h]);
}

/* c_i += sum_k A[row_i][k] * B[k][col_i], in FP32, k = 0..7 in order. */
DEVICE void mma_tf32(float* c, const frag_a* a, const frag_b* b)
{
    for (int i = 0; i < 4; ++i) {
        float sum = c[i];
        for (int k = 0; k < 8; ++k) sum += a->x[(i / 2) * 8 + k] * b->x[(i % 2) * 8 + k];
        c[i] = sum;
    }
}
#endif

/* The slice's contribution: BK/8 steps; per step each warp loads MT a-fragments and NT
 * b-fragments and does MT * NT mma's. */
DEVICE void gemm_tile_product(SHARED const float* As, SHARED const float* Bs, float* acc, int t)
{
    const int warp = t / 32, lane = t % 32;
    const int wm0 = (warp % WARPS_M) * WTM, wn0 = (warp / WARPS_M) * WTN;
UNROLL
    for (int r0 = 0; r0 < BK; r0 += 8) {
        frag_b b[NT];
UNROLL
        for (int ni = 0; ni < NT; ++ni) load_frag_b(&b[ni], Bs, wn0 + ni * 8, r0, lane);
UNROLL
        for (int mi = 0; mi < MT; ++mi) {
            frag_a a;
            load_frag_a(&a, As, wm0 + mi * 16, r0, lane);
UNROLL
            for (int ni = 0; ni < NT; ++ni) mma_tf32(acc + 4 * (mi * NT + ni), &a, &b[ni]);
        }
    }
}
#endif /* MATH_TF32 */

#endif /* CUNET_GEMM_H */
