"""``python -m cunet.evaluate``: score a trained model the way the ISBI 2012 challenge did.

    python -m cunet.evaluate --checkpoint runs/unet/checkpoint.npz --data ../shared/data/isbi2012 --slices 20-24
    python -m cunet.evaluate --checkpoint ckpt.npz --data ../shared/data/isbi2012 --slices 20-24 --tta
    python -m cunet.evaluate --checkpoint ckpt.npz --data my_folder --json > scores.json

Each selected slice is segmented with overlap-tile prediction (``cunet.predict``).

The headline is the challenge's own method (``cunet.isbi``): the pixel, Rand and warping
errors and V_rand / V_info of the selected slices *as one stack*, one threshold per metric
for the whole stack from Fiji's grid 0.0, 0.1, ..., 1.0, statistics pooled over the
slices as Fiji's scripts pool them. With ``--tta`` it is reported twice: for the single
prediction and for the mean over the 8 flips and rotations, as the paper's score was
taken (on rotated copies, no post-processing).

Below it, as diagnostics, a table per slice from ``cunet.metrics``: each slice picks its
own best threshold (0.05..0.95), plus IoU, Dice and SEG of the hard prediction. Those
numbers are *not* the challenge's (they read lower: a per-slice optimum is easier to hit).

``--json`` prints {"checkpoint", "data", "slices", "challenge": {"single": {...},
"tta": {...} with --tta}, "diagnostics": {"method", "per_slice", "mean"}}; each challenge
entry has "scores", "best_threshold", "thresholds" and "curves" (the stack's value at
every threshold).

``--slices`` takes indices and ascending ranges, comma-separated ('20-24', '3,5,7',
'0-2,9'); it is checked against the number of slices before any range is expanded, so a
typo such as '0-999999999' or '5-2' is a one-line error, and a bad input is
``error: <message>`` with exit code 2 (``cunet.predict.USER_ERRORS``).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time

import numpy as np

from cunet.data import load_dataset
from cunet.isbi import METRICS, score_stack
from cunet.metrics import all_metrics
from cunet.predict import USER_ERRORS, add_inference_arguments, load_for_inference, predict_probabilities, predict_with_tta


SLICES_FORMS = "indices and ascending ranges, comma-separated, e.g. '20-24', '3,5,7' or '0-2,9'"
# One part of --slices: "7" or "20-24" (ASCII digits only: no signs, no spaces inside a number).
_SLICE_PART = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")


def _shorten(text: str, limit: int = 40) -> str:
    """``text`` quoted, cut to ``limit`` characters, so an error message stays one short line."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _slices_error(text: str, problem: str, n: int) -> ValueError:
    """A short --slices error: what is wrong, the accepted form and the valid range."""
    valid = f"the data has slices 0..{n - 1}" if n else "the data has no slices"
    return ValueError(f"--slices {_shorten(text)}: {problem}: expected {SLICES_FORMS}; {valid}")


def _index(digits: str) -> int:
    """The index a run of digits spells; past 18 digits just 10**18, out of range for any data set.

    (int() itself refuses strings of over 4300 digits, with a message about sys settings.)
    """
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else 10**18


def parse_slice_ranges(text: str, n: int) -> list[tuple[int, int]]:
    """The inclusive (first, last) ranges a --slices spec names, in its order: '0-2,9' -> [(0, 2), (9, 9)].

    Checks every part is an index or an ascending range of non-negative integers, all
    below the number of slices ``n``. No range is expanded, so '0-999999999' costs
    nothing. Raises ValueError with a short message.
    """
    ranges = []
    for part in text.split(","):
        match = _SLICE_PART.fullmatch(part)
        if match is None:
            negative = " (indices start at 0)" if part.strip().startswith("-") else ""
            raise _slices_error(text, f"cannot read {_shorten(part.strip())}{negative}", n)
        first_digits, last_digits = match.group(1), match.group(2) or match.group(1)
        first, last = _index(first_digits), _index(last_digits)
        if last < first:
            raise _slices_error(text, f"range {_shorten(part.strip())} is descending "
                                      f"(write {_shorten(f'{last_digits}-{first_digits}')})", n)
        if last >= n:
            raise _slices_error(text, f"{_shorten(last_digits)} is out of range", n)
        ranges.append((first, last))
    return ranges


