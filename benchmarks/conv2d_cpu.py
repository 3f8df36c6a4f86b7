"""cunet's cpu convolution against PyTorch's (oneDNN), layer by layer, on the U-Net's own shapes.

    python -m benchmarks.conv2d_cpu                      # base 16 and base 64, 572x572, depth 5
    python -m benchmarks.conv2d_cpu --base 16 --reps 5   # one base
    python -m benchmarks.conv2d_cpu --base 16 --only down0.conv2,up3.conv1
    python -m benchmarks.conv2d_cpu --quick              # tile 44, base 2, depth 3: a seconds-long smoke run
    python -m benchmarks.conv2d_cpu --algorithm direct   # every layer on one cpu algorithm
    python -m benchmarks.conv2d_cpu --algorithm winograd
    python -m benchmarks.conv2d_cpu --algorithm im2col
    python -m benchmarks.conv2d_cpu --pick --reps 9      # per op: direct vs Winograd, interleaved (how the rule was chosen)

For every convolution of the U-Net (the shapes ``python -m cunet.summary`` lists) it times,
in one process and on the same float32 arrays:

    fwd   cunet conv2d_forward(relu=...)        vs  torch F.conv2d (+ F.relu)
    bwd_x cunet conv2d_backward_input           vs  torch aten.convolution_backward, input mask
    bwd_w cunet conv2d_backward_params (dw, db) vs  torch aten.convolution_backward, weight+bias mask

median of ``--reps`` runs after one warm-up, in milliseconds, both libraries with 2 threads
(torch.set_num_threads; OpenBLAS uses every core by default). The first layer has no
bwd_x (its input needs no gradient, in cunet and in torch). Each row names the cpu
algorithms cunet ran for the layer's fwd, bwd_x and bwd_w, a letter each (d = direct,
w = Winograd, i = im2col: cunet.cpu.conv2d.cpu_algorithm under --algorithm) and, for
cunet's three ops, GFLOP/s and the
percentage of the machine's FMA peak. FLOPs are 2*N*K*C*R*R*OH*OW per op (a multiply-add
is 2 FLOPs; the bias, db and the ReLU are not counted), the direct-equivalent count also
for Winograd, which does 4x fewer multiplies: its "GFLOP/s" is a speed in the direct
sum's units and may pass 100% of peak. The peak is measured once at start, in this
process: cunet._host's register-only FMA loop on every thread (kernels/host/conv2d.cpp,
"The FMA peak"), best of 3. The sgemm rate (a NumPy float32 matmul 2048^3, 512^3 under
--quick) is printed beside it, and is the divisor where the C++ module is missing. It is
no ceiling: on the 2-core AMD EPYC it is 240 GFLOP/s, half the FMA peak (OpenBLAS runs
its AVX2 kernel there), and the direct kernels pass it by up to 1.9x.

Both libraries allocate under the malloc policy ``python -m cunet.train`` sets
(cunet.cpu.keep_freed_memory), as in benchmarks.train_step. Not understood yet: in the
full sweep the head's 1x1 forward and backward input (GEMMs with 2 rows or an inner
dimension of 2, on OpenBLAS) read 8-16 ms, and 0.2-0.9 ms when run alone (``--only
head``) or with OPENBLAS_NUM_THREADS=1 (2026-12-07, 2-core AMD EPYC).

``--pick`` times no PyTorch: per layer and op it alternates cunet's direct and Winograd
algorithms call by call (so a change in the machine's load hits both alike), prints both
medians and the faster, and which one ``cpu_algorithm`` picks today.

Other processes skew every number: the load average is printed before and after; trust a
table only when it is < 1.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.harness import blas_name, measure_sgemm_gflops


IDLE_S = 0.3


def conv_layers(base: int, size: int = 572, depth: int = 5):
    """[(name, (N, C, H, W), (K, C, R, R), relu)] for every convolution of the U-Net."""
    from cunet.summary import layer_table
    layers = []
    for row in layer_table(size, base=base, depth=depth):
        if row.kind.startswith("conv"):
            R = row.input_shape[2] - row.output_shape[2] + 1
            w_shape = (row.output_shape[1], row.input_shape[1], R, R)
            layers.append((row.name, row.input_shape, w_shape, "ReLU" in row.kind))
    return layers


def conv_flops(x_shape, w_shape) -> int:
    """FLOPs of one op (fwd, bwd_x or bwd_w) of an unpadded stride-1 convolution: 2*N*K*C*R*R*OH*OW.

    The direct sum's count, whatever algorithm ran: Winograd's rate is then comparable
    with the direct kernels' (and may exceed the GEMM peak, as it skips multiplies).
    """
    N, C, H, W = x_shape
    K, _, R, S = w_shape
    return 2 * N * K * C * R * S * (H - R + 1) * (W - S + 1)


def conv_gflops(x_shape, w_shape, seconds: float) -> float:
    """GFLOP/s of one convolution op of these shapes that took ``seconds``: conv_flops / seconds / 1e9."""
    return conv_flops(x_shape, w_shape) / seconds / 1e9


def fma_peak_gflops(seconds: float = 0.1, reps: int = 3) -> float | None:
    """The FMA units' GFLOP/s on every thread (cunet._host.fma_peak_gflops), best of ``reps``
    runs of about ``seconds`` each; None without the C++ module."""
    try:
        from cunet import _host
    except ImportError:
        return None
    probe = 10**6
    _host.fma_peak_gflops(probe)      # wakes the OpenMP team
    t0 = time.perf_counter()
    _host.fma_peak_gflops(probe)
    iterations = max(probe, int(probe * seconds / (time.perf_counter() - t0)))
    return max(_host.fma_peak_gflops(iterations) for _ in range(reps))


def median_ms(f, reps: int) -> float:
    """Median wall time of f() over reps runs, after one warm-up run, in ms.

    It first sleeps IDLE_S, so that the thread pools of whatever ran before (OpenBLAS's
    workers spin for ~0.1 s after a GEMM, OpenMP's for a while after a loop) are asleep
    and do not steal cores from f: each library is timed on an otherwise idle machine.
    """
    time.sleep(IDLE_S)
    f()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def time_layer(x_shape, w_shape, relu: bool, first: bool, reps: int) -> dict[str, float]:
    """{'fwd', 'bwd_x', 'bwd_w'} x {'cunet', 'torch'} -> ms for one layer shape."""
    import torch

    from cunet.ops import conv2d_backward_input, conv2d_backward_params, conv2d_forward

    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    w = (rng.standard_normal(w_shape, dtype=np.float32) / np.sqrt(np.prod(w_shape[1:]))).astype(np.float32)
    b = rng.standard_normal(w_shape[0], dtype=np.float32)
    R = w_shape[2]
    dy = rng.standard_normal((x_shape[0], w_shape[0], x_shape[2] - R + 1, x_shape[3] - R + 1), dtype=np.float32)
    tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
    F = torch.nn.functional
    aten_bwd = torch.ops.aten.convolution_backward

    def torch_fwd():
        y = F.conv2d(tx, tw, tb)
        return F.relu(y) if relu else y

    def torch_bwd(mask):
        return aten_bwd(tdy, tx, tw, [w_shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask)

    with torch.no_grad():
        validate(x_shape, w_shape, relu, first, (conv2d_forward(x, w, b, relu=relu), torch_fwd()),
                 (conv2d_backward_input(dy, w), None if first else torch_bwd([True, False, False])[0]),
                 (conv2d_backward_params(x, dy)[0], torch_bwd([False, True, True])[1]))
    out = {}
    with torch.no_grad():
        out["fwd", "cunet"] = median_ms(lambda: conv2d_forward(x, w, b, relu=relu), reps)
        out["fwd", "torch"] = median_ms(torch_fwd, reps)
        if not first:
            out["bwd_x", "cunet"] = median_ms(lambda: conv2d_backward_input(dy, w), reps)
            out["bwd_x", "torch"] = median_ms(lambda: torch_bwd([True, False, False]), reps)
        out["bwd_w", "cunet"] = median_ms(lambda: conv2d_backward_params(x, dy), reps)
        out["bwd_w", "torch"] = median_ms(lambda: torch_bwd([False, True, True]), reps)
    return out


# Validate before timing: cunet's result against PyTorch's, relative error in the
# Frobenius norm. Rounding errors of sums of n products with random signs grow like
# sqrt(n) u (u = 2^-24): for n up to 9 * 1024 (conv) or 324k (the weight gradient) that
# is under 1e-4 for the direct sums; Winograd's transforms multiply it by a few (see
# tests/test_conv2d.py, which bounds every algorithm elementwise). 1e-3 leaves room and
# still fails on any wrong or missing term, whose error is of the order of the result.
RELATIVE_TOLERANCE = 1e-3


def validate(x_shape, w_shape, relu, first, *pairs) -> None:
    """Raise if any (cunet, torch) result pair disagrees beyond RELATIVE_TOLERANCE."""
    for name, (ours, theirs) in zip(("forward", "backward input", "backward params"), pairs):
        if theirs is None:
            continue
        theirs = theirs.numpy()
        error = np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-30)
        if not error <= RELATIVE_TOLERANCE:
            raise AssertionError(f"conv2d {name} x {x_shape} w {w_shape}: cunet and PyTorch differ by "
                                 f"{error:.2e} (relative, Frobenius); expected <= {RELATIVE_TOLERANCE}")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, for the table's title and last line."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


OPS = ("fwd", "bwd_x", "bwd_w")
# Per op: cunet ms, torch ms, cunet GFLOP/s, cunet % of the peak; blocks 2 spaces apart.
OP_WIDTHS = (9, 9, 7, 5)
OP_BLOCK = sum(OP_WIDTHS)
NO_CELLS = f"  {'-':>{OP_BLOCK}}"   # an op that did not run (the first layer's bwd_x)


def op_cells(cunet_ms: float, torch_ms: float, rate: float, peak: float) -> str:
    """One op's four columns, two spaces before them: ms to 0.01 (--quick's layers take ~0.05 ms)."""
    w_ms, w_torch, w_rate, w_peak = OP_WIDTHS
    return f"  {cunet_ms:{w_ms}.2f}{torch_ms:{w_torch}.2f}{rate:{w_rate}.0f}{100 * rate / peak:{w_peak}.0f}"


def print_header(base: int, reps: int, size: int, depth: int) -> None:
    """The table's title and its two header lines: op names over their blocks, then the columns."""
    print(f"\nU-Net base {base}, {size}x{size}, depth {depth}, float32, median of {reps} (ms); "
          f"GF/s and %pk: cunet's; load average {load_average()}")
    lead = f"{'':<12} {'':<22} {'':<9}"
    print(lead + "".join(f"  {' ' + op + ' ':-^{OP_BLOCK}}" for op in OPS))
    w_ms, w_torch, w_rate, w_peak = OP_WIDTHS
    columns = f"  {'cunet':>{w_ms}}{'torch':>{w_torch}}{'GF/s':>{w_rate}}{'%pk':>{w_peak}}"
    print(f"{'layer':<12} {'shape C->K @ HxW':<22} {'algorithm':<9}" + columns * len(OPS))


