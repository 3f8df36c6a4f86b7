"""What a kernel runtime is: allocate, copy in and out, compile, launch.

A runtime knows nothing about U-Net ops. The op code in ``cunet/ops`` computes shapes,
grids, blocks and argument lists once, and hands them to whichever runtime owns the
arrays; so the launch code a GPU user runs is the launch code the tests run on PoCL.

Grids and blocks use CUDA's convention on every runtime: ``grid`` counts blocks, ``block``
counts threads, both as 3-tuples. (OpenCL's global size is ``grid * block``.)
"""
from __future__ import annotations

import time

import numpy as np

from cunet.kernels import KernelModule

# Every scalar kernel argument must be one of these: a bare Python int would go in as
# 64 bits on CuPy, a float as a double, and the kernel would read garbage.
SCALAR_TYPES = (np.int32, np.uint32, np.float32)


class HostStepTimer:
    """Times a piece of work on the host clock; ``stop`` first waits for the device's queued work.

    What the cpu device (``synchronize`` does nothing) and the opencl runtime use. Waiting at
    every stop costs a device little when it is a test device; a GPU uses events instead
    (CudaRuntime.step_timer), so that timing a step never makes the host wait for it.
    """

    def __init__(self, synchronize=lambda: None):
        self._synchronize = synchronize
        self._start = self._stop = None

    def start(self) -> None:
        """Mark the start (on the host: now)."""
        self._start = time.perf_counter()

    def stop(self) -> None:
        """Mark the end: when the work queued so far has finished."""
        self._synchronize()
        self._stop = time.perf_counter()

    def seconds(self) -> float:
        """Seconds from start to stop."""
        return self._stop - self._start


class DeviceUnavailableError(RuntimeError):
    """The requested device cannot be used here; the message says why and what to use instead."""


class Runtime:
    """The interface the op code launches through. Subclasses: OpenCLRuntime, CudaRuntime."""

    name = "abstract"
    #: True when the memory-bound ops should launch their Numba CUDA alternates.
    use_numba_kernels = False
    #: How the GEMM kernels (conv2d, up-conv) multiply: "fp32" on CUDA cores or "tf32" on
    #: tensor cores (cunet/ops/gemm.py). get_device sets it.
    math = "fp32"

    def owns(self, array) -> bool:
        """Whether ``array`` is a device array of this runtime."""
        raise NotImplementedError

    def empty(self, shape, dtype=np.float32):
        """An uninitialised device array."""
        raise NotImplementedError

    def zeros(self, shape, dtype=np.float32):
        """A device array of zeros."""
        raise NotImplementedError

    def to_device(self, host_array: np.ndarray):
        """Copy a NumPy array to the device (made contiguous first)."""
        raise NotImplementedError

    def to_host(self, array) -> np.ndarray:
        """Copy a device array back to a new NumPy array (waits for pending work)."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait until every launched kernel has finished."""
        raise NotImplementedError

    def step_timer(self):
        """A timer with start(), stop() and seconds() for work launched on this runtime."""
        return HostStepTimer(self.synchronize)

    def _launch(self, module: KernelModule, kernel: str, grid, block, args) -> None:
        raise NotImplementedError

    def launch(self, module: KernelModule, kernel: str, grid, block, args) -> None:
        """Launch ``kernel`` from ``module`` (compiled once per define-set, then cached).

        ``grid`` and ``block`` are 3-tuples in CUDA's convention. ``args`` are device
        arrays of this runtime (contiguous, whole) and NumPy 32-bit scalars. A grid with
        a zero dimension launches nothing: an empty tensor is not an error.
        """
        grid, block = _dim3(grid), _dim3(block)
        for i, arg in enumerate(args):
            if isinstance(arg, (bool, int, float, np.int64, np.float64)):
                raise TypeError(
                    f"{module.file}:{kernel} argument {i} is {type(arg).__name__} {arg!r}; "
                    "kernel scalars must be numpy.int32, numpy.uint32 or numpy.float32"
                )
            if not isinstance(arg, SCALAR_TYPES) and not self.owns(arg):
                raise TypeError(
                    f"{module.file}:{kernel} argument {i} is a {type(arg).__name__}, "
                    f"not a {self.name} device array or a 32-bit NumPy scalar"
                )
        if 0 in grid:
            return
        self._launch(module, kernel, grid, block, args)


def _dim3(dims) -> tuple[int, int, int]:
    dims = tuple(int(d) for d in dims)
    if not 1 <= len(dims) <= 3 or min(dims) < 0:
        raise ValueError(f"launch dimensions must be 1 to 3 non-negative ints, got {dims}")
    return dims + (1,) * (3 - len(dims))
