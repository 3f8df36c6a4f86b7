"""``python -m benchmarks.ladder conv2d``: validate, then time, every rung of a kernel's teaching ladder.

    python -m benchmarks.ladder conv2d                      # on PoCL (opencl): a correctness run
    python -m benchmarks.ladder softmax_ce                  # the loss: a reduction, three ways
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

MODEL_GPU = "A100 40GB"


class Conv2dProblem:
    """The convolution's forward: x [N, C, H, W] and 3x3 filters [K, C, 3, 3]; shape (N, C, H, W, K)."""

    default_shapes = {"cuda": (1, 64, 570, 570, 64), "opencl": (1, 16, 38, 38, 32)}
    shape_text = "N,C,H,W,K"
    tolerance = 1e-4  # of max |reference|: float32 sums of up to C*9 terms in any order

    @staticmethod
    def valid(shape) -> bool:
        return len(shape) == 5 and min(shape) >= 1 and shape[2] >= 3 and shape[3] >= 3

    @staticmethod
    def inputs(rng, shape):
        N, C, H, W, K = shape
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        w = (rng.standard_normal((K, C, 3, 3)) * np.sqrt(2 / (9 * C))).astype(np.float32)
        return x, w, (0.1 * rng.standard_normal(K)).astype(np.float32)

    @staticmethod
    def reference(rung, x, w, b) -> np.ndarray:
        """Exact sums of what the rung multiplies (TF32-rounded for v6)."""
        from cunet.ops.gemm import round_to_tf32

        if rung.math == "tf32":
            x, w = round_to_tf32(x), round_to_tf32(w)
        return ref_conv_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), False)

    @staticmethod
    def work(shape) -> tuple[int, int]:
        """(FLOPs, compulsory bytes: every input read once, the output written once)."""
        N, C, H, W, K = shape
        outputs = N * K * (H - 2) * (W - 2)
        return 2 * outputs * C * 9, 4 * (N * C * H * W + K * C * 9 + K + outputs)

    def title(self, shape) -> str:
        return f"conv2d forward, x {shape[:4]}, {shape[4]} filters of 3x3"


class SoftmaxCeProblem:
    """The loss: logits [N, K, H, W], labels and weights [N, H, W]; shape (N, K, H, W)."""

    default_shapes = {"cuda": (1, 2, 388, 388), "opencl": (2, 3, 40, 50)}
    shape_text = "N,K,H,W"
    tolerance = 1e-5  # relative: float32 sums of the pixels' losses in two different fixed orders

    @staticmethod
    def valid(shape) -> bool:
        return len(shape) == 4 and min(shape) >= 1 and shape[1] >= 2

    @staticmethod
    def inputs(rng, shape):
        N, K, H, W = shape
        logits = (3 * rng.standard_normal(shape)).astype(np.float32)
        return logits, rng.integers(0, K, (N, H, W)).astype(np.int32), rng.uniform(0.5, 3, (N, H, W)).astype(np.float32)

    @staticmethod
    def reference(rung, logits, labels, weights) -> np.ndarray:
        """The weighted mean cross-entropy, in float64, pixel by pixel (no shared code with the kernels)."""
        z = logits.astype(np.float64)
        top = z.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
        z_label = np.take_along_axis(z, labels[:, None].astype(np.int64), axis=1)[:, 0]
        return np.array([np.mean(weights * (lse - z_label))])

    @staticmethod
    def work(shape) -> tuple[int, int]:
        """(~FLOPs: a max, an exp and a few adds per class, compulsory bytes: logits, labels, weights, probabilities)."""
        N, K, H, W = shape
        pixels = N * H * W
        return 6 * K * pixels, pixels * (8 * K + 8)

    def title(self, shape) -> str:
        return f"softmax cross-entropy forward, logits {shape}"


PROBLEMS = {"conv2d": Conv2dProblem(), "softmax_ce": SoftmaxCeProblem()}


def modelled_seconds(rung, flops: int, compulsory_bytes: int, spec: dict) -> float:
    """MODELLED: max(arithmetic at the peak, the rung's global traffic at the bandwidth) on ``spec``'s GPU."""
    peak = spec["tf32_gflops"] if rung.math == "tf32" else spec["gflops"]
    traffic = max(flops / 2 * rung.bytes_per_fma, compulsory_bytes) if rung.bytes_per_fma else compulsory_bytes
    return max(flops / (peak * 1e9), traffic / (spec["gbps"] * 1e9))


