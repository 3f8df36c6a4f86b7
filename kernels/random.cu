/*
 * Raw Philox4x32-10 bits, for verification and for anyone who wants to see them.
 *
 * Counter i (one per thread) is {i, stream, 0, 0} under the key {key0, key1}; the four
 * 32-bit words it yields go to out[4i .. 4i+3]. The drop-out kernels call the same
 * prelude function inline; the tests compare this kernel with Random123's known-answer
 * vectors and with the CPU implementation (cunet/ops/random.py), which is what makes
 * "one seed, the same mask on every device" a checked fact rather than a hope.
 *
 * Memory traffic: 16 B written per thread, nothing read; 10 rounds of two 32x32->64
 * multiplies per thread, so it is compute-light and store-bound.
 */

KERNEL void philox_bits(GLOBAL uint* out, int n_counters, uint key0, uint key1, uint stream)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n_counters) {
        philox4x32 c;
        c.x = (uint)i; c.y = stream; c.z = 0u; c.w = 0u;
        philox4x32 r = philox4x32_10(c, key0, key1);
        out[4 * i + 0] = r.x;
        out[4 * i + 1] = r.y;
        out[4 * i + 2] = r.z;
        out[4 * i + 3] = r.w;
    }
}
