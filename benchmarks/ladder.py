"""``python -m benchmarks.ladder conv2d``: validate, then time, every rung of a kernel's teaching ladder.

    python -m benchmarks.ladder conv2d                      # on PoCL (opencl): a correctness run
    python -m benchmarks.ladder conv2d --device cuda        # on a GPU: CUDA events, GFLOP/s, % of peak
    python -m benchmarks.ladder conv2d --shape 1,64,570,570,64

The rungs (cunet.kernels.ladder) go from one thread per output to TF32 tensor cores. Each
is first checked against the NumPy reference (benchmarks.kernels.ref_conv_forward; the TF32
rung against the reference on TF32-rounded inputs) and reported FAILED, untimed, if it
disagrees; then timed (median of --repeats after a warm-up). On a GPU the table gives
GFLOP/s and the share of the peak that bounds the rung (FP32, or TF32 for v6). PoCL runs
the same kernels on the CPU, correct but nothing like a GPU: its timings say nothing about
GPUs, so there the table adds each rung's MODELLED roofline time on an A100 instead, from
the global traffic its tiling implies (Rung.bytes_per_fma) against the GPU's peaks.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from . import harness
from .kernels import make_device, ref_conv_forward

DEFAULT_SHAPES = {"cuda": (1, 64, 570, 570, 64), "opencl": (1, 16, 38, 38, 32)}
MODEL_GPU = "A100 40GB"
TOLERANCE = 1e-4  # of max |reference|: float32 sums of up to C*9 terms in any order


def reference(rung, x, w, b) -> np.ndarray:
    """The rung's expected output: exact sums of what it multiplies (TF32-rounded for v6)."""
    from cunet.ops.gemm import round_to_tf32

    if rung.math == "tf32":
        x, w = round_to_tf32(x), round_to_tf32(w)
    return ref_conv_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), False)


def modelled_seconds(rung, macs: int, compulsory_bytes: int, spec: dict) -> float:
    """MODELLED: max(arithmetic at the peak, the rung's global traffic at the bandwidth) on ``spec``'s GPU."""
    peak = spec["tf32_gflops"] if rung.math == "tf32" else spec["gflops"]
    traffic = max(macs * rung.bytes_per_fma, compulsory_bytes)
    return max(2 * macs / (peak * 1e9), traffic / (spec["gbps"] * 1e9))


def run_ladder(rungs, device, shape, repeats: int, log=print) -> list[dict]:
    """Validate and time each rung on ``device`` at ``shape`` = (N, C, H, W, K); one dict per rung."""
    from cunet.kernels.ladder import FILTER, run_rung

    N, C, H, W, K = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((K, C, FILTER, FILTER)) * np.sqrt(2 / (9 * C))).astype(np.float32)
    b = (0.1 * rng.standard_normal(K)).astype(np.float32)
    xd, wd, bd = (device.to_device(a) for a in (x, w, b))
    OH, OW = H - FILTER + 1, W - FILTER + 1
    macs = N * OH * OW * K * C * FILTER * FILTER
    compulsory = 4 * (x.size + w.size + b.size + N * K * OH * OW)
    runtime, spec = device.runtime, harness.GPU_SPECS[MODEL_GPU]
    cuda = device.name == "cuda"
    timer = harness.CudaTimer(runtime.cupy) if cuda else harness.CpuTimer(device.synchronize, flush_bytes=0)
    peaks = harness.cuda_peaks(runtime.cupy) if cuda else None
    rows = []
    for rung in rungs:
        row = dict(rung=rung.name, summary=rung.summary, module=rung.module.label(), math=rung.math,
                   bytes_per_fma=rung.bytes_per_fma, flop_per_byte=2 / rung.bytes_per_fma,
                   modelled_a100_s=modelled_seconds(rung, macs, compulsory, spec))
        if rung.math == "tf32" and cuda and runtime.compute_capability() < 80:
            rows.append(dict(row, status="skipped: TF32 tensor cores need sm_80 or newer"))
            continue
        want = reference(rung, x, w, b)
        got = device.to_host(run_rung(rung, runtime, xd, wd, bd))
        error = float(np.abs(got - want).max() / (np.abs(want).max() or 1.0))
        row.update(max_rel_err=error)
        if not error <= TOLERANCE:
            rows.append(dict(row, status=f"FAILED: max error {error:.2e} x max|ref| > {TOLERANCE:.0e}"))
            log(f"{rung.name}: FAILED validation ({error:.2e})")
            continue
        times = harness.repeat(timer, lambda: run_rung(rung, runtime, xd, wd, bd), 1, repeats)
        seconds = harness.median(times)
        row.update(status="ok", median_s=seconds, gflops=2 * macs / seconds / 1e9)
        if peaks is not None:
            peak = peaks.tf32_gflops if rung.math == "tf32" and peaks.tf32_gflops else peaks.gflops
            row["peak_fraction"] = row["gflops"] / peak
        rows.append(row)
        log(f"{rung.name}: {harness.fmt_time(seconds)}")
    return rows


