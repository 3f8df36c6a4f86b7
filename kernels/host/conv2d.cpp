// The U-Net's 3x3 convolutions on the CPU: register-blocked direct loops on OpenMP threads.
//
// Read conv2d.hpp first for what each function computes. This file is in seven parts: the
// SIMD dispatch, the forward (which the backward input reuses), the up-convolution (the
// forward's tile with one tap), the weight gradient, the FMA peak they are measured against,
// the table of the versions compiled for each instruction set, and the OpenMP drivers that
// split each op into tasks.
//
// ---------------------------------------------------------------------------------------------
// Register blocking: why a tile of outputs, and why this size
//
// Each output of the forward is a sum of C*9 products. Computed one output at a time, every
// multiply-add (one FMA instruction) needs two loads, an input value and a weight. A core
// issues two FMAs per cycle but only two loads, and one running sum is a chain of
// dependent FMAs, each waiting ~4 cycles for the one before: such a loop runs at a small
// fraction of the FMA units' speed.
//
// So the inner loop computes a *tile* of outputs at once: KB output channels (filters) x P
// consecutive output pixels, whose KB*P running sums stay in vector registers for the whole
// sum over c, r, s, and are written to memory once, at the end. One step of the loop (one
// tap c, r, s) then
//   - loads the tile's P input values once (P/V vector loads, V floats per register) and
//     uses each vector for all KB filters,
//   - loads KB weights once (each broadcast to a whole vector) and uses each for P pixels,
//   - issues KB*P/V FMAs into KB*P/V different accumulators: that many independent chains,
//     enough to keep both FMA units busy through the latency (2 units x 4 cycles = 8).
// The tile is as large as the register file allows: an accumulator that does not fit is
// spilled to the stack, a load and a store per FMA, which is slower than a smaller tile.
//
//   AVX-512, 32 registers of 16 floats: 8 filters x 32 pixels = 16 accumulators; per tap
//            2 loads of x + 8 broadcast weights for 16 FMAs.
//   AVX2,    16 registers of 8 floats: 4 filters x 16 pixels = 8 accumulators (+ 2 for x,
//            1 for a weight); per tap 2 + 4 loads for 8 FMAs. 8 x 16 would need 16
//            accumulators alone.
//   generic, 4 floats per register. x86-64's baseline, SSE2, has 16 registers and no FMA
//            (each product needs a register of its own until it is added): 4 x 4 = 4
//            accumulators; ARM's NEON has 32 registers and FMA: 4 x 8.
//
// The weight gradient is blocked the same way (see "Weight gradient" below).
//
// The vectors are GCC's vector extensions (`float __attribute__((vector_size(...)))`), not
// intrinsics: `acc += w * xv` is one line of C++ whichever instruction set the compiler
// targets. The accumulators are an array `acc[KB][NV]` of vectors of the machine's width,
// indexed only by constants once the loops over them are unrolled, which is what lets the
// compiler keep each one in a register. (One vector of 32 floats per filter would be legal
// C++ too, but GCC keeps a vector wider than any register in memory: a load and a store
// around every FMA.)
//
// Wide rows. The tile's pixels run along "wide rows" (also the im2col path's trick in
// cunet/cpu/conv2d.py): wide output q = oy*W + ox, counted on rows of the *input's* width W,
// reads tap (r, s) of channel c at x_flat[c, q + r*W + s]. P consecutive q are then one
// contiguous load per tap even where they cross the end of an output row, so the 30-pixel
// rows deep in the U-Net still fill whole tiles. The W - OW = 2 wide columns per row that
// fall past the output's edge are computed and dropped when the tile is stored. (Those
// columns read real input values and their sums are thrown away: no output ever reads an
// input that its own formula does not, so a NaN still reaches exactly the outputs it should.)
//
// Floating point: every output is summed in the order c, then r, then s, from 0, with one
// FMA per product (setup.py compiles with -ffp-contract=fast; the generic x86-64 version has
// no FMA instruction and rounds each product), then the bias is added. No tile size, task
// split or thread count changes that order, so the forward and the backward input give the
// same bits with any number of threads. The weight gradient too (see below).
#include "conv2d.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace cunet_host {

// --- SIMD dispatch ---------------------------------------------------------------------------
// One binary carries three versions of the kernels: for AVX-512, for AVX2 + FMA and for the
// x86-64 baseline (SSE2). Each kernel's entry point (forward_task, wgrad_task, at the end of
// their sections) is written three times, marked CUNET_AVX512, CUNET_AVX2 or nothing: GCC
// compiles a function marked target("...") for that instruction set whatever the command
// line says, and the templates it calls are CUNET_INLINE (always inlined), so they are
// compiled for it too. A table of function pointers (`Version`, at the end) holds each
// version's entry points; the first call picks the best version the CPU supports
// (__builtin_cpu_supports), so the module is built without -march=native and runs its best
// code on any x86-64 CPU. Elsewhere (ARM), and with compilers other than GCC, there is one
// version, for the compiler's default target.
//
// This is what GCC's target_clones attribute does, written out, for three reasons:
//   - target_clones("avx512f", ...) compiles ONE body for every instruction set, so each
//     clone would carry all three register tiles, including tiles of vectors wider than its
//     registers, which cannot be compiled where a vector is pinned to a register
//     (keep_in_register: the weight gradient's loop is 25-35% faster with it). Here each
//     version instantiates its own tile only, and a build compiles a third of the code.
//   - The clones are bound by the loader (an ifunc), once: a CPU can only ever run, and so
//     test, its best version. Here set_isa() can select any version the CPU supports, and
//     tests/test_host_conv.py runs every one of them.
//   - The AVX2 version is "arch=x86-64-v3", the psABI level for AVX2, FMA, BMI1/2, F16C,
//     LZCNT and MOVBE that every AVX2 CPU (Intel from Haswell, AMD from Zen) has. In
//     target_clones' list a comma separates two clones: "avx2,fma" would give an AVX2 clone
//     without FMA and an FMA clone without AVX2.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CUNET_VERSIONS 1
#define CUNET_AVX512 __attribute__((target("avx512f")))
#define CUNET_AVX2 __attribute__((target("arch=x86-64-v3")))
#else
#define CUNET_VERSIONS 0
#endif
#define CUNET_INLINE inline __attribute__((always_inline))

namespace {

// The register tiles of the three versions (the comment at the top explains the sizes).
// The tile changes the speed, never a forward or backward-input result; the weight
// gradient's lane count is its summation order (see "Weight gradient").
#if defined(__aarch64__)
constexpr int kGenericVectors = 2;  // forward: vectors per filter in the generic tile
#else
constexpr int kGenericVectors = 1;
#endif
// The up-convolution's weight gradient: channels x 4 taps accumulators plus a register per
// channel and one for dY: AVX-512 6 x 4 + 6 + 1 = 31 of 32, AVX2 and SSE2 3 x 4 + 3 + 1 = 16.
constexpr Geometry kGeometry[3] = {
    /* generic */ {4, 4 * kGenericVectors, 4, 4, 3},
    /* avx2    */ {4, 16, 4, 8, 3},
    /* avx512  */ {8, 32, 8, 16, 6},
};

// Outputs per task: enough work to amortise a task (~2048 wide outputs x C*9 FMAs x a block
// of filters), small enough that a task's rows of x (C x (rows + 2) rows) stay in L2 while
// every block of filters reads them (the span the deleted Numba loops used too, measured there).
constexpr index_t kTaskOutputs = 2048;
// A weight-gradient task: up to kWgradChannels channels x kWgradTaskKblocks blocks of
// filters. It reads its channels' x once per group of filters and dy once per group of
// channels, and reads and writes all its running totals once per band, which should stay
// in L2 beside the band's rows of x (AVX-512: 32 channels x 4 blocks x 8 filters x 9 taps x
// 16 lanes x 4 bytes = 590 KB). 32 x 4 against 16 x 8 (the same totals), eight layers of
// the U-Net at base 64, cunet._host directly, two builds alternating (2-core AMD EPYC):
// 326-352 ms against 359-376 in all; 32 x 2 378, 64 x 2 346, 64 x 4 347.
constexpr index_t kWgradChannels = 32;
constexpr index_t kWgradTaskKblocks = 4;
// Output pixels per band of the weight gradient: the band of dy that every channel's rows of
// x stream past (KB filters x ~1024 floats: 32 KB for AVX-512's 8 filters) then stays in the
// 48 KB L1 cache. Measured at 256, 512, 1024 and 2048 on six U-Net layers (2-core AVX-512
// VM, cunet._host directly): 1024 fastest on five of them, 10-20% above 2048 (which spills
// to L2: each step reads 8 dy vectors).
constexpr index_t kWgradOutputs = 1024;
// The up-convolution's weight-gradient task: as many tiles of channels as keep its band of
// x (channels x a band's rows) within kUpconvGradBandBytes, read once per filter, and as
// many filters as keep its totals (filters x channels x 4 taps x lanes) within
// kUpconvGradTotalsBytes. dy is read once per group of channels and x once per group of
// filters. The eight up-convolutions of both bases, cunet._host directly, alternating
// builds (2-core AMD EPYC): bands of 256, 512, 1024, 2048 KB (totals 256) 53.9, 48.5-51.3,
// 45.9-46.6, 50.1 ms; totals 128 or 512 KB (bands 1024 or 512) 50.0, 50.5. (Groups of 30
// channels x 16 filters, before: 70.8.)
constexpr index_t kUpconvGradBandBytes = 1024 * 1024;
constexpr index_t kUpconvGradTotalsBytes = 256 * 1024;
// Winograd F(4x4, 3x3): a tile is a 4x4 block of outputs, read from a 6x6 block of the
// input, and multiplies 36 elements (see "Winograd F(4x4, 3x3)").
constexpr index_t kTile = 4, kTileIn = kTile + 2;
constexpr int kElements = int(kTileIn * kTileIn);
// A Winograd chunk of tile rows: its transformed input and products (36 (C + K) floats a
// tile) within this many bytes, about the L3. Every chunk reads all of the transformed
// filters again, so bigger chunks are faster: seven base-64 layers, 2-core AMD EPYC, budgets
// of 4, 8, 16, 32, 64 MB: forward 335, 284, 274, 231, 223 ms. 64 MB would add 32 MB to the
// step's peak memory for 3%.
constexpr index_t kWinogradChunkBytes = 32 * 1024 * 1024;
std::atomic<index_t> g_winograd_chunk_bytes{kWinogradChunkBytes};   // set_winograd_chunk_bytes (tests)
// A Winograd product task's blocks of tiles: C x L x blocks floats of V within this many bytes (L2).
constexpr index_t kWinogradGroupBytes = 512 * 1024;
// A loop of fewer multiply-adds than this runs on the calling thread alone: waking the
// OpenMP team costs tens of microseconds, as much as the whole loop (~30 us on one core).
// (Chosen by that estimate, not measured like cunet.cpu.parallel.PARALLEL_MIN_WORK.)
constexpr index_t kParallelMinMacs = index_t(1) << 21;

std::atomic<int> g_last_team{1};   // the largest team of the last op's loops (begin_op resets it)

// --- scratch memory ------------------------------------------------------------------------------
// Every temporary buffer an op allocates is a Scratch, which counts its bytes while it lives,
// so scratch_peak_bytes() can tell the tests how much the last op held at once (NumPy's
// allocations are visible to Python's tracemalloc; these are not).
std::atomic<index_t> g_scratch_now{0}, g_scratch_peak{0};

void count_scratch(index_t bytes) {
    const index_t now = g_scratch_now.fetch_add(bytes) + bytes;
    index_t peak = g_scratch_peak.load();
    while (now > peak && !g_scratch_peak.compare_exchange_weak(peak, now)) {
    }
}

// n floats (zero-filled unless the caller writes them all), counted as scratch while it lives.
class Scratch {
  public:
    explicit Scratch(index_t n, bool zero = true)
        : data_(zero ? new float[size_t(n)]() : new float[size_t(n)]), bytes_(n * index_t(sizeof(float))) {
        count_scratch(bytes_);
    }
    ~Scratch() { g_scratch_now.fetch_sub(bytes_); }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    float* data() const { return data_.get(); }

  private:
    std::unique_ptr<float[]> data_;
    index_t bytes_;
};

// Called at the start of each op: the scratch peak and the team size are the op's own.
void begin_op() {
    g_scratch_peak.store(g_scratch_now.load());
    g_last_team.store(1);
}

// This thread's number in the running OpenMP team (0 outside one).
int thread_index() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// --- vectors -----------------------------------------------------------------------------------
template <int L>
struct Lanes {
    typedef float type __attribute__((vector_size(L * sizeof(float))));
    typedef int mask __attribute__((vector_size(L * sizeof(int))));   // what a comparison of two vec<L> gives
};
template <int L>
using vec = typename Lanes<L>::type;
template <int L>
using mask = typename Lanes<L>::mask;

// Unaligned loads and stores (memcpy of a vector's size compiles to one vmovups).
template <int L>
CUNET_INLINE void load(vec<L>& v, const float* p) { std::memcpy(&v, p, sizeof v); }
template <int L>
CUNET_INLINE void store(float* p, const vec<L>& v) { std::memcpy(p, &v, sizeof v); }

// Keeps v in a register. Without it GCC folds a vector's load into every instruction that
// uses it (an FMA can take one operand straight from memory), which looks free but loads it
// again each time: the weight gradient's inner loop loaded each dy vector three times, 27
// loads for 24 FMAs, and ran 20-25% slower (56-68 GFLOP/s instead of 68-89 on the 2-core
// AVX-512 machine, another job running). The empty asm statement claims to change v, so v
// must be in a register there, and what the FMAs read is that register.
template <int L>
CUNET_INLINE void keep_in_register(vec<L>& v) {
#if defined(__GNUC__) && defined(__x86_64__)
    asm("" : "+v"(v));
#elif defined(__GNUC__) && defined(__aarch64__)
    asm("" : "+w"(v));
#else
    (void)v;
#endif
}

// p[0 .. L) += v (unaligned): adds a tile's register sums to running totals in memory.
template <int L>
CUNET_INLINE void add_to(float* p, const vec<L>& v) {
    vec<L> sum;
    load<L>(sum, p);
    store<L>(p, sum + v);
}

// The sum of a vector's lanes, lane 0 first: a fixed order, so a fixed result.
template <int L>
CUNET_INLINE float lane_sum(const vec<L>& v) {
    float s = 0.0f;
    for (int l = 0; l < L; ++l) s += v[l];
    return s;
}

}  // namespace