def algorithm_letters(C: int, K: int, R: int, OH: int, OW: int) -> str:
    """The algorithms of the layer's fwd, bwd_x and bwd_w, a letter each: 'ddw' = direct, direct, Winograd."""
    from cunet.cpu.conv2d import CPU_OPS, cpu_algorithm
    return "".join(cpu_algorithm(op, C, K, R, OH, OW)[0] for op in CPU_OPS)


def report(base: int, reps: int, only: set[str] | None, peak: float, size: int = 572, depth: int = 5) -> None:
    """Print one table row per layer and the totals; ``peak`` is the GFLOP/s the %pk columns divide by."""
    print_header(base, reps, size, depth)
    totals = {}   # (op, "cunet" | "torch" | "flops") -> sum over the layers where op ran
    for i, (name, x_shape, w_shape, relu) in enumerate(conv_layers(base, size, depth)):
        if only and name not in only:
            continue
        t = time_layer(x_shape, w_shape, relu, first=(i == 0), reps=reps)
        K, C, R, _ = w_shape
        shape = f"{C}->{K} @ {x_shape[2]}x{x_shape[3]}" + (" 1x1" if R == 1 else "")
        cells = ""
        for op in OPS:
            if (op, "cunet") not in t:
                cells += NO_CELLS
                continue
            t[op, "flops"] = conv_flops(x_shape, w_shape)
            for key in ("cunet", "torch", "flops"):
                totals[op, key] = totals.get((op, key), 0.0) + t[op, key]
            rate = conv_gflops(x_shape, w_shape, t[op, "cunet"] / 1e3)
            cells += op_cells(t[op, "cunet"], t[op, "torch"], rate, peak)
        print(f"{name:<12} {shape:<22} {algorithm_letters(C, K, R, x_shape[2] - R + 1, x_shape[3] - R + 1):<9}{cells}", flush=True)
    if not totals:
        print("no layer matches --only")
        return
    print_totals(totals, peak)


