"""``python -m cunet.figures``: the teaching figures of the tour, drawn from the live code.

    python -m cunet.figures --out figures/                                  # synthetic data
    python -m cunet.figures --out kernels/figures --data ../shared/data/isbi2012
    python -m cunet.figures --out figures/ --only unet,implicit_gemm --dpi 80

Six PNGs, each drawn by calling the project's own functions, so a figure changes when the
code does and never shows something the code does not do:

* ``unet.png``          the paper's Fig. 1 from ``cunet.summary.layer_table`` (our sizes)
* ``train_step.png``    every kernel launch of one training step (``cunet.trace``), with
                        its MODELLED roofline time on an H100 and the share per kernel
* ``overlap_tile.png``  the overlap-tile plan of ``cunet.data.tiling`` on a mirrored slice
* ``weight_map.png``    the loss weight map of ``cunet.data.weights`` (w0 = 10, sigma = 5)
* ``elastic.png``       one elastic deformation of ``cunet.data.augment``, with its grid
* ``implicit_gemm.png`` which input pixel each element of conv2d_forward's gathered GEMM
                        operand reads (the index arithmetic of kernels/conv2d.cu)

Every figure has a fixed size in inches (:data:`SIZES`), so its PNG is ``SIZES[name] x
dpi`` pixels; random draws use fixed seeds, so the same data give the same bytes. A
figure is written whole (a temporary file in the same folder, then renamed); files in
``--out`` other than these six names are never touched. Bad input (an unknown ``--only``
name, a missing ``--data`` folder) ends with exit status 2 and an ``error:`` line.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_DPI = 100
#: Each figure's size in inches (width, height): the PNG is exactly this times the dpi in pixels.
SIZES = {
    "unet": (16.0, 9.0),
    "train_step": (16.0, 9.0),
    "overlap_tile": (14.0, 7.0),
    "weight_map": (16.0, 4.5),
    "elastic": (16.0, 5.5),
    "implicit_gemm": (16.0, 10.0),
}
#: A PNG above this many bytes is re-encoded with a 256-colour palette (the figures are
#: linked from the docs; EM texture compresses badly as full RGB).
MAX_BYTES = 250_000
#: The seed of every random draw in the figures (elastic field, instance colours).
SEED = 2015
#: The GPU whose datasheet peaks model the launch times of ``train_step.png``.
MODEL_GPU = "H100 SXM"


def pixel_size(name: str, dpi: int = DEFAULT_DPI) -> tuple[int, int]:
    """(width, height) in pixels of figure ``name`` saved at ``dpi``."""
    width, height = SIZES[name]
    return int(round(width * dpi)), int(round(height * dpi))


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Slice:
    """The one slice the data figures show: image float [H, W] in [0, 1], label uint8 [H, W]
    (0 = membrane, 1 = cell), cell instances int [H, W] (0 = none) or None (then derived
    from the label, as the weight map does), and a name for titles."""

    image: np.ndarray
    label: np.ndarray
    instances: np.ndarray | None
    name: str


def load_slice(data=None, index: int = 0, size: int = 512) -> Slice:
    """The slice to draw: ``data`` None (slice ``index`` of the synthetic data, ``size`` px),
    a data set folder (loaded with ``cunet.data.load_dataset``), a ``Dataset`` or a ``Slice``."""
    from cunet.data import Dataset, load_dataset, make_synthetic

    if isinstance(data, Slice):
        return data
    if data is None:
        images, labels, instances = make_synthetic(index + 1, size, seed=0)
        return Slice(images[index], labels[index], instances[index], f"synthetic seed=0 #{index}")
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    return Slice(dataset.images[index], dataset.labels[index], None, dataset.names[index])


# --------------------------------------------------------------------------- drawing helpers


def _new_figure(name: str):
    """A matplotlib Figure of the fixed size of ``name`` (Agg: no display, no pyplot state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=SIZES[name])


