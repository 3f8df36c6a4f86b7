"""The cpu device's own code: what runs when ``--device cpu`` trains a U-Net.

A GPU reader can skip this package; a CPU reader finds the host path here whole:

    cunet/cpu/conv2d.py     the convolutions, three algorithms picked per layer by shape:
                            the C++ direct kernels (kernels/host/, module cunet._host) for
                            narrow layers, Winograd around BLAS for wide 3x3 ones, im2col +
                            BLAS for the rest (and for float64, the gradient checks' dtype)
    cunet/cpu/winograd.py   Winograd F(2x2, 3x3): Numba transforms around 16 BLAS GEMMs
    cunet/cpu/parallel.py   how every other op's Numba loop (ops/relu.py, maxpool.py, ...:
                            a few lines each, kept beside their argument checks) picks one
                            thread or all of them
    this file               the thread pools' settings, applied when cunet is imported

cunet/ops/*.py keep the checks and the dispatch: one function per op that checks its
arguments and calls the cpu code here or launches the GPU kernel.

Thread pools. A cpu training step alternates between two pools: OpenMP's (libgomp: the
C++ kernels and every Numba ``prange`` loop share it, Numba's threading layer being "omp")
and OpenBLAS's (the GEMMs of Winograd, im2col and the up-convolution). Both, by default,
keep their idle threads spinning after a call so the next call starts sooner; on a
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

This file imports nothing but the standard library: it must run before NumPy loads.
"""
import os
import sys

CPU_THREAD_SETTINGS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
NUMPY_LOADED_BEFORE_CUNET = "numpy" in sys.modules


def apply_thread_settings() -> None:
    """Set each of CPU_THREAD_SETTINGS in the environment unless the user already has."""
    for name, value in CPU_THREAD_SETTINGS.items():
        os.environ.setdefault(name, value)
