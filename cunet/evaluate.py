"""``python -m cunet.evaluate``: score a trained model the way the ISBI 2012 challenge did.

    python -m cunet.evaluate --checkpoint runs/unet/checkpoint.npz --data ../shared/data/isbi2012 --slices 20-24
    python -m cunet.evaluate --checkpoint ckpt.npz --data my_folder --json > scores.json

Each selected slice is segmented with overlap-tile prediction (``cunet.predict``) and
scored with every metric in ``cunet.metrics.all_metrics``: pixel error, Rand error and
warping error (the challenge's three), IoU and Dice per class, and SEG. The table shows
each slice and the mean; ``--json`` prints {"checkpoint", "data", "slices", "per_slice",
"mean"} with the same keys on every run, for scripts.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from cunet.data import load_dataset
from cunet.metrics import all_metrics
from cunet.predict import USER_ERRORS, add_inference_arguments, load_for_inference, predict_probabilities, predict_with_tta


def parse_slices(text: str | None, n: int) -> list[int]:
    """'20-24', '0,3,5' or '0-2,7' -> sorted indices (all n slices when text is None)."""
    if text is None:
        return list(range(n))
    chosen = set()
    for part in text.split(","):
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-"))
                chosen.update(range(lo, hi + 1))
            else:
                chosen.add(int(part))
        except ValueError:
            raise ValueError(f"--slices {text!r}: expected indices like '20-24' or '0,3,5'") from None
    bad = sorted(i for i in chosen if not 0 <= i < n)
    if bad:
        raise ValueError(f"--slices {text!r}: {bad} out of range; the data has slices 0..{n - 1}")
    return sorted(chosen)


def evaluate(model, images, labels, tile: int, batch: int = 1, tta: bool = False) -> list[dict]:
    """all_metrics for every (image, label) pair."""
    predict = predict_with_tta if tta else predict_probabilities
    return [all_metrics(predict(model, image, tile, batch), label) for image, label in zip(images, labels)]


def mean_metrics(per_slice: list[dict]) -> dict:
    """The mean of each metric over slices."""
    return {k: float(np.mean([m[k] for m in per_slice])) for k in per_slice[0]}


def format_table(names: list[str], per_slice: list[dict], mean: dict) -> str:
    """A fixed-width table: a row per slice, then the mean."""
    keys = list(mean)
    lines = [f"{'slice':<28}" + "".join(f"{k:>15}" for k in keys)]
    for name, m in zip(names, per_slice):
        lines.append(f"{name:<28}" + "".join(f"{m[k]:>15.5f}" for k in keys))
    lines.append(f"{'mean':<28}" + "".join(f"{mean[k]:>15.5f}" for k in keys))
    return "\n".join(lines)


def main(argv=None) -> int:
    """Entry point; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m cunet.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_arguments(p)
    p.add_argument("--data", required=True, help="ISBI folder (train-volume.tif + train-labels.tif) or images/ + labels/")
    p.add_argument("--slices", help="which slices, e.g. '20-24' or '0,3,5' (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    try:
        device, model, tile = load_for_inference(args)
        dataset = load_dataset(args.data)
        slices = parse_slices(args.slices, len(dataset))
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    per_slice = evaluate(model, dataset.images[slices], dataset.labels[slices], tile, args.batch, args.tta)
    mean = mean_metrics(per_slice)
    names = [dataset.names[i] for i in slices]
    if args.json:
        print(json.dumps(dict(checkpoint=str(args.checkpoint), data=str(args.data), slices=slices,
                              per_slice=[dict(slice=i, name=n, **m) for i, n, m in zip(slices, names, per_slice)],
                              mean=mean), indent=1))
    else:
        print(f"{len(slices)} slice(s) of {dataset.source} on {device.describe()}, tile {tile}, "
              f"{time.perf_counter() - t0:.1f} s")
        print(format_table(names, per_slice, mean))
    return 0


if __name__ == "__main__":
    sys.exit(main())
