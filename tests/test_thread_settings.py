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
