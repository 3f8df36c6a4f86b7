/*
 * cunet kernel prelude: one CUDA C source, two compilers.
 *
 * Every .cu file beside this header is CUDA C that also compiles as OpenCL C. The runtime puts
 * this header in front of each file (kernels/__init__.py: kernel_source), so
 * the same text is compiled by NVRTC for NVIDIA GPUs (the `cuda` device), by PoCL on
 * the CPU (the `opencl` device, and the tests), and interpreted by Oclgrind (the
 * race and out-of-bounds checks).
 *
 * The rules of the dialect
 * ------------------------
 *  1. Declare kernels as `KERNEL void name(...)`. KERNEL is `extern "C" __global__` in
 *     CUDA (so the host finds the unmangled name) and `__kernel` in OpenCL.
 *     Optional `LAUNCH_BOUNDS(n)` goes between `void` and the name (CUDA only).
 *  2. Every pointer parameter that points to device memory carries GLOBAL
 *     (`GLOBAL const float* x`): empty in CUDA, `__global` in OpenCL. A helper function
 *     (declared DEVICE) that takes a pointer needs the qualifier too: PoCL 3 has no
 *     generic address space. Pointers into shared memory carry SHARED.
 *  3. threadIdx, blockIdx, blockDim, gridDim, __syncthreads(), __shared__, expf, logf,
 *     fmaxf, ... keep their CUDA spelling; below they are mapped for OpenCL.
 *  4. Shared-memory tiles are declared `__shared__` at the top scope of the kernel,
 *     with sizes fixed at compile time. Tile sizes and other specialisations come in
 *     as -D defines (no templates: OpenCL C has none).
 *  5. Every thread of a block reaches every barrier: no early `return` before a
 *     __syncthreads(). Grids are rounded up on the host and every thread bounds-checks
 *     (OpenCL 1.2 has no partial work-groups, and PoCL 3 rejects them).
 *  6. Deterministic results: no floating-point atomics; reductions are tree or
 *     split-then-sum. Random numbers come from philox4x32_10 below, a counter-based
 *     generator: the same (counter, key) gives the same bits on every device.
 *  7. Warp intrinsics, vector loads and tensor cores only inside `#ifdef CUNET_CUDA`
 *     blocks, each with a portable fallback that the tests run.
 *  8. Indices are 32-bit `int`; the host refuses tensors with 2^31 or more elements.
 *  9. Scalars are passed as 32-bit types (int, unsigned int, float), never 64-bit:
 *     the host launch code wraps every scalar in numpy.int32/uint32/float32.
 */
#ifndef CUNET_PRELUDE_H
#define CUNET_PRELUDE_H

#if defined(__OPENCL_VERSION__)
/* ----------------------------- OpenCL C ----------------------------------------- */
#define CUNET_OPENCL 1
#define KERNEL __kernel
#define LAUNCH_BOUNDS(threads)
#define GLOBAL __global
#define SHARED __local
#define DEVICE static inline
#define RESTRICT restrict
#define __shared__ __local
#define __syncthreads() barrier(CLK_LOCAL_MEM_FENCE)
#define threadIdx ((uint3)((uint)get_local_id(0), (uint)get_local_id(1), (uint)get_local_id(2)))
#define blockIdx ((uint3)((uint)get_group_id(0), (uint)get_group_id(1), (uint)get_group_id(2)))
#define blockDim ((uint3)((uint)get_local_size(0), (uint)get_local_size(1), (uint)get_local_size(2)))
#define gridDim ((uint3)((uint)get_num_groups(0), (uint)get_num_groups(1), (uint)get_num_groups(2)))
/* OpenCL's math builtins are overloaded on float; CUDA spells the float versions with f. */
#define expf exp
#define logf log
#define log1pf log1p
#define sqrtf sqrt
#define fabsf fabs
#define fmaxf fmax
#define fminf fmin
#define powf pow
#define __umulhi(a, b) mul_hi((uint)(a), (uint)(b))
#define __int_as_float(i) as_float(i)
#define __float_as_int(f) as_int(f)
#define INFINITY_F INFINITY
#define NAN_F NAN

#else
/* ------------------------------- CUDA (NVRTC) ----------------------------------- */
#define CUNET_CUDA 1
#define KERNEL extern "C" __global__
#define LAUNCH_BOUNDS(threads) __launch_bounds__(threads)
#define GLOBAL
#define SHARED
#define DEVICE __device__ __forceinline__
#define RESTRICT __restrict__
#define INFINITY_F __int_as_float(0x7f800000)
#define NAN_F __int_as_float(0x7fc00000)
typedef unsigned int uint;
#endif

/* ------------------------- Philox4x32-10 (both dialects) ------------------------ */
/*
 * Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC 2011). Ten rounds of
 * a multiply-xor bijection on a 128-bit counter under a 64-bit key. Stateless: thread i
 * asks for philox4x32_10({i, stream, 0, 0}, {seed_lo, seed_hi}) and gets four
 * independent 32-bit words. The known-answer vectors from Random123 are in the tests.
 */
typedef struct { uint x, y, z, w; } philox4x32;

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

DEVICE philox4x32 philox4x32_round(philox4x32 c, uint k0, uint k1)
{
    uint hi0 = __umulhi(PHILOX_M0, c.x), lo0 = PHILOX_M0 * c.x;
    uint hi1 = __umulhi(PHILOX_M1, c.z), lo1 = PHILOX_M1 * c.z;
    philox4x32 r;
    r.x = hi1 ^ c.y ^ k0;
    r.y = lo1;
    r.z = hi0 ^ c.w ^ k1;
    r.w = lo0;
    return r;
}

DEVICE philox4x32 philox4x32_10(philox4x32 counter, uint key0, uint key1)
{
    for (int round = 0; round < 10; ++round) {
        counter = philox4x32_round(counter, key0, key1);
        key0 += PHILOX_W0;   /* the key schedule: a Weyl sequence */
        key1 += PHILOX_W1;
    }
    return counter;
}

/* The top 24 bits of u as a float in [0, 1): exact, and the same on every device. */
DEVICE float uint_to_unit_float(uint u)
{
    return (float)(u >> 8) * (1.0f / 16777216.0f);
}

#endif /* CUNET_PRELUDE_H */
