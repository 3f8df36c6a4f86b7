"""The benchmarks run, print what they promise, and fail clearly where they cannot run.

No timed assertions: these tests check that each benchmark's command line works on tiny
shapes, that its JSON has the documented keys, that the cuda path refuses cleanly on a
machine without a GPU, and that the GPU cost model's arithmetic is right on a case worked
by hand. Also the serial/parallel CPU loop helper (cunet.cpu.parallel.SerialOrParallel):
both compiled variants agree bit for bit, and the threshold picks as documented.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import has_gpu

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the benchmarks package lives beside cunet, not inside it


def run_cli(*args, timeout=120):
    """python -m <args> from the repository root; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# --- benchmarks.kernels ------------------------------------------------------------------------------


def test_kernels_cli_prints_a_table():
    done = run_cli("benchmarks.kernels", "--quick", "--no-torch", "--ops", "conv2d,maxpool,sgd")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "# command: python -m benchmarks.kernels --quick" in out
    assert "# load average" in out and "peak compute" in out and "peak memory" in out
    for op in ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_params", "maxpool2x2_forward",
               "maxpool2x2_backward", "sgd_momentum_update"):
        assert op in out
    assert "BLAS GEMM" in out and "FAILED" not in out


def test_kernels_json_has_the_documented_keys():
    done = run_cli("benchmarks.kernels", "--quick", "--json", "--no-torch")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for key in ("benchmark", "command", "device", "timer", "machine", "config", "load_average_before",
                "load_average_after", "peak", "results", "failed"):
        assert key in report, key
    assert report["benchmark"] == "kernels" and report["failed"] == 0
    assert {"gflops", "gbps", "gflops_source", "gbps_source"} <= set(report["peak"])
    ops = {r["op"] for r in report["results"]}
    from cunet import ops as cunet_ops

    # every op a step runs, plus relu_forward; not the helpers that launch nothing of their own
    # (drop-out's mask and the raw Philox stream are inside dropout_*, softmax_ce_check validates)
    assert ops == set(cunet_ops.__all__) - {"dropout_mask", "philox_bits", "softmax_ce_check"}
    for r in report["results"]:
        assert r["validated"] is True
        for key in ("op", "layers", "count", "shapes", "flops", "bytes", "bound", "median_s", "times_s", "gbps",
                    "gflops", "peak_fraction", "max_rel_err"):
            assert key in r, (r["op"], key)
        if r["op"].startswith(("conv2d", "upconv")):
            assert r["bound"] == "compute" and r["ceiling_gemm_s"] > 0


def test_kernels_pytorch_peer_where_installed():
    if not has_torch():
        pytest.skip("PyTorch is not installed: the peer column is left out")
    done = run_cli("benchmarks.kernels", "--quick", "--json", "--ops", "upconv", "--layers", "up0", "--no-ceiling")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    assert results and all(r["torch_median_s"] > 0 for r in results)


def test_kernels_unknown_op_family_is_an_error():
    done = run_cli("benchmarks.kernels", "--quick", "--ops", "convolution")
    assert done.returncode == 2 and "unknown op families" in done.stderr and "Traceback" not in done.stderr


def fake_cupy(name, props, attributes):
    """Just enough of CuPy's runtime API for harness.cuda_peaks."""
    from types import SimpleNamespace

    runtime = SimpleNamespace(getDeviceProperties=lambda i: dict(props, name=name.encode()),
                              deviceGetAttribute=lambda attr, i: attributes[attr])
    return SimpleNamespace(cuda=SimpleNamespace(runtime=runtime, Device=lambda: SimpleNamespace(id=0)))


