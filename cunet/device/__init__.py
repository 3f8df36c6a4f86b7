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

__all__ = ["Device", "DeviceUnavailableError", "Runtime", "choose_math", "get_device", "runtime_of", "DEVICE_NAMES", "MATHS", "add_math_argument"]

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
        text = "cpu (NumPy, Numba, C++)" if self.runtime is None else self.runtime.describe()
        return f"{text}; {self.reason}" if self.reason else text


def get_device(name: str = "auto", *, kernels: str = "cuda", opencl_platform: str = "pocl",
               math: str | None = None) -> Device:
    """Create the device called ``name``.

    ``auto`` picks ``cuda`` where CuPy finds a GPU, else ``cpu``, and records why in
    ``Device.reason``. ``cuda`` without a usable GPU raises DeviceUnavailableError naming
    the cause and ``--device cpu``. ``kernels`` ('cuda' or 'numba') picks the CUDA C kernels
    or the Numba alternates for the memory-bound ops on ``cuda``. ``math`` ('fp32', 'tf32'
    or None for the device's default) is how the convolutions multiply: see
    :func:`choose_math`.
    """
    if name not in DEVICE_NAMES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_NAMES)}")
    if name == "cpu":
        device = Device("cpu")
    elif name == "opencl":
        from .opencl import OpenCLRuntime

        device = Device("opencl", _remember(OpenCLRuntime(opencl_platform)))
    else:
        from .cuda import CudaRuntime

        try:
            device = Device("cuda", _remember(CudaRuntime(kernels)), reason="auto: CuPy found a GPU" if name == "auto" else "")
        except DeviceUnavailableError as exc:
            if name == "cuda":
                raise
            device = Device("cpu", reason=f"auto: no GPU ({str(exc).split('(')[0].strip()})")
    choose_math(device, math)
    return device


MATHS = ("fp32", "tf32")


def add_math_argument(parser) -> None:
    """The ``--math`` option every program that runs the convolutions shares."""
    parser.add_argument("--math", choices=MATHS, help="how convolutions multiply: tf32 on tensor cores or fp32 "
                                                      "(default: tf32 on a GPU of sm_80 or newer, as cuDNN does; else fp32)")


def choose_math(device: Device, math: str | None) -> None:
    """Set how the device's GEMM kernels multiply: ``fp32`` (CUDA cores) or ``tf32`` (tensor cores).

    The default follows cuDNN and PyTorch for convolutions: tf32 on a GPU with TF32 tensor
    cores (sm_80 and newer), fp32 elsewhere. opencl runs fp32 unless asked, and then the
    tensor-core kernels' emulation (bit-exact TF32 rounding; for tests). The cpu device
    computes in FP32 (or float64) and refuses tf32.
    """
    if math is not None and math not in MATHS:
        raise ValueError(f"--math must be one of {', '.join(MATHS)}, got {math!r}")
    if device.runtime is None:
        if math == "tf32":
            raise ValueError("--math tf32 runs on a kernel runtime (cuda on sm_80 and newer, or opencl's emulation); "
                             "the cpu device computes in FP32: use --math fp32 or leave it out")
        return
    if device.name == "cuda":
        sm = device.runtime.compute_capability()
        if math == "tf32" and sm < 80:
            raise ValueError(f"--math tf32 needs TF32 tensor cores (sm_80 and newer); this GPU is sm_{sm}: use --math fp32")
        device.runtime.math = math or ("tf32" if sm >= 80 else "fp32")
    else:
        device.runtime.math = math or "fp32"


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
