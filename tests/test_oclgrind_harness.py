"""The sanitiser itself must be able to fail: known-bad kernels in the dialect are flagged.

These kernels go through the real prelude, so they also prove that __syncthreads() is a
real barrier in the OpenCL mapping: the same kernel is clean with it and racy without it.
"""
import os
import subprocess
import sys

import pytest

from helpers import OCLGRIND_ERROR_WORDS, ROOT

BAD_KERNELS = r'''
KERNEL void shift_left(GLOBAL const float* x, GLOBAL float* y, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i + 1];            /* off by one: reads x[n] */
}

KERNEL void neighbour_sum(GLOBAL const float* x, GLOBAL float* y, int n)
{
    __shared__ float tile[64];
    int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    tile[t] = i < n ? x[i] : 0.0f;
#ifdef WITH_BARRIER
    __syncthreads();
#endif
    if (i < n) y[i] = tile[t] + tile[(t + 1) % 64];
}
'''

RUNNER = r'''
import numpy as np, pyopencl as cl, pyopencl.array as cla, sys
from cunet.kernels import KERNEL_DIR
source = (KERNEL_DIR / "prelude.h").read_text() + open(sys.argv[1]).read()
platform = [p for p in cl.get_platforms() if p.name == "Oclgrind"][0]
ctx = cl.Context(platform.get_devices()); queue = cl.CommandQueue(ctx)
program = cl.Program(ctx, source).build(options=sys.argv[3:])
x = cla.to_device(queue, np.arange(64, dtype=np.float32)); y = cla.empty(queue, 64, np.float32)
getattr(program, sys.argv[2])(queue, (64,), (64,), x.data, y.data, np.int32(64)); queue.finish()
'''


def oclgrind_log(tmp_path, kernel, *options):
    src, log = tmp_path / "bad.cu", tmp_path / f"{kernel}.log"
    src.write_text(BAD_KERNELS)
    env = dict(os.environ, OCLGRIND_DATA_RACES="1", OCLGRIND_LOG=str(log))
    subprocess.run([sys.executable, "-c", RUNNER, str(src), kernel, *options], env=env, cwd=ROOT, check=True, timeout=120)
    text = log.read_text() if log.exists() else ""
    return text, any(w in text for w in OCLGRIND_ERROR_WORDS)


@pytest.mark.oclgrind
def test_out_of_bounds_read_is_flagged(tmp_path):
    text, flagged = oclgrind_log(tmp_path, "shift_left")
    assert flagged and "Invalid read" in text


@pytest.mark.oclgrind
def test_missing_barrier_is_a_race_and_the_barrier_fixes_it(tmp_path):
    text, flagged = oclgrind_log(tmp_path, "neighbour_sum")
    assert flagged and "data race" in text
    text, flagged = oclgrind_log(tmp_path, "neighbour_sum", "-DWITH_BARRIER=1")
    assert not flagged, text
