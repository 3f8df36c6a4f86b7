"""``python -m cunet.summary``: the U-Net layer by layer, and the size calculator.

    python -m cunet.summary --size 572 --base 64 --depth 5
    python -m cunet.summary --valid --depth 5          # which tile sizes work

For each layer: input and output shape, parameters, multiply-accumulates (MACs; one MAC
is two FLOPs) and the memory of its output activation in float32. Parameter counts come
from a real ``UNet`` instance; shapes follow the same size arithmetic as ``cunet.unet``.
The paper's network (572 / 64 / 5) is about 150 GMAC forward and 31.0 M parameters.

Any bad input (an option out of range, a size the network cannot take, ``--valid`` with
no valid size up to ``--size``) ends with exit status 2 and an ``error:`` line on stderr
that names the option and what would be valid.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

from cunet.unet import MAX_DEPTH, UNet, check_input_size, smallest_valid_input_size, valid_input_sizes


@dataclass
class Row:
    """One layer of the table."""

    name: str
    kind: str
    input_shape: tuple
    output_shape: tuple
    params: int
    macs: int

    @property
    def activation_bytes(self) -> int:
        """float32 bytes of this layer's output."""
        n = 1
        for d in self.output_shape:
            n *= d
        return 4 * n


def layer_table(input_size: int, base: int = 64, depth: int = 5, in_channels: int = 1, n_classes: int = 2,
                batch: int = 1) -> list[Row]:
    """The rows of the summary for one configuration (raises InvalidSizeError for a bad size)."""
    check_input_size(input_size, depth, "layer_table")
    model = UNet(in_channels, n_classes, base, depth, dropout=0.5)
    rows: list[Row] = []
    shape = (batch, in_channels, input_size, input_size)

    def conv(name, layer, x_shape):
        k, c, r, _ = layer.weight.shape
        out = (batch, k, x_shape[2] - r + 1, x_shape[3] - r + 1)
        kind = f"conv {r}x{r}" + (" + ReLU" if layer.relu else "")
        params = layer.weight.data.size + layer.bias.data.size
        rows.append(Row(name, kind, x_shape, out, params, out[1] * out[2] * out[3] * batch * c * r * r))
        return out

    skips = []
    for i, level in enumerate(model.down):
        shape = conv(f"down{i}.conv1", level.conv1, shape)
        shape = conv(f"down{i}.conv2", level.conv2, shape)
        if i < depth - 1:
            skips.append(shape)
            pooled = (batch, shape[1], shape[2] // 2, shape[3] // 2)
            rows.append(Row(f"down{i}.pool", "max-pool 2x2", shape, pooled, 0, 0))
            shape = pooled
    rows.append(Row("dropout", f"drop-out p={model.dropout.p}", shape, shape, 0, 0))
    for j, level in enumerate(model.up):
        c, k = level.up.weight.shape[:2]
        up = (batch, k, 2 * shape[2], 2 * shape[3])
        rows.append(Row(f"up{j}.upconv", "up-conv 2x2", shape, up, level.up.weight.data.size + k, batch * k * up[2] * up[3] * c))
        skip = skips.pop()
        shape = (batch, skip[1] + k, up[2], up[3])
        rows.append(Row(f"up{j}.concat", f"crop {skip[2]}->{up[2]} + concat", skip, shape, 0, 0))
        shape = conv(f"up{j}.conv1", level.conv1, shape)
        shape = conv(f"up{j}.conv2", level.conv2, shape)
    conv("head", model.head, shape)
    return rows


def format_table(rows: list[Row]) -> str:
    """The table for people, with totals."""
    def shape(s):
        return "x".join(str(d) for d in s)

    header = f"{'layer':<14} {'kind':<22} {'input':>18} {'output':>18} {'params':>11} {'MMAC':>10} {'act MB':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.name:<14} {r.kind:<22} {shape(r.input_shape):>18} {shape(r.output_shape):>18} "
                     f"{r.params:>11,} {r.macs / 1e6:>10,.0f} {r.activation_bytes / 1e6:>8.1f}")
    params, macs = sum(r.params for r in rows), sum(r.macs for r in rows)
    acts = sum(r.activation_bytes for r in rows)
    lines.append("-" * len(header))
    lines.append(f"total: {params / 1e6:.2f} M parameters, {macs / 1e9:.1f} GMAC = {2 * macs / 1e9:.1f} GFLOP forward "
                 f"(~{6 * macs / 1e12:.2f} TFLOP per training step: backward is about twice the forward), "
                 f"{acts / 1e9:.2f} GB of float32 activations")
    return "\n".join(lines)


def _int_at_least(minimum: int, below: int | None = None):
    """An argparse type: an integer >= ``minimum`` (and < ``below``); argparse names the option in its error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum or (below is not None and value >= below):
            accepted = f">= {minimum}" if below is None else f"in [{minimum}, {below})"
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {value}")
        return value
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, each range-checked: a bad one exits with status 2 and ``error: argument --name: ...``."""
    parser = argparse.ArgumentParser(prog="python -m cunet.summary", description="U-Net layer table and size calculator.")
    parser.add_argument("--size", type=_int_at_least(1), default=572,
                        help="input tile size (default 572, the paper's); with --valid, the largest size listed")
    parser.add_argument("--base", type=_int_at_least(1), default=64, help="channels of the first level (default 64)")
    parser.add_argument("--depth", type=_int_at_least(2, MAX_DEPTH), default=5, help="number of levels (default 5)")
    parser.add_argument("--in-channels", type=_int_at_least(1), default=1)
    parser.add_argument("--classes", type=_int_at_least(2), default=2)
    parser.add_argument("--batch", type=_int_at_least(1), default=1)
    parser.add_argument("--valid", action="store_true", help="list the valid input sizes up to --size and exit")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser.parse_args(argv)


def error(message: str) -> int:
    """Report a bad input the way argparse does (``error: ...`` on stderr); returns exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2, with an ``error:`` line, for any bad input)."""
    args = parse_args(argv)
    if args.valid:
        sizes = valid_input_sizes(args.depth, args.size)
        if not sizes:  # an empty list would print nothing at all
            smallest = smallest_valid_input_size(args.depth)
            return error(f"no valid input size up to --size {args.size} at --depth {args.depth}; the smallest "
                         f"is {smallest} (pass --size {smallest} or more)")
        print(json.dumps(sizes) if args.json else " ".join(map(str, sizes)))
        return 0
    try:
        check_input_size(args.size, args.depth, "--size")
        rows = layer_table(args.size, args.base, args.depth, args.in_channels, args.classes, args.batch)
    except ValueError as exc:  # an invalid size, or a network too wide for 32-bit kernel indexing
        return error(str(exc))
    if args.json:
        print(json.dumps([asdict(r) | {"activation_bytes": r.activation_bytes} for r in rows], indent=1))
    else:
        print(f"U-Net: input {args.size}x{args.size}, base {args.base}, depth {args.depth}, batch {args.batch}")
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
