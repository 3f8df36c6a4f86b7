"""`import cunet` tells the cpu thread pools to sleep when idle, unless the user chose otherwise."""
import json
import os
import subprocess
import sys

PROBE = ("import json, os, sys; import cunet; import numpy; "
         "print(json.dumps({n: os.environ.get(n) for n in cunet.CPU_THREAD_SETTINGS} | "
         "{'numpy_first': cunet.NUMPY_LOADED_BEFORE_CUNET}))")


def run_probe(env_changes: dict, code: str = PROBE) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    env.update(env_changes)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_import_sets_both_pools_to_sleep_when_idle():
    got = run_probe({})
    assert got == {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4", "numpy_first": False}


def test_user_choices_are_kept():
    got = run_probe({"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_THREAD_TIMEOUT": "20"})
    assert got["OMP_WAIT_POLICY"] == "ACTIVE" and got["OPENBLAS_THREAD_TIMEOUT"] == "20"


def test_numpy_imported_first_is_recorded():
    assert run_probe({}, "import numpy; " + PROBE)["numpy_first"] is True


# keep_freed_memory: a second 64 MiB array after the first is freed page-faults no fresh pages in.
REUSE_PROBE = """
import json, resource, sys
import numpy as np
from cunet.cpu import TRAINING_MALLOC, keep_freed_memory
applied = keep_freed_memory(**TRAINING_MALLOC) if sys.argv[1] == "keep" else None
np.ones(16 << 20, np.float32)            # 64 MiB, freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(16 << 20, np.float32)            # the same size again
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def test_training_malloc_policy_reuses_freed_memory():
    """With cunet.train's policy the second array reuses the first one's pages; with glibc's
    defaults (a 64 MiB block is a fresh mmap) it faults in all 16384 of its 4 KiB pages
    (fewer where the kernel backs it with 2 MiB pages, still hundreds of times more)."""
    if not sys.platform.startswith("linux"):
        import pytest
        pytest.skip("glibc's malloc policy: Linux only")
    run = lambda mode: json.loads(subprocess.run([sys.executable, "-c", REUSE_PROBE, mode], capture_output=True,  # noqa: E731
                                                 text=True, check=True).stdout)
    keep, default = run("keep"), run("default")
    assert keep["applied"] is True
    assert keep["faults"] < 64 and default["faults"] > 4 * keep["faults"] + 8, (keep, default)