def _png_bytes(fig, dpi: int) -> bytes:
    """Render ``fig`` with Agg at ``dpi`` and encode it (see :func:`encode_png`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return encode_png(np.asarray(canvas.buffer_rgba())[..., :3])


def encode_png(rgb: np.ndarray, max_bytes: int = MAX_BYTES) -> bytes:
    """PNG bytes of an RGB image [H, W, 3] uint8: full colour if that fits in ``max_bytes``,
    else a palette with fewer and fewer grey levels (64 down to 16) and the colours kept.

    Why: a figure is mostly flat colour and text, which PNG compresses well, except the EM
    slices, whose pixel noise costs 6-8 bits a pixel. Fewer grey levels lower that cost, and
    on a noisy slice 32 levels look the same as 256; overlays and text keep their colours.
    Pillow writes no time stamp, so the same figure always gives the same bytes."""
    from PIL import Image

    data = _save_png(Image.fromarray(rgb))
    for levels in (64, 48, 32, 24, 16):
        if len(data) <= max_bytes:
            break
        data = _save_png(_grey_palette_image(rgb, levels))
    return data


def _save_png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _grey_palette_image(rgb: np.ndarray, levels: int):
    """A palette image: grey pixels (R = G = B within 2) rounded to ``levels`` greys, the
    other pixels quantised (median cut, no dithering: deterministic) to the remaining entries."""
    from PIL import Image

    wide = rgb.astype(np.int16)
    grey = (wide.max(axis=-1) - wide.min(axis=-1)) <= 2
    index = np.zeros(rgb.shape[:2], np.uint8)
    index[grey] = np.round(rgb[..., 1][grey] * ((levels - 1) / 255.0)).astype(np.uint8)
    palette = np.repeat(np.round(np.arange(levels) * (255.0 / (levels - 1)))[:, None], 3, axis=1)
    coloured = rgb[~grey]
    if len(coloured):
        n = 256 - levels
        quantised = Image.fromarray(coloured[None]).quantize(n, method=Image.Quantize.MEDIANCUT,
                                                             dither=Image.Dither.NONE)
        index[~grey] = np.asarray(quantised)[0] + levels
        colours = np.array(quantised.getpalette()[:3 * n]).reshape(-1, 3)
        palette = np.concatenate([palette, colours])
    image = Image.fromarray(index, "P")
    image.putpalette(palette.astype(np.uint8).ravel().tolist())
    return image


def _write_whole(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees half a file: temp name, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _rect(ax, window, colour, lw=2.0, ls="-", fill=None, label=None, zorder=3):
    """Outline the half-open window ((r0, r1), (c0, c1)) on an image axis (pixel centres at integers)."""
    from matplotlib.patches import Rectangle

    (r0, r1), (c0, c1) = window
    patch = Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=fill is not None, facecolor=fill or "none",
                      edgecolor=colour, lw=lw, ls=ls, label=label, zorder=zorder)
    ax.add_patch(patch)
    return patch


# =========================================================================== 1. unet.png
# The paper's Fig. 1: one box per feature map (width ~ log2 channels, height ~ size), the
# contracting path going down on the left, the expanding path up on the right.

ARROW_STYLES = {  # kind -> (colour, legend text), the paper's colours
    "conv": ("#1f3d99", "conv 3x3, ReLU"),
    "copy": ("#8c8c8c", "copy and crop"),
    "pool": ("#d62728", "max pool 2x2"),
    "up": ("#2ca02c", "up-conv 2x2"),
    "head": ("#17a2a2", "conv 1x1"),
}
_GAP = 0.6          # horizontal room for a conv arrow, in box units
_LEVEL_GAP = 0.9    # vertical room for a pool or up-conv arrow
_LABEL = 0.32       # height of the channel label above a box


@dataclass
class _Box:
    """One feature map of the figure: its level, left edge, channels and spatial size."""

    level: int
    x: float
    channels: int
    size: int
    fill: str = "#7ea6e0"
    width: float = 0.0
    size_label: bool = True  # False for an upsampled map: its crop partner carries the size

    def __post_init__(self):
        # log2: 1 channel is a sliver, 1024 about eight times as wide as 2
        self.width = 0.12 + 0.065 * np.log2(max(self.channels, 1))

    @property
    def right(self) -> float:
        return self.x + self.width

    @property
    def centre(self) -> float:
        return self.x + self.width / 2


def unet_layout(rows) -> tuple[list[_Box], list[tuple], list[tuple]]:
    """Boxes, arrows (kind, box_from, box_to) and notes (box, text) for a ``layer_table``.

    Walks the table in order: a 3x3 conv adds a box to the right on the same level, a
    pool starts the next level under the current box, an up-conv starts the level above
    with the cropped skip (white) next to the upsampled map, the 1x1 head ends the U."""
    first = rows[0].input_shape
    cur = _Box(0, 0.0, first[1], first[2], fill="#d9d9d9")
    boxes, arrows, notes, skips = [cur], [], [], {}
    for row in rows:
        out = row.output_shape
        if row.kind.startswith("conv 3x3"):
            nxt = _Box(cur.level, cur.right + _GAP, out[1], out[2])
            arrows.append(("conv", cur, nxt))
        elif row.kind.startswith("max-pool"):
            skips[cur.level] = cur
            nxt = _Box(cur.level + 1, 0.0, out[1], out[2])
            nxt.x = cur.centre - nxt.width / 2  # straight down
            arrows.append(("pool", cur, nxt))
        elif row.kind.startswith("drop-out"):
            notes.append((cur, row.kind))
            continue
        elif row.kind.startswith("up-conv"):
            up = _Box(cur.level - 1, 0.0, out[1], out[2])
            up.x = cur.right + 0.15  # up and a little right, so the white crop box fits left of it
            arrows.append(("up", cur, up))
            nxt = up
        elif "concat" in row.kind:
            skip = skips[cur.level]
            crop = _Box(cur.level, 0.0, skip.channels, cur.size, fill="white")
            crop.x = cur.x - crop.width  # the skip channels come first, as in the paper
            cur.size_label = False
            arrows.append(("copy", skip, crop))
            notes.append((crop, row.kind.split(" + ")[0]))  # "crop 568->392"
            boxes.append(crop)
            continue
        else:  # the 1x1 head
            nxt = _Box(cur.level, cur.right + _GAP, out[1], out[2], fill="#f4c27a")
            arrows.append(("head", cur, nxt))
        boxes.append(nxt)
        cur = nxt
    return boxes, arrows, notes


def _level_geometry(boxes, tile: int) -> tuple[dict, dict]:
    """Box height per level (from its largest map) and the level's centre line, top to bottom."""
    height = {}
    for b in boxes:
        height[b.level] = max(height.get(b.level, 0.0), _box_height(b, tile))
    centre, y = {}, 0.0
    for level in sorted(height):
        if level:
            y -= height[level - 1] / 2 + _LEVEL_GAP + height[level] / 2
        centre[level] = y
    return height, centre


def _box_height(box, tile: int) -> float:
    """A box's height: linear in its spatial size, with a floor so the bottom level stays visible."""
    return 0.45 + 3.0 * box.size / tile


def _draw_unet_arrows(ax, arrows, centre, tile):
    """One arrow per layer, from the edge of one box to the edge of the next."""
    for kind, a, b in arrows:
        colour = ARROW_STYLES[kind][0]
        ya, yb = centre[a.level], centre[b.level]
        if kind in ("conv", "copy", "head"):
            start, end = (a.right, ya), (b.x, yb)
        elif kind == "pool":  # down onto the next box's channel label, not through it
            start, end = (a.centre, ya - _box_height(a, tile) / 2), (b.centre, yb + _box_height(b, tile) / 2 + _LABEL)
        else:  # up-conv: from the right end of the box's top, clear of its label
            start = (a.right - 0.06, ya + _box_height(a, tile) / 2)
            end = (b.centre, yb - _box_height(b, tile) / 2)
        ax.annotate("", xy=end, xytext=start,
                    arrowprops=dict(arrowstyle="-|>", color=colour, lw=2.2 if kind != "copy" else 1.8,
                                    shrinkA=1, shrinkB=1, mutation_scale=12))


def _draw_unet_boxes(ax, boxes, centre, tile):
    """The feature maps: channels above each box, size up its left side (the paper's labels)."""
    from matplotlib.patches import Rectangle

    for b in boxes:
        h = _box_height(b, tile)
        y0 = centre[b.level] - h / 2
        ax.add_patch(Rectangle((b.x, y0), b.width, h, facecolor=b.fill, edgecolor="black", lw=0.8, zorder=2))
        ax.text(b.centre, y0 + h + 0.06, str(b.channels), ha="center", va="bottom", fontsize=8.5)
        if b.size_label:
            ax.text(b.x - 0.03, y0 + 0.03, f"{b.size}\u00b2", ha="right", va="bottom", rotation=90, fontsize=7.5)


