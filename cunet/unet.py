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
the sizes that work; :func:`check_input_size` names the nearest valid ones otherwise.
"""
from __future__ import annotations

import itertools

import numpy as np

from cunet.autograd import Tensor
from cunet.nn import Conv2d, CropConcat, Dropout, MaxPool2d, Module, UpConv2d


class InvalidSizeError(ValueError):
    """An input size the U-Net cannot take without padding or cropping."""


def _trace_sizes(input_size: int, depth: int) -> list[int] | None:
    """Spatial sizes after each stage (None if some pool sees an odd size or a size runs out)."""
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


def output_size(input_size: int, depth: int = 5) -> int:
    """The output tile size for an input tile of ``input_size`` (572 -> 388 at depth 5)."""
    check_input_size(input_size, depth)
    return _trace_sizes(input_size, depth)[-1]


def is_valid_input_size(input_size: int, depth: int = 5) -> bool:
    """Whether every pool sees an even size and the output is at least one pixel."""
    return _trace_sizes(input_size, depth) is not None


def valid_input_sizes(depth: int = 5, up_to: int = 1024) -> list[int]:
    """All valid input sizes up to ``up_to`` (depth 5: 188, 204, 220, ..., 572, ...).

    They form a lattice with step 2^(depth-1): each of the depth-1 poolings halves the size.
    """
    return [s for s in range(1, up_to + 1) if is_valid_input_size(s, depth)]


def nearest_valid_sizes(input_size: int, depth: int = 5) -> tuple[int | None, int]:
    """The largest valid size below ``input_size`` (None if there is none) and the smallest above."""
    below = next((s for s in range(input_size - 1, 0, -1) if is_valid_input_size(s, depth)), None)
    # Above the smallest valid size the lattice repeats every 2^(depth-1), so this search ends;
    # below it (a small input for a deep network) the gap is the distance to that smallest size.
    above = next(s for s in itertools.count(max(input_size + 1, 1)) if is_valid_input_size(s, depth))
    return below, above


def input_size_for_output(min_output: int, depth: int = 5) -> int:
    """The smallest valid input size whose output is at least ``min_output`` pixels."""
    size = 1
    while not (is_valid_input_size(size, depth) and _trace_sizes(size, depth)[-1] >= min_output):
        size += 1
    return size


def check_input_size(input_size: int, depth: int = 5) -> None:
    """Raise InvalidSizeError naming the nearest valid sizes if ``input_size`` does not fit."""
    if depth < 1:
        raise InvalidSizeError(f"depth must be at least 1 (the paper's network has 5 levels), got {depth}")
    if is_valid_input_size(input_size, depth):
        return
    below, above = nearest_valid_sizes(input_size, depth)
    options = f"{below} or {above}" if below else f"{above} (the smallest valid size)"
    raise InvalidSizeError(
        f"input size {input_size} does not fit a depth-{depth} U-Net (every 2x2 max-pool needs an even size "
        f"and unpadded convolutions shrink each level by 4); use {options}. "
        f"cunet never pads or crops an input silently."
    )


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
    and gradients well scaled. They travel with the model so prediction uses the same map.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, base: int = 64, depth: int = 5,
                 dropout: float = 0.5, seed: int = 0, input_mean: float = 0.0, input_std: float = 1.0):
        if depth < 2 or base < 1 or n_classes < 2 or in_channels < 1:
            raise ValueError(f"UNet needs depth >= 2, base >= 1, n_classes >= 2, in_channels >= 1; "
                             f"got depth={depth}, base={base}, n_classes={n_classes}, in_channels={in_channels}")
        if not input_std > 0:
            raise ValueError(f"UNet: input_std must be positive, got {input_std}")
        self.config = dict(in_channels=in_channels, n_classes=n_classes, base=base, depth=depth, dropout=dropout,
                           seed=seed, input_mean=float(input_mean), input_std=float(input_std))
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

    def valid_input_sizes(self, up_to: int = 1024) -> list[int]:
        """All valid input tile sizes up to ``up_to``."""
        return valid_input_sizes(self.depth, up_to)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if c != self.config["in_channels"]:
            raise ValueError(f"UNet expects {self.config['in_channels']} input channels, got input of shape {x.shape}")
        if h != w:
            raise ValueError(f"UNet takes square tiles, got {h}x{w}")
        check_input_size(h, self.depth)
        skips = []
        for level in self.down[:-1]:
            x = level(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.down[-1](x))
        for level, skip in zip(self.up, reversed(skips)):
            x = level(x, skip)
        return self.head(x)
