"""Data-parallel training: weak scaling measured on this machine's CPUs, NCCL's cost MODELLED for 8 GPUs.

    python -m benchmarks.data_parallel                     # 1 rank vs 2 ranks, base 16 / depth 4 / tile 284
    python -m benchmarks.data_parallel --steps 40 --json

Measured. Weak scaling keeps the work per rank fixed: one rank trains with batch 1 on one
core, then ``mpiexec -n 2`` trains two ranks with batch 1 each, one core each (every
thread pool pinned to one thread), so a step of two ranks does twice the work. Efficiency
= (2-rank images/s) / (2 x 1-rank images/s); 100% would mean the allreduce and the rank
waiting for the other cost nothing. The time per step is the median of the log's step
times (``seconds``: rank 0's step, allreduce included) after the first ``--warmup`` steps.

MODELLED (no GPU was measured). A ring allreduce of n bytes over R GPUs moves 2 (R - 1) / R
x n through each GPU's link; with bus bandwidth B it takes 2 (R - 1) / R x n / B plus
2 (R - 1) link latencies. For the paper's network (31.0 M float32 gradients, 124 MB) on 8
GPUs, the figure is set against two step times: NVIDIA's published 46.9 img/s per GPU
(TF32, PyTorch), and cunet.trace's roofline floor for one H100 step. cunet does not yet
overlap the allreduce with the backward pass, so all of it adds to the step.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Assumptions of the NCCL model, stated so a reader can change them.
NVLINK_BUS_GBPS = 400.0  # ASSUMED all-reduce bus bandwidth of 8 NVLink-4 GPUs for ~100 MB messages
LINK_LATENCY_S = 5e-6  # ASSUMED per-hop latency
NVIDIA_IMAGES_PER_S = 46.9  # NVIDIA's published U-Net (medical) TF32 training throughput per GPU, as the brief cites


def measure(ranks: int, steps: int, warmup: int, tile: int, base: int, depth: int) -> dict:
    """Train ``steps`` steps with ``ranks`` single-threaded ranks; the median step time after ``warmup``."""
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        command = [sys.executable, "-m", "cunet.train", "--device", "cpu", "--tile", str(tile), "--base", str(base),
                   "--depth", str(depth), "--steps", str(steps), "--quiet", "--out", str(out),
                   "--checkpoint-every", str(steps)]
        if ranks > 1:
            command = [str(Path(sys.executable).with_name("mpiexec")), "-n", str(ranks), *command]
        subprocess.run(command, check=True, capture_output=True, env=env)
        records = [json.loads(line) for line in open(out / "log.jsonl") if '"loss"' in line]
    seconds = statistics.median(r["seconds"] for r in records[warmup:])
    return dict(ranks=ranks, step_s=seconds, images_per_s=ranks / seconds)


def modelled_nccl(gpus: int = 8) -> dict:
    """MODELLED ring all-reduce time of the paper network's gradients, and its share of two step times."""
    from cunet.summary import layer_table
    from cunet.trace import GPU_SPECS, compute_peak, cost, record_train_step, roofline_seconds

    nbytes = 4 * sum(row.params for row in layer_table(572, 64, 5))
    seconds = 2 * (gpus - 1) / gpus * nbytes / (NVLINK_BUS_GBPS * 1e9) + 2 * (gpus - 1) * LINK_LATENCY_S
    spec = GPU_SPECS["H100 SXM"]
    floor = sum(roofline_seconds(*cost(launch), compute_peak(launch, spec), spec["gbps"])
                for launch in record_train_step(572, 64, 5))
    published = 1 / NVIDIA_IMAGES_PER_S
    return dict(gpus=gpus, gradient_mb=nbytes / 1e6, allreduce_ms=seconds * 1e3, bus_gbps=NVLINK_BUS_GBPS,
                published_step_ms=published * 1e3, share_of_published=seconds / published,
                roofline_step_ms=floor * 1e3, share_of_roofline=seconds / floor)


def main(argv=None) -> int:
    """Run the measurement and print it with the model, or JSON."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_parallel", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--tile", type=int, default=284)
    p.add_argument("--base", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.steps <= args.warmup:
        print(f"error: --steps ({args.steps}) must exceed --warmup ({args.warmup})", file=sys.stderr)
        return 2
    one, two = (measure(r, args.steps, args.warmup, args.tile, args.base, args.depth) for r in (1, 2))
    result = dict(config=vars(args), measured=[one, two], weak_scaling_efficiency=two["images_per_s"] / (2 * one["images_per_s"]),
                  modelled_nccl=modelled_nccl())
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"MEASURED on this machine's CPUs: U-Net tile {args.tile}, base {args.base}, depth {args.depth}, batch 1 "
          f"per rank, one thread per rank, median of steps {args.warmup + 1}..{args.steps}")
    for m in result["measured"]:
        print(f"  {m['ranks']} rank(s): {m['step_s'] * 1e3:7.1f} ms per step, {m['images_per_s']:.2f} images/s")
    print(f"  weak-scaling efficiency, 2 ranks: {result['weak_scaling_efficiency']:.1%}")
    n = result["modelled_nccl"]
    print(f"MODELLED, not measured: NCCL ring all-reduce of the paper network's gradients ({n['gradient_mb']:.0f} MB) "
          f"over {n['gpus']} GPUs at an assumed {n['bus_gbps']:.0f} GB/s bus bandwidth: {n['allreduce_ms']:.2f} ms per step")
    print(f"  = {n['share_of_published']:.1%} of a {n['published_step_ms']:.1f} ms step (NVIDIA's 46.9 img/s per GPU), "
          f"{n['share_of_roofline']:.0%} of the {n['roofline_step_ms']:.2f} ms H100 roofline floor (cunet.trace)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
