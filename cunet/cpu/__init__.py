"""The cpu device's own code: what runs when ``--device cpu`` trains a U-Net.

A GPU reader can skip this package; a CPU reader finds the host path here whole:

    cunet/cpu/conv2d.py     the convolutions, three algorithms picked per op by shape, two
                            of them C++ (kernels/host/, module cunet._host): direct sums for
                            the float32 3x3 layers with few channels, Winograd F(4x4, 3x3)
                            for those with many; im2col + BLAS for the 1x1 head (and for
                            float64, the gradient checks' dtype)
    cunet/cpu/upconv.py     the 2x2 up-convolution: C++ kernels in float32, BLAS in float64
    cunet/cpu/parallel.py   how every other op's Numba loop (ops/relu.py, maxpool.py, ...:
                            a few lines each, kept beside their argument checks) picks one
                            thread or all of them
    this file               the thread pools' settings, applied when cunet is imported,
                            and the malloc policy a training run sets (keep_freed_memory)

cunet/ops/*.py keep the checks and the dispatch: one function per op that checks its
arguments and calls the cpu code here or launches the GPU kernel.

Thread pools. A cpu training step alternates between two pools: OpenMP's (libgomp: the
C++ kernels and every Numba ``prange`` loop share it, Numba's threading layer being "omp")
and OpenBLAS's (the GEMMs of im2col, and NumPy's). Both, by default, keep their idle
threads spinning after a call so the next call starts sooner; on a
machine with as many cores as threads the spinning threads of one pool then take the
cores from the pool that runs next. Each pool is told to sleep at once instead:

    OMP_WAIT_POLICY=PASSIVE     libgomp. Base 16 / 572 step, 2 cores: 1.16-1.21 s ->
                                0.90-0.95 s (benchmarks/README.md).
    OPENBLAS_THREAD_TIMEOUT=4   OpenBLAS's threads sleep after 2^4 cycles instead of 2^28
                                (~0.1 s at 2 GHz). Same step: 0.80-0.85 s -> 0.60-0.63 s
                                (the loops that follow a GEMM no longer run on half a
                                core); PyTorch's step unchanged.

Both libraries read the variable once, when they are loaded (OpenBLAS: when NumPy is first
imported), so :func:`apply_thread_settings` runs first thing in ``import cunet``, and sets
only what the user has not chosen. A program that imports NumPy before cunet keeps
OpenBLAS's default: export OPENBLAS_THREAD_TIMEOUT=4 there (the README says so).
NUMPY_LOADED_BEFORE_CUNET records that case for the benchmarks' reports.

Freed memory. A training step allocates the same arrays as the step before it, many of
them large (base 64 / 572: 30 activations of 10-85 MB). glibc's malloc serves a block over
its mmap threshold (at most 32 MiB, by default) with fresh pages from the kernel and hands
them back when it is freed, so every step page-faults each large activation in again, and
the kernel zero-fills every page. :func:`keep_freed_memory` raises the threshold and the
heap's trim threshold, so a step reuses the memory the last one freed. Measured
(`python -m benchmarks.train_step --base 64`, 2-core AMD EPYC VM, 2026-12-07; cunet's
steps alone, 6 steps, two runs each): 2.9-3.3 s -> 2.55-2.8 s a step, for a peak resident
set 1.26 -> 1.37 GB (freed blocks do not always coalesce) that stays at its peak between
steps. ``python -m cunet.train`` sets TRAINING_MALLOC on the cpu device; Dask workers set
bounded values of their own (cunet/scale/dask_predict.py).

This file imports nothing but the standard library: it must run before NumPy loads.
"""
import ctypes
import os
import sys

CPU_THREAD_SETTINGS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
NUMPY_LOADED_BEFORE_CUNET = "numpy" in sys.modules


def apply_thread_settings() -> None:
    """Set each of CPU_THREAD_SETTINGS in the environment unless the user already has."""
    for name, value in CPU_THREAD_SETTINGS.items():
        os.environ.setdefault(name, value)


# mallopt's parameter numbers for these two settings (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# A training run's policy: blocks up to 1 GiB from the heap; up to 2 GiB of freed heap kept.
TRAINING_MALLOC = {"mmap_threshold": 1 << 30, "trim_threshold": (1 << 31) - 1}


def keep_freed_memory(mmap_threshold: int, trim_threshold: int) -> bool:
    """Have glibc's malloc serve blocks up to ``mmap_threshold`` bytes from its heap and keep up
    to ``trim_threshold`` bytes of freed heap for reuse (see "Freed memory" above).

    Returns whether it applied: False where the C library is not glibc. Setting either also
    switches off glibc's dynamic mmap threshold, for the whole process.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