// --- forward ---------------------------------------------------------------------------------
// (The input x [N, C, H, W] is not here: each task is handed its rows, see forward_task_impl.)
struct Forward {
    const float* wp;  // packed filters [kblocks][C][9][KB] (pack_filters)
    const float* b;   // [K]
    float* y;         // [N, K, OH, OW]
    index_t N, C, H, W, K, OH, OW;
    bool relu;
    index_t kblocks, rows, groups;  // task = (image n, group of `rows` output rows, block of KB filters)
    bool prefetch;   // x comes from memory (the forward), not from a band just written (the backward input)
};

// max(v, 0), and 0 for NaN: the convention of the GPU kernels' fmaxf and of the other cpu paths.
CUNET_INLINE float relu1(float v) { return v > 0.0f ? v : 0.0f; }

// One tile: KB filters x L = NV*V consecutive wide outputs q .. q+L-1 of one task (q counted
// from the task's first output row), V floats per vector register. Sums over c, r, s in
// KB*NV registers, then adds the bias, applies the ReLU and stores the outputs that lie
// inside the output image. (The accumulators are NV vectors of the machine's width rather
// than one vector of L floats: GCC keeps a vector wider than a register in memory.)
template <int KB, int NV, int V>
CUNET_INLINE void forward_tile(const Forward& f, const float* x0, index_t plane, const float* wk, const float* bias,
                               index_t kn, float* yk, index_t q) {
    constexpr int L = NV * V;
    const index_t W = f.W;
    vec<V> acc[KB][NV];
#pragma GCC unroll 8
    for (int k = 0; k < KB; ++k)
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[k][j] = vec<V>{};

    const float* xq = x0 + q;
    for (index_t c = 0; c < f.C; ++c) {
        const float* xc = xq + c * plane;  // tap (r, s) of this tile: xc[r*W + s ..], L floats
        const float* wc = wk + c * 9 * KB; // its KB weights: wc[(r*3 + s)*KB ..]
#pragma GCC unroll 3
        for (int r = 0; r < 3; ++r) {
            // The next tile's inputs of this row, into cache while this tile computes: a tile
            // reads 3 C rows of x at once, more streams than the hardware prefetchers follow,
            // and without this its first load of each row waited on L2 or L3. (Base 16's
            // direct layers, cunet._host directly, alternating builds on the 2-core AMD EPYC:
            // forward 37.1 -> 33.3 ms, 16 -> 16 at 570 x 570 5.4 -> 3.6; the backward
            // input, whose band of dy was just written into cache, was no faster.)
            if (f.prefetch)
#pragma GCC unroll 4
                for (int line = 0; line < (L + 2 + 15) / 16; ++line)
                    __builtin_prefetch(xc + r * W + L + 16 * line, 0, 3);
#pragma GCC unroll 3
            for (int s = 0; s < 3; ++s) {
                vec<V> xv[NV];   // L inputs, shared by the KB filters
#pragma GCC unroll 4
                for (int j = 0; j < NV; ++j) load<V>(xv[j], xc + r * W + s + j * V);
                const float* wt = wc + (r * 3 + s) * KB;
#pragma GCC unroll 8
                for (int k = 0; k < KB; ++k) {
                    const float wk_rs = wt[k];   // one weight, broadcast to L pixels
#pragma GCC unroll 4
                    for (int j = 0; j < NV; ++j) acc[k][j] += wk_rs * xv[j];
                }
            }
        }
    }

    // Epilogue. Most tiles lie inside one output row: add the bias, ReLU, vector stores.
    const index_t oy = q / W, ox = q % W, out_plane = f.OH * f.OW;
    if (ox + L <= f.OW) {
        const vec<V> zero{};
#pragma GCC unroll 8
        for (int k = 0; k < KB; ++k) {
            if (k < kn) {   // the last block of filters may be partly padding
#pragma GCC unroll 4
                for (int j = 0; j < NV; ++j) {
                    vec<V> v = acc[k][j] + bias[k];
                    if (f.relu) v = v > zero ? v : zero;
                    store<V>(yk + k * out_plane + oy * f.OW + ox + j * V, v);
                }
            }
        }
        return;
    }
    // A tile that crosses the end of a row: through a buffer, dropping the wide columns.
    alignas(64) float out[KB][L];
#pragma GCC unroll 8
    for (int k = 0; k < KB; ++k)
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) store<V>(out[k] + j * V, acc[k][j]);
    for (int l = 0; l < L; ++l) {
        const index_t row = (q + l) / W, col = (q + l) % W;
        if (col >= f.OW) continue;
        for (index_t k = 0; k < kn; ++k) {
            const float v = out[k][l] + bias[k];
            yk[k * out_plane + row * f.OW + col] = f.relu ? relu1(v) : v;
        }
    }
}

// A task whose wide span is shorter than one tile (images a few pixels wide): one output at
// a time, summed in the same order as the tiles.
template <int KB>
CUNET_INLINE void forward_scalar(const Forward& f, const float* x0, index_t plane, const float* wk, const float* bias,
                                 index_t kn, float* yk, index_t span) {
    const index_t W = f.W, out_plane = f.OH * f.OW;
    for (index_t q = 0; q < span; ++q) {
        const index_t oy = q / W, ox = q % W;
        if (ox >= f.OW) continue;
        for (index_t k = 0; k < kn; ++k) {
            float acc = 0.0f;
            for (index_t c = 0; c < f.C; ++c)
                for (int t = 0; t < 9; ++t) acc += wk[(c * 9 + t) * KB + k] * x0[c * plane + q + (t / 3) * W + t % 3];
            const float v = acc + bias[k];
            yk[k * out_plane + oy * f.OW + ox] = f.relu ? relu1(v) : v;
        }
    }
}

// Task t of a forward: image n, group g of f.rows output rows starting at oy0, block kb of
// filters. Consecutive task numbers share (n, g) and differ in the block of filters, so a
// thread's consecutive tasks (OpenMP's static schedule) read the same rows of x from L2.
struct ForwardTask {
    index_t n, g, kb, oy0;
};
CUNET_INLINE ForwardTask forward_task_of(const Forward& f, index_t task) {
    const index_t kb = task % f.kblocks, g = (task / f.kblocks) % f.groups, n = task / (f.kblocks * f.groups);
    return {n, g, kb, g * f.rows};
}

// x0: the task's input, its row 0 being input row oy0 (wide output q = 0 is (oy0, 0));
// plane: the distance between two of its channels.
template <int KB, int NV, int V>
CUNET_INLINE void forward_task_impl(const Forward& f, index_t task, const float* x0, index_t plane) {
    constexpr int L = NV * V;
    const ForwardTask t = forward_task_of(f, task);
    const index_t kb = t.kb, n = t.n, oy0 = t.oy0, oy1 = std::min(oy0 + f.rows, f.OH);
    const index_t k0 = kb * KB, kn = std::min<index_t>(KB, f.K - k0);
    const float* wk = f.wp + kb * f.C * 9 * KB;
    float* yk = f.y + ((n * f.K + k0) * f.OH + oy0) * f.OW;
    // Wide outputs from (oy0, 0) to (oy1 - 1, OW - 1): the last row's 2 wide columns are not
    // part of it (they would read past the end of the image).
    const index_t span = (oy1 - oy0) * f.W - 2;
    if (span < L) {
        forward_scalar<KB>(f, x0, plane, wk, f.b + k0, kn, yk, span);
        return;
    }
    // Tiles at q = 0, L, 2L, ...; the last one is moved back to end exactly at the span's end,
    // recomputing a few outputs of the one before (to the same bits), rather than running a
    // partial tile past the end of x.
    for (index_t q = 0; q < span; q += L)
        forward_tile<KB, NV, V>(f, x0, plane, wk, f.b + k0, kn, yk, std::min(q, span - L));
}

// One forward task, in each version (see "SIMD dispatch"): <filters, vectors per filter,
// floats per vector>, forward_pixels = vectors x floats.
static_assert(kGeometry[2].forward_pixels == 2 * 16 && kGeometry[1].forward_pixels == 2 * 8 &&
              kGeometry[0].forward_pixels == kGenericVectors * 4, "forward_pixels = vectors per filter x floats per vector");
#if CUNET_VERSIONS
CUNET_AVX512 void forward_task_avx512(const Forward& f, index_t task, const float* x0, index_t plane) {
    forward_task_impl<kGeometry[2].forward_filters, 2, 16>(f, task, x0, plane);
}
CUNET_AVX2 void forward_task_avx2(const Forward& f, index_t task, const float* x0, index_t plane) {
    forward_task_impl<kGeometry[1].forward_filters, 2, 8>(f, task, x0, plane);
}
#endif
void forward_task_generic(const Forward& f, index_t task, const float* x0, index_t plane) {
    forward_task_impl<kGeometry[0].forward_filters, kGenericVectors, 4>(f, task, x0, plane);
}

// --- up-convolution -------------------------------------------------------------------------------
// The 2x2 up-convolution with stride 2 (cunet/ops/upconv.py):
//   y[n, k, 2i+a, 2j+e] = b[k] + sum_c x[n, c, i, j] * w[c, k, a, e]
// Its windows do not overlap, so it is a product of matrices: with w read as [C, 4K] (column
// m = 4k + 2a + e) and the pixels p = i*W + j of an image as columns,
//   forward          Y[m, p] = sum_c w[c, m] x[c, p]       then y[k, 2i+a, 2j+e] = Y[m, p] + b[k]
//   backward input  dx[c, p] = sum_m w[c, m] dY[m, p]      where dY[m, p] = dy[k, 2i+a, 2j+e]
// Both run on one register tile, the forward's with a single tap: KB rows of the product x L
// consecutive pixels, summed over the M rows of the other operand (C channels, or the 4K
// rows of dY), each step L inputs loaded once and KB weights broadcast. What differs is
// where the pixels live. The forward reads x as it is and scatters each pair of rows e = 0,
// 1 of its tile into one output row, interleaved (2j, 2j + 1). The backward input first
// gathers its task's rows of dY from dy (gather_dy_band), then stores its tile as it is.
// Every output is summed over m in order from 0, whatever the tile, task or thread.
struct Upconv {
    const float* wp;   // rows of the product, packed [blocks][M][KB] (upconv2x2_forward, _backward_input)
    const float* b;    // forward: [K]; backward input: unused
    float* out;        // forward: y [N, K, 2H, 2W]; backward input: dx [N, C, H, W]
    index_t N, M, H, W, rows_out;   // M: the sum's length; rows_out: the product's rows (4K, or C)
    index_t blocks, rows, groups;   // task = (image, group of `rows` input rows, block of KB product rows)
};

struct UpconvTask {
    index_t n, g, block, i0, i1;
};
CUNET_INLINE UpconvTask upconv_task_of(const Upconv& u, index_t task) {
    const index_t block = task % u.blocks, g = (task / u.blocks) % u.groups, n = task / (u.blocks * u.groups);
    return {n, g, block, g * u.rows, std::min((g + 1) * u.rows, u.H)};
}

// acc[r][j] = sum over m of wb[m][r] * in[m * stride + q + j*V ..]: KB rows x NV vectors.
template <int KB, int NV, int V>
CUNET_INLINE void upconv_tile(const float* in, index_t stride, const float* wb, index_t M, index_t q,
                              vec<V> (&acc)[KB][NV]) {
#pragma GCC unroll 8
    for (int r = 0; r < KB; ++r)
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[r][j] = vec<V>{};
    for (index_t m = 0; m < M; ++m) {
        vec<V> xv[NV];
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) load<V>(xv[j], in + m * stride + q + j * V);
        const float* wm = wb + m * KB;
#pragma GCC unroll 8
        for (int r = 0; r < KB; ++r) {
            const float weight = wm[r];
#pragma GCC unroll 4
            for (int j = 0; j < NV; ++j) acc[r][j] += weight * xv[j];
        }
    }
}

