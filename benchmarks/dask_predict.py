"""Distributed prediction (cunet.scale.dask_predict): megapixels per second for 1, 2, ... workers.

    python -m benchmarks.dask_predict                          # 2048 x 2048, base-16 / depth-4 net, 1 and 2 workers
    python -m benchmarks.dask_predict --size 4096 --chunk 1152 --workers 1,2,4
    python -m benchmarks.dask_predict --checkpoint runs/isbi/checkpoint.npz --json

One random uint8 image of ``--size`` x ``--size`` is written as a tiled TIFF and predicted
with ``predict_large`` on a fresh ``LocalCluster`` of each worker count (processes, one
thread each, the defaults). Each cluster first loads the model and runs one tile on every
worker (``warm_up``: the checkpoint, Numba's compiled loops), so "seconds" is the
prediction alone: submitting the chunks, reading the image, the tiles, writing the zarr
output. Peak worker RSS is the largest ``ru_maxrss`` over the workers after the run;
"over base" is that minus the worker's resident set after the warm-up (what the chunks
cost, ``worker_memory_bound``'s subject). Every run's output is compared with the first
run's: equal bit for bit, or the benchmark fails (validate, then benchmark).

The network: ``--checkpoint``, or else the CPU preset's U-Net (tile 284, base 16, depth 4)
with seeded random weights: speed does not depend on what the weights learned.
``--chunk`` defaults to the multiple of the tile step nearest ``--size / 2``, so that even
the default size gives several chunks to share among workers.

Others' share: the fraction of all CPU time that processes outside this benchmark (and its
workers) used while it measured; on a shared 2-core machine, read the numbers with it.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import harness


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.dask_predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=2048, help="image side in pixels (default 2048)")
    p.add_argument("--chunk", type=int, help="chunk side, a multiple of the tile step (default: nearest size / 2)")
    p.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated (default 1,2)")
    p.add_argument("--checkpoint", help="a checkpoint to predict with (default: base 16, depth 4, tile 284, random)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    try:
        args.workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        p.error(f"--workers {args.workers!r}: expected worker counts such as 1,2")
    if args.size < 1 or any(w < 1 for w in args.workers):
        p.error("--size and every --workers count must be at least 1")
    return args


def default_checkpoint(folder: Path) -> Path:
    """The CPU preset's network (tile 284, base 16, depth 4) with seeded random weights, saved."""
    from cunet.checkpoint import save_checkpoint
    from cunet.unet import UNet

    model = UNet(base=16, depth=4, dropout=0.5, seed=0, input_mean=0.5, input_std=0.25)
    config = dict(tile=284, base=16, depth=4, dropout=0.5, seed=0, input_mean=0.5, input_std=0.25)
    return save_checkpoint(folder / "ckpt.npz", model.state_dict(), [], dict(step=0, config=config))


def _descendants_cpu() -> dict[int, float]:
    """CPU seconds of every process below this one (the nannies and workers), by pid."""
    import psutil

    times = {}
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
            times[child.pid] = t.user + t.system
        except psutil.Error:
            pass
    return times


class TreeOthersMeter:
    """OthersMeter for a process tree: others' share of all CPU time, not counting our workers."""

    def __init__(self):
        self.machine = harness.OthersMeter._read()
        self.tree = _descendants_cpu()

    def share(self) -> float | None:
        end, tree = harness.OthersMeter._read(), _descendants_cpu()
        if self.machine is None or end is None or end[0] == self.machine[0]:
            return None
        total, busy, own = (e - s for e, s in zip(end, self.machine))
        ticks = os.sysconf("SC_CLK_TCK")
        workers = sum(tree[p] - self.tree.get(p, 0.0) for p in tree) * ticks
        return max(0.0, busy - own - workers) / total


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_one(checkpoint, image_path, out, chunk, workers) -> dict:
    """predict_large on a fresh local cluster of ``workers`` processes; the row of the table."""
    from distributed import Client, LocalCluster

    from cunet.scale.dask_predict import predict_large, warm_up

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit="2GiB",
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        base = warm_up(client, checkpoint)
        meter = TreeOthersMeter()
        start = time.perf_counter()
        predict_large(checkpoint, image_path, out, chunk=chunk, scheduler=client, progress=False)
        seconds = time.perf_counter() - start
        others = meter.share()
        peaks = client.run(_peak_rss)
    return dict(workers=workers, seconds=seconds, others_share=others,
                peak_worker_rss_mib=max(peaks.values()) / 2**20,
                over_base_mib=max(peaks[a] - base[a] for a in peaks) / 2**20)


