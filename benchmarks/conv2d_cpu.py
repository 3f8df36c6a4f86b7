"""cunet's cpu convolution against PyTorch's (oneDNN), layer by layer, on the U-Net's own shapes.

    python -m benchmarks.conv2d_cpu                      # base 16 and base 64, 572x572, depth 5
    python -m benchmarks.conv2d_cpu --base 16 --reps 5   # one base
    python -m benchmarks.conv2d_cpu --base 16 --only down0.conv2,up3.conv1
    python -m benchmarks.conv2d_cpu --algorithm direct   # every 3x3 layer on one cpu algorithm
    python -m benchmarks.conv2d_cpu --algorithm winograd # (how CPU_DIRECT_MAX_CK was chosen)
    python -m benchmarks.conv2d_cpu --algorithm im2col

For every convolution of the U-Net (the shapes ``python -m cunet.summary`` lists) it times,
in one process and on the same float32 arrays:

    fwd   cunet conv2d_forward(relu=...)        vs  torch F.conv2d (+ F.relu)
    bwd_x cunet conv2d_backward_input           vs  torch aten.convolution_backward, input mask
    bwd_w cunet conv2d_backward_params (dw, db) vs  torch aten.convolution_backward, weight+bias mask

median of ``--reps`` runs after one warm-up, in milliseconds, both libraries with 2 threads
(torch.set_num_threads; OpenBLAS uses every core by default). The first layer has no
bwd_x (its input needs no gradient, in cunet and in torch). Other processes skew every
number: the load average is printed before and after; trust a table only when it is < 1.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


IDLE_S = 0.3


def conv_layers(base: int, size: int = 572, depth: int = 5):
    """[(name, (N, C, H, W), (K, C, R, R), relu)] for every convolution of the U-Net."""
    from cunet.summary import layer_table
    layers = []
    for row in layer_table(size, base=base, depth=depth):
        if row.kind.startswith("conv"):
            R = row.input_shape[2] - row.output_shape[2] + 1
            layers.append((row.name, row.input_shape, (row.output_shape[1], row.input_shape[1], R, R), "ReLU" in row.kind))
    return layers


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
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def report(base: int, reps: int, only: set[str] | None, size: int = 572, depth: int = 5) -> None:
    """Print one table row per layer and the totals."""
    ops = ("fwd", "bwd_x", "bwd_w")
    print(f"\nU-Net base {base}, {size}x{size}, depth {depth}, float32, median of {reps} (ms); "
          f"load average {load_average()}")
    print(f"{'layer':<12} {'shape C->K @ HxW':<22}" + "".join(f"{op + ' cunet':>12}{'torch':>8}" for op in ops))
    totals = {}
    for i, (name, x_shape, w_shape, relu) in enumerate(conv_layers(base, size, depth)):
        if only and name not in only:
            continue
        t = time_layer(x_shape, w_shape, relu, first=(i == 0), reps=reps)
        shape = f"{w_shape[1]}->{w_shape[0]} @ {x_shape[2]}x{x_shape[3]}" + (" 1x1" if w_shape[2] == 1 else "")
        cells = ""
        for op in ops:
            for lib in ("cunet", "torch"):
                totals[op, lib] = totals.get((op, lib), 0.0) + t.get((op, lib), 0.0)
            cells += (f"{t[op, 'cunet']:12.1f}{t[op, 'torch']:8.1f}" if (op, "cunet") in t else f"{'-':>12}{'-':>8}")
        print(f"{name:<12} {shape:<22}{cells}", flush=True)
    cells = "".join(f"{totals[op, 'cunet']:12.1f}{totals[op, 'torch']:8.1f}" for op in ops)
    all_c = sum(v for (op, lib), v in totals.items() if lib == "cunet")
    all_t = sum(v for (op, lib), v in totals.items() if lib == "torch")
    print(f"{'total':<12} {'':<22}{cells}")
    print(f"all three: cunet {all_c:.0f} ms, torch {all_t:.0f} ms ({all_c / all_t:.2f}x); load average {load_average()}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, action="append", help="U-Net base width (repeatable; default 16 and 64)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tile", type=int, default=572, help="input tile (default 572)")
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tile 44, base 2, depth 3, 1 rep: seconds")
    parser.add_argument("--only", default="", help="comma-separated layer names, e.g. down0.conv2,up3.conv1")
    parser.add_argument("--algorithm", choices=("auto", "direct", "winograd", "im2col"), default="auto",
                        help="cpu algorithm for every layer (auto: by shape, as in training)")
    args = parser.parse_args(argv)
    import torch

    import cunet.ops.conv2d as conv2d_module
    torch.set_num_threads(2)
    conv2d_module.CPU_ALGORITHM = args.algorithm
    print(f"cpu algorithm: {args.algorithm} (auto: direct where C*K <= {conv2d_module.CPU_DIRECT_MAX_CK}, "
          "else Winograd for 3x3, im2col for 1x1)")
    only = set(args.only.split(",")) if args.only else None
    if args.quick:
        global IDLE_S
        args.base, args.tile, args.depth, args.reps, IDLE_S = [2], 44, 3, 1, 0.0
    for base in args.base or [16, 64]:
        report(base, args.reps, only, args.tile, args.depth)


if __name__ == "__main__":
    main()