// The tiles of a task's span of pixels (q = 0 .. span - 1, contiguous in `in`'s rows): at q
// = 0, L, 2L, ..., the last moved back to end at the span's end (recomputing a few outputs
// to the same bits). A span shorter than a tile goes one pixel at a time, same order.
template <int KB, int NV, int V, typename StoreTile, typename StorePixel>
CUNET_INLINE void upconv_span(const float* in, index_t stride, const float* wb, index_t M, index_t span,
                              StoreTile store_tile, StorePixel store_pixel) {
    constexpr int L = NV * V;
    if (span < L) {
        for (index_t q = 0; q < span; ++q)
            for (int r = 0; r < KB; ++r) {
                float sum = 0.0f;
                for (index_t m = 0; m < M; ++m) sum += wb[m * KB + r] * in[m * stride + q];
                store_pixel(r, q, sum);
            }
        return;
    }
    for (index_t q0 = 0; q0 < span; q0 += L) {
        const index_t q = std::min(q0, span - L);
        vec<V> acc[KB][NV];
        upconv_tile<KB, NV, V>(in, stride, wb, M, q, acc);
        store_tile(acc, q);
    }
}

// Interleaves two vectors: (a0, b0, a1, b1, ...), the first V in lo, the rest in hi.
template <int V>
CUNET_INLINE void interleave(const vec<V>& a, const vec<V>& b, vec<V>& lo, vec<V>& hi) {
    mask<V> low, high;
    for (int l = 0; l < V; ++l) {
        low[l] = (l % 2 ? V : 0) + l / 2;
        high[l] = (l % 2 ? V : 0) + V / 2 + l / 2;
    }
    lo = __builtin_shuffle(a, b, low);
    hi = __builtin_shuffle(a, b, high);
}

// Forward task: rows i0 .. i1 - 1 of image n, product rows m = block*KB .. (KB/4 output
// channels x the 4 taps (a, e)). A tile's pixels q .. q+L-1 of the span (p = i0*W + q) that
// lie in one input row are stored as two output rows of 2L interleaved values; a tile that
// crosses a row's end, one value at a time.
template <int KB, int NV, int V>
CUNET_INLINE void upconv_forward_task_impl(const Upconv& u, index_t task, const float* x) {
    static_assert(KB % 4 == 0, "a block of product rows holds whole output channels (4 taps each)");
    constexpr int L = NV * V;
    const UpconvTask t = upconv_task_of(u, task);
    const index_t W = u.W, K = u.rows_out / 4, k0 = t.block * (KB / 4), plane = u.H * W;
    const float* in = x + t.n * u.M * plane + t.i0 * W;
    float* const y = u.out + t.n * K * 4 * plane;   // image n: K planes of 2H x 2W
    const auto put = [&](index_t kk, int a, index_t i, index_t j, int e, float v) {
        const index_t k = k0 + kk;
        y[(k * 2 * u.H + 2 * i + a) * 2 * W + 2 * j + e] = v + u.b[k];
    };
    const auto store_tile = [&](vec<V>(&acc)[KB][NV], index_t q) {
        const index_t i = t.i0 + q / W, j = q % W;
        for (index_t kk = 0; kk < KB / 4 && k0 + kk < K; ++kk) {
            const float bias = u.b[k0 + kk];
            for (int a = 0; a < 2; ++a) {
                const vec<V>* even = acc[4 * kk + 2 * a];
                const vec<V>* odd = acc[4 * kk + 2 * a + 1];
                if (j + L <= W) {
                    float* row = y + ((k0 + kk) * 2 * u.H + 2 * i + a) * 2 * W + 2 * j;
#pragma GCC unroll 4
                    for (int jv = 0; jv < NV; ++jv) {
                        vec<V> lo, hi;
                        interleave<V>(even[jv] + bias, odd[jv] + bias, lo, hi);
                        store<V>(row + 2 * jv * V, lo);
                        store<V>(row + 2 * jv * V + V, hi);
                    }
                } else {
                    for (int l = 0; l < L; ++l) {
                        const index_t p = q + l;
                        put(kk, a, t.i0 + p / W, p % W, 0, even[l / V][l % V]);
                        put(kk, a, t.i0 + p / W, p % W, 1, odd[l / V][l % V]);
                    }
                }
            }
        }
    };
    const auto store_pixel = [&](int r, index_t q, float v) {
        if (k0 + r / 4 < K) put(r / 4, (r / 2) % 2, t.i0 + q / W, q % W, r % 2, v);
    };
    upconv_span<KB, NV, V>(in, plane, u.wp + t.block * u.M * KB, u.M, (t.i1 - t.i0) * W, store_tile, store_pixel);
}

// dY's rows for input rows i0 .. i1 - 1 of image n: band[m][q] = dy[n, k, 2i+a, 2j+e] for
// m = 4k + 2a + e and q = (i - i0)*W + j, every m: each row of dy split into its even and
// odd columns.
CUNET_INLINE void gather_dy_band(const Upconv& u, const float* dy, const UpconvTask& t, float* band) {
    const index_t W = u.W, K = u.M / 4, span = (t.i1 - t.i0) * W;
    for (index_t k = 0; k < K; ++k)
        for (int a = 0; a < 2; ++a)
            for (index_t i = t.i0; i < t.i1; ++i) {
                const float* src = dy + ((t.n * K + k) * 2 * u.H + 2 * i + a) * 2 * W;
                float* even = band + (4 * k + 2 * a) * span + (i - t.i0) * W;
                float* odd = even + span;
                for (index_t j = 0; j < W; ++j) {
                    even[j] = src[2 * j];
                    odd[j] = src[2 * j + 1];
                }
            }
}

// Backward input task: dx of rows i0 .. i1 - 1 of image n, channels block*KB ..; `band`
// holds those rows of dY (gather_dy_band, done first if `gather`), contiguous like dx's rows.
template <int KB, int NV, int V>
CUNET_INLINE void upconv_input_task_impl(const Upconv& u, index_t task, const float* dy, float* band, bool gather) {
    const UpconvTask t = upconv_task_of(u, task);
    if (gather) gather_dy_band(u, dy, t, band);
    const index_t C = u.rows_out, c0 = t.block * KB, cn = std::min<index_t>(KB, C - c0);
    const index_t plane = u.H * u.W, span = (t.i1 - t.i0) * u.W;
    float* const dx = u.out + (t.n * C + c0) * plane + t.i0 * u.W;
    const auto store_tile = [&](vec<V>(&acc)[KB][NV], index_t q) {
        for (index_t r = 0; r < cn; ++r)
#pragma GCC unroll 4
            for (int jv = 0; jv < NV; ++jv) store<V>(dx + r * plane + q + jv * V, acc[r][jv]);
    };
    const auto store_pixel = [&](int r, index_t q, float v) {
        if (r < cn) dx[r * plane + q] = v;
    };
    upconv_span<KB, NV, V>(band, span, u.wp + t.block * u.M * KB, u.M, span, store_tile, store_pixel);
}

#if CUNET_VERSIONS
CUNET_AVX512 void upconv_forward_task_avx512(const Upconv& u, index_t task, const float* x) {
    upconv_forward_task_impl<kGeometry[2].forward_filters, 2, 16>(u, task, x);
}
CUNET_AVX512 void upconv_input_task_avx512(const Upconv& u, index_t task, const float* dy, float* band, bool gather) {
    upconv_input_task_impl<kGeometry[2].forward_filters, 2, 16>(u, task, dy, band, gather);
}
CUNET_AVX2 void upconv_forward_task_avx2(const Upconv& u, index_t task, const float* x) {
    upconv_forward_task_impl<kGeometry[1].forward_filters, 2, 8>(u, task, x);
}
CUNET_AVX2 void upconv_input_task_avx2(const Upconv& u, index_t task, const float* dy, float* band, bool gather) {
    upconv_input_task_impl<kGeometry[1].forward_filters, 2, 8>(u, task, dy, band, gather);
}
#endif
void upconv_forward_task_generic(const Upconv& u, index_t task, const float* x) {
    upconv_forward_task_impl<kGeometry[0].forward_filters, kGenericVectors, 4>(u, task, x);
}
void upconv_input_task_generic(const Upconv& u, index_t task, const float* dy, float* band, bool gather) {
    upconv_input_task_impl<kGeometry[0].forward_filters, kGenericVectors, 4>(u, task, dy, band, gather);
}

// --- Winograd F(4x4, 3x3) --------------------------------------------------------------------------
// The wide layers at the bottom of the U-Net with 4x fewer multiplies (Lavin and Gray, "Fast
// Algorithms for Convolutional Neural Networks", 2016). A 4x4 block of outputs (a "tile")
// of a 3x3 valid correlation reads a 6x6 block d of the input; with the filter g,
//     Y (4x4) = A^T [ (G g G^T) * (B^T d B) ] A        (* elementwise: 36 products, not 144)
//     B^T = [4  0 -5  0  1  0      G = [ 1/4    0     0      A^T = [1  1  1  1  1  0
//            0 -4 -4  1  1  0            -1/6 -1/6  -1/6             0  1 -1  2 -2  0
//            0  4 -4 -1  1  0            -1/6  1/6  -1/6             0  1  1  4  4  0
//            0 -2 -1  2  1  0             1/24 1/12  1/6             0  1 -1  8 -8  1]
//            0  2 -1 -2  1  0             1/24 -1/12 1/6
//            0  4  0 -5  0  1]            0     0     1  ]
// (the interpolation points 0, 1, -1, 2, -2 and infinity). The sum over input channels
// commutes with A^T [.] A, so for each of the 36 elements e
//     M[e, k, t] = sum_c U[e, k, c] V[e, c, t]     (U = G g G^T, V = B^T d B, t a tile)
// is a product of matrices [K, C] x [C, tiles], done on the up-convolution's register tile
// with a single tap (upconv_tile: KB filters x L tiles, each step L values of V loaded once
// and KB of U broadcast). Both operands are packed for it: U as [e][block of KB filters][c]
// [KB] once per call, V as [e][block of L tiles][c][L] by the input transform, so each step
// reads one contiguous line of each. The work goes a chunk of tile rows at a time in three
// parallel phases: transform the chunk's input (a task per channel), multiply (a task per
// element and group of tile blocks, walking the blocks of filters), transform the products
// back into outputs (a task per filter); a chunk's V and M are sized to about the last-level
// cache (kWinogradChunkBytes). Each output is A^T M A of sums over c in order from 0: the same bits
// with any number of threads.
//
// Why 4x4 tiles: F(2x2, 3x3) (4x4 inputs, 16 products per 4 outputs) multiplied 2.25x less
// than the direct sum and F(4x4, 3x3) 4x less; its transforms also write 36 floats per 16
// outputs instead of 16 per 4. Its price is rounding: the transforms scale by up to 5 and
// 8 and divide by 6, so the error is ~10x F(2x2)'s, still ~1e-5 of the values' scale
// (tests/test_conv2d.py bounds it by the same computation run on absolute values). The
// choice of F(4x4) over F(2x2) was measured (benchmarks/README.md, "Train step, cpu"): faster
// on every layer but base 64's bottom level (49 and 64 tiles, too few to pay for 36 K C
// transformed filters), where the rule (cunet/cpu/conv2d.py) runs the 30 x 30 forward by
// the direct kernels instead.
//
// The backward input is this forward on dy zero-padded by 2, with the filters turned by 180
// degrees and C and K swapped (as the direct kernels do). The weight gradient: Y is linear
// in g, so dL/dg = G^T X G with X[e, k, c] = sum over tiles of D[e, k, t] V[e, c, t] and
// D = A dY A^T (dY: a tile's 4x4 block of dy): "The weight gradient by Winograd" below.
// Output sizes need not be multiples of 4: the last tile reads zeros past the input's edge
// and drops what falls past the output's. (So a NaN in x reaches the outputs of every tile
// whose 6x6 block holds it, through the nonzero entries of B^T and A^T, a few more than its
// 3x3 window; the tests work out which.)
struct Winograd {
    const float* u;   // transformed filters [36][kblocks][C][KB] (zero filters pad the last block)
    const float* v;   // the chunk's transformed input [36][tblocks][C][L] (zero tiles pad the last block)
    float* m;         // the chunk's products [36][K][tblocks * L]
    index_t C, K, kblocks, tblocks;
    index_t group, groups;                 // blocks of tiles per task; tasks per element
    index_t u_stride, v_stride, m_stride;  // floats from one element e to the next (winograd_stride)
};

// The distance between two elements' planes of U, V or M: a plane and a cache line. Planes
// of a whole number of 4 KB pages (a chunk of 27 x 32 tiles x 1024 channels is) would put the
// 36 values a transform writes for one tile into the same set of every cache, more than its
// ways: each store would evict the line the previous tile's store had just brought in.
// (Measured with F(2x2, 3x3)'s 16 planes: 1024 -> 512 channels at 58^2, forward 72 -> 43 ms.)
CUNET_INLINE index_t winograd_stride(index_t plane_floats) { return plane_floats + 16; }

// Task (e, group of blocks of tiles): M[e] for those tiles and every filter. The group's V
// (C x a few blocks of L tiles, ~kWinogradGroupBytes) stays in L2 while the blocks of filters
// pass, each block of U (C x KB) in L1 while it meets the group's blocks of tiles.
template <int KB, int NV, int V>
CUNET_INLINE void winograd_product_task_impl(const Winograd& w, index_t task) {
    constexpr int L = NV * V;
    const index_t e = task / w.groups, tb0 = (task % w.groups) * w.group;
    const index_t tb1 = std::min(tb0 + w.group, w.tblocks), T = w.tblocks * L;
    for (index_t kb = 0; kb < w.kblocks; ++kb) {
        const index_t kn = std::min<index_t>(KB, w.K - kb * KB);
        const float* u = w.u + e * w.u_stride + kb * w.C * KB;
        float* const out = w.m + e * w.m_stride + kb * KB * T;
        for (index_t tb = tb0; tb < tb1; ++tb) {
            vec<V> acc[KB][NV];
            upconv_tile<KB, NV, V>(w.v + e * w.v_stride + tb * w.C * L, L, u, w.C, 0, acc);
            for (index_t r = 0; r < kn; ++r)
#pragma GCC unroll 4
                for (int j = 0; j < NV; ++j) store<V>(out + r * T + tb * L + j * V, acc[r][j]);
        }
    }
}