def print_totals(totals: dict, peak: float) -> None:
    """The totals row (per op, over the layers that ran it) and the all-three line."""
    ran = [op for op in OPS if (op, "cunet") in totals]   # --only down0.conv1 has no bwd_x
    cells = ""
    for op in OPS:
        if op not in ran:
            cells += NO_CELLS
            continue
        # Sum of FLOPs / sum of times (FLOPs / ms / 1e6 = GFLOP/s), not a mean of the rows'
        # rates: each layer weighs as much as it costs.
        rate = totals[op, "flops"] / totals[op, "cunet"] / 1e6
        cells += op_cells(totals[op, "cunet"], totals[op, "torch"], rate, peak)
    print(f"{'total':<12} {'':<22} {'':<9}{cells}")
    all_c, all_t, flops = (sum(totals[op, key] for op in ran) for key in ("cunet", "torch", "flops"))
    rate = flops / all_c / 1e6
    print(f"all three: cunet {all_c:.1f} ms ({rate:.0f} GFLOP/s, {100 * rate / peak:.0f}% of peak), "
          f"torch {all_t:.1f} ms ({all_c / all_t:.2f}x); load average {load_average()}")


PICK_ALGORITHMS = ("direct", "winograd")


def interleaved_ms(calls: dict, reps: int) -> dict[str, float]:
    """{name: median ms} of calls[name](), the names alternating call by call (order reversed
    every round), after IDLE_S of sleep and one warm-up call each."""
    time.sleep(IDLE_S)
    times = {name: [] for name in calls}
    for f in calls.values():
        f()
    for rep in range(reps):
        for name in (list(calls) if rep % 2 == 0 else list(calls)[::-1]):
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def with_algorithm(algorithm: str, f):
    """f, run with every layer on ``algorithm`` (cunet.cpu.conv2d.CPU_ALGORITHM), restored after."""
    import cunet.cpu.conv2d as cpu_conv2d

    def run():
        previous, cpu_conv2d.CPU_ALGORITHM = cpu_conv2d.CPU_ALGORITHM, algorithm
        try:
            return f()
        finally:
            cpu_conv2d.CPU_ALGORITHM = previous
    return run


