"""The original U-Net (Ronneberger, Fischer, Brox 2015) and its size arithmetic.

Contracting path: per level two unpadded 3x3 convolutions with ReLU, then a 2x2 max-pool;
channels double per level (base, 2 base, ... 2^(depth-1) base). Drop-out at the end of
the contracting path (after the bottom level's convolutions). Expanding path: per level
a 2x2 up-convolution halving the channels, concatenation with the centre crop of the
matching contracting feature map (skip channels first), two unpadded 3x3 convolutions
with ReLU. A 1x1 convolution maps ``base`` channels to ``n_classes`` logits.

Because no convolution pads, the output is smaller than the input (572 -> 388 for the
paper's network), and only some input sizes work: every max-pool must see an even size.
:func:`output_size` follows a size through the network; :func:`valid_input_sizes` lists
the sizes that work (from :func:`smallest_valid_input_size` on); :func:`check_input_size`
names the nearest valid ones otherwise. Every one of them refuses a depth below 1 and a
size or depth that is not an integer, with an error that names the function.
"""
from __future__ import annotations

import numpy as np

from cunet.autograd import Tensor
from cunet.data.register import register
from cunet.nn import Conv2d, CropConcat, Dropout, MaxPool2d, Module, UpConv2d
from cunet.ops.common import INT32_LIMIT, ceil_div, check_int, check_real
from cunet.ops.random import SEED_LIMIT


class InvalidSizeError(ValueError):
    """An input size (or depth) the U-Net cannot take without padding or cropping."""


# --- argument checks shared by every size function -------------------------------------
# Each public function names itself in its errors (``fn``); check_input_size takes the
# name of whoever asks, so the network's forward, the size functions and a command's
# option each say where the bad number came from.
def _check_depth(fn: str, depth) -> int:
    """The number of levels: an integer >= 1 (the paper's network has 5)."""
    depth = check_int(fn, "depth", depth)
    if depth < 1:
        raise InvalidSizeError(f"{fn}: depth must be at least 1 (the paper's network has 5 levels), got {depth}")
    return depth


def _check_size_args(fn: str, name: str, size, depth) -> tuple[int, int]:
    """(size, depth) as ints: the size any integer (a bad value is the caller's to judge), depth >= 1."""
    return check_int(fn, name, size), _check_depth(fn, depth)


def _trace_sizes(input_size: int, depth: int) -> list[int] | None:
    """Spatial sizes after each stage (None if some pool sees an odd size or a size runs out).

    The definition of a valid size: every other function here agrees with it (the tests
    compare _lattice with it size by size).
    """
    s, sizes = input_size, []
    for _ in range(depth - 1):  # contracting levels: conv, conv, pool
        s -= 4
        if s <= 0 or s % 2:
            return None
        sizes.append(s)
        s //= 2
    s -= 4  # the bottom level: conv, conv
    if s <= 0:
        return None
    sizes.append(s)
    for _ in range(depth - 1):  # expanding levels: up-conv (x2), conv, conv
        s = 2 * s - 4
        if s <= 0:
            return None
        sizes.append(s)
    return sizes


def _lattice(depth: int) -> tuple[int, int]:
    """(smallest valid input size, step between consecutive valid sizes) at ``depth``.

    Work back from the bottom level's output b: a contracting level's input is 2s + 4
    (conv, conv: -4; pool: /2), so the network's input is 2^(d-1) (b + 8) - 4, and every
    pool sees an even size. The expanding path maps b to 2^k (b - 4) + 4 after k levels,
    which stays positive for every k only if b >= 4; with a single expanding level b >= 3
    will do (2*3 - 4 = 2), with none (d = 1) any b >= 1. Consecutive b are 2^(d-1) input
    pixels apart, and the output, 2^(d-1) (b - 4) + 4, is the input less 12 * 2^(d-1) - 8.
    Closed form, so a deep network's sizes (depth 9: from 3068 on) need no search.
    """
    step = 2 ** (depth - 1)
    smallest_bottom = 1 if depth == 1 else 3 if depth == 2 else 4
    return step * (smallest_bottom + 8) - 4, step


def output_size(input_size: int, depth: int = 5) -> int:
    """The output tile size for an input tile of ``input_size`` (572 -> 388 at depth 5)."""
    input_size, depth = _check_size_args("output_size", "input_size", input_size, depth)
    check_input_size(input_size, depth, "output_size")
    return _trace_sizes(input_size, depth)[-1]


def is_valid_input_size(input_size: int, depth: int = 5) -> bool:
    """Whether every pool sees an even size and the output is at least one pixel (any integer size)."""
    input_size, depth = _check_size_args("is_valid_input_size", "input_size", input_size, depth)
    return _trace_sizes(input_size, depth) is not None


