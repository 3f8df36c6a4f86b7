// The U-Net's 3x3 convolutions on the CPU, in C++ (the host side of kernels/conv2d.cu), and
// the 2x2 up-convolution (the host side of kernels/upconv.cu).
//
//   conv3x3_forward          y[n,k,oy,ox] = b[k] + sum_{c,r,s} x[n,c,oy+r,ox+s] * w[k,c,r,s]   (then ReLU if relu)
//   conv3x3_backward_input   dx = the full correlation of dy with w flipped and transposed
//   conv3x3_backward_params  dw[k,c,r,s] = sum_{n,oy,ox} dy[n,k,oy,ox] * x[n,c,oy+r,ox+s],  db[k] = sum dy[n,k]
//
// float32, NCHW, stride 1, no padding ("valid"), as cunet's conv2d ops (cunet/ops/conv2d.py).
// Every array is dense (C-contiguous) and the outputs are written whole: the caller
// (kernels/host/bindings.cpp) has checked shapes, dtypes and that no output overlaps an input.
// conv2d.cpp explains the register blocking and the threads.
#pragma once

#include <cstdint>

namespace cunet_host {

using index_t = std::int64_t;  // every index and size: no 2**31 limit on the CPU

// The instruction sets the kernels are compiled for (x86-64 with GCC; conv2d.cpp, "SIMD
// dispatch"): one binary carries all three versions. "generic" is the x86-64 baseline
// (SSE2) on x86, and whatever the compiler targets elsewhere (NEON on ARM).
enum class Isa { generic = 0, avx2 = 1, avx512 = 2 };

Isa cpu_isa();                  // the version the ops run: the best this CPU supports, unless set_isa chose
Isa isa_by_cpu_features();      // the best version this CPU supports (__builtin_cpu_supports)
bool cpu_supports(Isa isa);     // whether this CPU can run that version
bool set_isa(Isa isa);          // run that version from now on (tests, benchmarks); false if unsupported
const char* isa_name(Isa isa);  // "generic", "avx2", "avx512"

// The register tile each version uses (see conv2d.cpp, "Register blocking").
struct Geometry {
    int forward_filters;  // output channels per tile of the forward / backward input
    int forward_pixels;   // consecutive outputs per tile (a multiple of the vector width)
    int wgrad_filters;    // filters per tile of the weight gradient
    int wgrad_pixels;     // lanes of its partial sums (and of the up-convolution's weight gradient)
    int upconv_grad_channels;  // input channels per tile of the up-convolution's weight gradient
};
Geometry geometry(Isa isa);

// winograd: Winograd F(4x4, 3x3) instead of the direct sum (fewer multiplies; the wide layers).
void conv3x3_forward(const float* x, const float* w, const float* b, float* y, index_t N, index_t C,
                     index_t H, index_t W, index_t K, bool relu, bool winograd = false);
void conv3x3_backward_input(const float* dy, const float* w, float* dx, index_t N, index_t K, index_t OH,
                            index_t OW, index_t C, bool winograd = false);
void conv3x3_backward_params(const float* x, const float* dy, float* dw, float* db, index_t N, index_t C,
                             index_t H, index_t W, index_t K, bool winograd = false);

// The 2x2 up-convolution with stride 2 (cunet/ops/upconv.py), w [C, K, 2, 2]:
//   upconv2x2_forward         y[n,k,2i+a,2j+e] = b[k] + sum_c x[n,c,i,j] * w[c,k,a,e]      x [N,C,H,W], y [N,K,2H,2W]
//   upconv2x2_backward_input  dx[n,c,i,j] = sum_{k,a,e} w[c,k,a,e] * dy[n,k,2i+a,2j+e]   dy [N,K,2H,2W], dx [N,C,H,W]
void upconv2x2_forward(const float* x, const float* w, const float* b, float* y, index_t N, index_t C, index_t H,
                       index_t W, index_t K);
void upconv2x2_backward_input(const float* dy, const float* w, float* dx, index_t N, index_t K, index_t H,
                              index_t W, index_t C);
//   upconv2x2_backward_params dw[c,k,a,e] = sum_{n,i,j} x[n,c,i,j] * dy[n,k,2i+a,2j+e],  db[k] = sum dy[n,k]
void upconv2x2_backward_params(const float* x, const float* dy, float* dw, float* db, index_t N, index_t C, index_t H,
                               index_t W, index_t K);
// The FMA units' throughput on every OpenMP thread, in GFLOP/s: each thread runs `iterations`
// rounds of register-only FMAs in the current version (conv2d.cpp, "The FMA peak").
double fma_peak_gflops(index_t iterations);

// OpenMP threads: what the next parallel loop may use, and the most any loop of the last op used.
int max_threads();
void set_num_threads(int n);
int last_team_size();

// The most temporary memory (packed filters, the backward input's padded dy, the weight
// gradient's per-thread totals) the last op held at once, in bytes.
index_t scratch_peak_bytes();

// The budget of a Winograd chunk (its transformed input and products, conv2d.cpp) from now on,
// in bytes; returns the previous one. Tests set it small to get many chunks from small layers.
index_t set_winograd_chunk_bytes(index_t bytes);

#ifdef CUNET_HOST_SANITIZE
// Sanitizer builds only: commit one planted error on purpose (kind 1: read one float past
// a heap block, for AddressSanitizer; kind 2: signed integer overflow, for UBSan), so the
// sanitizer run can prove that its sanitizers are armed. Never compiled into a normal build.
float sanitizer_selftest(int kind);
#endif

}  // namespace cunet_host