def main(argv=None) -> int:
    args = parse_args(argv)
    import tifffile
    import zarr

    from cunet.checkpoint import load_checkpoint
    from cunet.scale.dask_predict import chunk_geometry
    from cunet.unet import output_size

    with tempfile.TemporaryDirectory(prefix="cunet-dask-bench-") as tmp:
        tmp = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint(tmp)
        config = load_checkpoint(checkpoint).config
        tile, depth = config["tile"], config["depth"]
        out = output_size(tile, depth)
        step = out // 2 ** (depth - 1) * 2 ** (depth - 1)
        chunk = args.chunk or max(1, round(args.size / 2 / step)) * step
        try:
            g = chunk_geometry((args.size, args.size), tile, out, depth, chunk)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        image = np.random.default_rng(0).integers(0, 256, (args.size, args.size), dtype=np.uint8)
        tifffile.imwrite(tmp / "image.tif", image, tile=(256, 256))
        del image
        load = harness.load_average()
        rows, first = [], None
        for workers in args.workers:
            result = tmp / f"out-{workers}.zarr"
            row = run_one(checkpoint, tmp / "image.tif", result, chunk, workers)
            probs = zarr.open_array(str(result), mode="r")[...]
            if first is None:
                first = probs
            elif not np.array_equal(probs, first):
                print(f"error: the output with {workers} workers differs from the output with {args.workers[0]}",
                      file=sys.stderr)
                return 1
            row["megapixels_per_s"] = args.size * args.size / 1e6 / row["seconds"]
            rows.append(row)
            del probs
    report = dict(benchmark="dask_predict", command=harness.command_line(), machine=harness.machine(),
                  load_average=load, size=args.size, chunk=chunk, chunks=g.grid[0] * g.grid[1], tile=tile,
                  base=config["base"], depth=depth, checkpoint=args.checkpoint or "random (base 16, depth 4)",
                  outputs_equal=True, rows=rows)
    if args.json:
        print(harness.dump_json(report))
        return 0
    print(harness.header("distributed prediction (cunet.scale.dask_predict): megapixels per second", "cpu",
                         extra=[f"network: tile {tile}, base {config['base']}, depth {depth} ({report['checkpoint']}); "
                                f"step {step}, chunk {chunk} ({report['chunks']} chunks), depth_px {g.depth_px}",
                                "workers: LocalCluster processes, 1 thread each; after warm_up; "
                                "outputs of all runs equal bit for bit"], load=load))
    table = [dict(image=f"{args.size} x {args.size}", chunk=str(chunk), workers=str(r["workers"]),
                  seconds=f"{r['seconds']:.2f}", mps=f"{r['megapixels_per_s']:.3f}",
                  rss=f"{r['peak_worker_rss_mib']:.0f} MiB", over=f"{r['over_base_mib']:.0f} MiB",
                  others="-" if r["others_share"] is None else f"{r['others_share']:.0%}") for r in rows]
    print(harness.format_table([("image", "image"), ("chunk", "chunk"), ("workers", "workers"), ("seconds", "seconds"),
                                ("mps", "MP/s"), ("rss", "peak worker RSS"), ("over", "over base"),
                                ("others", "others' CPU")], table, left=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