def test_cuda_peaks_of_a_known_and_an_unknown_gpu():
    from benchmarks import harness

    props = dict(major=8, minor=6, multiProcessorCount=84, memoryBusWidth=384)
    # CUDA 13's properties have no clockRate / memoryClockRate: the attributes give them
    attributes = {harness.CUDA_ATTR_CLOCK_RATE: 1_860_000, harness.CUDA_ATTR_MEMORY_CLOCK_RATE: 9_751_000}
    unknown = harness.cuda_peaks(fake_cupy("NVIDIA GeForce RTX 3090 Ti", props, attributes))
    assert unknown.gflops == pytest.approx(84 * 128 * 2 * 1.86e6 * 1e3 / 1e9)   # 40 TFLOP/s
    assert unknown.gbps == pytest.approx(2 * 9.751e9 * 384 / 8 / 1e9)           # 936 GB/s
    with_props = harness.cuda_peaks(fake_cupy("NVIDIA GeForce RTX 3090 Ti", dict(props, clockRate=1_860_000,
                                                                                  memoryClockRate=9_751_000), {}))
    assert (with_props.gflops, with_props.gbps) == (unknown.gflops, unknown.gbps)
    h200 = harness.cuda_peaks(fake_cupy("NVIDIA H200", dict(props, major=9, minor=0), attributes))
    assert (h200.gflops, h200.gbps) == (67_000, 4_800)


@pytest.mark.parametrize("module", ["benchmarks.kernels", "benchmarks.train_step"])
def test_cuda_without_a_gpu_fails_clearly(module):
    if has_gpu():
        pytest.skip("this machine has a GPU")
    done = run_cli(module, "--device", "cuda", "--quick")
    assert done.returncode == 2
    assert done.stderr.startswith("error: --device cuda")
    assert "--device cpu" in done.stderr and "Traceback" not in done.stderr