#if CUNET_VERSIONS
CUNET_AVX512 void winograd_product_task_avx512(const Winograd& w, index_t task) {
    winograd_product_task_impl<kGeometry[2].forward_filters, 2, 16>(w, task);
}
CUNET_AVX2 void winograd_product_task_avx2(const Winograd& w, index_t task) {
    winograd_product_task_impl<kGeometry[1].forward_filters, 2, 8>(w, task);
}
#endif
void winograd_product_task_generic(const Winograd& w, index_t task) {
    winograd_product_task_impl<kGeometry[0].forward_filters, kGenericVectors, 4>(w, task);
}

// The weight gradient by Winograd: Y is linear in g, so dL/dg = G^T X G with
//     X[e, k, c] = sum over tiles t of D[e, k, t] V[e, c, t],   D = A dY A^T (dY: a 4x4 block of dy)
// 36 products [K, tiles] x [tiles, C], summed over the tiles: the forward's register tile
// again (upconv_tile), KB filters x L channels, each step one tile: L values of V loaded
// (a block of channels, adjacent) and KB of D broadcast. So V is laid out by blocks of
// channels here ([e][block][t][L], winograd_input_chunk) and D by blocks of filters
// ([e][block][t][KB]). The sums stay in registers for a whole chunk of tiles, then go into X
// (in memory, every chunk in order; each X value owned by one task): the same bits with any
// number of threads. (Lanes over the tiles instead, the direct weight gradient's way, need
// a sum across each vector's lanes per chunk: 24 of them per 24 FMAs of a step, half the time.)
struct WinogradGrad {
    const float* v;   // the chunk's V [36][cblocks][T][L] (v_stride apart)
    const float* d;   // the chunk's D [36][kblocks][T][KB] (d_stride apart; zero filters past K)
    float* x;         // the running sums X [36][K][C] (x_stride apart)
    index_t C, K, T, kblocks, cblocks, v_stride, d_stride, x_stride;
};

// Task (e, block of channels): X[e] += the chunk's sums for those channels and every filter.
template <int KB, int NV, int V>
CUNET_INLINE void winograd_grad_task_impl(const WinogradGrad& g, index_t task) {
    constexpr int L = NV * V;
    const index_t e = task / g.cblocks, cb = task % g.cblocks, cn = std::min<index_t>(L, g.C - cb * L);
    const float* const v = g.v + e * g.v_stride + cb * g.T * L;
    for (index_t kb = 0; kb < g.kblocks; ++kb) {
        vec<V> acc[KB][NV];
        upconv_tile<KB, NV, V>(v, L, g.d + e * g.d_stride + kb * g.T * KB, g.T, 0, acc);
        const index_t k0 = kb * KB, kn = std::min<index_t>(KB, g.K - k0);
        float* x = g.x + e * g.x_stride + k0 * g.C + cb * L;
        for (index_t r = 0; r < kn; ++r) {
            if (cn == L) {
#pragma GCC unroll 4
                for (int j = 0; j < NV; ++j) add_to<V>(x + r * g.C + j * V, acc[r][j]);
            } else {
                for (index_t l = 0; l < cn; ++l) x[r * g.C + l] += acc[r][l / V][l % V];
            }
        }
    }
}

#if CUNET_VERSIONS
CUNET_AVX512 void winograd_grad_task_avx512(const WinogradGrad& g, index_t task) {
    winograd_grad_task_impl<kGeometry[2].forward_filters, 2, 16>(g, task);
}
CUNET_AVX2 void winograd_grad_task_avx2(const WinogradGrad& g, index_t task) {
    winograd_grad_task_impl<kGeometry[1].forward_filters, 2, 8>(g, task);
}
#endif
void winograd_grad_task_generic(const WinogradGrad& g, index_t task) {
    winograd_grad_task_impl<kGeometry[0].forward_filters, kGenericVectors, 4>(g, task);
}

// --- weight gradient -----------------------------------------------------------------------------
// dw[k, c, r, s] = sum over n, oy, ox of dy[n, k, oy, ox] * x[n, c, oy + r, ox + s]: a dot
// product over every output pixel. Blocked like the forward: a tile is KB filters x the 3
// taps s of one (c, r), 3*KB running sums, each a vector of L partial sums (lane l sums the
// pixels ox = l mod L). One step loads L values of dy for each of the KB filters and the 3
// shifted loads of x, and issues 3*KB FMAs: AVX-512 8 x 3 = 24 accumulators (of 32
// registers), 11 loads for 24 FMAs; AVX2 and generic 4 x 3 = 12.
//
// A task owns a few blocks of KB filters and a group of channels: it alone writes their dw,
// so no sum is ever split between threads. It walks the images in bands of rows, and each
// band one block of filters after the other; a band of dy (KB filters x ~kWgradOutputs
// pixels) stays in L1 while each channel's rows of x stream past it.
// Each band's register sums are added into the task's lane-wise totals (in memory) and the
// lanes are summed once, at the end: the order of every addition is fixed by the shapes
// and the tile (the vector width), not by the threads. So dw and db are bitwise the same
// with any number of threads, on one machine; a CPU that runs another version (AVX2 instead
// of AVX-512: 8 lanes instead of 16) sums in another order and may differ in the last bits.
//
// Rows are not wide here: a sum must not count the 2 columns past the output's edge. A
// row's last OW mod L pixels are one more vector step: if OW >= L the step is moved back
// to end at OW and its lanes already counted are masked off (a select, not a multiply by
// 0, so an infinity there cannot turn into a NaN); if OW < L the pixels are copied into
// zero-filled buffers.
struct WeightGrad {
    const float* x;   // [N, C, H, W]
    const float* dy;  // [N, K, OH, OW]
    float* dw;        // [K, C, 3, 3]
    float* db;        // [K]
    const float* zeros;  // OW zeros: the dy row of the padding filters of a partial block
    float* totals;       // per thread, total_floats: a task's lane-wise running totals
    float* dy_bands;     // per thread, band_floats: a band of dy on aligned rows (wgrad_task_impl)
    index_t N, C, H, W, K, OH, OW;
    index_t kblocks, cgroups, rows, total_floats, band_floats, band_width;
    index_t channels, task_kblocks, kgroups;   // a task's channels, its blocks of filters, tasks per channel group
};

// The start of thread t's slot of `floats` floats in a buffer of such slots, rounded up to 64
// bytes (each slot is allocated 16 floats longer for that).
CUNET_INLINE float* aligned_slot(float* buffer, index_t floats, int t) {
    const auto at = reinterpret_cast<std::uintptr_t>(buffer + t * (floats + 16));
    return reinterpret_cast<float*>((at + 63) & ~std::uintptr_t(63));
}

// The bias gradient db[k] = the sum of dy[:, k], added up row by row as the rows of dy are
// copied into a band (so dy is read from memory once, for both gradients): lane-wise over
// whole vectors, the rest one by one, rows in the order n, oy. Only the first group of
// channels' tasks sum it, each for its own filters, so the order never depends on the threads.
template <int L>
struct BiasSum {
    float lanes[L] = {};   // floats, not a vec<L>: a std::vector of these need not be 64-byte aligned
    float rest = 0.0f;
    CUNET_INLINE void add_row(const float* row, index_t OW) {
        vec<L> acc;
        load<L>(acc, lanes);
        index_t ox = 0;
        for (; ox + L <= OW; ox += L) {
            vec<L> v;
            load<L>(v, row + ox);
            acc += v;
        }
        store<L>(lanes, acc);
        for (; ox < OW; ++ox) rest += row[ox];
    }
    CUNET_INLINE float total() const {
        vec<L> acc;
        load<L>(acc, lanes);
        return lane_sum<L>(acc) + rest;
    }
};

// acc[k][s] += d_k * x_s in the lanes that `keep` selects (the partial last step of a row).
template <int KB, int L>
CUNET_INLINE void wgrad_masked_step(vec<L> (&acc)[KB][3], const float* const (&d)[KB], const float* xr,
                                    index_t o, const mask<L>& keep) {
    vec<L> x0, x1, x2;
    load<L>(x0, xr + o);
    load<L>(x1, xr + o + 1);
    load<L>(x2, xr + o + 2);
#pragma GCC unroll 8
    for (int k = 0; k < KB; ++k) {
        vec<L> dv;
        load<L>(dv, d[k] + o);
        keep_in_register<L>(dv);
        acc[k][0] = keep ? acc[k][0] + dv * x0 : acc[k][0];
        acc[k][1] = keep ? acc[k][1] + dv * x1 : acc[k][1];
        acc[k][2] = keep ? acc[k][2] + dv * x2 : acc[k][2];
    }
}

// Prefetches the rows of dy that the next band copy of a weight-gradient task will read, a few
// cache lines at a time while the current band is being used, so the copy finds them in cache
// instead of waiting for memory. The rows are up to KB ranges (one per filter: its rows of the
// band are contiguous in dy). 16 layers of both bases, cunet._host directly, two builds
// alternating (2-core AMD EPYC): 673 -> 655 ms and 660 -> 635 ms.
template <int KB>
struct BandPrefetch {
    const char* start[KB] = {};
    index_t lines = 0, per_range = 0, done = 0, per_call = 1;
    void aim(const WeightGrad& g, index_t n, index_t h0, index_t kb, index_t calls) {
        const index_t k0 = kb * KB, kn = std::min<index_t>(KB, g.K - k0), h1 = std::min(h0 + g.rows, g.OH);
        per_range = ceil_lines((h1 - h0) * g.OW * index_t(sizeof(float)));
        for (index_t k = 0; k < KB; ++k)
            start[k] = k < kn ? reinterpret_cast<const char*>(g.dy + ((n * g.K + k0 + k) * g.OH + h0) * g.OW) : nullptr;
        lines = kn * per_range;
        done = 0;
        per_call = std::max<index_t>(1, (lines + calls - 1) / calls);
    }
    CUNET_INLINE void step() {
        for (index_t i = 0; i < per_call && done < lines; ++i, ++done)
            __builtin_prefetch(start[done / per_range] + (done % per_range) * 64, 0, 2);
    }
    static index_t ceil_lines(index_t bytes) { return (bytes + 63) / 64; }
};