def format_rows(rows: list[dict], device_name: str) -> str:
    """The table for people."""
    table = [dict(rung=r["rung"], summary=r["summary"], status=r["status"],
                  time=harness.fmt_time(r.get("median_s")) if r.get("median_s") else "",
                  gflops=f"{r['gflops']:,.1f}" if r.get("gflops") else "",
                  peak=f"{100 * r['peak_fraction']:.1f}%" if r.get("peak_fraction") is not None else "",
                  ai=f"{r['flop_per_byte']:.1f}", model=harness.fmt_time(r["modelled_a100_s"]))
             for r in rows]
    columns = [("rung", "rung"), ("summary", "what changed"), ("status", "validated"), ("time", "time"),
               ("gflops", "GFLOP/s")]
    columns += [("peak", "% peak")] if device_name == "cuda" else []
    columns += [("ai", "FLOP/B (tiling)"), ("model", "MODELLED A100")]
    return harness.format_table(columns, table, left=3)


def main(argv=None) -> int:
    """Entry point; returns the exit code (1 if a rung failed validation, 2 for bad input)."""
    from cunet.kernels.ladder import LADDERS

    p = argparse.ArgumentParser(prog="python -m benchmarks.ladder", description=__doc__.split("\n\n")[0])
    p.add_argument("ladder", choices=sorted(LADDERS), help="which ladder")
    p.add_argument("--device", choices=("opencl", "cuda"), default="opencl")
    p.add_argument("--shape", help="N,C,H,W,K (default: the paper's first-level layer on cuda, a small one on opencl)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else DEFAULT_SHAPES[args.device]
        if len(shape) != 5 or min(shape) < 1 or shape[2] < 3 or shape[3] < 3:
            raise ValueError
    except ValueError:
        print(f"error: --shape must be five positive integers N,C,H,W,K with H, W >= 3, got {args.shape!r}",
              file=sys.stderr)
        return 2
    if args.repeats < 1:
        print(f"error: --repeats must be at least 1, got {args.repeats}", file=sys.stderr)
        return 2
    device = make_device(args.device)
    rows = run_ladder(LADDERS[args.ladder], device, shape, args.repeats,
                      log=lambda line: print(line, file=sys.stderr, flush=True))
    report = dict(benchmark="ladder", ladder=args.ladder, command=harness.command_line(), device=device.describe(),
                  shape=dict(zip("NCHWK", shape)), model_gpu=MODEL_GPU, rows=rows)
    if args.json:
        print(harness.dump_json(report))
    else:
        print(harness.header(f"cunet ladder: {args.ladder} forward, x {shape[:4]}, {shape[4]} filters of 3x3",
                             device.describe()))
        print(format_rows(rows, device.name))
        if device.name != "cuda":
            print(f"\n{device.name} (PoCL) runs these kernels on the CPU: correct, but its timings say nothing about "
                  "GPUs. The MODELLED column is each rung's roofline on an A100 40GB from the traffic its tiling "
                  "implies (FLOP/B) against 19.5 TFLOP/s FP32 (156 TF32) and 1,555 GB/s.")
    return 1 if any(r["status"].startswith("FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