def draw_unet(sample: Slice | None = None, tile: int = 572, base: int = 64, depth: int = 5):
    """``unet.png``: the U-Net of ``tile`` / ``base`` / ``depth`` as the paper's Fig. 1, from the
    live layer table (so the channels and sizes are the code's, never typed in)."""
    from matplotlib.lines import Line2D

    from cunet.summary import layer_table

    rows = layer_table(tile, base=base, depth=depth)
    boxes, arrows, notes = unet_layout(rows)
    height, centre = _level_geometry(boxes, tile)
    fig = _new_figure("unet")
    ax = fig.add_axes([0.01, 0.02, 0.98, 0.88])
    _draw_unet_arrows(ax, arrows, centre, tile)
    _draw_unet_boxes(ax, boxes, centre, tile)
    for box, text in notes:
        y = centre[box.level] - _box_height(box, tile) / 2
        if text.startswith("crop"):  # label the copy arrow that ends at this crop box
            ax.text(box.x - 0.1, centre[box.level] + 0.07, text.replace("->", "\u2192"), ha="right", va="bottom",
                    fontsize=7.5, color=ARROW_STYLES["copy"][0])
        else:
            ax.text(box.centre, y - 0.12, text, ha="center", va="top", fontsize=8, style="italic")
    first, last = boxes[0], boxes[-1]
    ax.text(first.x - 0.3, centre[0], "input\nimage\ntile", ha="right", va="center", fontsize=10)
    ax.text(last.right + 0.15, centre[0], "output\nsegmentation\nmap", ha="left", va="center", fontsize=10)
    handles = [Line2D([], [], color=c, lw=3, marker=">", markersize=7, label=t) for c, t in ARROW_STYLES.values()]
    ax.legend(handles=handles, loc="lower right", fontsize=10, frameon=False)
    xs = [b.x for b in boxes] + [b.right for b in boxes]
    bottom = centre[max(centre)] - height[max(height)] / 2
    ax.set_xlim(min(xs) - 1.3, max(xs) + 2.3)
    ax.set_ylim(bottom - 0.8, height[0] / 2 + 0.4)
    ax.axis("off")
    params = sum(r.params for r in rows)
    fig.suptitle(f"U-Net as the paper's Fig. 1, from cunet.summary.layer_table({tile}, base={base}, depth={depth}): "
                 f"{params / 1e6:.2f} M parameters, input {tile}\u00b2 \u2192 output {last.size}\u00b2 "
                 f"({(tile - last.size) // 2} px lost per side to unpadded convolutions)", fontsize=12)
    return fig


# =========================================================================== 2. train_step.png


def modelled_seconds(launches, gpu: str = MODEL_GPU) -> np.ndarray:
    """Each launch's MODELLED roofline time on ``gpu`` (``cunet.trace``'s model: max of FLOPs
    over the compute peak and bytes over the DRAM bandwidth)."""
    from cunet.trace import GPU_SPECS, compute_peak, roofline_seconds

    spec = GPU_SPECS[gpu]
    return np.array([roofline_seconds(x.flops, x.bytes, compute_peak(x, spec), spec["gbps"]) for x in launches])


def step_phases(launches) -> list[tuple[str, int, int]]:
    """(name, first, stop) of the step's phases in launch order: forward, loss (softmax
    cross-entropy), backward, SGD; found from the kernel names, not counted by hand."""
    names = [x.kernel for x in launches]
    loss = [i for i, k in enumerate(names) if k.startswith("softmax_ce")]
    sgd = next((i for i, k in enumerate(names) if k.startswith("sgd")), len(names))
    cuts = [("forward", 0, loss[0]), ("loss", loss[0], loss[-1] + 1), ("backward", loss[-1] + 1, sgd),
            ("SGD update", sgd, len(names))]
    return [c for c in cuts if c[2] > c[1]]


def _kernel_colours(kernels) -> dict:
    """One colour per kernel name, in order of first launch (tab20 then tab20b: 40 colours)."""
    from matplotlib import colormaps

    palette = list(colormaps["tab20"].colors) + list(colormaps["tab20b"].colors)
    order = list(dict.fromkeys(kernels))
    return {k: palette[i % len(palette)] for i, k in enumerate(order)}


def _draw_launch_bars(ax, launches, times, colours, phases):
    """Top panel: one bar per launch, in order, log scale, phases shaded."""
    from matplotlib.patches import Patch

    ax.bar(np.arange(len(launches)), times * 1e6, width=0.9, color=[colours[x.kernel] for x in launches])
    ax.set_yscale("log")
    top = times.max() * 1e6 * 40  # a band above the tallest bar for the phase labels
    for j, (name, a, b) in enumerate(phases):
        ax.axvspan(a - 0.5, b - 0.5, color="0.93" if j % 2 == 0 else "white", zorder=0)
        share = times[a:b].sum() / times.sum()
        narrow = b - a < len(launches) // 10  # the loss: 3 launches, its label starts at its left edge
        ax.text(a - 0.5 if narrow else (a + b - 1) / 2, top / 1.5, f"{name}\n{b - a} launches, {share:.0%}",
                ha="left" if narrow else "center", va="top", fontsize=9)
    ax.set_ylim(times[times > 0].min() * 1e6 / 2, top)
    ax.set_xlim(-1, len(launches))
    ax.set_xlabel("launch, in the order the step issues them")
    ax.set_ylabel("MODELLED time per launch (\u00b5s, log)")
    handles = [Patch(color=c, label=k) for k, c in colours.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7.5, frameon=False,
              title="kernel", title_fontsize=8.5)