template <int KB, int L>
CUNET_INLINE void wgrad_task_impl(const WeightGrad& g, index_t task) {
    const index_t kg = task % g.kgroups, cg = task / g.kgroups;
    const index_t kb0 = kg * g.task_kblocks, kb1 = std::min(kb0 + g.task_kblocks, g.kblocks);
    const index_t c0 = cg * g.channels, c1 = std::min(c0 + g.channels, g.C);
    const index_t OW = g.OW, out_plane = g.OH * g.OW;
    vec<L> lane;
    for (int l = 0; l < L; ++l) lane[l] = float(l);

    // The task's running totals, lane by lane: [kb - kb0][c - c0][r][k][s][L], in this
    // thread's slot of the buffer the driver allocated once for the op. (Floats, read and
    // written with unaligned vector moves: the slot is not aligned to the vectors' 64 bytes,
    // which GCC's aligned moves would assume.)
    const index_t block_floats = (c1 - c0) * 3 * KB * 3 * L;   // one block of filters' totals
    float* const totals = g.totals + thread_index() * g.total_floats;
    std::fill(totals, totals + (kb1 - kb0) * block_floats, 0.0f);

    // The band of dy is copied onto rows of band_width floats (OW rounded up to a whole
    // vector) starting at a 64-byte boundary, so the 8 loads of dy in each step of the inner
    // loop are aligned: an unaligned 64-byte load spans two cache lines and costs the load
    // port twice, and with 11 loads per 24 FMAs that made the loop wait on loads (~70% of
    // the FMA peak on one core; aligned, see kWgradOutputs). The copy is read 3 x channels
    // of the task (up to 96) times.
    //
    // The blocks of filters are the innermost loop over a band: their x is the same rows of
    // the task's channels, (rows + 2) x W floats each, which stay in L2 from one block to the
    // next, so x comes from memory once per task rather than once per block of filters. (One
    // task per block of filters read x K/8 times: the 64-channel layer at 570^2 moved ~1 GB
    // for 24 GFLOP and ran at 50% of the FMA peak, memory-bound, where the same layer at
    // 130^2, in the L3, ran at 83%.)
    float* const band = aligned_slot(g.dy_bands, g.band_floats, thread_index());
    const bool sums_bias = cg == 0;   // the first group of channels' tasks also sum db of their filters
    std::vector<BiasSum<L>> bias(sums_bias ? size_t((kb1 - kb0) * KB) : 0);
    for (index_t n = 0; n < g.N; ++n) {
        for (index_t h0 = 0; h0 < g.OH; h0 += g.rows) {
            const index_t h1 = std::min(h0 + g.rows, g.OH);
            for (index_t kb = kb0; kb < kb1; ++kb) {
                const index_t k0 = kb * KB, kn = std::min<index_t>(KB, g.K - k0);
                float* const total = totals + (kb - kb0) * block_floats;
                // The next copy: the next block of filters, else the next band, else the next image.
                BandPrefetch<KB> next;
                if (kb + 1 < kb1) next.aim(g, n, h0, kb + 1, (c1 - c0) * 3);
                else if (h0 + g.rows < g.OH) next.aim(g, n, h0 + g.rows, kb0, (c1 - c0) * 3);
                else if (n + 1 < g.N) next.aim(g, n + 1, 0, kb0, (c1 - c0) * 3);
                for (index_t k = 0; k < kn; ++k)
                    for (index_t oy = h0; oy < h1; ++oy) {
                        float* const row = band + (k * g.rows + oy - h0) * g.band_width;
                        std::memcpy(row, g.dy + (n * g.K + k0 + k) * out_plane + oy * OW, size_t(OW) * sizeof(float));
                        if (sums_bias) bias[(kb - kb0) * KB + k].add_row(row, OW);
                    }
                for (index_t c = c0; c < c1; ++c) {
                    // The next channel's rows of x, a few lines per row of this one: each
                    // channel's rows are a new stream, which the hardware prefetchers would
                    // only pick up after its first misses. (Alternating builds, 2-core AMD
                    // EPYC: 16 -> 16 at 570 x 570 5.3 -> 4.3 ms, 32 -> 16 at 392 4.5 -> 4.0;
                    // the wider layers, whose x a task reads for more filters, unchanged.)
                    const char* next_x = c + 1 < c1 ? reinterpret_cast<const char*>(g.x + ((n * g.C + c + 1) * g.H + h0) * g.W)
                                                    : nullptr;
                    const index_t x_lines = BandPrefetch<KB>::ceil_lines((h1 - h0 + 2) * g.W * index_t(sizeof(float)));
                    const index_t x_per_row = (x_lines + 3 * (h1 - h0) - 1) / (3 * (h1 - h0));
                    index_t x_done = 0;
                    for (int r = 0; r < 3; ++r) {
                        next.step();
                        vec<L> acc[KB][3];
#pragma GCC unroll 8
                        for (int k = 0; k < KB; ++k) acc[k][0] = acc[k][1] = acc[k][2] = vec<L>{};
                        for (index_t oy = h0; oy < h1; ++oy) {
                            if (next_x)
                                for (index_t i = 0; i < x_per_row && x_done < x_lines; ++i, ++x_done)
                                    __builtin_prefetch(next_x + x_done * 64, 0, 2);
                            const float* xr = g.x + ((n * g.C + c) * g.H + oy + r) * g.W;
                            const float* d[KB];
#pragma GCC unroll 8
                            for (int k = 0; k < KB; ++k)
                                d[k] = k < kn ? band + (k * g.rows + oy - h0) * g.band_width : g.zeros;
                            index_t ox = 0;
                            for (; ox + L <= OW; ox += L) {
                                vec<L> x0, x1, x2;   // the row of x at taps s = 0, 1, 2
                                load<L>(x0, xr + ox);
                                load<L>(x1, xr + ox + 1);
                                load<L>(x2, xr + ox + 2);
#pragma GCC unroll 8
                                for (int k = 0; k < KB; ++k) {
                                    vec<L> dv;
                                    load<L>(dv, d[k] + ox);
                                    keep_in_register<L>(dv);   // one load, three FMAs
                                    acc[k][0] += dv * x0;
                                    acc[k][1] += dv * x1;
                                    acc[k][2] += dv * x2;
                                }
                            }
                            if (ox == OW) continue;
                            if (OW >= L) {   // the last step, moved back; its first L - (OW - ox) lanes are done
                                const mask<L> keep = lane >= float(L - (OW - ox));
                                wgrad_masked_step<KB, L>(acc, d, xr, OW - L, keep);
                            } else {         // a row narrower than a vector: zero-filled copies
                                alignas(64) float xb[L + 2] = {}, dyb[KB][L] = {};
                                for (index_t j = 0; j < OW + 2; ++j) xb[j] = xr[j];
                                const float* dcopy[KB];
#pragma GCC unroll 8
                                for (int k = 0; k < KB; ++k) {
                                    for (index_t j = 0; j < OW; ++j) dyb[k][j] = d[k][j];
                                    dcopy[k] = dyb[k];
                                }
                                const mask<L> keep = lane < float(OW);   // dy is 0 there too; the mask is what counts
                                wgrad_masked_step<KB, L>(acc, dcopy, xb, 0, keep);
                            }
                        }
                        float* t = total + ((c - c0) * 3 + r) * KB * 3 * L;
#pragma GCC unroll 8
                        for (int k = 0; k < KB; ++k) {
#pragma GCC unroll 3
                            for (int s = 0; s < 3; ++s) add_to<L>(t + (k * 3 + s) * L, acc[k][s]);
                        }
                    }
                }
            }
        }
    }
    for (index_t kb = kb0; kb < kb1; ++kb) {
        const index_t k0 = kb * KB, kn = std::min<index_t>(KB, g.K - k0);
        const float* const total = totals + (kb - kb0) * block_floats;
        for (index_t c = c0; c < c1; ++c)
            for (int r = 0; r < 3; ++r)
                for (index_t k = 0; k < kn; ++k)
                    for (int s = 0; s < 3; ++s) {
                        vec<L> sum;
                        load<L>(sum, total + ((((c - c0) * 3 + r) * KB + k) * 3 + s) * L);
                        g.dw[((k0 + k) * g.C + c) * 9 + r * 3 + s] = lane_sum<L>(sum);
                    }
        if (sums_bias)
            for (index_t k = 0; k < kn; ++k) g.db[k0 + k] = bias[(kb - kb0) * KB + k].total();
    }
}

// One weight-gradient task, in each version (see "SIMD dispatch").
#if CUNET_VERSIONS
CUNET_AVX512 void wgrad_task_avx512(const WeightGrad& g, index_t task) {
    wgrad_task_impl<kGeometry[2].wgrad_filters, kGeometry[2].wgrad_pixels>(g, task);
}
CUNET_AVX2 void wgrad_task_avx2(const WeightGrad& g, index_t task) {
    wgrad_task_impl<kGeometry[1].wgrad_filters, kGeometry[1].wgrad_pixels>(g, task);
}
#endif
void wgrad_task_generic(const WeightGrad& g, index_t task) {
    wgrad_task_impl<kGeometry[0].wgrad_filters, kGeometry[0].wgrad_pixels>(g, task);
}

// --- up-convolution: the weight gradient ---------------------------------------------------------
// dw[c, k, a, e] = sum over n, i, j of x[n, c, i, j] * dy[n, k, 2i+a, 2j+e]: the conv weight
// gradient's scheme with other indices. A tile is CB channels x the 4 taps (a, e) of one
// filter k, 4*CB running sums, each a vector of L lanes (lane l sums the pixels j = l mod
// L). One step loads L pixels of x for each of the CB channels and of dY for each tap, and
// issues 4*CB FMAs (AVX-512: 10 loads, 24 FMAs). dY's rows are dy's rows split into their
// even and odd columns: a band of them per filter (4 taps x rows x W, in L1) is made once
// and read by every group of CB channels of the task. No tap crosses a pixel's neighbour
// here, so a band's rows run on as one span of rows x W pixels, in x as in dY: the steps
// never stop at the end of a row (28-pixel rows would be a step and a masked step each).
//
// A task owns a group of channels and a group of filters and alone writes their dw: it walks
// the images in bands of input rows, and each band filter by filter, adding each tile's sums
// to its lane-wise totals; the lanes are summed at the end. So, like the conv weight
// gradient, dw and db are the same bits with any number of threads (and may differ in the
// last bits between versions of different vector widths).
struct UpconvGrad {
    const float* x;   // [N, C, H, W]
    const float* dy;  // [N, K, 2H, 2W]
    float* dw;        // [C, K, 2, 2]
    float* db;        // [K]
    const float* zeros;  // rows x W zeros: x for the padding channels of a partial tile
    float* totals;       // per thread, total_floats: [filter - k0][channel - c0][tap][L]
    float* bands;        // per thread, band_floats: [tap][band_width], a band's rows one after another
    index_t N, C, H, W, K;
    index_t channels, cgroups, task_k, kgroups, rows, band_width, total_floats, band_floats;
};

template <int CB, int L>
CUNET_INLINE void upconv_grad_step(vec<L> (&acc)[CB][4], const float* const (&xr)[CB], const float* const (&d)[4],
                                   index_t j, const mask<L>* keep) {
    vec<L> xv[CB];
#pragma GCC unroll 8
    for (int c = 0; c < CB; ++c) load<L>(xv[c], xr[c] + j);
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) {
        vec<L> dv;
        load<L>(dv, d[t] + j);
        keep_in_register<L>(dv);   // one load, CB FMAs
#pragma GCC unroll 8
        for (int c = 0; c < CB; ++c) acc[c][t] = keep ? (*keep ? acc[c][t] + xv[c] * dv : acc[c][t]) : acc[c][t] + xv[c] * dv;
    }
}

template <int CB, int L>
CUNET_INLINE void upconv_grad_task_impl(const UpconvGrad& g, index_t task) {
    const index_t kg = task % g.kgroups, cg = task / g.kgroups;
    const index_t k0 = kg * g.task_k, k1 = std::min(k0 + g.task_k, g.K);
    const index_t c0 = cg * g.channels, c1 = std::min(c0 + g.channels, g.C), nc = c1 - c0;
    const index_t W = g.W, H = g.H;
    vec<L> lane;
    for (int l = 0; l < L; ++l) lane[l] = float(l);
    float* const totals = g.totals + thread_index() * g.total_floats;
    std::fill(totals, totals + (k1 - k0) * nc * 4 * L, 0.0f);
    float* const band = aligned_slot(g.bands, g.band_floats, thread_index());
    const bool sums_bias = cg == 0;   // the first group of channels' tasks also sum db of their filters
    std::vector<BiasSum<L>> bias(sums_bias ? size_t(k1 - k0) : 0);
    for (index_t n = 0; n < g.N; ++n) {
        for (index_t i0 = 0; i0 < H; i0 += g.rows) {
            const index_t i1 = std::min(i0 + g.rows, H);
            for (index_t k = k0; k < k1; ++k) {
                for (index_t i = i0; i < i1; ++i)
                    for (int a = 0; a < 2; ++a) {
                        const float* src = g.dy + ((n * g.K + k) * 2 * H + 2 * i + a) * 2 * W;
                        if (sums_bias) bias[size_t(k - k0)].add_row(src, 2 * W);
                        float* even = band + (2 * a) * g.band_width + (i - i0) * W;
                        float* odd = band + (2 * a + 1) * g.band_width + (i - i0) * W;
                        for (index_t j = 0; j < W; ++j) {
                            even[j] = src[2 * j];
                            odd[j] = src[2 * j + 1];
                        }
                    }
                for (index_t cs = c0; cs < c1; cs += CB) {
                    const index_t cn = std::min<index_t>(CB, c1 - cs);
                    vec<L> acc[CB][4];
#pragma GCC unroll 8
                    for (int c = 0; c < CB; ++c) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = vec<L>{};
                    const index_t span = (i1 - i0) * W;
                    const float* xr[CB];
#pragma GCC unroll 8
                    for (int c = 0; c < CB; ++c) xr[c] = c < cn ? g.x + ((n * g.C + cs + c) * H + i0) * W : g.zeros;
                    const float* d[4];
#pragma GCC unroll 4
                    for (int t = 0; t < 4; ++t) d[t] = band + t * g.band_width;
                    index_t j = 0;
                    for (; j + L <= span; j += L) upconv_grad_step<CB, L>(acc, xr, d, j, nullptr);
                    if (j < span && span >= L) {   // the last step moved back; its first L - (span - j) lanes are done
                        const mask<L> keep = lane >= float(L - (span - j));
                        upconv_grad_step<CB, L>(acc, xr, d, span - L, &keep);
                    } else if (j < span) {         // a span shorter than a vector: zero-filled copies
                        alignas(64) float xb[CB][L] = {}, db[4][L] = {};
                        const float* xc[CB];
                        const float* dc[4];
                        for (int c = 0; c < CB; ++c) {
                            for (index_t jj = 0; jj < span; ++jj) xb[c][jj] = xr[c][jj];
                            xc[c] = xb[c];
                        }
                        for (int t = 0; t < 4; ++t) {
                            for (index_t jj = 0; jj < span; ++jj) db[t][jj] = d[t][jj];
                            dc[t] = db[t];
                        }
                        const mask<L> keep = lane < float(span);
                        upconv_grad_step<CB, L>(acc, xc, dc, 0, &keep);
                    }
                    float* t0 = totals + ((k - k0) * nc + cs - c0) * 4 * L;
                    for (index_t c = 0; c < cn; ++c)
#pragma GCC unroll 4
                        for (int t = 0; t < 4; ++t) add_to<L>(t0 + (c * 4 + t) * L, acc[c][t]);
                }
            }
        }
    }
    for (index_t k = k0; k < k1; ++k) {
        for (index_t c = c0; c < c1; ++c)
            for (int t = 0; t < 4; ++t) {
                vec<L> sum;
                load<L>(sum, totals + (((k - k0) * nc + c - c0) * 4 + t) * L);
                g.dw[(c * g.K + k) * 4 + t] = lane_sum<L>(sum);
            }
        if (sums_bias) g.db[k] = bias[size_t(k - k0)].total();
    }
}

