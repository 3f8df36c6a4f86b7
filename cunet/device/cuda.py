"""The CuPy runtime: kernels/*.cu compiled by NVRTC through cupy.RawModule.

This is thin glue on purpose: everything above it (shapes, grids, argument lists) is
shared with the OpenCL runtime and tested there. Importing this module never needs
CuPy or a GPU; constructing :class:`CudaRuntime` does, and fails with a message that
names the cause and the way out (``--device cpu``).
"""
from __future__ import annotations

import numpy as np

from cunet.kernels import NVRTC_OPTIONS, KernelModule

from .runtime import DeviceUnavailableError, Runtime


def _import_cupy():
    """CuPy and the number of visible GPUs, or DeviceUnavailableError saying why not."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        raise DeviceUnavailableError(
            f"--device cuda needs CuPy, which could not be imported ({type(exc).__name__}: {exc}). "
            "Install it with `pip install 'cunet[cuda]'` (CUDA 12) or `pip install 'cunet[cuda13]'` (CUDA 13) "
            "on a machine with an NVIDIA GPU, or run on the CPU with --device cpu."
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no device, driver too old
        raise DeviceUnavailableError(
            f"--device cuda: CuPy is installed but no usable NVIDIA GPU was found "
            f"({type(exc).__name__}: {exc}). Run on the CPU with --device cpu."
        ) from exc
    if count == 0:
        raise DeviceUnavailableError(
            "--device cuda: CuPy is installed but reports 0 NVIDIA GPUs. Run on the CPU with --device cpu."
        )
    return cupy


class CudaEventTimer:
    """Times GPU work with two CUDA events recorded on the current stream.

    start() and stop() only enqueue an event; seconds() waits for the second one. So a
    training loop can time every step and read the times back every N steps, without a
    synchronisation per step (which would leave the GPU idle while Python queues the next).
    """

    def __init__(self, cupy):
        self._cupy = cupy
        self._start, self._stop = cupy.cuda.Event(), cupy.cuda.Event()

    def start(self) -> None:
        """Record the start event."""
        self._start.record()

    def stop(self) -> None:
        """Record the stop event (returns at once)."""
        self._stop.record()

    def seconds(self) -> float:
        """GPU time between the two events, in seconds (waits for the stop event)."""
        self._stop.synchronize()
        return self._cupy.cuda.get_elapsed_time(self._start, self._stop) / 1e3


class CudaRuntime(Runtime):
    """Launches kernels/*.cu on the current CUDA device; optionally the Numba CUDA alternates."""

    name = "cuda"

    def __init__(self, kernels: str = "cuda"):
        if kernels not in ("cuda", "numba"):
            raise ValueError(f"kernels must be 'cuda' (CUDA C) or 'numba' (Numba alternates), got {kernels!r}")
        self.cupy = _import_cupy()
        self.use_numba_kernels = kernels == "numba"
        self._modules: dict[KernelModule, object] = {}

    def describe(self) -> str:
        """One line naming the GPU, which kernel implementations run and how the convolutions multiply."""
        props = self.cupy.cuda.runtime.getDeviceProperties(self.cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        flavour = "Numba alternates for memory-bound ops" if self.use_numba_kernels else "CUDA C kernels"
        math = "TF32 tensor cores" if self.math == "tf32" else "FP32 CUDA cores"
        return f"cuda ({name}, sm_{self.compute_capability()}, {flavour}, convolutions on {math})"

    def compute_capability(self) -> int:
        """The current GPU's compute capability as a number: 80 for sm_80."""
        return int(self.cupy.cuda.Device().compute_capability)

    def owns(self, array) -> bool:
        return isinstance(array, self.cupy.ndarray)

    def empty(self, shape, dtype=np.float32):
        return self.cupy.empty(tuple(shape), dtype)

    def zeros(self, shape, dtype=np.float32):
        return self.cupy.zeros(tuple(shape), dtype)

    def to_device(self, host_array):
        return self.cupy.asarray(np.ascontiguousarray(host_array))

    def to_host(self, array) -> np.ndarray:
        return self.cupy.asnumpy(array)

    def synchronize(self) -> None:
        self.cupy.cuda.get_current_stream().synchronize()

    def step_timer(self):
        """CUDA events around the work: the host never waits, except when it reads seconds()."""
        return CudaEventTimer(self.cupy)

    def module(self, module: KernelModule):
        """The RawModule for ``module``: compiled once per define-set, then cached."""
        if module not in self._modules:
            options = NVRTC_OPTIONS + module.define_options()
            self._modules[module] = self.cupy.RawModule(code=module.source(), options=options)
        return self._modules[module]

    def _launch(self, module, kernel, grid, block, args):
        for a in args:
            if self.owns(a) and not a.flags.c_contiguous:
                raise ValueError(f"{module.file}:{kernel}: RawKernel ignores strides; pass contiguous arrays")
        self.module(module).get_function(kernel)(grid, block, tuple(args))

    def launch_numba(self, kernel, grid, block, args) -> None:
        """Launch a Numba CUDA kernel on CuPy arrays (they share the CUDA array interface)."""
        grid, block = tuple(int(g) for g in grid), tuple(int(b) for b in block)
        if 0 in grid:
            return
        kernel[grid, block](*args)