def kernel_shares(launches, times) -> list[tuple[str, float, int, str]]:
    """(kernel, seconds, launches, bound) per kernel name, most time first; ``bound`` says
    whether the roofline puts most of its time on the compute peak or on DRAM."""
    from cunet.trace import GPU_SPECS, compute_peak

    spec = GPU_SPECS[MODEL_GPU]
    totals: dict[str, list] = {}
    for x, t in zip(launches, times):
        entry = totals.setdefault(x.kernel, [0.0, 0, 0.0])
        entry[0] += t
        entry[1] += 1
        entry[2] += t if x.flops / (compute_peak(x, spec) * 1e9) >= x.bytes / (spec["gbps"] * 1e9) else 0.0
    rows = [(k, v[0], v[1], "compute" if v[2] >= v[0] / 2 else "DRAM") for k, v in totals.items()]
    return sorted(rows, key=lambda r: -r[1])


def _draw_shares(ax, shares, colours, total):
    """Bottom panel: the share of the step per kernel (the 12 largest, the rest summed)."""
    shown, rest = shares[:12], shares[12:]
    labels = [f"{k}  ({n}x, {bound})" for k, _, n, bound in shown]
    values = [t for _, t, _, _ in shown]
    bar_colours = [colours[k] for k, *_ in shown]
    if rest:
        labels.append(f"{len(rest)} other kernels ({sum(r[2] for r in rest)}x)")
        values.append(sum(r[1] for r in rest))
        bar_colours.append("0.6")
    y = np.arange(len(values))[::-1]
    ax.barh(y, np.array(values) / total * 100, color=bar_colours)
    for yi, v in zip(y, values):
        ax.text(v / total * 100 + 0.4, yi, f"{v / total:.1%}  {v * 1e3:.2f} ms", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, max(values) / total * 100 * 1.3)
    ax.set_xlabel("share of the MODELLED step time (%)")
    ax.spines[["top", "right"]].set_visible(False)


def draw_train_step(sample: Slice | None = None, tile: int = 572, base: int = 64, depth: int = 5,
                    gpu: str = MODEL_GPU):
    """``train_step.png``: every launch of one traced training step (``cunet.trace``, nothing
    executed) as a bar of its MODELLED roofline time on ``gpu``, plus the share per kernel."""
    from cunet.trace import GPU_SPECS, record_train_step

    launches = record_train_step(tile, base, depth)
    times = modelled_seconds(launches, gpu)
    colours = _kernel_colours(x.kernel for x in launches)
    fig = _new_figure("train_step")
    grid = fig.add_gridspec(2, 2, left=0.06, right=0.84, top=0.90, bottom=0.07, hspace=0.32, wspace=0.05,
                            height_ratios=[1.15, 1], width_ratios=[1.1, 1])
    _draw_launch_bars(fig.add_subplot(grid[0, :]), launches, times, colours, step_phases(launches))
    _draw_shares(fig.add_subplot(grid[1, 1]), kernel_shares(launches, times), colours, times.sum())
    spec = GPU_SPECS[gpu]
    flops, nbytes = sum(x.flops for x in launches), sum(x.bytes for x in launches)
    notes = (f"What the model says\n\n"
             f"U-Net {tile} / base {base} / depth {depth}, batch 1\n"
             f"GEMMs in TF32 on tensor cores\n\n"
             f"{len(launches)} launches\n{flops / 1e12:.2f} TFLOP, {nbytes / 1e9:.2f} GB of DRAM traffic\n"
             f"MODELLED step: {times.sum() * 1e3:.2f} ms on {gpu}\n\n"
             f"time per launch = max(FLOPs / peak, bytes / bandwidth)\n"
             f"peaks: FP32 {spec['gflops'] / 1e3:.0f}, TF32 {spec['tf32_gflops'] / 1e3:.0f} TFLOP/s, "
             f"{spec['gbps'] / 1e3:.2f} TB/s\n\n"
             f"a floor from the datasheet, not a measurement:\n"
             f"real kernels reach a fraction of these peaks")
    text_ax = fig.add_subplot(grid[1, 0])
    text_ax.axis("off")
    text_ax.text(0.0, 1.0, notes, va="top", ha="left", fontsize=10, family="monospace", transform=text_ax.transAxes)
    fig.suptitle(f"One training step, launch by launch: MODELLED times on {gpu} "
                 f"(python -m cunet.trace --tile {tile} --base {base} --depth {depth} --gpu H100)", fontsize=13)
    return fig


# =========================================================================== 3. overlap_tile.png


def overlap_tile_plan(shape, tile: int = 572, depth: int = 5):
    """The plan ``cunet.predict`` uses for an image of ``shape``: (tiles, out size, align)."""
    from cunet.data import plan_tiles
    from cunet.unet import output_size

    out, align = output_size(tile, depth), 2 ** (depth - 1)
    return plan_tiles(shape, tile, out, align=align), out, align


def _canvas_window(plan) -> tuple[int, int, int, int]:
    """(r0, c0, r1, c1): the union of every tile's input window (what inference ever reads)."""
    r0 = min(t.input[0][0] for t in plan)
    c0 = min(t.input[1][0] for t in plan)
    r1 = max(t.input[0][1] for t in plan)
    c1 = max(t.input[1][1] for t in plan)
    return r0, c0, r1, c1