#if CUNET_VERSIONS
CUNET_AVX512 void upconv_grad_task_avx512(const UpconvGrad& g, index_t task) {
    upconv_grad_task_impl<kGeometry[2].upconv_grad_channels, kGeometry[2].wgrad_pixels>(g, task);
}
CUNET_AVX2 void upconv_grad_task_avx2(const UpconvGrad& g, index_t task) {
    upconv_grad_task_impl<kGeometry[1].upconv_grad_channels, kGeometry[1].wgrad_pixels>(g, task);
}
#endif
void upconv_grad_task_generic(const UpconvGrad& g, index_t task) {
    upconv_grad_task_impl<kGeometry[0].upconv_grad_channels, kGeometry[0].wgrad_pixels>(g, task);
}

// --- the FMA peak ---------------------------------------------------------------------------------
// What the FMA units can do when nothing else limits them, the ceiling the convolutions are
// measured against (benchmarks/conv2d_cpu.py): A independent accumulators, each one FMA per
// iteration, no loads or stores. A is the number of chains that hides the FMA latency on
// both units with registers to spare (2 units x 4 cycles = 8; more do no harm): 24 of
// AVX-512's 32 registers, 12 of AVX2's 16. (BLAS's sgemm is no such ceiling: on the 2-core
// AMD EPYC NumPy's OpenBLAS and PyTorch reach 200-240 GFLOP/s, under half of this.)
// Returns the floating-point operations done (2 per lane per FMA; the generic x86-64
// version has no FMA instruction and issues a multiply and an add).
template <int L, int A>
CUNET_INLINE double fma_loop_impl(index_t iterations, float scale) {
    vec<L> acc[A];
    const vec<L> m = vec<L>{} + scale, c = vec<L>{} + (1.0f - scale);  // scale = 1: acc stays finite
#pragma GCC unroll 24
    for (int a = 0; a < A; ++a) acc[a] = vec<L>{} + float(a);
    for (index_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 24
        for (int a = 0; a < A; ++a) acc[a] = acc[a] * m + c;
    }
    vec<L> sum{};
#pragma GCC unroll 24
    for (int a = 0; a < A; ++a) sum += acc[a];
    volatile float sink = lane_sum<L>(sum);   // the result is used: the loop cannot be dropped
    (void)sink;
    return 2.0 * A * L * double(iterations);
}

#if CUNET_VERSIONS
CUNET_AVX512 double fma_loop_avx512(index_t iterations, float scale) {
    return fma_loop_impl<16, 24>(iterations, scale);
}
CUNET_AVX2 double fma_loop_avx2(index_t iterations, float scale) { return fma_loop_impl<8, 12>(iterations, scale); }
#endif
double fma_loop_generic(index_t iterations, float scale) { return fma_loop_impl<4, 12>(iterations, scale); }

// --- the versions' table ---------------------------------------------------------------------------
struct Version {
    Isa isa;
    Geometry geometry;
    void (*forward_task)(const Forward&, index_t, const float*, index_t);
    void (*wgrad_task)(const WeightGrad&, index_t);
    double (*fma_loop)(index_t iterations, float scale);
    void (*upconv_forward_task)(const Upconv&, index_t, const float*);
    void (*upconv_input_task)(const Upconv&, index_t, const float*, float*, bool);
    void (*upconv_grad_task)(const UpconvGrad&, index_t);
    void (*winograd_product_task)(const Winograd&, index_t);
    void (*winograd_grad_task)(const WinogradGrad&, index_t);
};

namespace {

Version version_of(Isa isa) {
#if CUNET_VERSIONS
    if (isa == Isa::avx512)
        return {isa, kGeometry[2], forward_task_avx512, wgrad_task_avx512, fma_loop_avx512, upconv_forward_task_avx512,
                upconv_input_task_avx512, upconv_grad_task_avx512, winograd_product_task_avx512,
                winograd_grad_task_avx512};
    if (isa == Isa::avx2)
        return {isa, kGeometry[1], forward_task_avx2, wgrad_task_avx2, fma_loop_avx2, upconv_forward_task_avx2,
                upconv_input_task_avx2, upconv_grad_task_avx2, winograd_product_task_avx2,
                winograd_grad_task_avx2};
#endif
    return {Isa::generic, kGeometry[0], forward_task_generic, wgrad_task_generic, fma_loop_generic,
            upconv_forward_task_generic, upconv_input_task_generic, upconv_grad_task_generic,
            winograd_product_task_generic, winograd_grad_task_generic};
}

// The version the ops run: -1 until the first call picks the best one (isa_by_cpu_features).
std::atomic<int> g_isa{-1};

// The version an op runs, read once per op: its tile and its kernels belong together.
Version current_version() { return version_of(cpu_isa()); }

}  // namespace

