"""Wall-clock timings of the host-side data path, as reported in the data notes.

    python -m cunet.data.timing [--repeats 7] [--isbi PATH] [--workers 0,1,2 --batches 40]

Prints medians over ``--repeats`` runs (after one warm-up run) of: generating one
512 x 512 synthetic slice; its weight map (several hundred cells); one training sample
for the paper's network (572 input, 388 output, on a 512 x 512 image) with elastic
deformation, rotation, flips and grey values, using precomputed weight maps (the
default) and recomputing the weight map of every warped tile; and a non-augmented
sample. Wall and CPU time; on a shared machine run it when nothing else is.

Then the training loop's view: samples per second that `BatchStream` delivers with 0, 1,
2, ... worker processes (augmented 572 tiles, the default training sampler), counted once
every worker has delivered its first batches, so their start-up is not in it. A GPU that trains at R img/s
needs about R / (one worker's rate) workers, and a core for each.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

from .loaders import load_dataset
from .sampler import TrainingSampler
from .stream import BatchStream
from .synthetic import make_synthetic
from .weights import weight_map


def median_seconds(fn, repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``fn()`` over ``repeats`` calls, after one warm-up call.

    CPU time sums this process's threads; on a busy shared machine it inflates much
    less than wall time does.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def stream_rate(sampler: TrainingSampler, workers: int, batches: int) -> float:
    """Samples per second a BatchStream with ``workers`` delivers, once every worker is running."""
    with BatchStream(sampler, 1, workers=workers) as stream:
        for _ in range(2 * workers + 1):  # until every worker has started and delivered
            stream.next()
        start = time.perf_counter()
        for _ in range(batches):
            stream.next()
        return batches / (time.perf_counter() - start)


def main(argv=None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m cunet.data.timing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--isbi", default=None, help="also time the weight map of an ISBI slice")
    parser.add_argument("--workers", default="0,1,2", help="worker counts for the stream's samples/s (default 0,1,2)")
    parser.add_argument("--batches", type=int, default=40, help="batches of one 572 tile timed per worker count")
    args = parser.parse_args(argv)
    images, labels, instances = make_synthetic(2, 512, seed=0)
    rows = [("synthetic 512x512 slice", median_seconds(lambda: make_synthetic(1, 512, seed=1), args.repeats)),
            (f"weight map, synthetic 512x512, {instances[0].max()} cells",
             median_seconds(lambda: weight_map(labels[0], instances[0]), args.repeats))]
    for name, kwargs in [("training sample 572->388, augmented, precomputed weights", {}),
                         ("training sample 572->388, augmented, weight map per sample", {"recompute_weights": True}),
                         ("training sample 572->388, no augmentation", {"augment": False})]:
        sampler = TrainingSampler(images, labels, None, 572, 388, seed=0, instances=instances, **kwargs)
        counter = itertools.count()  # a new sample each call, as in training
        rows.append((name, median_seconds(lambda: sampler.batch_at(next(counter), 1), args.repeats)))
    if args.isbi:
        data = load_dataset(args.isbi)
        rows.append(("weight map, ISBI slice 0", median_seconds(lambda: weight_map(data.labels[0]), args.repeats)))
    print(f"{'median of ' + str(args.repeats) + ' runs':<62} {'wall':>8}    {'CPU':>8}")
    for name, (wall, cpu) in rows:
        print(f"{name:<62} {wall * 1000:8.1f} ms {cpu * 1000:8.1f} ms")
    sampler = TrainingSampler(images, labels, None, 572, 388, seed=0, instances=instances)
    print(f"\n{'BatchStream, augmented 572 tiles':<40} {'samples/s':>10}")
    for workers in (int(w) for w in args.workers.split(",")):
        print(f"{f'{workers} worker(s)':<40} {stream_rate(sampler, workers, args.batches):10.1f}")


if __name__ == "__main__":
    main()