def parse_slices(text: str | None, n: int) -> list[int]:
    """'20-24', '3,5,7' or '0-2,9' -> sorted distinct indices below ``n`` (all n slices when text is None)."""
    if text is None:
        return list(range(n))
    chosen = np.zeros(n, bool)  # memory bounded by n: every range has been checked to fit
    for first, last in parse_slice_ranges(text, n):
        chosen[first:last + 1] = True
    return np.flatnonzero(chosen).tolist()


DIAGNOSTICS_METHOD = ("per slice, each slice at its own best threshold of 0.05..0.95 (cunet.metrics); "
                      "not the challenge's method")


def evaluate(model, images, labels, tile: int, batch: int = 1, tta: bool = False) -> dict:
    """Challenge scores of the stack (single prediction, and with ``tta`` the 8-fold average too)
    and the per-slice diagnostics of the single prediction."""
    single = [predict_probabilities(model, image, tile, batch) for image in images]
    challenge = {"single": score_stack([p[1] for p in single], list(labels)).as_dict()}
    if tta:
        averaged = [predict_with_tta(model, image, tile, batch) for image in images]
        challenge["tta"] = score_stack([p[1] for p in averaged], list(labels)).as_dict()
    per_slice = [all_metrics(probs, label) for probs, label in zip(single, labels)]
    return dict(challenge=challenge, diagnostics=dict(method=DIAGNOSTICS_METHOD, per_slice=per_slice,
                                                      mean=mean_metrics(per_slice)))


def mean_metrics(per_slice: list[dict]) -> dict:
    """The mean of each metric over slices."""
    return {k: float(np.mean([m[k] for m in per_slice])) for k in per_slice[0]}


def format_challenge(challenge: dict) -> str:
    """The headline: one row per prediction (single, tta), the challenge's five scores with their
    thresholds, and the two parts of its Rand F-score (a diagnostic, ``cunet.isbi.rand_parts``)."""
    names = {"single": "single prediction", "tta": "mean of 8 flips/rotations"}
    lines = [f"{'ISBI 2012 method (stack)':<28}" + "".join(f"{k:>15}" for k in METRICS)]
    for key, result in challenge.items():
        lines.append(f"{names[key]:<28}" + "".join(f"{result['scores'][k]:>15.5f}" for k in METRICS))
        lines.append(f"{'  at threshold':<28}" + "".join(f"{result['best_threshold'][k]:>15.1f}" for k in METRICS))
        parts = result["rand_parts"]
        lines.append(f"{'  Rand F = 2PR/(P+R)':<28}precision {parts['precision']:.4f} (merges), "
                     f"recall {parts['recall']:.4f} (splits, cell pixels taken for membrane)")
    return "\n".join(lines)


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
    p.add_argument("--slices", help="which slices: indices and ascending ranges, e.g. '20-24', '3,5,7' or "
                   "'0-2,9' (default: all)")
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
    result = evaluate(model, dataset.images[slices], dataset.labels[slices], tile, args.batch, args.tta)
    names = [dataset.names[i] for i in slices]
    diagnostics = result["diagnostics"]
    if args.json:
        diagnostics["per_slice"] = [dict(slice=i, name=n, **m) for i, n, m in zip(slices, names, diagnostics["per_slice"])]
        print(json.dumps(dict(checkpoint=str(args.checkpoint), data=str(args.data), slices=slices, **result), indent=1))
    else:
        print(f"{len(slices)} slice(s) of {dataset.source} on {device.describe()}, tile {tile}, "
              f"{time.perf_counter() - t0:.1f} s")
        print(format_challenge(result["challenge"]))
        print(f"\ndiagnostics: {DIAGNOSTICS_METHOD}")
        print(format_table(names, diagnostics["per_slice"], diagnostics["mean"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