// --- drivers: tasks on OpenMP threads ------------------------------------------------------------
namespace {

index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

// Runs body(task) for task in [0, tasks): in parallel (static schedule: each thread a
// contiguous range of tasks) when the op has at least kParallelMinMacs multiply-adds.
template <typename Body>
void run_tasks(index_t tasks, index_t macs, Body body) {
    const bool parallel = macs >= kParallelMinMacs && tasks > 1;
#pragma omp parallel if (parallel)
    {
#ifdef _OPENMP
#pragma omp master
        if (omp_get_num_threads() > g_last_team.load()) g_last_team.store(omp_get_num_threads());
#endif
#pragma omp for schedule(static)
        for (index_t t = 0; t < tasks; ++t) body(t);
    }
}

// The filters in the layout the forward tile reads: [kblock][c][tap][KB], each tap's KB
// weights adjacent (one cache line feeds a tile's broadcasts), padded with zero filters up
// to a whole block. get(k, c, t) is filter k's weight for input channel c, tap t = r*3 + s.
index_t packed_floats(int KB, index_t K, index_t C) { return ceil_div(K, KB) * C * 9 * KB; }

template <typename Get>
void pack_filters(float* packed, int KB, index_t K, index_t C, Get get) {   // packed: zero-filled
    for (index_t k = 0; k < K; ++k)
        for (index_t c = 0; c < C; ++c)
            for (int t = 0; t < 9; ++t) packed[(((k / KB) * C + c) * 9 + t) * KB + k % KB] = get(k, c, t);
}

// The forward's tasks over an input of N x C x H x W; `packed` must be packed for v's tile
// (pack_filters with v.geometry.forward_filters).
Forward forward_plan(const Version& v, const float* packed, const float* b, float* y, index_t N, index_t C,
                     index_t H, index_t W, index_t K, bool relu) {
    const index_t KB = v.geometry.forward_filters, OH = H - 2, OW = W - 2;
    Forward f{packed, b, y, N, C, H, W, K, OH, OW, relu, ceil_div(K, KB), 0, 0, false};
    // As many groups as kTaskOutputs asks for, of equal rows: OpenMP's static schedule gives
    // each thread the same number of tasks, which must then be the same work. (Groups of
    // kTaskOutputs / W rows and a short last one, 37 + 17 rows at 54 x 56, gave one thread
    // twice the other's work: the deep layers ran at 60% of the FMA peak where their
    // neighbours ran at 85%.)
    f.groups = ceil_div(OH, std::max<index_t>(1, std::min(OH, ceil_div(kTaskOutputs, W))));
    f.rows = ceil_div(OH, f.groups);
    return f;
}

// The up-convolution's tasks over N images of H x W input pixels: `rows_out` product rows in
// blocks of KB, a sum over M; groups of equal input rows, ~kTaskOutputs pixels each.
Upconv upconv_plan(const Version& v, const float* packed, const float* b, float* out, index_t N, index_t M,
                   index_t H, index_t W, index_t rows_out) {
    Upconv u{packed, b, out, N, M, H, W, rows_out, ceil_div(rows_out, v.geometry.forward_filters), 0, 0};
    u.groups = ceil_div(H, std::max<index_t>(1, std::min(H, ceil_div(kTaskOutputs, W))));
    u.rows = ceil_div(H, u.groups);
    return u;
}

index_t upconv_tasks(const Upconv& u) { return u.N * u.groups * u.blocks; }
index_t upconv_macs(const Upconv& u) { return u.N * u.H * u.W * u.M * u.rows_out; }

index_t forward_tasks(const Forward& f) { return f.N * f.groups * f.kblocks; }
index_t forward_macs(const Forward& f) { return f.N * f.K * f.C * 9 * f.OH * f.OW; }

// Rows oy0 .. oy0 + rows - 1 of every channel of dy zero-padded by 2 on every side (the
// backward input's input, H = OH + 4 rows of W = OW + 4), written into band [K][rows][W].
// Rows past the padded image (the last group's band) are zeros, never read.
void pad_band(const float* dy_image, index_t K, index_t OH, index_t OW, index_t oy0, index_t rows, float* band) {
    const index_t W = OW + 4;
    for (index_t k = 0; k < K; ++k) {
        for (index_t i = 0; i < rows; ++i) {
            float* row = band + (k * rows + i) * W;
            const index_t src = oy0 + i - 2;   // padded row oy0 + i is dy row oy0 + i - 2
            if (src < 0 || src >= OH) {
                std::fill(row, row + W, 0.0f);
                continue;
            }
            row[0] = row[1] = 0.0f;
            std::memcpy(row + 2, dy_image + (k * OH + src) * OW, size_t(OW) * sizeof(float));
            row[OW + 2] = row[OW + 3] = 0.0f;
        }
    }
}

// --- Winograd F(4x4, 3x3): the transforms and the chunks (see "Winograd F(4x4, 3x3)") ------------
// Each 2-D transform is a 1-D one applied to the columns of a block, then to its rows. The
// comments count the roundings on the longest path from an input to an output (products by
// 2, 4 and 8 are exact; by 1/6, 1/12 and 1/24 two: the constant's and the product's), which
// tests/test_conv2d.py's error bound adds up.

// G applied to a column (a, b, c) of a filter: 6 values, out[i * step]. Four roundings.
CUNET_INLINE void times_G(float a, float b, float c, float* out, int step) {
    const float ac = a + c, a4c = a + 4.0f * c;
    out[0] = a * 0.25f;
    out[step] = (ac + b) * (-1.0f / 6);
    out[2 * step] = (ac - b) * (-1.0f / 6);
    out[3 * step] = (a4c + 2.0f * b) * (1.0f / 24);
    out[4 * step] = (a4c - 2.0f * b) * (1.0f / 24);
    out[5 * step] = c;
}

// B^T applied to six values of the input: only the entries of B^T that are not zero are
// read (so a NaN reaches exactly what B^T says). Two roundings.
CUNET_INLINE void times_B_T(const float (&d)[6], float (&o)[6]) {
    o[0] = (4.0f * d[0] + d[4]) - 5.0f * d[2];
    o[1] = (d[3] + d[4]) - 4.0f * (d[1] + d[2]);
    o[2] = (d[4] - d[3]) + 4.0f * (d[1] - d[2]);
    o[3] = (d[4] - d[2]) + 2.0f * (d[3] - d[1]);
    o[4] = (d[4] - d[2]) - 2.0f * (d[3] - d[1]);
    o[5] = (4.0f * d[1] + d[5]) - 5.0f * d[3];
}

// A^T applied to six products: 4 outputs. Three roundings.
CUNET_INLINE void times_A_T(const float (&m)[6], float (&y)[4]) {
    const float s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
    y[0] = (m[0] + s12) + s34;
    y[1] = d12 + 2.0f * d34;
    y[2] = s12 + 4.0f * s34;
    y[3] = (d12 + 8.0f * d34) + m[5];
}

// A (6x4, the transpose of A^T) applied to four values of dy: 6 values. Two roundings.
CUNET_INLINE void times_A(const float (&a)[4], float (&d)[6]) {
    const float even = a[0] + a[2], odd = a[1] + a[3], even4 = a[0] + 4.0f * a[2], odd4 = a[1] + 4.0f * a[3];
    d[0] = a[0];
    d[1] = even + odd;
    d[2] = even - odd;
    d[3] = even4 + 2.0f * odd4;
    d[4] = even4 - 2.0f * odd4;
    d[5] = a[3];
}

// G^T (3x6) applied to six sums of the weight gradient: 3 values, out[i * step]. Five roundings.
CUNET_INLINE void times_G_T(const float (&x)[6], float* out, int step) {
    const float s12 = x[1] + x[2], s34 = x[3] + x[4];
    out[0] = x[0] * 0.25f + (s34 * (1.0f / 24) - s12 * (1.0f / 6));
    out[step] = (x[2] - x[1]) * (1.0f / 6) + (x[3] - x[4]) * (1.0f / 12);
    out[2 * step] = (s34 - s12) * (1.0f / 6) + x[5];
}

// U[e][kb][c][k % KB] = (G g G^T)[e] for g = get(k, c, tap) and every filter k < K.
index_t winograd_filter_stride(int KB, index_t K, index_t C) { return winograd_stride(ceil_div(K, KB) * KB * C); }

template <typename Get>
void winograd_filters(float* u, int KB, index_t K, index_t C, Get get) {   // u: 36 x winograd_filter_stride
    const index_t kblocks = ceil_div(K, KB), u_stride = winograd_filter_stride(KB, K, C);
    run_tasks(kblocks, K * C * kElements, [&](index_t kb) {   // a block's 36 x C x KB values, written line by line
        for (index_t c = 0; c < C; ++c)
            for (index_t k = kb * KB; k < std::min<index_t>(K, (kb + 1) * KB); ++k) {
                float gg[6][3], t[kElements];
                for (int s = 0; s < 3; ++s) times_G(get(k, c, s), get(k, c, 3 + s), get(k, c, 6 + s), &gg[0][s], 3);
                for (int r = 0; r < 6; ++r) times_G(gg[r][0], gg[r][1], gg[r][2], t + 6 * r, 1);
                for (int e = 0; e < kElements; ++e) u[e * u_stride + (kb * C + c) * KB + k % KB] = t[e];
            }
        if (kb == kblocks - 1 && K % KB)   // zero filters pad the last block
            for (int e = 0; e < kElements; ++e)
                for (index_t c = 0; c < C; ++c) {
                    float* row = u + e * u_stride + ((kblocks - 1) * C + c) * KB;
                    std::fill(row + K % KB, row + KB, 0.0f);
                }
    });
}

// V = B^T d B for the 6x6 block d of channel c at tile (i, j) of one image (rows 4i .. 4i+5,
// columns 4j .. 4j+5; zero past the image's edge). Element e = 6u + v written to
// v[e * e_stride] (winograd_input_chunk picks v).
CUNET_INLINE void winograd_input_tile(const float* xc, index_t H, index_t W, index_t i, index_t j, float* v,
                                      index_t e_stride) {
    const index_t y0 = kTile * i, x0 = kTile * j;
    float d[6][6];
    if (y0 + 5 < H && x0 + 5 < W) {
        for (int r = 0; r < 6; ++r)
            for (int s = 0; s < 6; ++s) d[r][s] = xc[(y0 + r) * W + x0 + s];
    } else {
        for (int r = 0; r < 6; ++r)
            for (int s = 0; s < 6; ++s) d[r][s] = y0 + r < H && x0 + s < W ? xc[(y0 + r) * W + x0 + s] : 0.0f;
    }
    float a[6][6];   // B^T d, a column at a time
    for (int s = 0; s < 6; ++s) {
        const float column[6] = {d[0][s], d[1][s], d[2][s], d[3][s], d[4][s], d[5][s]};
        float out[6];
        times_B_T(column, out);
        for (int u = 0; u < 6; ++u) a[u][s] = out[u];
    }
    for (int u = 0; u < 6; ++u) {   // (B^T d) B, a row at a time
        float out[6];
        times_B_T(a[u], out);
        for (int w = 0; w < 6; ++w) v[(6 * u + w) * e_stride] = out[w];
    }
}

// y[4i + p][4j + q] = (A^T M A)[p][q] + bias (ReLU if relu) for the 36 products of one filter
// and tile, m[e * e_stride]. Outputs past the edge are dropped.
template <bool Relu>
CUNET_INLINE void winograd_output_tile(const float* m, index_t e_stride, float bias, float* yk, index_t OH, index_t OW,
                                       index_t i, index_t j) {
    float z[4][6];   // A^T M, a column at a time
    for (int w = 0; w < 6; ++w) {
        float column[6], out[4];
        for (int u = 0; u < 6; ++u) column[u] = m[(6 * u + w) * e_stride];
        times_A_T(column, out);
        for (int p = 0; p < 4; ++p) z[p][w] = out[p];
    }
    const index_t y0 = kTile * i, x0 = kTile * j;
    float* const y = yk + y0 * OW + x0;
    for (int p = 0; p < 4 && y0 + p < OH; ++p) {   // (A^T M) A, a row at a time; rows past the edge dropped
        float row[4];
        times_A_T(z[p], row);
        // A row of outputs as one small vector, so the ReLU is a select (NaN -> 0, as relu1),
        // not a branch per value: with scalars GCC branched, and a random half of the branches
        // mispredicted (F(2x2), the 256-channel layer at 102 x 102: 20 ms without the ReLU, 30 with it).
        vec<4> out = {row[0], row[1], row[2], row[3]};
        out += bias;
        if (Relu) out = out > 0.0f ? out : vec<4>{};
        if (x0 + 3 < OW) {
            store<4>(y + p * OW, out);
        } else {
            for (int q = 0; q < 4 && x0 + q < OW; ++q) y[p * OW + q] = out[q];   // the last columns: what lies inside
        }
    }
}

// V for tile rows row0 .. row0 + rows - 1 of an image x [C, H, W] (tile t counted along the
// rows), a task per channel, in one of two layouts of blocks of L:
//   by tiles (the forward's product):           v[e * v_stride + ((t / L) * C + c) * L + t % L],
//                                                the last block's padding tiles zero;
//   by channels (the weight gradient's, T tiles): v[e * v_stride + ((c / L) * T + t) * L + c % L].
void winograd_input_chunk(const float* x, index_t C, index_t H, index_t W, index_t row0, index_t rows, index_t L,
                          bool by_tiles, float* v, index_t v_stride) {
    const index_t tiles_per_row = ceil_div(W - 2, kTile), tiles = rows * tiles_per_row, tblocks = ceil_div(tiles, L);
    run_tasks(C, C * tiles * kElements, [&](index_t c) {
        const float* xc = x + c * H * W;
        if (!by_tiles) {
            float* vc = v + (c / L) * tiles * L + c % L;
            for (index_t i = row0, t = 0; i < row0 + rows; ++i)
                for (index_t j = 0; j < tiles_per_row; ++j, ++t) winograd_input_tile(xc, H, W, i, j, vc + t * L, v_stride);
            return;
        }
        for (index_t e = 0; e < kElements; ++e) {
            float* last = v + e * v_stride + ((tblocks - 1) * C + c) * L;
            std::fill(last + tiles % L, last + (tiles % L ? L : 0), 0.0f);
        }
        index_t block = 0, lane = 0;
        for (index_t i = row0; i < row0 + rows; ++i)
            for (index_t j = 0; j < tiles_per_row; ++j) {
                winograd_input_tile(xc, H, W, i, j, v + (block * C + c) * L + lane, v_stride);
                if (++lane == L) lane = 0, ++block;
            }
    });
}

// Tile rows per chunk: the chunk's V and M (36 (C + K) floats a tile) within
// kWinogradChunkBytes, at least one block of tiles.
index_t winograd_chunk_rows(index_t C, index_t K, index_t tiles_per_row, index_t tile_rows, int L) {
    const index_t tiles =
        std::max<index_t>(L, g_winograd_chunk_bytes.load() / (kElements * (C + K) * index_t(sizeof(float))));
    return std::max<index_t>(1, std::min(tile_rows, tiles / tiles_per_row));
}

// The Winograd forward over x [N, C, H, W] with filters already transformed into u.
void winograd_run(const Version& v, const float* x, const float* u, const float* b, float* y, index_t N, index_t C,
                  index_t H, index_t W, index_t K, bool relu) {
    const int KB = v.geometry.forward_filters, L = v.geometry.forward_pixels;
    const index_t OH = H - 2, OW = W - 2, tile_rows = ceil_div(OH, kTile), tiles_per_row = ceil_div(OW, kTile);
    const index_t chunk_rows = winograd_chunk_rows(C, K, tiles_per_row, tile_rows, L);
    const index_t max_tblocks = ceil_div(chunk_rows * tiles_per_row, L);
    const index_t v_stride = winograd_stride(max_tblocks * C * L), m_stride = winograd_stride(K * max_tblocks * L);
    const Scratch vbuf(kElements * v_stride, /*zero=*/false), mbuf(kElements * m_stride, /*zero=*/false);
    const index_t group = std::max<index_t>(1, kWinogradGroupBytes / (C * L * index_t(sizeof(float))));
    for (index_t n = 0; n < N; ++n)
        for (index_t row0 = 0; row0 < tile_rows; row0 += chunk_rows) {
            const index_t rows = std::min(chunk_rows, tile_rows - row0), tiles = rows * tiles_per_row;
            const index_t tblocks = ceil_div(tiles, L), T = tblocks * L;
            const Winograd w{u, vbuf.data(), mbuf.data(), C, K, ceil_div(K, KB), tblocks, group, ceil_div(tblocks, group),
                             winograd_filter_stride(KB, K, C), v_stride, m_stride};
            winograd_input_chunk(x + n * C * H * W, C, H, W, row0, rows, L, true, vbuf.data(), v_stride);
            run_tasks(kElements * w.groups, kElements * K * C * T, [&](index_t task) { v.winograd_product_task(w, task); });
            run_tasks(K, K * tiles * kElements, [&](index_t k) {
                float* yk = y + (n * K + k) * OH * OW;
                const float* mk = mbuf.data() + k * T;
                index_t t = 0;
                for (index_t i = row0; i < row0 + rows; ++i)
                    for (index_t j = 0; j < tiles_per_row; ++j, ++t) {
                        if (relu) winograd_output_tile<true>(mk + t, m_stride, b[k], yk, OH, OW, i, j);
                        else winograd_output_tile<false>(mk + t, m_stride, b[k], yk, OH, OW, i, j);
                    }
            });
        }
}

// D = A dY A^T for the 4x4 block of dy_k at tile (i, j) (zero past dy's edge). Written to d[e * e_stride].
CUNET_INLINE void winograd_gradient_tile(const float* dyk, index_t OH, index_t OW, index_t i, index_t j, float* d,
                                         index_t e_stride) {
    const index_t y0 = kTile * i, x0 = kTile * j;
    float a[6][4];   // A dY, a column at a time
    for (int s = 0; s < 4; ++s) {
        float column[4], out[6];
        for (int r = 0; r < 4; ++r) column[r] = y0 + r < OH && x0 + s < OW ? dyk[(y0 + r) * OW + x0 + s] : 0.0f;
        times_A(column, out);
        for (int u = 0; u < 6; ++u) a[u][s] = out[u];
    }
    for (int u = 0; u < 6; ++u) {   // (A dY) A^T, a row at a time
        float out[6];
        times_A(a[u], out);
        for (int w = 0; w < 6; ++w) d[(6 * u + w) * e_stride] = out[w];
    }
}

// dw[k, c] = G^T X[:, k, c] G (X[6u + v] a 6x6 matrix).
void winograd_filter_gradient(const float* x, index_t x_stride, float* dw, index_t K, index_t C) {
    run_tasks(K, K * C * kElements, [&](index_t k) {
        for (index_t c = 0; c < C; ++c) {
            float s[3][6];   // G^T X, a column at a time
            for (int w = 0; w < 6; ++w) {
                float column[6];
                for (int u = 0; u < 6; ++u) column[u] = x[(6 * u + w) * x_stride + k * C + c];
                times_G_T(column, &s[0][w], 6);
            }
            for (int r = 0; r < 3; ++r) times_G_T(s[r], dw + (k * C + c) * 9 + 3 * r, 1);   // (G^T X) G
        }
    });
}

// The Winograd weight gradient: chunks of tile rows as the forward's, each adding its sums into X.
void winograd_gradient_run(const Version& v, const float* x, const float* dy, float* dw, float* db, index_t N,
                           index_t C, index_t H, index_t W, index_t K) {
    constexpr int kBiasLanes = 16;
    const int KB = v.geometry.forward_filters, L = v.geometry.forward_pixels;
    const index_t OH = H - 2, OW = W - 2, tile_rows = ceil_div(OH, kTile), tiles_per_row = ceil_div(OW, kTile);
    const index_t chunk_rows = winograd_chunk_rows(C, K, tiles_per_row, tile_rows, L);
    const index_t max_T = chunk_rows * tiles_per_row, kblocks = ceil_div(K, KB), cblocks = ceil_div(C, L);
    const index_t v_stride = winograd_stride(cblocks * L * max_T), d_stride = winograd_stride(kblocks * KB * max_T);
    const index_t x_stride = winograd_stride(K * C);
    // V's channels past C and D's filters past K hold zeros or an earlier chunk's values:
    // their sums are computed but never added into X
    const Scratch vbuf(kElements * v_stride), dbuf(kElements * d_stride), xbuf(kElements * x_stride);
    std::vector<BiasSum<kBiasLanes>> bias(static_cast<size_t>(K));
    for (index_t n = 0; n < N; ++n)
        for (index_t row0 = 0; row0 < tile_rows; row0 += chunk_rows) {
            const index_t rows = std::min(chunk_rows, tile_rows - row0), T = rows * tiles_per_row;
            winograd_input_chunk(x + n * C * H * W, C, H, W, row0, rows, L, false, vbuf.data(), v_stride);
            run_tasks(K, K * T * kElements, [&](index_t k) {   // D; and db's rows
                const float* dyk = dy + (n * K + k) * OH * OW;
                float* dk = dbuf.data() + (k / KB) * T * KB + k % KB;
                for (index_t i = row0, t = 0; i < row0 + rows; ++i)
                    for (index_t j = 0; j < tiles_per_row; ++j, ++t)
                        winograd_gradient_tile(dyk, OH, OW, i, j, dk + t * KB, d_stride);
                for (index_t oy = kTile * row0; oy < std::min(kTile * (row0 + rows), OH); ++oy)
                    bias[size_t(k)].add_row(dyk + oy * OW, OW);
            });
            const WinogradGrad g{vbuf.data(), dbuf.data(), xbuf.data(), C, K, T, kblocks, cblocks,
                                 v_stride, d_stride, x_stride};
            run_tasks(kElements * cblocks, kElements * K * C * T, [&](index_t task) { v.winograd_grad_task(g, task); });
        }
    winograd_filter_gradient(xbuf.data(), x_stride, dw, K, C);
    for (index_t k = 0; k < K; ++k) db[k] = bias[size_t(k)].total();
}

}  // namespace

