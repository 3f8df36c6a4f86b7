"""Device choice: ``cpu``, ``cuda``, ``opencl`` or ``auto``.

=========  ==========  ==============================================  ===================
device     arrays      kernels                                         runs on
=========  ==========  ==============================================  ===================
cpu        NumPy       NumPy + BLAS, Numba ``@njit(parallel=True)``      any machine
cuda       CuPy        kernels/*.cu via NVRTC; Numba CUDA alternates   NVIDIA GPUs
opencl     PyOpenCL    the same kernels/*.cu as OpenCL C               PoCL (CPU), Oclgrind
=========  ==========  ==============================================  ===================

The op code never asks which device it is on: it asks :func:`runtime_of` for the runtime
that owns its input arrays (``None`` means NumPy, the ``cpu`` path).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .runtime import DeviceUnavailableError, HostStepTimer, Runtime

__all__ = ["Device", "DeviceUnavailableError", "Runtime", "get_device", "runtime_of", "DEVICE_NAMES"]

DEVICE_NAMES = ("auto", "cpu", "cuda", "opencl")

_runtimes: list[Runtime] = []  # every runtime created in this process, for runtime_of


@dataclass
class Device:
    """A place where tensors live and ops run. ``runtime`` is None for ``cpu``."""

    name: str
    runtime: Runtime | None = None
    #: Why this device was chosen (filled in by ``auto``), for the user to read.
    reason: str = field(default="")

    def to_device(self, host_array: np.ndarray):
        """A copy of a NumPy array on this device (the array itself on ``cpu``)."""
        if self.runtime is None:
            return np.ascontiguousarray(host_array)
        return self.runtime.to_device(host_array)

    def to_host(self, array) -> np.ndarray:
        """A NumPy copy of a device array (the array itself on ``cpu``)."""
        if self.runtime is None:
            return np.asarray(array)
        return self.runtime.to_host(array)

    def zeros(self, shape, dtype=np.float32):
        """A zero-filled array on this device."""
        if self.runtime is None:
            return np.zeros(shape, dtype)
        return self.runtime.zeros(shape, dtype)

    def synchronize(self) -> None:
        """Wait for pending kernels (a no-op on ``cpu``); call before reading a timer."""
        if self.runtime is not None:
            self.runtime.synchronize()

    def step_timer(self):
        """A timer for device work: start(), stop(), seconds() (CUDA events on cuda, the host clock elsewhere)."""
        return HostStepTimer() if self.runtime is None else self.runtime.step_timer()

    def describe(self) -> str:
        """One line for logs: the device, and for ``auto`` why it was picked."""
        text = "cpu (NumPy + Numba)" if self.runtime is None else self.runtime.describe()
        return f"{text}; {self.reason}" if self.reason else text


def get_device(name: str = "auto", *, kernels: str = "cuda", opencl_platform: str = "pocl") -> Device:
    """Create the device called ``name``.

    ``auto`` picks ``cuda`` where CuPy finds a GPU, else ``cpu``, and records why in
    ``Device.reason``. ``cuda`` without a usable GPU raises DeviceUnavailableError naming
    the cause and ``--device cpu``. ``kernels`` ('cuda' or 'numba') picks the CUDA C kernels
    or the Numba alternates for the memory-bound ops on ``cuda``.
    """
    if name not in DEVICE_NAMES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_NAMES)}")
    if name == "cpu":
        return Device("cpu")
    if name == "opencl":
        from .opencl import OpenCLRuntime

        return Device("opencl", _remember(OpenCLRuntime(opencl_platform)))
    from .cuda import CudaRuntime

    if name == "cuda":
        return Device("cuda", _remember(CudaRuntime(kernels)))
    try:  # auto
        return Device("cuda", _remember(CudaRuntime(kernels)), reason="auto: CuPy found a GPU")
    except DeviceUnavailableError as exc:
        return Device("cpu", reason=f"auto: no GPU ({str(exc).split('(')[0].strip()})")


def _remember(runtime: Runtime) -> Runtime:
    _runtimes.append(runtime)
    return runtime


def runtime_of(array) -> Runtime | None:
    """The runtime that owns ``array``; None for a NumPy array (the ``cpu`` path)."""
    if isinstance(array, np.ndarray):
        return None
    for runtime in reversed(_runtimes):
        if runtime.owns(array):
            return runtime
    raise TypeError(
        f"expected a NumPy array or a device array made by a cunet runtime, got {type(array).__name__}"
    )
