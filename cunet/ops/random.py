"""Philox4x32-10 counter-based random bits, identical on every device.

The prelude (kernels/prelude.h) implements the generator for the GPU kernels; this is the
same algorithm for the CPU path and for the Numba CUDA kernels (``@njit`` functions run
there too). A counter-based generator is stateless: element i of a drop-out mask is a pure
function of (seed, i), so masks do not depend on thread counts, launch order or device.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from cunet.cpu.parallel import njit_serial_or_parallel
from cunet.kernels import kernel_module

from .common import INT32_LIMIT, check_int, check_output_size, grid_1d

RANDOM_CU = kernel_module("random.cu", threads=256)

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF


@njit(cache=True)
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on counter (c0..c3) under key (k0, k1); returns four uint32 as int64s."""
    c0, c1, c2, c3 = np.int64(c0), np.int64(c1), np.int64(c2), np.int64(c3)
    k0, k1 = np.int64(k0), np.int64(k1)
    for _ in range(10):
        p0 = PHILOX_M0 * c0  # < 2^64 as unsigned: split into high and low 32 bits
        p1 = PHILOX_M1 * c2
        hi0, lo0 = (np.uint64(p0) >> np.uint64(32)), p0 & MASK32
        hi1, lo1 = (np.uint64(p1) >> np.uint64(32)), p1 & MASK32
        c0, c1, c2, c3 = (np.int64(hi1) ^ c1 ^ k0), lo1, (np.int64(hi0) ^ c3 ^ k1), lo0
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


@njit(cache=True)
def unit_float(u):
    """The top 24 bits of a uint32 as a float in [0, 1), exactly as the prelude does it."""
    return np.float32(u >> 8) * np.float32(1.0 / 16777216.0)


SEED_LIMIT, STREAM_LIMIT = 2**64, 2**32  # a seed is the two key words, a stream one counter word


def split_seed(seed: int, op: str = "split_seed") -> tuple[int, int]:
    """A seed in [0, 2**64) as the generator's two 32-bit key words (``op`` names the caller in errors)."""
    seed = check_int(op, "seed", seed, 0, SEED_LIMIT)
    return seed & MASK32, seed >> 32


def check_stream(op: str, stream) -> int:
    """A stream number in [0, 2**32): the counter word that tells apart masks drawn from one seed."""
    return check_int(op, "stream", stream, 0, STREAM_LIMIT)


@njit_serial_or_parallel(1 << 10)  # counters; four words each, so the same point as dropout.PHILOX_MIN_WORK
def _philox_bits_cpu(out, key0, key1, stream):
    for i in prange(out.shape[0]):
        r = philox4x32_10(i, stream, 0, 0, key0, key1)
        for j in range(4):
            out[i, j] = r[j]


def philox_bits(n_counters: int, seed: int, stream: int = 0, runtime=None):
    """Words of Philox4x32-10 for counters {i, stream, 0, 0}, i < n_counters: uint32 [n_counters, 4].

    On ``runtime`` (a device runtime) the kernel in kernels/random.cu makes them; with
    ``runtime=None`` the CPU does. Both give the same bits. ``seed`` in [0, 2**64) and
    ``stream`` in [0, 2**32) are Python or NumPy integers.
    """
    op = "philox_bits"
    n_counters = check_int(op, "n_counters", n_counters, 0, INT32_LIMIT)
    check_output_size(op, "out", (n_counters, 4))  # the kernel writes out[4 i + j] with 32-bit i
    key0, key1 = split_seed(seed, op)
    stream = check_stream(op, stream)
    if runtime is None:
        out = np.empty((n_counters, 4), np.int64)
        _philox_bits_cpu(out, key0, key1, stream, work=n_counters)
        return out.astype(np.uint32)
    out = runtime.empty((n_counters, 4), np.uint32)
    grid, block = grid_1d(n_counters, RANDOM_CU.threads)
    runtime.launch(RANDOM_CU, "philox_bits", grid, block,
                   (out, np.int32(n_counters), np.uint32(key0), np.uint32(key1), np.uint32(stream)))
    return out
