"""Helpers for the kernel tests: running code under Oclgrind, and the GEMM ops' operands as TF32 rounds them."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

from cunet.ops.gemm import round_to_tf32 as tf32  # noqa: F401  (the tests' name for it)

# The real ISBI 2012 training data, when present (never part of the repository):
# $CUNET_ISBI, else ../shared/data/isbi2012 beside the repository root.
ISBI_DIR = Path(os.environ.get("CUNET_ISBI", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"))

TESTS = Path(__file__).parent
ROOT = TESTS.parent

# Words Oclgrind writes at the head of each report: invalid reads/writes, data races,
# uninitialised accesses, barrier divergence, and its generic error messages.
OCLGRIND_ERROR_WORDS = ("Invalid", "race", "error", "Error", "divergence", "Uninitialized")


@functools.cache
def pocl_unavailable() -> str | None:
    """Why PoCL cannot run the kernels on this machine, or None where it can. Its wheel's LLVM 14
    cannot compile for CPUs newer than it (AMD Zen 4 and 5: cunet/device/opencl.py); the
    opencl tests are then skipped with this reason, and run wherever PoCL works (the Xeon VMs)."""
    from cunet.device import DeviceUnavailableError, get_device

    try:
        get_device("opencl", opencl_platform="pocl")
    except DeviceUnavailableError as exc:
        return f"no PoCL for the opencl tests: {exc}"
    return None


def skip_without_pocl() -> None:
    """Skip the calling test where PoCL cannot run here (see pocl_unavailable)."""
    import pytest

    reason = pocl_unavailable()
    if reason:
        pytest.skip(reason)


def has_gpu() -> bool:
    """Whether CuPy finds a GPU here (tests of the no-GPU paths skip where one is)."""
    from cunet.device import DeviceUnavailableError, get_device

    try:
        get_device("cuda")
    except DeviceUnavailableError:
        return False
    return True


def gemm_reference_inputs(device, *arrays):
    """The GEMM ops' operands as the device multiplies them: rounded to TF32 where its math is
    tf32 (the reference then sums them exactly, in float64), unchanged otherwise."""
    tf32_math = device.runtime is not None and device.runtime.math == "tf32"
    return tuple(tf32(a) if tf32_math else a for a in arrays)


def run_under_oclgrind(test_module: str, case: str, tmp_path: Path, timeout: float = 240, math: str = "fp32") -> str:
    """Run ``case(device)`` from ``tests/<test_module>.py`` on Oclgrind; return its log.

    Oclgrind reads its settings from the environment when it loads, so the case runs in
    a fresh interpreter with race detection on and the reports sent to a file.
    """
    log = tmp_path / f"oclgrind-{case}.log"
    env = dict(os.environ, OCLGRIND_DATA_RACES="1", OCLGRIND_LOG=str(log), PYTHONPATH=str(TESTS))
    code = (
        f"from cunet.device import get_device\nimport {test_module} as m\n"
        f"m.{case}(get_device('opencl', opencl_platform='oclgrind', math={math!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    text = log.read_text() if log.exists() else ""
    assert proc.returncode == 0, f"the case crashed under Oclgrind:\n{proc.stdout}\n{proc.stderr}\n{text}"
    return text


def assert_oclgrind_clean(log: str) -> None:
    """Fail, quoting the report, if Oclgrind reported any error."""
    flagged = [line for line in log.splitlines() if any(w in line for w in OCLGRIND_ERROR_WORDS)]
    assert not flagged, "Oclgrind reported:\n" + log[:4000]