def test_kernel_references_agree_with_cunet_on_odd_shapes():
    """The NumPy references the benchmark validates against are themselves right (vs the cpu ops)."""
    from benchmarks import kernels
    from cunet import ops

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    np.testing.assert_allclose(kernels.ref_conv_forward(x, w, b, True), ops.conv2d_forward(x, w, b, relu=True), atol=1e-5)
    dy = rng.standard_normal((2, 5, 7, 5)).astype(np.float32)
    np.testing.assert_allclose(kernels.ref_conv_backward_input(dy, w), ops.conv2d_backward_input(dy, w), atol=1e-5)
    for got, want in zip(kernels.ref_conv_backward_params(x, dy), ops.conv2d_backward_params(x, dy)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    wu = rng.standard_normal((3, 4, 2, 2)).astype(np.float32)
    bu = rng.standard_normal(4).astype(np.float32)
    np.testing.assert_allclose(kernels.ref_upconv_forward(x, wu, bu), ops.upconv2x2_forward(x, wu, bu), atol=1e-5)
    dyu = rng.standard_normal((2, 4, 18, 14)).astype(np.float32)
    np.testing.assert_allclose(kernels.ref_upconv_backward_input(dyu, wu), ops.upconv2x2_backward_input(dyu, wu), atol=1e-5)
    for got, want in zip(kernels.ref_upconv_backward_params(x, dyu), ops.upconv2x2_backward_params(x, dyu)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


# --- benchmarks.train_step ------------------------------------------------------------------------------


def test_train_step_cli_prints_a_table():
    done = run_cli("benchmarks.train_step", "--quick", "--no-memory", "--breakdown")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "# command: python -m benchmarks.train_step --quick" in out and "# load average" in out
    assert "cunet" in out and "step time" in out and "conv2d_forward" in out
    if has_torch():
        assert "cunet / PyTorch" in out and "validated: losses" in out


def test_train_step_json_has_the_documented_keys():
    done = run_cli("benchmarks.train_step", "--quick", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for key in ("benchmark", "command", "device", "machine", "config", "model", "load_average_before",
                "load_average_after", "time", "memory", "memory_method"):
        assert key in report, key
    # Two counted rounds were asked for; when other jobs disturbed every round, all rounds are used.
    expected_rounds = len(report["rounds"]) if report["disturbed"] else 2
    assert report["time"]["cunet"]["median_s"] > 0 and len(report["time"]["cunet"]["times_s"]) == expected_rounds
    cunet_memory = report["memory"]["cunet"]
    for key in ("baseline_rss", "peak_rss", "step_peak", "sampled_peak_rss", "tracemalloc_peak"):
        assert key in cunet_memory, key
    if has_torch():
        assert report["loss_check_rel_diff"] < 1e-4
        assert {"time", "step_peak_memory", "peak_rss"} <= set(report["ratio"])
        assert report["memory"]["torch"]["peak_rss"] > 0


# --- benchmarks.gpu_model ---------------------------------------------------------------------------------


def test_gpu_model_conv3x3_cost_by_hand():
    """x [1, 64, 10, 10] * w [128, 64, 3, 3] -> y [1, 128, 8, 8].

    FLOPs: 128 * 8 * 8 outputs, each 64 * 3 * 3 = 576 multiply-adds: 2 * 8192 * 576 = 9,437,184.
    Bytes: x 6,400 + w 73,728 + b 128 + y 8,192 floats = 88,448 floats = 353,792 bytes.
    A100 (19.5 TFLOP/s, 1,555 GB/s): 0.484 us of arithmetic vs 0.228 us of traffic: compute-bound.
    With TF32 tensor cores (156 TFLOP/s) the arithmetic takes 0.0605 us: the same launch is memory-bound.
    """
    from benchmarks import gpu_model
    from benchmarks.harness import GPU_SPECS
    from cunet.ops.gemm import TILE_CONFIGS, gemm_module

    M = gpu_model.MetaArray
    args = (M((1, 64, 10, 10)), M((128, 64, 3, 3)), M((128,)), M((1, 128, 8, 8))) + tuple(
        np.int32(v) for v in (1, 64, 10, 10, 128, 1))
    a100 = GPU_SPECS["A100 40GB"]
    for math_mode, peak in (("fp32", 19.5e12), ("tf32", 156e12)):
        module = gemm_module("conv2d.cu", TILE_CONFIGS[0], math_mode, FILTER=3)
        launch = gpu_model.Launch(module, "conv2d_forward", (1, 2, 1), (128, 1, 1), args)
        flops, nbytes = gpu_model.cost(launch)
        assert flops == 9_437_184
        assert nbytes == 353_792
        assert gpu_model.compute_peak(launch, a100) * 1e9 == peak   # TF32 modules at the tensor-core peak
        t = gpu_model.roofline_seconds(flops, nbytes, gpu_model.compute_peak(launch, a100), a100["gbps"])
        assert math.isclose(t, max(9_437_184 / peak, nbytes / 1.555e12))
    assert math.isclose(nbytes / 1.555e12, 2.275e-7, rel_tol=1e-3)


def test_gpu_model_records_the_whole_step():
    """The recorded step's convolution FLOPs are three times the forward MACs x 2 of the summary (fwd, dx, dw)."""
    from benchmarks import gpu_model
    from cunet.summary import layer_table

    launches = gpu_model.record_train_step(44, 2, 3)
    rows = layer_table(44, 2, 3)
    conv_macs = sum(r.macs for r in rows if r.kind.startswith("conv"))
    first = next(r for r in rows if r.name == "down0.conv1")
    fwd = sum(launch.flops for launch in launches if launch.kernel == "conv2d_forward")
    dx = sum(launch.flops for launch in launches if launch.kernel == "conv2d_backward_input")
    assert fwd == 2 * conv_macs
    assert dx == 2 * (conv_macs - first.macs)  # the image needs no gradient
    from cunet.unet import UNet

    n_params = len(UNet(base=2, depth=3).parameters())  # one SGD launch per parameter tensor
    assert sum(launch.kernel == "sgd_momentum_update" for launch in launches) == n_params


def test_gpu_model_cli_json_is_modelled():
    done = run_cli("benchmarks.gpu_model", "--quick", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["kind"] == "modelled" and report["launches"] == len(report["rows"]) > 0
    a100 = report["totals"]["A100"]
    for key in ("step_roofline_s", "images_per_s", "peak_gflops", "peak_gbps", "compute_bound_s", "memory_bound_s"):
        assert key in a100
    row = report["rows"][0]
    for key in ("kernel", "grid", "flops", "bytes", "intensity", "A100_roofline_s", "sm_80_registers", "sm_80_occupancy"):
        assert key in row, key
    table = run_cli("benchmarks.gpu_model", "--quick", "--no-compile")
    assert table.returncode == 0 and "MODELLED" in table.stdout and "measured" in table.stdout


# --- the serial/parallel loop helper -----------------------------------------------------------------------


def test_serial_and_parallel_variants_agree_bit_for_bit():
    from cunet.ops import dropout, maxpool, relu, sgd, softmax_ce
    from cunet.ops.random import split_seed

    rng = np.random.default_rng(7)
    x = rng.standard_normal(300_000).astype(np.float32)
    dy = rng.standard_normal(300_000).astype(np.float32)
    for loop, make in [
        (relu._relu_forward_cpu, lambda: (x, np.empty_like(x))),
        (relu._relu_backward_cpu, lambda: (x, dy, np.empty_like(x))),
        (sgd._sgd_cpu, lambda: (x.copy(), dy.copy(), dy, np.float32(0.01), np.float32(0.99), np.float32(1e-4))),
        (dropout._dropout_cpu, lambda: (x, np.empty_like(x), np.float32(0.5), np.float32(2.0), *split_seed(9), 3)),
    ]:
        a, b = make(), make()
        loop.serial(*a)
        loop.parallel(*b)
        for u, v in zip(a, b):
            if isinstance(u, np.ndarray):
                np.testing.assert_array_equal(u, v, err_msg=loop.py_func.__name__)
    img = rng.standard_normal((6, 40, 30)).astype(np.float32)
    outs = [(np.empty((6, 20, 15), np.float32), np.empty((6, 20, 15), np.uint8)) for _ in range(2)]
    maxpool._forward_cpu.serial(img, *outs[0])
    maxpool._forward_cpu.parallel(img, *outs[1])
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    logits = rng.standard_normal(2 * 64 * 64).astype(np.float32)
    labels = rng.integers(0, 2, 64 * 64).astype(np.int32)
    weights = rng.random(64 * 64).astype(np.float32)
    res = []
    for variant in (softmax_ce._forward_cpu.serial, softmax_ce._forward_cpu.parallel):
        probs, rows = np.empty_like(logits), np.empty(64)
        variant(logits, labels, weights, probs, rows, 2, 64 * 64, 64)
        res.append((probs, rows))
    np.testing.assert_array_equal(res[0][0], res[1][0])
    np.testing.assert_array_equal(res[0][1], res[1][1])


def test_threshold_picks_as_documented():
    from cunet.cpu import parallel as common
    from cunet.cpu import upconv
    from cunet.ops import dropout, maxpool, relu, sgd, softmax_ce

    assert common.PARALLEL_MIN_WORK == 1 << 17
    for loop in (relu._relu_forward_cpu, relu._relu_backward_cpu, sgd._sgd_cpu, maxpool._forward_cpu,
                 maxpool._backward_cpu, upconv._scatter_rows_cpu, sgd._average_cpu):
        assert loop.min_work == common.PARALLEL_MIN_WORK
    assert dropout._dropout_cpu.min_work == dropout.PHILOX_MIN_WORK
    assert softmax_ce._forward_cpu.min_work == softmax_ce.SOFTMAX_MIN_WORK
    loop = relu._relu_forward_cpu
    assert loop.choose(0) is loop.serial
    assert loop.choose(loop.min_work - 1) is loop.serial
    assert loop.choose(loop.min_work) is loop.parallel
    assert loop.choose(10**9) is loop.parallel
    # the two variants are two functions, so Numba's disk cache keeps their machine code apart
    assert loop.serial.py_func.__qualname__ != loop.parallel.py_func.__qualname__


def test_ops_route_by_size(monkeypatch):
    """relu_forward on a small array runs the serial loop, on a large one the parallel loop."""
    from cunet.ops import relu

    calls = []
    loop = relu._relu_forward_cpu
    monkeypatch.setattr(loop, "choose", lambda work: calls.append(work) or type(loop).choose(loop, work))
    relu.relu_forward(np.ones(100, np.float32))
    relu.relu_forward(np.ones(loop.min_work, np.float32))
    assert calls == [100, loop.min_work]


def test_threshold_cli_json():
    done = run_cli("benchmarks.threshold", "--min-log2", "8", "--max-log2", "9", "--repeats", "2", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["benchmark"] == "threshold" and report["results"]
    for key in ("loop", "work", "serial_s", "parallel_s", "speedup", "min_work", "picks"):
        assert key in report["results"][0]


def test_relu_backward_in_place_matches():
    """relu_backward(y, dy, out=dy) (what Conv2dFn.backward can use to save an allocation) = the default."""
    from cunet.ops import relu_backward

    g = np.random.default_rng(5)
    for n in (1000, 300_000):  # the serial and the parallel loop
        y = np.maximum(g.standard_normal(n).astype(np.float32), 0)
        dy = g.standard_normal(n).astype(np.float32)
        want = relu_backward(y, dy)
        got = relu_backward(y, dy, out=dy)
        assert got is dy
        np.testing.assert_array_equal(got, want)


# --- benchmarks.conv2d_cpu ---------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["auto", "winograd"])
def test_conv2d_cpu_cli_validates_and_prints_a_table(algorithm):
    """Every layer's three results are checked against PyTorch's before the table is printed."""
    if not has_torch():
        pytest.skip("benchmarks.conv2d_cpu compares with PyTorch, which is not installed")
    result = run_cli("benchmarks.conv2d_cpu", "--quick", "--algorithm", algorithm)
    assert result.returncode == 0, result.stderr
    from cunet.cpu import conv2d as cpu_conv2d
    if cpu_conv2d._host is None:
        assert "measured sgemm peak: " in result.stdout and ", 512^3, best of 3;" in result.stdout
    else:   # the %pk columns divide by the C++ FMA loop's rate; sgemm's is printed as its share of it
        assert re.search(r"measured FMA peak: \d+ GFLOP/s \(cunet._host, every thread; %pk below\), "
                         r"sgemm \d+ GFLOP/s = \d+% of it \(NumPy: .+, 512\^3\); best of 3", result.stdout), result.stdout
    assert "malloc: cunet.train's policy" in result.stdout or "malloc: the C library's defaults" in result.stdout
    assert "U-Net base 2, 44x44, depth 3" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("down", "up", "head"))]
    assert len(rows) == 11   # 2 convs per level (3 down, 2 up) + the head
    # A row: name, "C->K", "@", "HxW", ["1x1"], the algorithms of fwd, bwd_x and bwd_w (a letter
    # each: d, w, i), then 4 cells per op (ms, torch ms, GF/s, %pk) or one "-" for an op that did
    # not run (the first layer's bwd_x).
    algorithms = {row[0]: row[5] if row[4] == "1x1" else row[4] for row in rows}
    assert all(len(letters) == 3 and set(letters) <= set("dwi") for letters in algorithms.values()), algorithms
    assert algorithms["head"] == "iii"   # 1x1: neither the direct kernels nor Winograd run it
    expected = "www" if algorithm == "winograd" else "ddd"   # --quick's layers are all narrow
    assert all(letters == expected for name, letters in algorithms.items() if name != "head"), algorithms
    assert len(rows[0]) == 5 + 4 + 1 + 4
    assert all(len(row) == 5 + 3 * 4 for row in rows[1:-1])
    assert "all three: cunet" in result.stdout and "% of peak)" in result.stdout


def test_conv2d_cpu_gflops_by_hand():
    from benchmarks.conv2d_cpu import conv_flops, conv_gflops

    # 3x3, N=2, C=3 -> K=4, 10x12 -> 8x10 outputs: 2 * 2*4*3*9 * 80 = 34,560 FLOPs
    assert conv_flops((2, 3, 10, 12), (4, 3, 3, 3)) == 34_560
    assert conv_gflops((2, 3, 10, 12), (4, 3, 3, 3), 1e-3) == pytest.approx(34_560 / 1e-3 / 1e9)
    # 1x1, N=1, C=8 -> K=16, 5x5 (no border lost): 2 * 16*8 * 25 = 6,400 FLOPs in 2 s
    assert conv_gflops((1, 8, 5, 5), (16, 8, 1, 1), 2.0) == pytest.approx(3.2e-6)


def test_conv2d_cpu_validation_catches_a_wrong_result():
    torch = pytest.importorskip("torch")
    from benchmarks.conv2d_cpu import validate

    theirs = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 4, 6, 6)).astype(np.float32))
    ours = theirs.numpy().copy()
    validate((1, 4, 8, 8), (4, 4, 3, 3), False, False, (ours, theirs))   # equal: passes
    ours[0, 1, 2, 3] += 1.0   # one wrong output
    with pytest.raises(AssertionError, match="forward"):
        validate((1, 4, 8, 8), (4, 4, 3, 3), False, False, (ours, theirs))
