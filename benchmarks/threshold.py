"""Serial vs parallel CPU loops: where does Numba's thread pool start to pay?

    python -m benchmarks.threshold [--json] [--max-log2 22] [--repeats 30]

Every CPU loop in cunet/ops is compiled twice (cunet.cpu.parallel.SerialOrParallel): a plain
serial loop and a ``parallel=True`` one that hands chunks of the loop to Numba's OpenMP
thread pool. Waking the pool costs a fixed 10-50 us on an idle machine (and far more on a
busy one), so for a small array the serial loop wins; for a large one two cores stream
up to twice as fast. This prints, per loop and size, the median time of each variant and
the speed-up of the parallel one, and the smallest size from which the parallel one
is faster at this size and every larger one. The thresholds in common.py, dropout.py
and softmax_ce.py were chosen from this table (see benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from . import harness


def loops(n: int, rng):
    """(name, SerialOrParallel loop, args) for each CPU loop, sized to stream about n elements."""
    from cunet.cpu import upconv
    from cunet.ops import dropout, maxpool, relu, sgd, softmax_ce
    from cunet.ops.random import split_seed

    f32 = np.float32
    x = rng.standard_normal(n).astype(f32)
    y, z = np.empty_like(x), rng.standard_normal(n).astype(f32)
    shape = (n // 4096, 64, 64) if n >= 4096 else (1, 2, max(2, n // 2))  # [planes, H, W], H and W even
    img = rng.standard_normal(shape).astype(f32)
    pooled = np.empty((img.shape[0], img.shape[1] // 2, img.shape[2] // 2), f32)
    argmax = np.empty(pooled.shape, np.uint8)
    width = 64 if n >= 128 else 1
    pixels = max(width, n // 2 // width * width)
    logits = rng.standard_normal(2 * pixels).astype(f32)
    labels = rng.integers(0, 2, pixels).astype(np.int32)
    weights = rng.random(pixels).astype(f32)
    probs = np.empty_like(logits)
    row_loss = np.empty(pixels // width, np.float64)
    kk = max(1, n // (4 * 32 * 32))  # upconv scatter: [1, 4K, 32*32] -> [1, K, 64, 64], about n elements
    Y = rng.standard_normal((1, 4 * kk, 32 * 32)).astype(f32)
    up = np.empty((1, kk, 64, 64), f32)
    key0, key1 = split_seed(1)
    return [
        ("relu forward", relu._relu_forward_cpu, (x, y), x.size),
        ("relu backward", relu._relu_backward_cpu, (x, z, y), x.size),
        ("sgd momentum", sgd._sgd_cpu, (x.copy(), z.copy(), z, f32(0.01), f32(0.99), f32(0.0)), x.size),
        ("maxpool forward", maxpool._forward_cpu, (img, pooled, argmax), img.size),
        ("maxpool backward", maxpool._backward_cpu, (pooled, argmax, img.copy()), img.size),
        ("dropout", dropout._dropout_cpu, (x, y, f32(0.5), f32(2.0), key0, key1, 0), x.size),
        ("softmax_ce forward", softmax_ce._forward_cpu, (logits, labels, weights, probs, row_loss, 2, pixels, width), logits.size),
        ("softmax_ce backward", softmax_ce._backward_cpu, (probs, labels, weights, logits.copy(), 2, pixels, f32(1e-6)), logits.size),
        ("upconv scatter", upconv._scatter_rows_cpu, (Y, rng.standard_normal(kk).astype(f32), up), up.size),
    ]


def time_call(fn, args, repeats: int) -> float:
    """Median seconds of ``fn(*args)`` (warm caches: this is about the fixed cost of a launch)."""
    timer = harness.CpuTimer(flush_bytes=0)
    return harness.median(harness.repeat(timer, lambda: fn(*args), 3, repeats))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.threshold", description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-log2", type=int, default=8, help="smallest size, as a power of two (default 2^8)")
    parser.add_argument("--max-log2", type=int, default=22, help="largest size, as a power of two (default 2^22)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per variant and size (median reported)")
    parser.add_argument("--clean", type=float, default=0.05, help="retime a point when other processes used more "
                        "than this share of the CPUs meanwhile (default 0.05)")
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    load_before = harness.load_average()
    results = []
    for log2 in range(args.min_log2, args.max_log2 + 1, 1):
        n = 1 << log2
        for name, loop, loop_args, work in loops(n, rng):
            # Another job on the machine wrecks exactly what this measures (a parallel loop
            # waits for its slowest thread): retime a point while others used > --clean.
            for _ in range(args.retries + 1):
                meter = harness.OthersMeter()
                serial = time_call(loop.serial, loop_args, args.repeats)
                parallel = time_call(loop.parallel, loop_args, args.repeats)
                others = meter.share()
                if others is None or others < args.clean:
                    break
            results.append(dict(loop=name, work=work, serial_s=serial, parallel_s=parallel, others_share=others,
                                speedup=serial / parallel, min_work=loop.min_work, picks="parallel" if work >= loop.min_work else "serial"))
    crossover = {}
    for name in dict.fromkeys(r["loop"] for r in results):
        rows = [r for r in results if r["loop"] == name]
        wins = [r["speedup"] > 1.0 for r in rows]
        first = next((rows[i]["work"] for i in range(len(rows)) if all(wins[i:])), None)
        crossover[name] = dict(parallel_wins_from=first, min_work=rows[0]["min_work"])
    report = dict(benchmark="threshold", command=harness.command_line(), machine=harness.machine(),
                  load_average_before=load_before, load_average_after=harness.load_average(),
                  results=results, crossover=crossover)
    if args.json:
        print(harness.dump_json(report))
        return 0
    print(harness.header("serial vs parallel Numba CPU loops (warm caches, median of "
                         f"{args.repeats})", "cpu"))
    rows = [dict(loop=r["loop"], work=f"{r['work']:,}", serial=harness.fmt_time(r["serial_s"]),
                 parallel=harness.fmt_time(r["parallel_s"]), speedup=f"{r['speedup']:.2f}x", picks=r["picks"],
                 others="" if r["others_share"] is None else f"{100 * r['others_share']:.0f}%")
            for r in results]
    rows.sort(key=lambda r: r["loop"])
    print(harness.format_table([("loop", "loop"), ("work", "elements"), ("serial", "serial"),
                                ("parallel", "parallel"), ("speedup", "parallel speed-up"),
                                ("picks", "cunet picks"), ("others", "others' CPU")], rows))
    print()
    for name, c in crossover.items():
        print(f"{name:<20} parallel faster from {c['parallel_wins_from'] or 'never':>10} elements; "
              f"cunet's threshold {c['min_work']:,}")
    print(f"# load average at end: {' '.join(map(str, report['load_average_after']))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
