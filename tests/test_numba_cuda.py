"""The Numba CUDA alternates: PTX for real architectures, and a run under the simulator.

PTX: numba-cuda compiles each kernel through libNVVM (from the CUDA 12 wheels) for
sm_80 and sm_90 with the argument types the op code launches it with; no GPU needed.
Simulator: NUMBA_ENABLE_CUDASIM=1 must be set before Numba is first imported, so the
tests in tests/cudasim run in a pytest session of their own, started here.
"""
import importlib
import os
import pkgutil
import re
import subprocess
import sys

import pytest

import cunet.ops.numba_cuda as numba_cuda_pkg
from helpers import ROOT, TESTS

pytest.importorskip("numba.cuda", reason="numba-cuda comes with the test extra")

MODULES = sorted(m.name for m in pkgutil.iter_modules(numba_cuda_pkg.__path__))


def signatures():
    for name in MODULES:
        module = importlib.import_module(f"cunet.ops.numba_cuda.{name}")
        for kernel, sig in module.PTX_SIGNATURES.items():
            yield pytest.param(kernel, sig, id=f"{name}.{kernel.py_func.__name__}")


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm_80", "sm_90"])
@pytest.mark.parametrize("kernel,sig", list(signatures()))
def test_numba_kernel_compiles_to_ptx(kernel, sig, cc, monkeypatch):
    import types

    import numba.cuda.dispatcher
    from numba.cuda import compile_ptx

    # Kernels call the @njit per-element functions shared with the CPU path; numba-cuda
    # compiles such device functions for "the current device", which a GPU-less machine
    # lacks. Name the architecture instead (NVVM then compiles the whole module for cc).
    monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device", lambda: types.SimpleNamespace(compute_capability=cc))

    ptx, _ = compile_ptx(kernel.py_func, sig, cc=cc)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx and ".entry" in ptx


def test_every_numba_module_declares_its_kernels():
    for name in MODULES:
        module = importlib.import_module(f"cunet.ops.numba_cuda.{name}")
        assert module.PTX_SIGNATURES, f"cunet.ops.numba_cuda.{name} lists no kernels to check"


def test_numba_kernels_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "cudasim")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= len(MODULES), proc.stdout[-2000:]
