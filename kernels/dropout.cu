/*
 * Inverted drop-out: y = x * keep / (1 - p), with keep = [u >= p] and u uniform in [0, 1).
 *
 * Dividing the survivors by (1 - p) at training time keeps E[y] = x, so inference simply
 * skips the layer (the "inverted" variant; the paper's Caffe code did the same).
 *
 * Where the randomness comes from
 * -------------------------------
 * Element i of the flat tensor draws its uniform from Philox4x32-10 (the prelude):
 *
 *     counter = {i / 4, stream, 0, 0},  key = {seed_lo, seed_hi},  word = i % 4
 *     u_i     = uint_to_unit_float(word)          (top 24 bits: exact on every device)
 *
 * One Philox call yields four 32-bit words, so one thread makes four neighbouring
 * elements from one call. Because the generator is counter-based (stateless), keep_i is a
 * pure function of (seed, stream, i): the cpu path (cunet/ops/dropout.py), the Numba
 * CUDA kernel and this file produce bit-identical masks, whatever the block size.
 *
 * No mask tensor is stored. The backward pass (dx = dy * keep / (1 - p)) regenerates
 * exactly the same keep bits from the same seed: 10 Philox rounds per 4 elements cost far
 * less than writing a mask in the forward pass and reading it back in the backward.
 * And the backward IS the forward's arithmetic applied to dy (drop-out is a diagonal
 * linear map), so both passes launch `dropout_apply`.
 *
 * The comparison u >= p is done in float32 on every device (p is handed over as a
 * float32), so no device can disagree with another about an element with u close to p.
 *
 * Work mapping: a 1-D grid over groups of four elements; thread g handles elements
 * 4g .. 4g+3, each bounds-checked (the last group may be partial). Blocks of
 * 256 threads (1024 elements), the grid rounded up.
 *
 * Memory traffic per element: reads 4 B (x), writes 4 B (y): pure bandwidth. The
 * arithmetic, 10 rounds of two 32x32->64-bit multiplies per four elements, is hidden
 * behind the loads. Each thread reads 16 contiguous bytes, so a warp's four load
 * instructions together cover 512 contiguous bytes: every 32-byte sector fetched is used
 * (a float4 load would need 16-byte alignment and a tail path; not worth it here).
 */

/* The Philox words for group g: elements 4g .. 4g+3 of the flat tensor. */
DEVICE philox4x32 dropout_words(int group, uint stream, uint key0, uint key1)
{
    philox4x32 counter;
    counter.x = (uint)group; counter.y = stream; counter.z = 0u; counter.w = 0u;
    return philox4x32_10(counter, key0, key1);
}

/* Word j (0..3) of a Philox output, by index. */
DEVICE uint philox_word(philox4x32 r, int j)
{
    return j == 0 ? r.x : j == 1 ? r.y : j == 2 ? r.z : r.w;
}

/* y[i] = x[i] * keep_i * scale for the n elements; scale = 1 / (1 - p), computed on the host. */
KERNEL void dropout_apply(GLOBAL const float* RESTRICT x, GLOBAL float* RESTRICT y, int n, float p,
                          float scale, uint key0, uint key1, uint stream)
{
    int group = blockIdx.x * blockDim.x + threadIdx.x;
    if (4 * group < n) {
        philox4x32 r = dropout_words(group, stream, key0, key1);
        for (int j = 0; j < 4; ++j) {
            int i = 4 * group + j;
            if (i < n) {
                y[i] = uint_to_unit_float(philox_word(r, j)) >= p ? x[i] * scale : 0.0f;
            }
        }
    }
}

/* mask[i] = keep_i as 0 or 1, for tests and inspection (training never materialises it). */
KERNEL void dropout_mask(GLOBAL unsigned char* RESTRICT mask, int n, float p, uint key0, uint key1,
                         uint stream)
{
    int group = blockIdx.x * blockDim.x + threadIdx.x;
    if (4 * group < n) {
        philox4x32 r = dropout_words(group, stream, key0, key1);
        for (int j = 0; j < 4; ++j) {
            int i = 4 * group + j;
            if (i < n) {
                mask[i] = uint_to_unit_float(philox_word(r, j)) >= p ? 1 : 0;
            }
        }
    }
}