// --- the public functions ---------------------------------------------------------------------------
Isa cpu_isa() {
    int isa = g_isa.load();
    if (isa < 0) {
        isa = int(isa_by_cpu_features());
        g_isa.store(isa);
    }
    return Isa(isa);
}

bool cpu_supports(Isa isa) {
#if CUNET_VERSIONS
    __builtin_cpu_init();
    if (isa == Isa::avx512) return __builtin_cpu_supports("avx512f");
    if (isa == Isa::avx2) return __builtin_cpu_supports("x86-64-v3");
#endif
    return isa == Isa::generic;
}

bool set_isa(Isa isa) {
    if (!cpu_supports(isa)) return false;
    g_isa.store(int(isa));
    return true;
}

Isa isa_by_cpu_features() {
    // The best first (what target_clones' resolver would pick, in its order).
    for (Isa isa : {Isa::avx512, Isa::avx2})
        if (cpu_supports(isa)) return isa;
    return Isa::generic;
}

const char* isa_name(Isa isa) {
    switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
    }
}

Geometry geometry(Isa isa) { return kGeometry[int(isa)]; }

void conv3x3_forward(const float* x, const float* w, const float* b, float* y, index_t N, index_t C, index_t H,
                     index_t W, index_t K, bool relu, bool winograd) {
    begin_op();
    const Version v = current_version();
    const int KB = v.geometry.forward_filters;
    if (winograd) {
        const Scratch u(kElements * winograd_filter_stride(KB, K, C), /*zero=*/false);
        winograd_filters(u.data(), KB, K, C, [&](index_t k, index_t c, int t) { return w[(k * C + c) * 9 + t]; });
        winograd_run(v, x, u.data(), b, y, N, C, H, W, K, relu);
        return;
    }
    Scratch packed(packed_floats(KB, K, C));
    pack_filters(packed.data(), KB, K, C, [&](index_t k, index_t c, int t) { return w[(k * C + c) * 9 + t]; });
    Forward f = forward_plan(v, packed.data(), b, y, N, C, H, W, K, relu);
    f.prefetch = true;
    run_tasks(forward_tasks(f), forward_macs(f), [&](index_t task) {
        const ForwardTask t = forward_task_of(f, task);
        v.forward_task(f, task, x + (t.n * C * H + t.oy0) * W, H * W);
    });
}

// The backward input is a forward: dx = dy, zero-padded by 2 on every side, correlated with
// the filters flipped (tap t -> 8 - t) and transposed (K <-> C):
//   dx[n, c, i, j] = sum_{k, r, s} dy[n, k, i - r, j - s] * w[k, c, r, s]   (dy = 0 outside)
// so it runs on the forward's tiles, threads and summation order (over k, then the taps).
// The padded dy is never built whole (N*K*(OH+4)*(OW+4) floats, which would also be fresh
// memory, page-faulted in, on every call): each thread pads the rows its task reads into a
// band of its own (K x (rows + 2) x (OW + 4)) and keeps it for its next task if that one
// reads the same rows (consecutive tasks differ only in their block of filters).
void conv3x3_backward_input(const float* dy, const float* w, float* dx, index_t N, index_t K, index_t OH,
                            index_t OW, index_t C, bool winograd) {
    begin_op();
    const Version v = current_version();
    const int KB = v.geometry.forward_filters;
    if (winograd) {   // the same forward, on dy padded whole (the bottom layers' dy is small)
        const Scratch u(kElements * winograd_filter_stride(KB, C, K), false), zero_bias(C), padded(N * K * (OH + 4) * (OW + 4), false);
        winograd_filters(u.data(), KB, C, K, [&](index_t c, index_t k, int t) { return w[(k * C + c) * 9 + 8 - t]; });
        run_tasks(N, N * K * (OH + 4) * (OW + 4), [&](index_t n) {
            pad_band(dy + n * K * OH * OW, K, OH, OW, 0, OH + 4, padded.data() + n * K * (OH + 4) * (OW + 4));
        });
        winograd_run(v, padded.data(), u.data(), zero_bias.data(), dx, N, K, OH + 4, OW + 4, C, false);
        return;
    }
    Scratch packed(packed_floats(KB, C, K));
    pack_filters(packed.data(), KB, C, K, [&](index_t c, index_t k, int t) { return w[(k * C + c) * 9 + 8 - t]; });
    const Scratch zero_bias(C);
    const index_t H = OH + 4, W = OW + 4;
    const Forward f = forward_plan(v, packed.data(), zero_bias.data(), dx, N, K, H, W, C, false);
    const index_t band_rows = f.rows + 2, band_floats = K * band_rows * W;
    const Scratch bands(index_t(max_threads()) * band_floats, /*zero=*/false);   // pad_band writes each whole
    std::vector<index_t> band_holds(size_t(max_threads()), -1);                 // per thread: n * groups + g
    run_tasks(forward_tasks(f), forward_macs(f), [&](index_t task) {
        const ForwardTask t = forward_task_of(f, task);
        const int thread = thread_index();
        float* band = bands.data() + thread * band_floats;
        if (band_holds[size_t(thread)] != t.n * f.groups + t.g) {
            pad_band(dy + t.n * K * OH * OW, K, OH, OW, t.oy0, band_rows, band);
            band_holds[size_t(thread)] = t.n * f.groups + t.g;
        }
        v.forward_task(f, task, band, band_rows * W);
    });
}

void conv3x3_backward_params(const float* x, const float* dy, float* dw, float* db, index_t N, index_t C, index_t H,
                             index_t W, index_t K, bool winograd) {
    begin_op();
    const Version v = current_version();
    const Geometry geo = v.geometry;
    const index_t OH = H - 2, OW = W - 2;
    if (winograd) {
        winograd_gradient_run(v, x, dy, dw, db, N, C, H, W, K);
        return;
    }
    const Scratch zeros(OW);
    // The tasks: equal groups of up to kWgradChannels channels x groups of up to
    // kWgradTaskKblocks blocks of filters; the filters are split only as far as it takes to
    // give every thread a task (a group of filters reads its x once: wgrad_task_impl). No
    // split changes a result: each dw[k, c] is summed band by band in the same order by
    // whichever task owns it.
    const index_t kblocks = ceil_div(K, geo.wgrad_filters), cgroups = ceil_div(C, kWgradChannels);
    const index_t channels = ceil_div(C, cgroups);   // 48 channels: 24 + 24, not 32 + 16
    const index_t kgroups = std::min(kblocks, std::max(ceil_div(kblocks, kWgradTaskKblocks),
                                                       ceil_div(index_t(max_threads()), cgroups)));
    const index_t task_kblocks = ceil_div(kblocks, kgroups);
    // One slot of running totals per thread, allocated once for the op (not once per task):
    // [blocks of filters of a task][channels of a task][r][filters of a tile][s][lanes].
    const index_t total_floats =
        task_kblocks * channels * 3 * geo.wgrad_filters * 3 * geo.wgrad_pixels;
    const Scratch totals(index_t(max_threads()) * total_floats, /*zero=*/false);   // each task zeroes its slot
    // And one band of dy per thread: wgrad_filters x rows x band_width, 64-byte aligned.
    const index_t rows = std::max<index_t>(1, std::min(OH, ceil_div(kWgradOutputs, OW)));
    const index_t band_width = ceil_div(OW, geo.wgrad_pixels) * geo.wgrad_pixels;
    const index_t band_floats = geo.wgrad_filters * rows * band_width;
    const Scratch bands(index_t(max_threads()) * (band_floats + 16), /*zero=*/false);
    WeightGrad g{x, dy, dw, db, zeros.data(), totals.data(), bands.data(), N, C, H, W, K, OH, OW,
                 kblocks, cgroups, rows, total_floats, band_floats, band_width,
                 channels, task_kblocks, ceil_div(kblocks, task_kblocks)};
    run_tasks(g.kgroups * g.cgroups, N * K * C * 9 * OH * OW, [&](index_t t) { v.wgrad_task(g, t); });
}

// The forward's product rows are w's columns m = 4k + 2a + e, summed over the C channels:
// packed[block][c][m % KB] = w[c, m]; the backward input's are w's rows c, summed over m.
void upconv2x2_forward(const float* x, const float* w, const float* b, float* y, index_t N, index_t C, index_t H,
                       index_t W, index_t K) {
    begin_op();
    const Version v = current_version();
    const int KB = v.geometry.forward_filters;
    Scratch packed(ceil_div(4 * K, KB) * KB * C);   // zero rows pad the last block
    for (index_t c = 0; c < C; ++c)
        for (index_t m = 0; m < 4 * K; ++m) packed.data()[((m / KB) * C + c) * KB + m % KB] = w[c * 4 * K + m];
    const Upconv u = upconv_plan(v, packed.data(), b, y, N, C, H, W, 4 * K);
    run_tasks(upconv_tasks(u), upconv_macs(u), [&](index_t task) { v.upconv_forward_task(u, task, x); });
}

// Each thread gathers the rows of dY its task reads into a band of its own (4K x rows x W)
// and keeps it for its next task if that one reads the same rows (the next block of channels).
void upconv2x2_backward_input(const float* dy, const float* w, float* dx, index_t N, index_t K, index_t H,
                              index_t W, index_t C) {
    begin_op();
    const Version v = current_version();
    const int KB = v.geometry.forward_filters;
    Scratch packed(ceil_div(C, KB) * KB * 4 * K);
    for (index_t c = 0; c < C; ++c)
        for (index_t m = 0; m < 4 * K; ++m) packed.data()[((c / KB) * 4 * K + m) * KB + c % KB] = w[c * 4 * K + m];
    const Upconv u = upconv_plan(v, packed.data(), nullptr, dx, N, 4 * K, H, W, C);
    const index_t band_floats = 4 * K * u.rows * W;
    const Scratch bands(index_t(max_threads()) * band_floats, /*zero=*/false);   // each gather writes what is read
    std::vector<index_t> band_holds(size_t(max_threads()), -1);                 // per thread: n * groups + g
    run_tasks(upconv_tasks(u), upconv_macs(u), [&](index_t task) {
        const UpconvTask t = upconv_task_of(u, task);
        const int thread = thread_index();
        const bool gather = band_holds[size_t(thread)] != t.n * u.groups + t.g;
        band_holds[size_t(thread)] = t.n * u.groups + t.g;
        v.upconv_input_task(u, task, dy, bands.data() + thread * band_floats, gather);
    });
}

// Tasks: equal groups of channels (whole tiles) x groups of filters, sized by the bytes above;
// the filters split further only as far as it takes to give every thread a task.
void upconv2x2_backward_params(const float* x, const float* dy, float* dw, float* db, index_t N, index_t C, index_t H,
                               index_t W, index_t K) {
    begin_op();
    const Version v = current_version();
    const index_t CB = v.geometry.upconv_grad_channels, L = v.geometry.wgrad_pixels;
    const index_t rows = std::max<index_t>(1, std::min(H, ceil_div(kWgradOutputs, W)));
    const index_t tile_bytes = CB * rows * W * index_t(sizeof(float));
    const index_t cgroups = ceil_div(C, std::max<index_t>(1, kUpconvGradBandBytes / tile_bytes) * CB);
    const index_t channels = ceil_div(ceil_div(C, cgroups), CB) * CB;
    const index_t filter_bytes = std::min(C, channels) * 4 * L * index_t(sizeof(float));
    const index_t kgroups = std::min(K, std::max(ceil_div(K, std::max<index_t>(1, kUpconvGradTotalsBytes / filter_bytes)),
                                                 ceil_div(index_t(max_threads()), cgroups)));
    const index_t task_k = ceil_div(K, kgroups);
    const index_t band_width = ceil_div(rows * W, L) * L, band_floats = 4 * band_width;
    const index_t total_floats = task_k * std::min(C, channels) * 4 * L;
    const Scratch zeros(rows * W);   // a band's span of x for the padding channels of a partial tile
    const Scratch totals(index_t(max_threads()) * total_floats, /*zero=*/false);     // each task zeroes its slot
    const Scratch bands(index_t(max_threads()) * (band_floats + 16), /*zero=*/false);
    UpconvGrad g{x, dy, dw, db, zeros.data(), totals.data(), bands.data(), N, C, H, W, K,
                 channels, ceil_div(C, channels), task_k, ceil_div(K, task_k), rows, band_width, total_floats, band_floats};
    run_tasks(g.cgroups * g.kgroups, N * H * W * C * 4 * K, [&](index_t t) { v.upconv_grad_task(g, t); });
}

double fma_peak_gflops(index_t iterations) {
    const Version v = current_version();
    double flops = 0.0;
    const auto start = std::chrono::steady_clock::now();
#pragma omp parallel reduction(+ : flops)
    flops += v.fma_loop(iterations, 1.0f);
    const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
    return flops / seconds.count() * 1e-9;
}

int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void set_num_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

int last_team_size() { return g_last_team.load(); }

index_t scratch_peak_bytes() { return g_scratch_peak.load(); }

index_t set_winograd_chunk_bytes(index_t bytes) { return g_winograd_chunk_bytes.exchange(bytes); }

#ifdef CUNET_HOST_SANITIZE
float sanitizer_selftest(int kind) {
    if (kind == 1) {   // heap-buffer-overflow: one float past the end of a 16-float block
        std::vector<float> v(16, 1.0f);
        volatile index_t i = 16;
        return v.data()[i];
    }
    if (kind == 2) {   // signed integer overflow
        volatile int big = INT_MAX;
        return float(big + 1);
    }
    return 0.0f;
}
#endif

}  // namespace cunet_host