def _dim_outside(window: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The window with every pixel outside the image pulled towards mid-grey: the mirrored
    context reads as context (and, with less contrast, the PNG stays small)."""
    return np.where(inside, window, 0.3 + 0.45 * window)


def _draw_plan(ax, image, plan, chosen):
    """Left panel: the mirrored image, the image border, every tile's owned part, one tile's windows."""
    from cunet.data import mirror_window

    r0, c0, r1, c1 = _canvas_window(plan)
    canvas = mirror_window(image, r0, c0, r1 - r0, c1 - c0)  # the same mirroring as extract_tile
    rows, cols = np.arange(r0, r1)[:, None], np.arange(c0, c1)[None, :]
    canvas = _dim_outside(canvas, (rows >= 0) & (rows < image.shape[0]) & (cols >= 0) & (cols < image.shape[1]))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, extent=(c0 - 0.5, c1 - 0.5, r1 - 0.5, r0 - 0.5))
    h, w = image.shape
    _rect(ax, ((0, h), (0, w)), "white", lw=2.0, ls="--", zorder=4)
    ax.text(w / 2, -6, "image border: mirrored outside", color="white", ha="center", va="bottom", fontsize=9,
            bbox=dict(facecolor="black", alpha=0.6, lw=0))
    for i, t in enumerate(plan):
        _rect(ax, t.owned, "#ffd400", lw=1.2)
        (a, b), (c, d) = t.owned
        ax.text((c + d) / 2, (a + b) / 2, f"{i}", color="#ffd400", ha="center", va="center", fontsize=13,
                weight="bold", zorder=5)
    t = plan[chosen]
    _rect(ax, t.input, "#00d0ff", lw=2.5, label=f"input window of tile {chosen}")
    _rect(ax, t.output, "#ff3df2", lw=2.5, label="its output window (past the image: computed, dropped)")
    _rect(ax, t.owned, "#ff3df2", lw=0, fill="#ff3df2", zorder=2, label="the part it owns (stitched)").set_alpha(0.3)
    ax.set_xlim(c0 - 0.5, c1 - 0.5)
    ax.set_ylim(r1 - 0.5, r0 - 0.5)
    ax.legend(loc="lower left", fontsize=9, framealpha=0.8)
    ax.set_xlabel("column (image coordinates)")
    ax.set_ylabel("row")


def _draw_tile_input(ax, image, tile_obj, out):
    """Right panel: the chosen tile's network input, cut by ``extract_tile`` as predict does."""
    from cunet.data import extract_tile

    x = extract_tile(image, tile_obj)
    size = x.shape[0]
    (r0, _), (c0, _) = tile_obj.input
    rows, cols = np.arange(r0, r0 + size)[:, None], np.arange(c0, c0 + size)[None, :]
    x = _dim_outside(x, (rows >= 0) & (rows < image.shape[0]) & (cols >= 0) & (cols < image.shape[1]))
    margin = (size - out) // 2
    ax.imshow(x, cmap="gray", vmin=0, vmax=1)
    _rect(ax, ((0, size), (0, size)), "#00d0ff", lw=3)
    _rect(ax, ((margin, margin + out), (margin, margin + out)), "#ff3df2", lw=2.5)
    rows, cols = tile_obj.owned_in_output()  # slices of the output this tile keeps
    _rect(ax, ((margin + rows.start, margin + rows.stop), (margin + cols.start, margin + cols.stop)), "#ff3df2",
          lw=0, fill="#ff3df2", zorder=2).set_alpha(0.25)
    ax.set_title(f"what the network sees: extract_tile() = {size}\u00b2 input,\n"
                 f"{out}\u00b2 output {margin} px inside it (magenta), owned part shaded", fontsize=10)
    ax.axis("off")


def draw_overlap_tile(sample: Slice, tile: int = 572, depth: int = 5):
    """``overlap_tile.png``: the overlap-tile strategy on ``sample`` with the plan of
    ``cunet.data.tiling.plan_tiles`` and the mirroring of ``cunet.data.mirror`` (predict's own)."""
    plan, out, align = overlap_tile_plan(sample.image.shape, tile, depth)
    chosen = len(plan) - 1  # the last tile: its input is mostly mirror, its output reaches past the image
    fig = _new_figure("overlap_tile")
    grid = fig.add_gridspec(1, 2, left=0.06, right=0.99, top=0.84, bottom=0.08, wspace=0.08, width_ratios=[1.15, 1])
    ax = fig.add_subplot(grid[0, 0])
    _draw_plan(ax, sample.image, plan, chosen)
    step = out // align * align
    ax.set_title(f"{sample.name}, {sample.image.shape[0]}x{sample.image.shape[1]}: {len(plan)} tiles; "
                 f"each owns the part of its output on a {step} px grid (yellow)", fontsize=10)
    _draw_tile_input(fig.add_subplot(grid[0, 1]), sample.image, plan[chosen], out)
    fig.suptitle(f"Overlap-tile strategy (paper Fig. 2), as cunet.predict runs it: input {tile} \u2192 output {out}; "
                 f"output windows start on multiples of {align} = 2^(depth-1)\n(step {step}), so the stitched "
                 f"result has no seams; outside the image the image is mirrored (shown dimmed)", fontsize=12)
    return fig


# =========================================================================== 4. weight_map.png


def _instance_colours(instances: np.ndarray) -> np.ndarray:
    """RGB image: each cell instance a random (seeded) colour, membranes black."""
    rng = np.random.default_rng(SEED)
    palette = rng.uniform(0.25, 1.0, size=(int(instances.max()) + 1, 3))
    palette[0] = 0.0
    return palette[instances]


def _zoom_window(weights: np.ndarray, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The ``size``-square window with the most loss weight (ties: the first): where the
    border term is busiest, so the zoom shows narrow gaps between touching cells."""
    from scipy import ndimage

    size = min(size, *weights.shape)
    mean = ndimage.uniform_filter(weights.astype(np.float64), size=size, mode="constant")
    half = size // 2
    inner = mean[half:weights.shape[0] - size + half + 1, half:weights.shape[1] - size + half + 1]
    r, c = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return (int(r), int(r) + size), (int(c), int(c) + size)


def draw_weight_map(sample: Slice, w0: float = 10.0, sigma: float = 5.0):
    """``weight_map.png``: image, cell instances, the loss weight map of ``cunet.data.weights``
    (paper: w0 = 10, sigma = 5 px) with its colour bar, and a zoom on the busiest window."""
    from cunet.data import instances_from_labels, weight_map

    instances = sample.instances if sample.instances is not None else instances_from_labels(sample.label)
    weights = weight_map(sample.label, instances, w0=w0, sigma=sigma)
    window = _zoom_window(weights, max(16, sample.image.shape[0] // 4))
    fig = _new_figure("weight_map")
    grid = fig.add_gridspec(1, 4, left=0.01, right=0.97, top=0.84, bottom=0.03, wspace=0.12)
    axes = [fig.add_subplot(grid[0, i]) for i in range(4)]
    axes[0].imshow(sample.image, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(f"image: {sample.name}", fontsize=10)
    axes[1].imshow(_instance_colours(instances), interpolation="nearest")
    axes[1].set_title(f"label: {int(instances.max())} cells (4-connected), membranes black", fontsize=10)
    shown = axes[2].imshow(weights, cmap="magma", vmin=0, vmax=float(weights.max()))
    axes[2].set_title("weight map w = w_c + w0 exp(-(d1+d2)\u00b2/2\u03c3\u00b2)", fontsize=10)
    _rect(axes[2], window, "#00d0ff", lw=1.5)
    (r0, r1), (c0, c1) = window
    axes[3].imshow(weights[r0:r1, c0:c1], cmap="magma", vmin=0, vmax=float(weights.max()), interpolation="nearest")
    axes[3].contour(sample.label[r0:r1, c0:c1], levels=[0.5], colors="#00d0ff", linewidths=0.6)
    axes[3].set_title(f"zoom (cyan box), rows {r0}-{r1}, cols {c0}-{c1};\ncyan: membrane edges", fontsize=10)
    fig.colorbar(shown, ax=axes[3], fraction=0.046, pad=0.03).set_label("loss weight", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Loss weight map (paper eq. 2, w0 = {w0:g}, \u03c3 = {sigma:g} px): class balance plus a "
                 f"border term that makes the thin membranes between touching cells expensive "
                 f"(max {weights.max():.1f})", fontsize=12)
    return fig


# =========================================================================== 5. elastic.png


def elastic_example(image: np.ndarray, seed: int = SEED, sigma: float = 10.0):
    """(transform, source coordinates [2, H, W], deformed image) of one elastic deformation
    alone (no rotation or flip), drawn and applied with ``cunet.data.augment`` as training does."""
    from cunet.data import AugmentConfig, draw_transform, resample, source_coordinates

    config = AugmentConfig(elastic_sigma=sigma, rotate=False, flip=False)
    transform = draw_transform(np.random.default_rng(seed), config)
    centre = ((image.shape[0] - 1) / 2.0, (image.shape[1] - 1) / 2.0)
    coords = source_coordinates(transform, image.shape, centre)
    return transform, coords, resample(np.asarray(image, np.float32), coords, order=3)


def _grid_levels(n: int, spacing: int) -> np.ndarray:
    """Grid line positions 0, spacing, ... inside [0, n)."""
    return np.arange(0, n, spacing)


def _draw_field(ax, transform, coords, shape):
    """Middle panel: |D(p)| in colour, the dense field as arrows, the 3x3 drawn nodes in red."""
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w]
    dy, dx = coords[0] - rows, coords[1] - cols  # s(p) - p: the displacement (no rotation, no flip)
    shown = ax.imshow(np.hypot(dy, dx), cmap="viridis")
    step = max(1, h // 16)
    sl = (slice(step // 2, None, step), slice(step // 2, None, step))
    # angles="xy": an arrow goes from (x, y) to (x + u, y + v) in data coordinates, and the
    # image axis has rows growing downward, so (u, v) = (dx, dy) points where p reads from
    ax.quiver(cols[sl], rows[sl], dx[sl], dy[sl], color="white", angles="xy", scale_units="xy", scale=1 / 3,
              width=0.004)
    g = transform.coarse.shape[1]
    nodes = np.linspace(0, h - 1, g), np.linspace(0, w - 1, g)
    ny, nx = np.meshgrid(*nodes, indexing="ij")
    ax.quiver(nx, ny, transform.coarse[1], transform.coarse[0], color="red", edgecolor="white", linewidth=0.8,
              angles="xy", scale_units="xy", scale=1 / 3, width=0.009, zorder=4)
    ax.plot(nx.ravel(), ny.ravel(), "o", color="red", mec="white", ms=7, clip_on=False, zorder=5)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    return shown


def draw_elastic(sample: Slice, sigma: float = 10.0, spacing: int = 32):
    """``elastic.png``: the slice with a regular grid, the displacement field (the paper's 3x3
    coarse vectors ~ N(0, sigma px), bicubic in between), and the deformed slice with the same
    grid carried along: the lines where the source coordinate s(p) is a multiple of ``spacing``."""
    image = sample.image
    transform, coords, deformed = elastic_example(image, sigma=sigma)
    h, w = image.shape
    fig = _new_figure("elastic")
    grid = fig.add_gridspec(1, 3, left=0.01, right=0.97, top=0.84, bottom=0.03, wspace=0.1)
    axes = [fig.add_subplot(grid[0, i]) for i in range(3)]
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
    for v in _grid_levels(h, spacing):
        axes[0].axhline(v, color="#ffd400", lw=0.6)
    for v in _grid_levels(w, spacing):
        axes[0].axvline(v, color="#ffd400", lw=0.6)
    axes[0].set_title(f"original, {spacing} px grid", fontsize=10)
    shown = _draw_field(axes[1], transform, coords, image.shape)
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.03).set_label("|displacement| (px)", fontsize=9)
    axes[1].set_title("D(p) = s(p) - p: where pixel p reads from; drawn at the\n3x3 nodes (red), bicubic between; "
                      "arrows x3", fontsize=10)
    axes[2].imshow(deformed, cmap="gray", vmin=0, vmax=1)
    # The deformed image at p shows the source at s(p): the grid line x = k*spacing of the
    # original lands where s(p)'s column equals k*spacing -- a contour of coords[1].
    axes[2].contour(coords[1], levels=_grid_levels(w, spacing), colors="#ffd400", linewidths=0.6)
    axes[2].contour(coords[0], levels=_grid_levels(h, spacing), colors="#ffd400", linewidths=0.6)
    axes[2].set_title("deformed (cubic resampling, mirrored borders),\nthe grid carried along", fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Elastic deformation as in the paper: coarse 3x3 displacements ~ N(0, {sigma:g} px), interpolated "
                 f"bicubically (cunet.data.augment, seed {SEED}; rotation and flips off here)", fontsize=12)
    return fig


# =========================================================================== 6. implicit_gemm.png
# conv2d_forward (kernels/conv2d.cu) multiplies C[m, k] = sum_kk A[kk, m] * B[kk, k]
# (gemm.h's convention: the reduction index first). A is never stored: each element is
# gathered from x when its tile is loaded. This is the kernel's index arithmetic, line
# for line, vectorised over kk and m with NumPy broadcasting.


def conv_gather_offsets(kk, m, batch: int, C: int, H: int, W: int, filter_size: int = 3) -> np.ndarray:
    """Flat offset into x [batch, C, H, W] (NCHW) that conv2d_forward reads for A[kk, m];
    -1 where the kernel loads 0 instead (kk >= KG or m >= M: the edge of a block tile).

    The same decomposition as the kernel: m -> (n, oh, ow) decoded once per thread into
    ``a_base``, kk -> (c, r, s) per element, with the same integer divisions."""
    F = filter_size
    FF = F * F
    OH, OW = H - F + 1, W - F + 1
    OHW = OH * OW
    M, KG = batch * OHW, C * FF
    kk, m = np.asarray(kk, np.int64), np.asarray(m, np.int64)
    # This thread's row of A, decoded once (kernel: a_base = n * C * H * W + oh * W + ow).
    n = m // OHW
    p = m - n * OHW
    oh = p // OW
    ow = p - oh * OW
    a_base = n * C * H * W + oh * W + ow
    # Per element (kernel: int c = kk / FF, rs = kk - c * FF, r = rs / FILTER, s = rs - r * FILTER).
    c = kk // FF
    rs = kk - c * FF
    r = rs // F
    s = rs - r * F
    offset = a_base + c * H * W + r * W + s
    return np.where((kk < KG) & (m < M), offset, -1)


def gather_matrix(batch: int, C: int, H: int, W: int, filter_size: int = 3, rows: int | None = None,
                  cols: int | None = None) -> np.ndarray:
    """A as offsets [rows, cols] (default KG x M; more rows/columns show the zero-filled edge)."""
    F = filter_size
    KG, M = C * F * F, batch * (H - F + 1) * (W - F + 1)
    kk = np.arange(rows or KG)[:, None]
    m = np.arange(cols or M)[None, :]
    return conv_gather_offsets(kk, m, batch, C, H, W, F)


def _pixel_colours(H: int, W: int) -> np.ndarray:
    """[H, W, 3]: a 2-D colour map, hue along the columns, lightness down the rows."""
    import colorsys

    colours = np.zeros((H, W, 3))
    for y in range(H):
        for x in range(W):
            colours[y, x] = colorsys.hls_to_rgb(0.83 * x / max(W - 1, 1), 0.78 - 0.36 * y / max(H - 1, 1), 0.75)
    return colours


def _offset_colours(offsets: np.ndarray, C: int, H: int, W: int) -> np.ndarray:
    """RGB per matrix element: the colour of the input pixel (y, x) it reads; grey where it loads 0."""
    pix = _pixel_colours(H, W)
    live = offsets >= 0
    rgb = np.full(offsets.shape + (3,), 0.85)
    yx = np.where(live, offsets, 0) % (H * W)
    rgb[live] = pix[yx[live] // W, yx[live] % W]
    return rgb


def _draw_gather(ax, offsets, C, H, W, cfg, hl_col, hl_row):
    """The gathered operand A: cell colour = input pixel, number = flat offset into x;
    BK slices (the main loop's steps) marked, the block tile's zero-filled edge hatched."""
    rows, cols = offsets.shape
    ax.imshow(_offset_colours(offsets, C, H, W), aspect="auto", interpolation="nearest",
              extent=(-0.5, cols - 0.5, rows - 0.5, -0.5))
    for i in range(rows):
        for j in range(cols):
            text = str(offsets[i, j]) if offsets[i, j] >= 0 else "0"
            ax.text(j, i, text, ha="center", va="center", fontsize=5.5, color="black" if offsets[i, j] >= 0 else "0.5")
    for step in range(0, rows + 1, cfg.BK):
        ax.axhline(step - 0.5, color="black", lw=2.0)
    for step in range(0, rows, cfg.BK):
        ax.text(cols - 0.3, step + cfg.BK / 2 - 0.5, f" step {step // cfg.BK}\n kk {step}..{step + cfg.BK - 1}",
                ha="left", va="center", fontsize=8)
    _rect(ax, ((0, rows), (hl_col, hl_col + 1)), "black", lw=2.2)
    _rect(ax, ((hl_row, hl_row + 1), (0, cols)), "red", lw=2.2)


def _kk_labels(C: int, F: int, rows: int) -> list[str]:
    """'c,r,s' for every reduction index kk (the kernel's decomposition), blank past KG."""
    return [f"{kk} = {kk // (F * F)},{kk % (F * F) // F},{kk % F}" if kk < C * F * F else f"{kk}: pad"
            for kk in range(rows)]


def _draw_input(ax, c, C, H, W, F, col_yx, row_rs):
    """One input channel: pixel colours, flat offsets, the 3x3 window of the highlighted
    output pixel (black) and the OHxOW window the highlighted row of A reads (red)."""
    ax.imshow(_pixel_colours(H, W), interpolation="nearest")
    for y in range(H):
        for x in range(W):
            ax.text(x, y, str(c * H * W + y * W + x), ha="center", va="center", fontsize=7)
    oy, ox = col_yx
    _rect(ax, ((oy, oy + F), (ox, ox + F)), "black", lw=2.5)
    rc, r, s = row_rs
    if rc == c:
        _rect(ax, ((r, r + H - F + 1), (s, s + W - F + 1)), "red", lw=2.5, ls="--")
    ax.set_title(f"input x, channel c = {c} (numbers: offset into x)", fontsize=10)
    ax.set_xticks(range(W))
    ax.set_yticks(range(H))
    ax.tick_params(labelsize=7)


def _gemm_text(C, H, W, F, K, cfg, M, KG) -> str:
    """The index arithmetic as the kernel writes it, and how the tile shape cuts the GEMM."""
    steps = -(-KG // cfg.BK)
    return (f"conv2d_forward (kernels/conv2d.cu) as implicit GEMM:\n"
            f"    C[m, k] = sum over kk of A[kk, m] * B[kk, k]\n"
            f"x: batch 1, C = {C} channels of {H}x{W}; K = {K} filters of 3x3\n"
            f"output {H - F + 1}x{W - F + 1}: M = {M} pixels; reduction KG = C*9 = {KG}\n\n"
            f"m  -> n = m / OHW,  p = m - n*OHW,\n"
            f"      oh = p / OW,  ow = p - oh*OW\n"
            f"      a_base = n*C*H*W + oh*W + ow     (once per thread)\n"
            f"kk -> c = kk / FF,  rs = kk - c*FF,\n"
            f"      r = rs / FILTER,  s = rs - r*FILTER\n"
            f"A[kk, m] = x[a_base + c*H*W + r*W + s]\n"
            f"           (0 if kk >= KG or m >= M)\n"
            f"B[kk, k] = w[k*KG + kk]   (the filters as they lie)\n\n"
            f"tile_config(K={K}) = {cfg.name}: a block owns BM = {cfg.BM}\n"
            f"pixels x BN = {cfg.BN} channels and walks KG in BK = {cfg.BK}\n"
            f"slices: {steps} steps, each staging {cfg.BK}x{cfg.BM} of A and\n"
            f"{cfg.BK}x{cfg.BN} of B in shared memory (out of range: 0)")


def draw_implicit_gemm(sample: Slice | None = None, C: int = 2, out: int = 6, K: int = 16):
    """``implicit_gemm.png``: for a 3x3 conv on a C-channel (out+2)^2 input, which input pixel
    every element of the gathered GEMM operand A reads (same colours in A and in x), with the
    block tile of ``cunet.ops.gemm.tile_config(K)`` and its BK slices."""
    from cunet.ops.gemm import tile_config

    F, H, W = 3, out + 2, out + 2
    cfg = tile_config(K)
    KG, M = C * F * F, out * out
    rows = -(-KG // cfg.BK) * cfg.BK  # the reduction rounded up to whole BK slices
    offsets = gather_matrix(1, C, H, W, F, rows=rows, cols=M)
    hl_col = 2 * out + 3  # output pixel (2, 3)
    hl_row = F * F + 2 * F  # (c, r, s) = (1, 2, 0)
    fig = _new_figure("implicit_gemm")
    grid = fig.add_gridspec(2, 3, left=0.08, right=0.93, top=0.92, bottom=0.04, hspace=0.22, wspace=0.15,
                            height_ratios=[1.15, 1], width_ratios=[1, 1, 1.3])
    ax = fig.add_subplot(grid[0, :])
    _draw_gather(ax, offsets, C, H, W, cfg, hl_col, hl_row)
    ax.set_yticks(range(rows), _kk_labels(C, F, rows), fontsize=7)
    ax.set_xticks(range(M), [f"{j // out},{j % out}" for j in range(M)], fontsize=6.5, rotation=90)
    ax.set_ylabel("kk = (c, r, s)   [reduction]")
    ax.set_xlabel(f"m = (oh, ow)   [output pixels; columns {M}..{cfg.BM - 1} of the {cfg.BM}-wide block tile load 0]")
    ax.set_title(f"A[kk, m] = offset into x it reads, coloured by the input pixel (y, x); black: column of output "
                 f"pixel (2, 3); red: row kk = {hl_row} (c, r, s = 1, 2, 0)", fontsize=10)
    for c in range(C):
        _draw_input(fig.add_subplot(grid[1, c]), c, C, H, W, F, (2, 3), (1, 2, 0))
    text_ax = fig.add_subplot(grid[1, 2])
    text_ax.axis("off")
    text_ax.text(0.02, 1.0, _gemm_text(C, H, W, F, K, cfg, M, KG), va="top", ha="left", fontsize=9,
                 family="monospace", transform=text_ax.transAxes)
    fig.suptitle("Implicit GEMM: the im2col matrix is never stored; each element is a gather from x, "
                 "computed from its (kk, m) when its tile is loaded", fontsize=13)
    return fig


# =========================================================================== driver

FIGURES = OrderedDict([
    ("unet", draw_unet),
    ("train_step", draw_train_step),
    ("overlap_tile", draw_overlap_tile),
    ("weight_map", draw_weight_map),
    ("elastic", draw_elastic),
    ("implicit_gemm", draw_implicit_gemm),
])


def check_names(names) -> list[str]:
    """The figure names to draw, in FIGURES order; ValueError naming the unknown and the valid ones."""
    if names is None:
        return list(FIGURES)
    if isinstance(names, str):  # "unet,elastic", as --only takes them
        names = names.split(",")
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in FIGURES]
    if unknown or not names:
        what = f"unknown figure name(s) {', '.join(map(repr, unknown))}" if unknown else "no figure names given"
        raise ValueError(f"{what}; valid names: {', '.join(FIGURES)}")
    return [n for n in FIGURES if n in names]


def draw_figures(out_dir, names=None, data=None, dpi: int = DEFAULT_DPI, progress=None) -> list[Path]:
    """Draw the figures ``names`` (default all, in FIGURES order) into ``out_dir`` (created if
    needed) as ``<name>.png``; returns the paths written. ``data``: None (synthetic), a data
    set folder, a ``Dataset`` or a ``Slice``. ``progress(path, (width, height), seconds)`` is
    called after each figure. Each file is written whole; no other file is touched."""
    names = check_names(names)
    if dpi < 1:
        raise ValueError(f"dpi must be at least 1, got {dpi}")
    sample = load_slice(data)  # before anything is written: a bad --data leaves the folder as it was
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        start = time.perf_counter()
        fig = FIGURES[name](sample)
        path = out / f"{name}.png"
        _write_whole(path, _png_bytes(fig, dpi))
        written.append(path)
        if progress is not None:
            progress(path, pixel_size(name, dpi), time.perf_counter() - start)
    return written


def _dpi(text: str) -> int:
    """argparse type for --dpi: an integer in [10, 400]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 10 <= value <= 400:
        raise argparse.ArgumentTypeError(f"must be in [10, 400], got {value}")
    return value


def main(argv=None) -> int:
    """Entry point; returns the exit code (2 with an ``error:`` line for bad input)."""
    parser = argparse.ArgumentParser(prog="python -m cunet.figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the PNGs into (created if needed)")
    parser.add_argument("--data", default=None, help="data set folder (ISBI stacks or images/ + labels/); "
                                                     "default: the project's synthetic data")
    parser.add_argument("--only", default=None, help=f"comma-separated figure names, of: {', '.join(FIGURES)}")
    parser.add_argument("--dpi", type=_dpi, default=DEFAULT_DPI, help=f"resolution (default {DEFAULT_DPI})")
    args = parser.parse_args(argv)

    def report(path, size, seconds):
        print(f"wrote {path}  {size[0]}x{size[1]} px  {seconds:.1f} s", flush=True)

    try:
        names = check_names(args.only)
        if args.data is not None and not Path(args.data).is_dir():
            raise FileNotFoundError(f"--data {args.data}: no such folder (expected a data set folder holding "
                                    "train-volume.tif + train-labels.tif, or images/ + labels/)")
        draw_figures(args.out, names, args.data, args.dpi, progress=report)
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
