"""Shared test set-up: hypothesis profiles and the devices every kernel test runs on.

Devices: ``cpu`` (NumPy, Numba, the C++ kernels), ``opencl`` (the kernels/*.cu sources on PoCL), and, where
a GPU and CuPy are present, ``cuda`` (the same sources through NVRTC) and ``cuda-numba``
(the Numba CUDA alternates for the memory-bound ops). Without a GPU the two cuda devices
are skipped with the reason, so a plain run shows them as skipped, never as absent. The
cuda parameters carry the ``cuda`` marker: ``pytest -m cuda`` runs exactly the GPU tests
(benchmarks/gpu_check.py does).

Profiles (HYPOTHESIS_PROFILE=name): ``ci`` (the default: derandomised, a modest number
of examples, so the suite is fast and repeatable), ``dev`` (fewer, for iterating) and
``thorough`` (many, for a long run before a release).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))  # so tests can import helpers.py

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=20, derandomize=True, print_blob=True, **_common)
settings.register_profile("dev", max_examples=8, **_common)
settings.register_profile("thorough", max_examples=300, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The Numba CUDA simulator must be switched on before Numba is imported, so those tests
# run in a pytest session of their own (tests/test_numba_cuda.py starts it).
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["cudasim"]


def _opencl_or_skip(math: str):
    """The ``opencl`` device on PoCL with the given math, or a skip that says why PoCL cannot run here."""
    from helpers import skip_without_pocl

    from cunet.device import get_device

    skip_without_pocl()
    return get_device("opencl", opencl_platform="pocl", math=math)


@pytest.fixture(scope="session")
def opencl_device():
    """The ``opencl`` device on PoCL: the kernels/*.cu sources executed on the CPU."""
    return _opencl_or_skip("fp32")


def _cuda_or_skip(kernels: str, math: str):
    """The ``cuda`` device with the given kernels and math, or a skip that says why there is none."""
    from cunet.device import DeviceUnavailableError, get_device

    try:
        return get_device("cuda", kernels=kernels, math=math)
    except DeviceUnavailableError as exc:
        pytest.skip(f"no GPU for the cuda tests: {str(exc).split('. ')[0]}")
    except ValueError as exc:  # a GPU without TF32 tensor cores
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def cuda_device():
    """``cuda`` with the CUDA C kernels, convolutions in FP32 (skipped without a GPU)."""
    return _cuda_or_skip("cuda", "fp32")


@pytest.fixture(scope="session")
def cuda_numba_device():
    """``cuda`` with the Numba CUDA alternates for the memory-bound ops (skipped without a GPU)."""
    return _cuda_or_skip("numba", "fp32")


@pytest.fixture(scope="session")
def cuda_tf32_device():
    """``cuda`` with the convolutions on TF32 tensor cores (skipped without a GPU of sm_80 or newer)."""
    return _cuda_or_skip("cuda", "tf32")


@pytest.fixture(scope="session")
def opencl_tf32_device():
    """PoCL running the tensor-core kernels' emulation (TF32 rounding, fragments by value)."""
    return _opencl_or_skip("tf32")


CUDA = pytest.mark.cuda
GPU_RUNTIMES = ["opencl", pytest.param("cuda", marks=CUDA), pytest.param("cuda-numba", marks=CUDA)]
FIXTURES = {"opencl": "opencl_device", "opencl-tf32": "opencl_tf32_device", "cuda": "cuda_device",
            "cuda-numba": "cuda_numba_device", "cuda-tf32": "cuda_tf32_device"}


def _named_device(request, name: str):
    if name == "cpu":
        from cunet.device import get_device

        return get_device("cpu")
    return request.getfixturevalue(FIXTURES[name])


@pytest.fixture(scope="session", params=["cpu", *GPU_RUNTIMES])
def device(request):
    """Each kernel test runs on the NumPy/Numba path, on PoCL, and on a GPU where there is one."""
    return _named_device(request, request.param)


@pytest.fixture(scope="session", params=["cpu", "opencl", "opencl-tf32", pytest.param("cuda", marks=CUDA),
                                         pytest.param("cuda-tf32", marks=CUDA)])
def gemm_device(request):
    """The GEMM ops' tests (conv2d, up-conv) run in both math modes: FP32 and TF32 tensor cores
    (emulated on PoCL, real on a GPU of sm_80 or newer). Compare with helpers.gemm_reference_inputs."""
    return _named_device(request, request.param)


@pytest.fixture(scope="session", params=GPU_RUNTIMES)
def gpu_device(request):
    """A device with a kernel runtime: PoCL here, and cuda (both kernel sets) where a GPU is."""
    return _named_device(request, request.param)


@pytest.fixture
def rng():
    """A seeded generator, so failures reproduce."""
    return np.random.default_rng(20150518)
