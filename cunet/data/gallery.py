"""A picture of the training data: synthetic slices (and optionally one ISBI slice)
with their labels, the labels laid over the image, and the loss weight maps.

    python -m cunet.data.gallery --out gallery.png [--isbi PATH] [--n 3] [--seed 0]

Look at it whenever the generator changes: the synthetic slices should read as EM
(packed cells, thin dark membranes, dark organelles inside cells), the red overlay
should sit exactly on the membranes, and the weight maps should light up the narrow
gaps between neighbouring cells.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .loaders import load_dataset
from .synthetic import make_synthetic
from .weights import weight_map


def _overlay(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    """RGB image with membrane (class 0) pixels tinted red, half transparent."""
    rgb = np.repeat(image[..., None], 3, axis=2)
    rgb[label == 0] = 0.5 * rgb[label == 0] + 0.5 * np.array([1.0, 0.0, 0.0])
    return rgb


def render_gallery(out, isbi=None, n: int = 3, seed: int = 0, size: int = 512, isbi_slice: int = 0) -> Path:
    """Save the gallery PNG to ``out`` and return its path.

    Rows: ``n`` synthetic slices from ``make_synthetic(n, size, seed)`` and, when
    ``isbi`` names a data set folder, slice ``isbi_slice`` of it. Columns: image,
    label, overlay, weight map (default w0 = 10, sigma = 5; shared colour scale).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, labels, instances = make_synthetic(n, size, seed)
    rows = [(f"synthetic seed={seed} #{i}", images[i], labels[i], weight_map(labels[i], instances[i])) for i in range(n)]
    if isbi is not None:
        data = load_dataset(isbi)
        image, label = data.images[isbi_slice], data.labels[isbi_slice]
        rows.append((f"ISBI {data.names[isbi_slice]}", image, label, weight_map(label)))
    vmax = max(float(r[3].max()) for r in rows)
    fig, axes = plt.subplots(len(rows), 4, figsize=(16, 4 * len(rows)), squeeze=False)
    for row, (title, image, label, weights) in zip(axes, rows):
        row[0].imshow(image, cmap="gray", vmin=0, vmax=1)
        row[1].imshow(label, cmap="gray", vmin=0, vmax=max(1, int(label.max())))
        row[2].imshow(_overlay(image, label))
        shown = row[3].imshow(weights, cmap="magma", vmin=0, vmax=vmax)
        fig.colorbar(shown, ax=row[3], fraction=0.046)
        for ax, name in zip(row, ["image", "label (0 = membrane)", "membrane label in red", "weight map"]):
            ax.set_title(f"{title}: {name}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m cunet.data.gallery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--isbi", default=None, help="data set folder to show one slice of (e.g. the ISBI 2012 folder)")
    parser.add_argument("--n", type=int, default=3, help="number of synthetic slices")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)
    print(render_gallery(args.out, args.isbi, args.n, args.seed, args.size))


if __name__ == "__main__":
    main()
