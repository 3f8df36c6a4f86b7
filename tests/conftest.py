"""Shared test set-up: hypothesis profiles and the devices every kernel test runs on.

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


@pytest.fixture(scope="session")
def opencl_device():
    """The ``opencl`` device on PoCL: the kernels/*.cu sources executed on the CPU."""
    from cunet.device import get_device

    return get_device("opencl", opencl_platform="pocl")


@pytest.fixture(scope="session", params=["cpu", "opencl"])
def device(request, opencl_device):
    """Each kernel test runs on the NumPy/Numba path and on PoCL."""
    from cunet.device import get_device

    return opencl_device if request.param == "opencl" else get_device("cpu")


@pytest.fixture
def rng():
    """A seeded generator, so failures reproduce."""
    return np.random.default_rng(20150518)
