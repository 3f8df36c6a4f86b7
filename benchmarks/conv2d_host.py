"""The C++ 3x3 convolutions (cunet._host, kernels/host/) against cunet's cpu path, layer by layer.

    python -m benchmarks.conv2d_host                  # base 16 and base 64, 572x572, depth 5
    python -m benchmarks.conv2d_host --base 16 --reps 5
    python -m benchmarks.conv2d_host --quick          # one timed run per op (~1-2 min on 2 cores)
    python -m benchmarks.conv2d_host --quick --tile 44 --base 2 --depth 3   # seconds: a smoke run
    python -m benchmarks.conv2d_host --json           # machine-readable report

For every 3x3 convolution of the U-Net (benchmarks.conv2d_cpu.conv_layers: the shapes
``python -m cunet.summary`` lists; the 1x1 head is not a 3x3 layer) it times, in one
process and on the same float32 arrays:

    fwd   cunet.ops conv2d_forward(relu=...)     vs  _host.conv3x3_forward(x, w, b, y, relu)
    bwd_x cunet.ops conv2d_backward_input        vs  _host.conv3x3_backward_input(dy, w, dx)
    bwd_w cunet.ops conv2d_backward_params       vs  _host.conv3x3_backward_params(x, dy, dw, db)

cunet's side is what training runs (CPU_ALGORITHM "auto": direct Numba loops for narrow
layers, Winograd on BLAS for wide ones; the "algo" column says which); the C++ side writes
into outputs allocated once, outside the timing. Both libraries use every core (Numba's
and OpenBLAS's pools, OpenMP's team). Each op is validated first (the C++ result against
cunet's, relative Frobenius error <= conv2d_cpu.RELATIVE_TOLERANCE), then timed with
conv2d_cpu.median_ms: an idle pause, one warm-up call, the median of --reps calls.
GFLOP/s counts 2*N*K*C*9*OH*OW per op (a multiply-add is 2 FLOPs; db is not counted).
The share of the CPUs that other processes used while a layer was timed is printed with
it (harness.OthersMeter): trust a row only where it is ~0.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from . import harness
from .conv2d_cpu import RELATIVE_TOLERANCE, conv_layers, median_ms

OPS = ("fwd", "bwd_x", "bwd_w")


def relative_error(ours, theirs) -> float:
    return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-30))


def time_layer(host, x_shape, w_shape, relu: bool, first: bool, reps: int) -> dict:
    """{op: {'cunet_ms', 'host_ms', 'error'}} for one layer shape (no bwd_x for the first layer)."""
    from cunet.ops import conv2d_backward_input, conv2d_backward_params, conv2d_forward

    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    w = (rng.standard_normal(w_shape, dtype=np.float32) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
    b = rng.standard_normal(w_shape[0], dtype=np.float32)
    N, K = x_shape[0], w_shape[0]
    OH, OW = x_shape[2] - 2, x_shape[3] - 2
    dy = rng.standard_normal((N, K, OH, OW), dtype=np.float32)
    y, dx = np.empty((N, K, OH, OW), np.float32), np.empty(x_shape, np.float32)
    dw, db = np.empty(w_shape, np.float32), np.empty(K, np.float32)

    cases = {
        "fwd": (lambda: conv2d_forward(x, w, b, relu=relu), lambda: host.conv3x3_forward(x, w, b, y, relu),
                lambda ours: relative_error(y, ours)),
        "bwd_x": (lambda: conv2d_backward_input(dy, w), lambda: host.conv3x3_backward_input(dy, w, dx),
                  lambda ours: relative_error(dx, ours)),
        "bwd_w": (lambda: conv2d_backward_params(x, dy), lambda: host.conv3x3_backward_params(x, dy, dw, db),
                  lambda ours: max(relative_error(dw, ours[0]), relative_error(db, ours[1]))),
    }
    out = {}
    for op, (cunet_call, host_call, error_of) in cases.items():
        if op == "bwd_x" and first:
            continue
        host_call()
        error = error_of(cunet_call())
        if not error <= RELATIVE_TOLERANCE:
            raise AssertionError(f"conv3x3 {op} x {x_shape} w {w_shape}: cunet._host and cunet.ops differ by "
                                 f"{error:.2e} (relative, Frobenius); expected <= {RELATIVE_TOLERANCE}")
        out[op] = dict(cunet_ms=median_ms(cunet_call, reps), host_ms=median_ms(host_call, reps), error=error)
    return out


def gflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e9


def run(base: int, reps: int, tile: int, depth: int, only: set[str] | None, emit) -> list[dict]:
    """Time every 3x3 layer of one U-Net; emit(line) prints the table as it grows; returns the rows."""
    import cunet._host as host
    from cunet.ops.conv2d import cpu_algorithm

    emit(f"\nU-Net base {base}, {tile}x{tile}, depth {depth}: ms (median of {reps}) and GFLOP/s, "
         f"cunet.ops cpu vs cunet._host ({host.simd_level()}); load average {harness.load_average()}")
    emit(f"{'layer':<12} {'C->K @ HxW':<20} {'algo':<8}" + "".join(f"{op + ' cunet':>12}{'C++':>8}{'GF/s':>14}{'x':>6}"
                                                                    for op in OPS) + f"{'others':>8}")
    rows, totals = [], {}
    for i, (name, x_shape, w_shape, relu) in enumerate(conv_layers(base, tile, depth)):
        if w_shape[2] != 3 or (only and name not in only):
            continue
        N, C, H, W = x_shape
        K = w_shape[0]
        flops = 2.0 * N * K * C * 9 * (H - 2) * (W - 2)
        meter = harness.OthersMeter()
        t = time_layer(host, x_shape, w_shape, relu, first=(i == 0), reps=reps)
        others = meter.share()
        algorithm = cpu_algorithm(C, K, 3)
        cells = ""
        for op in OPS:
            if op not in t:
                cells += f"{'-':>12}{'-':>8}{'-':>14}{'-':>6}"
                continue
            c, h = t[op]["cunet_ms"], t[op]["host_ms"]
            totals[op, "cunet"] = totals.get((op, "cunet"), 0.0) + c
            totals[op, "host"] = totals.get((op, "host"), 0.0) + h
            totals[op, "flops"] = totals.get((op, "flops"), 0.0) + flops
            cells += f"{c:12.1f}{h:8.1f}{gflops(flops, c):7.0f}/{gflops(flops, h):<6.0f}{c / h:6.2f}"
            rows.append(dict(base=base, layer=name, op=op, x_shape=list(x_shape), w_shape=list(w_shape), relu=relu,
                             cunet_algorithm=algorithm, flops=flops, cunet_ms=c, host_ms=h,
                             cunet_gflops=gflops(flops, c), host_gflops=gflops(flops, h), speedup=c / h,
                             max_rel_err=t[op]["error"], others_share=others))
        shape = f"{C}->{K} @ {H}x{W}"
        share = "?" if others is None else f"{others:.2f}"
        emit(f"{name:<12} {shape:<20} {algorithm:<8}{cells}{share:>8}")
    cells = ""
    for op in OPS:
        c, h, f = totals.get((op, "cunet"), 0.0), totals.get((op, "host"), 0.0), totals.get((op, "flops"), 0.0)
        cells += (f"{c:12.1f}{h:8.1f}{gflops(f, c):7.0f}/{gflops(f, h):<6.0f}{c / h:6.2f}" if h else
                  f"{'-':>12}{'-':>8}{'-':>14}{'-':>6}")
    emit(f"{'total':<12} {'':<20} {'':<8}{cells}")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, action="append", help="U-Net base width (repeatable; default 16 and 64)")
    parser.add_argument("--reps", type=int, default=5, help="timed calls per op (default 5; the median counts)")
    parser.add_argument("--tile", type=int, default=572, help="input tile (default 572)")
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="one timed call per op after the warm-up, no idle pause between ops")
    parser.add_argument("--only", default="", help="comma-separated layer names, e.g. down0.conv2,up3.conv1")
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of the table")
    args = parser.parse_args(argv)

    try:
        import cunet._host as host
    except ImportError as exc:
        print(f"error: cunet._host is not built ({exc}); run `pip install -e .`", file=sys.stderr)
        raise SystemExit(2)
    from . import conv2d_cpu

    if args.quick:
        args.reps = 1
        conv2d_cpu.IDLE_S = 0.0  # median_ms reads it at call time
    bases = args.base or [16, 64]
    only = set(args.only.split(",")) if args.only else None
    load_before = harness.load_average()
    lines = []
    emit = lines.append if args.json else (lambda line: print(line, flush=True))
    if not args.json:
        print(harness.header("cunet._host (C++) vs cunet.ops cpu: the U-Net's 3x3 convolutions", "cpu",
                             extra=[f"C++ kernels: {host.simd_level()} version, tile {host.tile_geometry()}, "
                                    f"{host.max_threads()} OpenMP threads"]))
    rows = []
    for base in bases:
        rows += run(base, args.reps, args.tile, args.depth, only, emit)
    if args.json:
        print(harness.dump_json(dict(
            benchmark="conv2d_host", command=harness.command_line(), device="cpu", timer="wall clock (median_ms)",
            machine=harness.machine(), simd_level=host.simd_level(), tile_geometry=host.tile_geometry(),
            host_threads=host.max_threads(),
            config=dict(bases=bases, tile=args.tile, depth=args.depth, reps=args.reps, quick=args.quick),
            load_average_before=load_before, load_average_after=harness.load_average(), results=rows)))
    else:
        print(f"\nload average at the end: {harness.load_average()}")


if __name__ == "__main__":
    main()