def run_ladder(rungs, device, shape, repeats: int, log=print) -> list[dict]:
    """Validate and time each rung on ``device`` at ``shape``; one dict per rung."""
    from cunet.kernels.ladder import run_rung

    problem = PROBLEMS[rungs[0].op]
    host = problem.inputs(np.random.default_rng(0), shape)
    dev = tuple(device.to_device(a) for a in host)
    flops, compulsory = problem.work(shape)
    runtime, spec = device.runtime, harness.GPU_SPECS[MODEL_GPU]
    cuda = device.name == "cuda"
    timer = harness.CudaTimer(runtime.cupy) if cuda else harness.CpuTimer(device.synchronize, flush_bytes=0)
    peaks = harness.cuda_peaks(runtime.cupy) if cuda else None
    rows = []
    for rung in rungs:
        row = dict(rung=rung.name, summary=rung.summary, module=rung.module.label(), math=rung.math,
                   bytes_per_fma=rung.bytes_per_fma,
                   flop_per_byte=2 / rung.bytes_per_fma if rung.bytes_per_fma else flops / compulsory,
                   modelled_a100_s=modelled_seconds(rung, flops, compulsory, spec))
        if rung.math == "tf32" and cuda and runtime.compute_capability() < 80:
            rows.append(dict(row, status="skipped: TF32 tensor cores need sm_80 or newer"))
            continue
        want = problem.reference(rung, *host)
        got = device.to_host(run_rung(rung, runtime, *dev))
        error = float(np.abs(got - want).max() / (np.abs(want).max() or 1.0))
        row.update(max_rel_err=error)
        if not error <= problem.tolerance:
            rows.append(dict(row, status=f"FAILED: max error {error:.2e} x max|ref| > {problem.tolerance:.0e}"))
            log(f"{rung.name}: FAILED validation ({error:.2e})")
            continue
        times = harness.repeat(timer, lambda: run_rung(rung, runtime, *dev), 1, repeats)
        seconds = harness.median(times)
        row.update(status="ok", median_s=seconds, gflops=flops / seconds / 1e9, gbps=compulsory / seconds / 1e9)
        if peaks is not None:
            if rung.bytes_per_fma is None:  # a memory-bound rung: the share of the bandwidth
                row["peak_fraction"] = row["gbps"] / peaks.gbps
            else:
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
    columns += [("ai", "FLOP/B"), ("model", "MODELLED A100")]
    return harness.format_table(columns, table, left=3)


def main(argv=None) -> int:
    """Entry point; returns the exit code (1 if a rung failed validation, 2 for bad input)."""
    from cunet.kernels.ladder import LADDERS

    p = argparse.ArgumentParser(prog="python -m benchmarks.ladder", description=__doc__.split("\n\n")[0])
    p.add_argument("ladder", choices=sorted(LADDERS), help="which ladder")
    p.add_argument("--device", choices=("opencl", "cuda"), default="opencl")
    p.add_argument("--shape", help="conv2d: N,C,H,W,K; softmax_ce: N,K,H,W (default: the paper's sizes on cuda, "
                                   "small ones on opencl)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    problem = PROBLEMS[args.ladder]
    try:
        shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else problem.default_shapes[args.device]
        if not problem.valid(shape):
            raise ValueError
    except ValueError:
        print(f"error: --shape for {args.ladder} must be positive integers {problem.shape_text}, got {args.shape!r}",
              file=sys.stderr)
        return 2
    if args.repeats < 1:
        print(f"error: --repeats must be at least 1, got {args.repeats}", file=sys.stderr)
        return 2
    device = make_device(args.device)
    rows = run_ladder(LADDERS[args.ladder], device, shape, args.repeats,
                      log=lambda line: print(line, file=sys.stderr, flush=True))
    report = dict(benchmark="ladder", ladder=args.ladder, command=harness.command_line(), device=device.describe(),
                  shape=dict(zip(problem.shape_text.split(","), shape)), model_gpu=MODEL_GPU, rows=rows)
    if args.json:
        print(harness.dump_json(report))
    else:
        print(harness.header(f"cunet ladder: {problem.title(shape)}", device.describe()))
        print(format_rows(rows, device.name))
        if device.name != "cuda":
            print(f"\n{device.name} (PoCL) runs these kernels on the CPU: correct, but its timings say nothing about "
                  "GPUs. The MODELLED column is each rung's roofline on an A100 40GB from the traffic its tiling "
                  "implies (FLOP/B; for the loss, its compulsory bytes) against 19.5 TFLOP/s FP32 (156 TF32) and "
                  "1,555 GB/s.")
    return 1 if any(r["status"].startswith("FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
