"""Wall-clock timings of the host-side data path, as reported in the data notes.

    python -m cunet.data.timing [--repeats 7] [--isbi PATH]

Prints medians over ``--repeats`` runs (after one warm-up run) of: generating one
512 x 512 synthetic slice; its weight map (several hundred cells); one training sample
for the paper's network (572 input, 388 output, on a 512 x 512 image) with elastic
deformation, rotation, flips and grey values, using precomputed weight maps (the
default) and recomputing the weight map of every warped tile; and a non-augmented
sample. Wall and CPU time; on a shared machine run it when nothing else is.
"""

from __future__ import annotations

import argparse
import statistics
import time

from .loaders import load_dataset
from .sampler import TrainingSampler
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


def main(argv=None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m cunet.data.timing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--isbi", default=None, help="also time the weight map of an ISBI slice")
    args = parser.parse_args(argv)
    images, labels, instances = make_synthetic(2, 512, seed=0)
    rows = [("synthetic 512x512 slice", median_seconds(lambda: make_synthetic(1, 512, seed=1), args.repeats)),
            (f"weight map, synthetic 512x512, {instances[0].max()} cells",
             median_seconds(lambda: weight_map(labels[0], instances[0]), args.repeats))]
    for name, kwargs in [("training sample 572->388, augmented, precomputed weights", {}),
                         ("training sample 572->388, augmented, weight map per sample", {"recompute_weights": True}),
                         ("training sample 572->388, no augmentation", {"augment": False})]:
        sampler = TrainingSampler(images, labels, None, 572, 388, seed=0, instances=instances, **kwargs)
        rows.append((name, median_seconds(lambda: sampler.batch(1), args.repeats)))
    if args.isbi:
        data = load_dataset(args.isbi)
        rows.append(("weight map, ISBI slice 0", median_seconds(lambda: weight_map(data.labels[0]), args.repeats)))
    print(f"{'median of ' + str(args.repeats) + ' runs':<62} {'wall':>8}    {'CPU':>8}")
    for name, (wall, cpu) in rows:
        print(f"{name:<62} {wall * 1000:8.1f} ms {cpu * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