def valid_input_sizes(depth: int = 5, up_to: int = 1024) -> list[int]:
    """All valid input sizes up to ``up_to`` (depth 5: 188, 204, 220, ..., 572, ...); may be empty.

    They form a lattice with step 2^(depth-1): each of the depth-1 poolings halves the size.
    """
    up_to, depth = _check_size_args("valid_input_sizes", "up_to", up_to, depth)
    smallest, step = _lattice(depth)
    return list(range(smallest, up_to + 1, step))


def nearest_valid_sizes(input_size: int, depth: int = 5) -> tuple[int | None, int]:
    """The largest valid size below ``input_size`` (None if there is none) and the smallest above."""
    input_size, depth = _check_size_args("nearest_valid_sizes", "input_size", input_size, depth)
    smallest, step = _lattice(depth)
    below = None if input_size <= smallest else smallest + (input_size - 1 - smallest) // step * step
    # The lattice point at or below input_size, one step on; for a size under the smallest, the smallest.
    above = max(smallest, smallest + (input_size - smallest) // step * step + step)
    return below, above


def smallest_valid_input_size(depth: int = 5) -> int:
    """The smallest input a depth-``depth`` U-Net takes (188 at depth 5, 3068 at depth 9)."""
    return _lattice(_check_depth("smallest_valid_input_size", depth))[0]


def input_size_for_output(min_output: int, depth: int = 5) -> int:
    """The smallest valid input size whose output is at least ``min_output`` pixels."""
    min_output, depth = _check_size_args("input_size_for_output", "min_output", min_output, depth)
    smallest, step = _lattice(depth)
    # Along the lattice the output is the input less 12 * 2^(d-1) - 8 (572 -> 388 at depth 5):
    # round the input that gives exactly min_output up to the next valid size.
    wanted = min_output + 12 * step - 8
    return max(smallest, smallest + ceil_div(wanted - smallest, step) * step)


def check_input_size(input_size: int, depth: int = 5, asker: str = "check_input_size") -> None:
    """Raise InvalidSizeError naming the nearest valid sizes if ``input_size`` does not fit.

    ``asker`` starts the message: the function (or a command's option) the size was given
    to. A non-integer size or depth is a TypeError; a depth below 1 an InvalidSizeError.
    """
    input_size, depth = _check_size_args(asker, "input_size", input_size, depth)
    if _trace_sizes(input_size, depth) is not None:
        return
    below, above = nearest_valid_sizes(input_size, depth)
    options = f"{below} or {above}" if below else f"{above} (the smallest valid size)"
    raise InvalidSizeError(
        f"{asker}: input size {input_size} does not fit a depth-{depth} U-Net (every 2x2 max-pool needs an even size "
        f"and unpadded convolutions shrink each level by 4); use {options}. "
        f"cunet never pads or crops an input silently."
    )


# The deepest level has base * 2**(depth-1) channels; past depth 31 no base fits int32 anyway.
MAX_DEPTH = 32


# The input registration (cunet.data.register) moves an image by a fraction of a pixel; an
# offset this large would mean labels that do not belong to their images.
MAX_INPUT_SHIFT = 8.0


def _checked_config(in_channels, n_classes, base, depth, dropout, seed, input_mean, input_std, input_shift) -> dict:
    """UNet's arguments validated (TypeError/ValueError naming each), as plain ints and floats."""
    fn = "UNet"
    try:
        shift = tuple(input_shift)
    except TypeError:
        shift = ()
    if len(shift) != 2:
        raise ValueError(f"{fn}: input_shift must be two numbers (dy, dx) in pixels, got {input_shift!r}")
    config = dict(
        in_channels=check_int(fn, "in_channels", in_channels, 1, INT32_LIMIT),
        n_classes=check_int(fn, "n_classes", n_classes, 2, INT32_LIMIT),
        base=check_int(fn, "base", base, 1, INT32_LIMIT),
        depth=check_int(fn, "depth", depth, 2, MAX_DEPTH),
        dropout=check_real(fn, "dropout", dropout, 0.0, 1.0),
        seed=check_int(fn, "seed", seed, 0, SEED_LIMIT),  # drop-out's Philox key is 64 bits
        input_mean=check_real(fn, "input_mean", input_mean),
        input_std=check_real(fn, "input_std", input_std, 0.0, low_open=True),
        input_shift=[check_real(fn, "input_shift", v, -MAX_INPUT_SHIFT, MAX_INPUT_SHIFT, high_open=False)
                     for v in shift],
    )
    widest = config["base"] * 2 ** (config["depth"] - 1)
    weights = widest * widest * 9  # the bottom level's second 3x3 convolution: the largest tensor of parameters
    if weights >= INT32_LIMIT:
        raise ValueError(f"{fn}: base {config['base']} and depth {config['depth']} give the bottom level {widest} "
                         f"channels, whose 3x3 weights would have {weights} elements; kernels index with 32-bit "
                         f"ints (fewer than 2**31), so lower base or depth")
    return config


class DownLevel(Module):
    """One contracting level: two 3x3 convolutions with ReLU."""

    def __init__(self, c_in: int, c_out: int, rng: np.random.Generator):
        self.conv1 = Conv2d(c_in, c_out, 3, relu=True, rng=rng)
        self.conv2 = Conv2d(c_out, c_out, 3, relu=True, rng=rng)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class UpLevel(Module):
    """One expanding level: up-convolution, crop-and-concatenate with the skip, two 3x3 convolutions."""

    def __init__(self, c_in: int, c_out: int, rng: np.random.Generator):
        self.up = UpConv2d(c_in, c_out, rng)
        self.concat = CropConcat()
        self.conv1 = Conv2d(2 * c_out, c_out, 3, relu=True, rng=rng)
        self.conv2 = Conv2d(c_out, c_out, 3, relu=True, rng=rng)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv2(self.conv1(self.concat(skip, self.up(x))))


class UNet(Module):
    """``UNet(in_channels=1, n_classes=2, base=64, depth=5, dropout=0.5)``: the paper's network.

    ``forward`` takes [N, in_channels, S, S] with S a valid size and returns the logits
    [N, n_classes, output_size(S), output_size(S)].

    ``input_mean`` and ``input_std`` record the affine map the training data was given
    (``normalise``): inputs of zero mean and unit spread keep the first layers' activations
    and gradients well scaled. ``input_shift`` (dy, dx) is the registration of the images to
    their labels' pixel grid the network was trained with (``cunet.data.register``; zero
    unless the run measured one). Both travel with the model, so ``prepare`` gives every
    image at prediction exactly the treatment the training images had.

    Every argument is checked before anything is built; a TypeError or ValueError names
    it (``UNet: input_std must be finite and > 0, got nan``). A NaN or infinite mean or
    spread would turn every input into NaN or 0 and train nothing, silently.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, base: int = 64, depth: int = 5,
                 dropout: float = 0.5, seed: int = 0, input_mean: float = 0.0, input_std: float = 1.0,
                 input_shift=(0.0, 0.0)):
        self.config = _checked_config(in_channels, n_classes, base, depth, dropout, seed, input_mean, input_std,
                                      input_shift)
        in_channels, n_classes, base, depth, dropout, seed = (self.config[k] for k in (
            "in_channels", "n_classes", "base", "depth", "dropout", "seed"))
        rng = np.random.default_rng(seed)
        channels = [base * 2**i for i in range(depth)]
        self.down = [DownLevel(c_in, c_out, rng) for c_in, c_out in zip([in_channels] + channels[:-1], channels)]
        self.pool = MaxPool2d()
        self.dropout = Dropout(dropout, seed=seed)
        self.up = [UpLevel(channels[i + 1], channels[i], rng) for i in reversed(range(depth - 1))]
        self.head = Conv2d(base, n_classes, 1, relu=False, rng=rng)

    @property
    def depth(self) -> int:
        """Number of levels (5 in the paper)."""
        return self.config["depth"]

    def output_size(self, input_size: int) -> int:
        """Output tile size for an input tile size (an error naming valid sizes if it does not fit)."""
        return output_size(input_size, self.depth)

    def normalise(self, images: np.ndarray) -> np.ndarray:
        """Host images (floats in [0, 1], as the loaders give) mapped to the network's input scale."""
        return ((images - self.config["input_mean"]) / self.config["input_std"]).astype(np.float32)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """A whole host image [H, W] as the network takes it: registered to the labels' grid
        (``input_shift``; a resampling, so of the whole image, never of a tile) and normalised."""
        return self.normalise(register(image, self.config["input_shift"]))

    def valid_input_sizes(self, up_to: int = 1024) -> list[int]:
        """All valid input tile sizes up to ``up_to``."""
        return valid_input_sizes(self.depth, up_to)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if c != self.config["in_channels"]:
            raise ValueError(f"UNet expects {self.config['in_channels']} input channels, got input of shape {x.shape}")
        if h != w:
            raise ValueError(f"UNet takes square tiles, got {h}x{w}")
        check_input_size(h, self.depth, "UNet.forward")
        skips = []
        for level in self.down[:-1]:
            x = level(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.down[-1](x))
        for level, skip in zip(self.up, reversed(skips)):
            x = level(x, skip)
        return self.head(x)