def pick_report(base: int, reps: int, only: set[str] | None, size: int = 572, depth: int = 5) -> None:
    """Per 3x3 layer and op: direct and Winograd ms (interleaved), the faster, and today's choice."""
    from cunet.cpu.conv2d import CPU_OPS, cpu_algorithm
    from cunet.ops import conv2d_backward_input, conv2d_backward_params, conv2d_forward

    print(f"\nU-Net base {base}, {size}x{size}, depth {depth}: direct / winograd ms (median of {reps}, "
          f"interleaved), the faster, [today's choice]; load average {load_average()}")
    print(f"{'layer':<12} {'shape C->K @ HxW':<22}" + "".join(f"  {op:<34}" for op in OPS))
    totals = {}
    for i, (name, x_shape, w_shape, relu) in enumerate(conv_layers(base, size, depth)):
        K, C, R, _ = w_shape
        if R != 3 or (only and name not in only):
            continue
        rng = np.random.default_rng(0)
        x = rng.standard_normal(x_shape, dtype=np.float32)
        w = (rng.standard_normal(w_shape, dtype=np.float32) / np.sqrt(C * 9)).astype(np.float32)
        b = np.zeros(K, np.float32)
        dy = rng.standard_normal((x_shape[0], K, x_shape[2] - 2, x_shape[3] - 2), dtype=np.float32)
        ops = dict(fwd=lambda: conv2d_forward(x, w, b, relu=relu), bwd_x=lambda: conv2d_backward_input(dy, w),
                   bwd_w=lambda: conv2d_backward_params(x, dy))
        cells = ""
        for op in OPS:
            if op == "bwd_x" and i == 0:
                cells += f"  {'-':<34}"
                continue
            t = interleaved_ms({a: with_algorithm(a, ops[op]) for a in PICK_ALGORITHMS}, reps)
            chosen = cpu_algorithm(CPU_OPS[OPS.index(op)], C, K, R, x_shape[2] - R + 1, x_shape[3] - R + 1)
            for a in PICK_ALGORITHMS:
                totals[op, a] = totals.get((op, a), 0.0) + t[a]
            totals[op, "chosen"] = totals.get((op, "chosen"), 0.0) + t[chosen]
            totals[op, "best"] = totals.get((op, "best"), 0.0) + min(t.values())
            faster = min(t, key=t.get)
            cells += f"  {t['direct']:7.2f} /{t['winograd']:7.2f} {faster:<8} [{chosen}]".ljust(36)
        print(f"{name:<12} {f'{C}->{K} @ {x_shape[2]}x{x_shape[3]}':<22}{cells}", flush=True)
    for op in OPS:
        print(f"{op}: all direct {totals[op, 'direct']:.1f} ms, all winograd {totals[op, 'winograd']:.1f} ms, "
              f"today's choice {totals[op, 'chosen']:.1f} ms, the faster per layer {totals[op, 'best']:.1f} ms")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, action="append", help="U-Net base width (repeatable; default 16 and 64)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tile", type=int, default=572, help="input tile (default 572)")
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tile 44, base 2, depth 3, 1 rep: seconds")
    parser.add_argument("--only", default="", help="comma-separated layer names, e.g. down0.conv2,up3.conv1")
    parser.add_argument("--pick", action="store_true",
                        help="per op, cunet's direct vs Winograd interleaved (no PyTorch): which is faster where")
    parser.add_argument("--algorithm", choices=("auto", "direct", "winograd", "im2col"), default="auto",
                        help="cpu algorithm for every layer (auto: by shape, as in training)")
    args = parser.parse_args(argv)
    import torch

    import cunet.cpu.conv2d as cpu_conv2d
    torch.set_num_threads(2)
    cpu_conv2d.CPU_ALGORITHM = args.algorithm
    print(f"cpu algorithm: {args.algorithm} (auto: {cpu_conv2d.host_kernels_status()})")
    from cunet.cpu import TRAINING_MALLOC, keep_freed_memory
    kept = keep_freed_memory(**TRAINING_MALLOC)
    print("malloc: " + ("cunet.train's policy, for both libraries (cunet.cpu.keep_freed_memory)" if kept
                        else "the C library's defaults (not glibc)"))
    only = set(args.only.split(",")) if args.only else None
    if args.quick:
        global IDLE_S
        args.base, args.tile, args.depth, args.reps, IDLE_S = [2], 44, 3, 1, 0.0
    # 2048^3: ~60 ms a run at ~300 GFLOP/s on the 2-core VM. --quick's 512^3 takes ~1 ms and
    # reaches ~80% of that (256^3: ~60%, OpenBLAS's per-call costs weigh more).
    n = 512 if args.quick else 2048
    sgemm = measure_sgemm_gflops(n, repeats=3)
    fma = fma_peak_gflops(0.02 if args.quick else 0.1)
    peak = fma or sgemm
    if fma:
        print(f"measured FMA peak: {fma:.0f} GFLOP/s (cunet._host, every thread; %pk below), "
              f"sgemm {sgemm:.0f} GFLOP/s = {100 * sgemm / fma:.0f}% of it (NumPy: {blas_name()}, {n}^3); best of 3 each")
    else:
        print(f"measured sgemm peak: {sgemm:.0f} GFLOP/s (NumPy: {blas_name()}, {n}^3, best of 3; %pk below: "
              "no C++ module for the FMA peak)")
    if args.pick:
        for base in args.base or [16, 64]:
            pick_report(base, args.reps, only, args.tile, args.depth)
        return
    for base in args.base or [16, 64]:
        report(base, args.reps, only, peak, args.tile, args.depth)


if __name__ == "__main__":
    main()
