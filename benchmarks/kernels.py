"""Kernel microbenchmarks: every op of a U-Net train step, at the shapes the network uses.

    python -m benchmarks.kernels                         # cpu, the paper's shapes (572, base 64): heavy
    python -m benchmarks.kernels --small                 # cpu, 188 tile, base 8: a couple of minutes
    python -m benchmarks.kernels --base 16 --ops conv2d  # only the convolutions
    python -m benchmarks.kernels --device cuda           # CUDA events, RawKernel vs Numba vs PyTorch
    python -m benchmarks.kernels --json                  # machine-readable

What is measured. The shapes come from cunet.summary.layer_table(tile, base, depth): for
each layer, the forward op and the backward ops a train step runs there (the first
convolution computes no input gradient: its input is the image). Identical shapes are
benchmarked once and counted (``x2``). For every case:

1. validate: the op runs once on the chosen device and its output is compared with a
   plain NumPy reference (a sum of per-tap GEMMs for the convolutions, slicing and
   reductions for the rest); an op that disagrees is reported as FAILED and not timed;
2. warm up (Numba compiles, thread pools start, CuPy compiles its RawModules);
3. time ``--repeats`` calls, each after a cache flush (a buffer larger than the CPU's L3
   or twice the GPU's L2 is written first), and report the median.

From the median: achieved GFLOP/s (FLOPs of the op's arithmetic; a multiply-add is two)
and GB/s (the minimum DRAM traffic: every input read once, every output written once),
and the fraction of the device's peak for whichever bound applies: compute for the
convolutions and up-convolutions, memory for everything else. On cpu the peaks are
measured here (BLAS sgemm, streaming copy; see harness.measure_cpu_peaks), on cuda they
are the datasheet's.

Peers. On cpu, "BLAS GEMM" is NumPy's matmul of the same M, N, K as the convolution's
implicit GEMM, timed the same way: what the op could reach if its im2col were free (the
ceiling column). Where PyTorch is installed it runs the same op as a second peer
(oneDNN on cpu, cuDNN on cuda). On cuda, the ops that have Numba CUDA alternates are
timed both ways (``runtime.use_numba_kernels``), side by side.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field

import numpy as np

from cunet.device import add_math_argument

from . import harness

SMALL = dict(tile=188, base=8, depth=5)  # --small: the smallest depth-5 tile, 1/8 of the channels
QUICK = dict(tile=44, base=2, depth=3)   # --quick: seconds, for the tests
OP_FAMILIES = ("conv2d", "relu", "maxpool", "upconv", "crop_concat", "add", "dropout", "softmax_ce", "sgd")
F32 = 4  # bytes


@dataclass
class Case:
    """One op at one shape: how to make its inputs, run it, check it and count its work."""

    op: str                  # the cunet.ops function, e.g. "conv2d_forward"
    family: str              # one of OP_FAMILIES
    layers: list[str]        # the layers (layer_table names) that run it at this shape
    shapes: str              # for people
    flops: int               # arithmetic, multiply-add = 2
    bytes: int               # minimum DRAM traffic: inputs once, outputs once
    bound: str               # "compute" or "memory": which peak the fraction is of
    make: object             # rng -> dict of host arrays (or lists of them)
    run: object              # dict of device arrays -> output(s)
    reference: object        # dict of host arrays -> expected output(s), NumPy only
    gemm: tuple | None = None        # (M, N, K) of the equivalent GEMM, for the ceiling column
    torch: object = None             # (torch module, dict of torch tensors) -> closure, or None
    numba: bool = False              # has Numba CUDA alternates
    atol: float = 0.0                # extra tolerance (in units of max |reference|)
    # With --math tf32, the inputs that are GEMM operands (rounded to TF32 for the reference,
    # as the tensor cores round them) and which outputs the GEMM makes (None: all of them).
    gemm_operands: tuple = ()
    gemm_outputs: tuple | None = None
    notes: str = ""
    result: dict = field(default_factory=dict)


# --- NumPy references: slow and obvious ---------------------------------------------------------


def ref_conv_forward(x, w, b, relu):
    """y[n] = b + sum over taps (r, s) of w[:, :, r, s] @ (x[n] shifted by (r, s)): R*R GEMMs."""
    N, C, H, W = x.shape
    K, _, R, _ = w.shape
    OH, OW = H - R + 1, W - R + 1
    y = np.empty((N, K, OH, OW), np.float32)
    for n in range(N):
        acc = np.zeros((K, OH * OW), np.float32)
        for r in range(R):
            for s in range(R):
                acc += w[:, :, r, s] @ x[n, :, r:r + OH, s:s + OW].reshape(C, OH * OW)
        y[n] = (acc + b[:, None]).reshape(K, OH, OW)
    return np.maximum(y, 0) if relu else y


def ref_conv_backward_input(dy, w):
    N, K, OH, OW = dy.shape
    _, C, R, _ = w.shape
    dx = np.zeros((N, C, OH + R - 1, OW + R - 1), np.float32)
    for n in range(N):
        for r in range(R):
            for s in range(R):
                dx[n, :, r:r + OH, s:s + OW] += (w[:, :, r, s].T @ dy[n].reshape(K, -1)).reshape(C, OH, OW)
    return dx


def ref_conv_backward_params(x, dy):
    N, C, H, W = x.shape
    _, K, OH, OW = dy.shape
    R = H - OH + 1
    dw = np.zeros((K, C, R, R), np.float32)
    for n in range(N):
        g = dy[n].reshape(K, -1)
        for r in range(R):
            for s in range(R):
                dw[:, :, r, s] += g @ x[n, :, r:r + OH, s:s + OW].reshape(C, -1).T
    return dw, dy.sum(axis=(0, 2, 3))


def ref_upconv_forward(x, w, b):
    N, C, H, W = x.shape
    K = w.shape[1]
    y = np.empty((N, K, 2 * H, 2 * W), np.float32)
    for a in range(2):
        for e in range(2):
            y[:, :, a::2, e::2] = np.einsum("nchw,ck->nkhw", x, w[:, :, a, e], optimize=True) + b[None, :, None, None]
    return y


def ref_upconv_backward_input(dy, w):
    return sum(np.einsum("nkhw,ck->nchw", dy[:, :, a::2, e::2], w[:, :, a, e], optimize=True)
               for a in range(2) for e in range(2))


def ref_upconv_backward_params(x, dy):
    dw = np.stack([np.stack([np.einsum("nchw,nkhw->ck", x, dy[:, :, a::2, e::2], optimize=True) for e in range(2)], -1)
                   for a in range(2)], -2)
    return dw, dy.sum(axis=(0, 2, 3))


def ref_maxpool_forward(x):
    N, C, H, W = x.shape
    windows = x.reshape(N, C, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(N, C, H // 2, W // 2, 4)
    return windows.max(axis=-1), windows.argmax(axis=-1).astype(np.uint8)


def ref_maxpool_backward(dy, argmax):
    N, C, h, w = dy.shape
    windows = np.zeros((N, C, h, w, 4), np.float32)
    np.put_along_axis(windows, argmax[..., None].astype(np.int64), dy[..., None], axis=-1)
    return windows.reshape(N, C, h, w, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(N, C, 2 * h, 2 * w)


def ref_softmax_ce(logits, labels, weights):
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    picked = np.take_along_axis(logp, labels[:, None].astype(np.int64), axis=1)[:, 0]
    return np.array([(weights * -picked).mean()], np.float32), np.exp(logp).astype(np.float32)


def ref_softmax_ce_backward(probs, labels, weights):
    onehot = np.zeros_like(probs)
    np.put_along_axis(onehot, labels[:, None].astype(np.int64), 1.0, axis=1)
    return (weights[:, None] * (probs - onehot) / labels.size).astype(np.float32)


# --- the cases of one U-Net ---------------------------------------------------------------------


def _shape(a) -> str:
    return "x".join(map(str, a))


def _n(shape) -> int:
    return math.prod(shape)


def build_cases(tile: int, base: int, depth: int, batch: int = 1, seed: int = 0) -> list[Case]:
    """Every op a train step runs, per layer of layer_table(tile, base, depth), deduplicated by shape."""
    from cunet.summary import layer_table
    from cunet.unet import UNet

    rows = layer_table(tile, base, depth, batch=batch)
    cases: dict[tuple, Case] = {}

    def add(key, layer, factory):
        if key in cases:
            cases[key].layers.append(layer)
        else:
            case = factory()
            case.layers = [layer]
            cases[key] = case

    skip_shapes = []
    for row in rows:
        xs, ys = tuple(row.input_shape), tuple(row.output_shape)
        if row.kind.startswith("conv"):
            relu = "ReLU" in row.kind
            N, C, H, W = xs
            _, K, OH, OW = ys
            R = H - OH + 1
            ws = (K, C, R, R)
            macs = N * K * OH * OW * C * R * R
            add(("conv2d_forward", xs, ws, relu), row.name, lambda: conv_forward_case(xs, ws, relu, macs))
            if relu:
                add(("relu_backward", ys), row.name, lambda: relu_backward_case(ys))
            if row.name != "down0.conv1":  # the image needs no gradient: a step skips this one
                add(("conv2d_backward_input", ys, ws), row.name, lambda: conv_backward_input_case(ys, ws, macs))
            add(("conv2d_backward_params", xs, ys), row.name, lambda: conv_backward_params_case(xs, ys, macs))
            if row.name == "head":
                add(("softmax_ce_forward", ys), "loss", lambda: softmax_forward_case(ys))
                add(("softmax_ce_backward", ys), "loss", lambda: softmax_backward_case(ys))
        elif row.kind.startswith("max-pool"):
            skip_shapes.append(xs)
            add(("maxpool2x2_forward", xs), row.name, lambda: maxpool_forward_case(xs))
            add(("maxpool2x2_backward", xs), row.name, lambda: maxpool_backward_case(xs))
        elif row.kind.startswith("drop-out"):
            add(("dropout_forward", xs), row.name, lambda: dropout_case(xs, "dropout_forward"))
            add(("dropout_backward", xs), row.name, lambda: dropout_case(xs, "dropout_backward"))
        elif row.kind.startswith("up-conv"):
            N, C, H, W = xs
            K = ys[1]
            add(("upconv2x2_forward", xs, K), row.name, lambda: upconv_case("upconv2x2_forward", xs, K))
            add(("upconv2x2_backward_input", xs, K), row.name, lambda: upconv_case("upconv2x2_backward_input", xs, K))
            add(("upconv2x2_backward_params", xs, K), row.name, lambda: upconv_case("upconv2x2_backward_params", xs, K))
        elif "concat" in row.kind:
            skip = xs
            up = (ys[0], ys[1] - skip[1], ys[2], ys[3])
            add(("crop_concat_forward", skip, up), row.name, lambda: crop_concat_forward_case(skip, up))
            add(("crop_concat_backward", skip, up), row.name, lambda: crop_concat_backward_case(skip, up))
            # The skip tensor feeds the pool and the concat: its two gradients are summed.
            add(("add_inplace", skip), row.name, lambda: add_case(skip))
    model = UNet(1, 2, base, depth)
    shapes = [p.shape for p in model.parameters()]
    add(("sgd", tuple(shapes)), "all parameters", lambda: sgd_case(shapes))
    add(("weight_average", tuple(shapes)), "all parameters (--weight-average)", lambda: weight_average_case(shapes))
    # relu_forward is not in a step (the convolutions fuse it), but it is an op: time it once.
    biggest = max((tuple(r.output_shape) for r in rows if "ReLU" in r.kind), key=_n)
    add(("relu_forward", biggest), "(fused in conv)", lambda: relu_forward_case(biggest))
    return list(cases.values())


def conv_forward_case(xs, ws, relu, macs):
    from cunet import ops

    K, C, R, _ = ws
    N, _, H, W = xs
    ys = (N, K, H - R + 1, W - R + 1)
    def make(rng):
        return dict(x=rng.standard_normal(xs).astype(np.float32),
                    w=(rng.standard_normal(ws) * math.sqrt(2 / (C * R * R))).astype(np.float32),
                    b=rng.standard_normal(K).astype(np.float32) * 0.1)
    def torch_fn(torch, t):
        F = torch.nn.functional
        return (lambda: F.relu(F.conv2d(t["x"], t["w"], t["b"]))) if relu else (lambda: F.conv2d(t["x"], t["w"], t["b"]))
    return Case("conv2d_forward", "conv2d", [], f"x {_shape(xs)} w {_shape(ws)}" + (" +relu" if relu else ""),
                2 * macs, F32 * (_n(xs) + _n(ws) + K + _n(ys)), "compute", make,
                lambda d: ops.conv2d_forward(d["x"], d["w"], d["b"], relu=relu),
                lambda h: ref_conv_forward(h["x"], h["w"], h["b"], relu),
                gemm=(K, N * ys[2] * ys[3], C * R * R), torch=torch_fn, gemm_operands=("x", "w"))


def conv_backward_input_case(ys, ws, macs):
    from cunet import ops

    K, C, R, _ = ws
    N, _, OH, OW = ys
    xs = (N, C, OH + R - 1, OW + R - 1)
    def make(rng):
        return dict(dy=rng.standard_normal(ys).astype(np.float32),
                    w=(rng.standard_normal(ws) * math.sqrt(2 / (C * R * R))).astype(np.float32))
    def torch_fn(torch, t):
        aten = torch.ops.aten
        x = torch.empty(xs, device=t["dy"].device)  # only its shape is read
        return lambda: aten.convolution_backward(t["dy"], x, t["w"], None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                                 [True, False, False])
    return Case("conv2d_backward_input", "conv2d", [], f"dy {_shape(ys)} w {_shape(ws)}", 2 * macs,
                F32 * (_n(ys) + _n(ws) + _n(xs)), "compute", make,
                lambda d: ops.conv2d_backward_input(d["dy"], d["w"]),
                lambda h: ref_conv_backward_input(h["dy"], h["w"]),
                gemm=(C, N * xs[2] * xs[3], K * R * R), torch=torch_fn, gemm_operands=("dy", "w"))


def conv_backward_params_case(xs, ys, macs):
    from cunet import ops

    N, C, H, W = xs
    K, OH = ys[1], ys[2]
    R = H - OH + 1
    ws = (K, C, R, R)
    def make(rng):
        return dict(x=rng.standard_normal(xs).astype(np.float32), dy=rng.standard_normal(ys).astype(np.float32))
    def torch_fn(torch, t):
        aten = torch.ops.aten
        w = torch.empty(ws, device=t["x"].device)  # only its shape is read
        return lambda: aten.convolution_backward(t["dy"], t["x"], w, [K], [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                                 [False, True, True])
    return Case("conv2d_backward_params", "conv2d", [], f"x {_shape(xs)} dy {_shape(ys)}", 2 * macs,
                F32 * (_n(xs) + _n(ys) + _n(ws) + K), "compute", make,
                lambda d: ops.conv2d_backward_params(d["x"], d["dy"]),
                lambda h: ref_conv_backward_params(h["x"], h["dy"]),
                gemm=(K, C * R * R, N * OH * ys[3]), torch=torch_fn, gemm_operands=("x", "dy"))


def upconv_case(op, xs, K):
    from cunet import ops

    N, C, H, W = xs
    ys, ws = (N, K, 2 * H, 2 * W), (C, K, 2, 2)
    flops = 2 * N * C * H * W * 4 * K
    def make(rng):
        return dict(x=rng.standard_normal(xs).astype(np.float32), dy=rng.standard_normal(ys).astype(np.float32),
                    w=(rng.standard_normal(ws) * math.sqrt(2 / C)).astype(np.float32),
                    b=rng.standard_normal(K).astype(np.float32) * 0.1)
    if op == "upconv2x2_forward":
        def torch_fn(torch, t):
            return lambda: torch.nn.functional.conv_transpose2d(t["x"], t["w"], t["b"], stride=2)
        return Case(op, "upconv", [], f"x {_shape(xs)} w {_shape(ws)}", flops, F32 * (_n(xs) + _n(ws) + K + _n(ys)),
                    "compute", make, lambda d: ops.upconv2x2_forward(d["x"], d["w"], d["b"]),
                    lambda h: ref_upconv_forward(h["x"], h["w"], h["b"]), gemm=(4 * K, N * H * W, C), torch=torch_fn,
                    gemm_operands=("x", "w"))
    if op == "upconv2x2_backward_input":
        def torch_fn(torch, t):
            x = torch.empty(xs, device=t["dy"].device)  # only its shape is read
            return lambda: torch.ops.aten.convolution_backward(t["dy"], x, t["w"], None, [2, 2], [0, 0], [1, 1], True,
                                                               [0, 0], 1, [True, False, False])
        return Case(op, "upconv", [], f"dy {_shape(ys)} w {_shape(ws)}", flops, F32 * (_n(ys) + _n(ws) + _n(xs)),
                    "compute", make, lambda d: ops.upconv2x2_backward_input(d["dy"], d["w"]),
                    lambda h: ref_upconv_backward_input(h["dy"], h["w"]), gemm=(C, N * H * W, 4 * K), torch=torch_fn,
                    gemm_operands=("dy", "w"))
    def torch_fn(torch, t):
        return lambda: torch.ops.aten.convolution_backward(t["dy"], t["x"], t["w"], [K], [2, 2], [0, 0], [1, 1], True,
                                                           [0, 0], 1, [False, True, True])
    return Case(op, "upconv", [], f"x {_shape(xs)} dy {_shape(ys)}", flops, F32 * (_n(xs) + _n(ys) + _n(ws) + K),
                "compute", make, lambda d: ops.upconv2x2_backward_params(d["x"], d["dy"]),
                lambda h: ref_upconv_backward_params(h["x"], h["dy"]), gemm=(4 * K, C, N * H * W), torch=torch_fn,
                gemm_operands=("x", "dy"), gemm_outputs=(0,))  # db is a plain float32 reduction of dy


def relu_forward_case(shape):
    from cunet import ops

    return Case("relu_forward", "relu", [], f"x {_shape(shape)}", _n(shape), 2 * F32 * _n(shape), "memory",
                lambda rng: dict(x=rng.standard_normal(shape).astype(np.float32)),
                lambda d: ops.relu_forward(d["x"]), lambda h: np.maximum(h["x"], 0),
                torch=lambda torch, t: (lambda: torch.relu(t["x"])), numba=True)


def relu_backward_case(shape):
    from cunet import ops

    def make(rng):
        return dict(y=np.maximum(rng.standard_normal(shape).astype(np.float32), 0),
                    dy=rng.standard_normal(shape).astype(np.float32))
    return Case("relu_backward", "relu", [], f"y {_shape(shape)}", _n(shape), 3 * F32 * _n(shape), "memory", make,
                lambda d: ops.relu_backward(d["y"], d["dy"]), lambda h: np.where(h["y"] > 0, h["dy"], 0),
                torch=lambda torch, t: (lambda: torch.ops.aten.threshold_backward(t["dy"], t["y"], 0)), numba=True)


def maxpool_forward_case(xs):
    from cunet import ops

    ys = (xs[0], xs[1], xs[2] // 2, xs[3] // 2)
    return Case("maxpool2x2_forward", "maxpool", [], f"x {_shape(xs)}", 3 * _n(ys),
                F32 * _n(xs) + (F32 + 1) * _n(ys), "memory",
                lambda rng: dict(x=rng.standard_normal(xs).astype(np.float32)),
                lambda d: ops.maxpool2x2_forward(d["x"]), lambda h: ref_maxpool_forward(h["x"]),
                torch=lambda torch, t: (lambda: torch.nn.functional.max_pool2d(t["x"], 2, return_indices=True)),
                numba=True)


def maxpool_backward_case(xs):
    from cunet import ops

    ys = (xs[0], xs[1], xs[2] // 2, xs[3] // 2)
    def make(rng):
        return dict(dy=rng.standard_normal(ys).astype(np.float32), argmax=rng.integers(0, 4, ys).astype(np.uint8))
    def torch_fn(torch, t):
        x = torch.randn(xs, device=t["dy"].device)
        _, idx = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
        return lambda: torch.ops.aten.max_pool2d_with_indices_backward(t["dy"], x, [2, 2], [2, 2], [0, 0], [1, 1],
                                                                       False, idx)
    return Case("maxpool2x2_backward", "maxpool", [], f"dy {_shape(ys)}", 0, (F32 + 1) * _n(ys) + F32 * _n(xs),
                "memory", make, lambda d: ops.maxpool2x2_backward(d["dy"], d["argmax"], xs),
                lambda h: ref_maxpool_backward(h["dy"], h["argmax"]), torch=torch_fn, numba=True)


def crop_concat_forward_case(skip, up):
    from cunet import ops

    ys = (up[0], skip[1] + up[1], up[2], up[3])
    def ref(h):
        oy, ox = (skip[2] - up[2]) // 2, (skip[3] - up[3]) // 2
        return np.concatenate([h["skip"][:, :, oy:oy + up[2], ox:ox + up[3]], h["up"]], axis=1)
    def torch_fn(torch, t):
        oy, ox = (skip[2] - up[2]) // 2, (skip[3] - up[3]) // 2
        return lambda: torch.cat([t["skip"][:, :, oy:oy + up[2], ox:ox + up[3]], t["up"]], dim=1)
    return Case("crop_concat_forward", "crop_concat", [], f"skip {_shape(skip)} up {_shape(up)}", 0,
                2 * F32 * _n(ys), "memory",
                lambda rng: dict(skip=rng.standard_normal(skip).astype(np.float32), up=rng.standard_normal(up).astype(np.float32)),
                lambda d: ops.crop_concat_forward(d["skip"], d["up"]), ref, torch=torch_fn, numba=True)


def crop_concat_backward_case(skip, up):
    from cunet import ops

    ys = (up[0], skip[1] + up[1], up[2], up[3])
    def ref(h):
        oy, ox = (skip[2] - up[2]) // 2, (skip[3] - up[3]) // 2
        dskip = np.zeros(skip, np.float32)
        dskip[:, :, oy:oy + up[2], ox:ox + up[3]] = h["dy"][:, :skip[1]]
        return dskip, h["dy"][:, skip[1]:]
    return Case("crop_concat_backward", "crop_concat", [], f"dy {_shape(ys)} skip {_shape(skip)}", 0,
                F32 * (_n(ys) + _n(skip) + _n(up)), "memory",
                lambda rng: dict(dy=rng.standard_normal(ys).astype(np.float32)),
                lambda d: ops.crop_concat_backward(d["dy"], skip), ref, numba=True)


def add_case(shape):
    from cunet import ops

    def run(d):
        ops.add_inplace(d["y"], d["x"])  # accumulates on every call: validation uses the first
        return d["y"]
    return Case("add_inplace", "add", [], f"y {_shape(shape)}", _n(shape), 3 * F32 * _n(shape), "memory",
                lambda rng: dict(y=rng.standard_normal(shape).astype(np.float32), x=rng.standard_normal(shape).astype(np.float32)),
                run, lambda h: h["y"] + h["x"], torch=lambda torch, t: (lambda: t["y"].add_(t["x"])))


def dropout_case(shape, op):
    from cunet import ops

    p, seed = 0.5, 1234
    name = "x" if op == "dropout_forward" else "dy"
    def ref(h):
        return h[name] * ops.dropout_mask(shape, p, seed) / (1 - p)
    return Case(op, "dropout", [], f"{name} {_shape(shape)}", _n(shape), 2 * F32 * _n(shape), "memory",
                lambda rng: {name: rng.standard_normal(shape).astype(np.float32)},
                lambda d: getattr(ops, op)(d[name], p, seed), ref,
                torch=(lambda torch, t: (lambda: torch.nn.functional.dropout(t[name], p))) if op == "dropout_forward" else None,
                numba=True, notes="mask regenerated from Philox (10 rounds per 4 elements), never stored")


def softmax_forward_case(shape):
    from cunet import ops

    N, K, H, W = shape
    pixels = N * H * W
    def make(rng):
        return dict(logits=rng.standard_normal(shape).astype(np.float32), labels=rng.integers(0, K, (N, H, W)).astype(np.int32),
                    weights=rng.random((N, H, W)).astype(np.float32) * 10)
    def torch_fn(torch, t):
        F = torch.nn.functional
        labels = t["labels"].long()
        return lambda: (t["weights"] * F.cross_entropy(t["logits"], labels, reduction="none")).mean()
    return Case("softmax_ce_forward", "softmax_ce", [], f"logits {_shape(shape)}", 4 * _n(shape) + 4 * pixels,
                F32 * (2 * _n(shape) + 2 * pixels), "memory", make,
                lambda d: ops.softmax_ce_forward(d["logits"], d["labels"], d["weights"]),
                lambda h: ref_softmax_ce(h["logits"], h["labels"], h["weights"]), torch=torch_fn, numba=True,
                notes="includes the host-side label and weight validation")


def softmax_backward_case(shape):
    from cunet import ops

    N, K, H, W = shape
    pixels = N * H * W
    def make(rng):
        z = rng.standard_normal(shape)
        probs = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(np.float32)
        return dict(probs=probs, labels=rng.integers(0, K, (N, H, W)).astype(np.int32),
                    weights=rng.random((N, H, W)).astype(np.float32) * 10)
    return Case("softmax_ce_backward", "softmax_ce", [], f"probs {_shape(shape)}", 3 * _n(shape),
                F32 * (2 * _n(shape) + 2 * pixels), "memory", make,
                lambda d: ops.softmax_ce_backward(d["probs"], d["labels"], d["weights"]),
                lambda h: ref_softmax_ce_backward(h["probs"], h["labels"], h["weights"]), numba=True,
                notes="includes the host-side label and weight validation")


def sgd_case(shapes):
    from cunet import ops

    total = sum(_n(s) for s in shapes)
    lr, momentum = 0.01, 0.99
    def make(rng):
        return dict(p=[rng.standard_normal(s).astype(np.float32) for s in shapes],
                    v=[rng.standard_normal(s).astype(np.float32) * 0.01 for s in shapes],
                    g=[rng.standard_normal(s).astype(np.float32) for s in shapes])
    def run(d):
        for p, v, g in zip(d["p"], d["v"], d["g"]):
            ops.sgd_momentum_update(p, v, g, lr, momentum)
        return d["p"]  # updated in place: validation looks at the first call only
    def ref(h):
        return [p + (momentum * v - lr * g) for p, v, g in zip(h["p"], h["v"], h["g"])]
    def torch_fn(torch, t):
        params = [torch.nn.Parameter(p) for p in t["p"]]
        for p, g in zip(params, t["g"]):
            p.grad = g
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
        return opt.step
    return Case("sgd_momentum_update", "sgd", [], f"{len(shapes)} tensors, {total:,} params", 3 * total, 5 * F32 * total,
                "memory", make, run, ref, torch=torch_fn, numba=True,
                notes=f"one call per parameter tensor ({len(shapes)} calls)")


def weight_average_case(shapes):
    from cunet import ops

    total = sum(_n(s) for s in shapes)
    decay = 0.9995
    def make(rng):
        return dict(a=[rng.standard_normal(s).astype(np.float32) for s in shapes],
                    p=[rng.standard_normal(s).astype(np.float32) for s in shapes])
    def run(d):
        for a, p in zip(d["a"], d["p"]):
            ops.weight_average_update(a, p, decay)
        return d["a"]  # updated in place: validation looks at the first call only
    def ref(h):
        return [decay * a + (1 - decay) * p for a, p in zip(h["a"], h["p"])]
    def torch_fn(torch, t):
        def lerp():   # a + (1 - decay) * (p - a): the same formula
            for a, p in zip(t["a"], t["p"]):
                a.lerp_(p, 1 - decay)
        return lerp
    return Case("weight_average_update", "sgd", [], f"{len(shapes)} tensors, {total:,} params", 3 * total,
                3 * F32 * total, "memory", make, run, ref, torch=torch_fn, numba=True,
                notes=f"one call per parameter tensor ({len(shapes)} calls)")


# --- running ---------------------------------------------------------------------------------------


def _flatten(out):
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in _flatten(o)]
    return [out]


def expected_outputs(case: Case, device, host_inputs) -> list[np.ndarray]:
    """The reference's outputs; in TF32, the GEMM outputs from TF32-rounded operands."""
    want = [np.asarray(a) for a in _flatten(case.reference(host_inputs))]
    if device.runtime is None or device.runtime.math != "tf32" or not case.gemm_operands:
        return want
    from cunet.ops.gemm import round_to_tf32

    rounded = {k: round_to_tf32(v) if k in case.gemm_operands else v for k, v in host_inputs.items()}
    want_tf32 = [np.asarray(a) for a in _flatten(case.reference(rounded))]
    return [t if case.gemm_outputs is None or i in case.gemm_outputs else w
            for i, (w, t) in enumerate(zip(want, want_tf32))]


def validate(case: Case, device, dev_inputs, host_inputs) -> tuple[bool, float, str]:
    """Run the op once on the device and compare with the NumPy reference; (ok, max rel err, message)."""
    want = expected_outputs(case, device, host_inputs)
    got = [device.to_host(a) for a in _flatten(case.run(dev_inputs))]
    if len(got) != len(want):
        return False, float("inf"), f"{len(got)} outputs, expected {len(want)}"
    worst = 0.0
    for g, w in zip(got, want):
        if g.shape != w.shape:
            return False, float("inf"), f"shape {g.shape}, expected {w.shape}"
        if w.dtype == np.uint8 or g.dtype == np.uint8:
            if not np.array_equal(g, w):
                return False, float("inf"), f"{int((g != w).sum())} integer outputs differ"
            continue
        scale = float(np.abs(w).max()) or 1.0
        err = float(np.abs(g.astype(np.float64) - w).max()) / scale
        worst = max(worst, err)
    # float32 sums of up to ~10^4 products in another order: a few 1e-6 relative to the largest value
    tolerance = 1e-4 + case.atol
    return worst <= tolerance, worst, "" if worst <= tolerance else f"max error {worst:.2e} x max|ref| > {tolerance:.0e}"


def _to_device(device, value):
    """A copy on the device (on cpu a real copy too: some ops update their inputs in place)."""
    if isinstance(value, list):
        return [_to_device(device, v) for v in value]
    return value.copy() if device.runtime is None else device.to_device(value)


def _to_torch(torch, value, cuda: bool):
    if isinstance(value, list):
        return [_to_torch(torch, v, cuda) for v in value]
    t = torch.from_numpy(np.ascontiguousarray(value))
    return t.cuda() if cuda else t


def run_cases(cases, device, timer, args, peaks, torch=None, cupy=None, log=None) -> list[dict]:
    """Validate and time every case; returns one result dict per case."""
    rng = np.random.default_rng(args.seed)
    runtime = device.runtime
    results = []
    for case in cases:
        host = case.make(rng)
        dev = {k: _to_device(device, v) for k, v in host.items()}
        ok, err, message = validate(case, device, dev, host)
        dev = {k: _to_device(device, v) for k, v in host.items()}  # fresh: some ops update in place
        r = dict(op=case.op, family=case.family, layers=case.layers, count=len(case.layers), shapes=case.shapes,
                 flops=case.flops, bytes=case.bytes, bound=case.bound, validated=ok, max_rel_err=err, notes=case.notes)
        if not ok:
            r.update(error=message, median_s=None)
            results.append(r)
            if log:
                log(f"FAILED {case.op} {case.shapes}: {message}")
            continue
        times, others = timed(timer, lambda: case.run(dev), args)
        r.update(times_s=times, median_s=harness.median(times), others_share=others)
        r.update(_rates(case, r["median_s"], peaks, tensor_cores=runtime is not None and runtime.math == "tf32"))
        if runtime is not None and case.numba and getattr(runtime, "name", "") == "cuda":
            r.update(time_numba_alternate(case, device, host, timer, args, log))
        if device.name == "cpu" and case.gemm is not None and not args.no_ceiling:
            M, N, K = case.gemm
            a = np.full((M, K), 0.5, np.float32)
            b = np.full((K, N), 0.25, np.float32)
            c = np.empty((M, N), np.float32)
            t, _ = timed(timer, lambda: np.matmul(a, b, out=c), args)
            r["ceiling_gemm_s"] = harness.median(t)
            r["ceiling_gemm_gflops"] = 2 * M * N * K / r["ceiling_gemm_s"] / 1e9
            del a, b, c
        if torch is not None and case.torch is not None:
            tt = {k: _to_torch(torch, v, cupy is not None) for k, v in host.items()}
            with torch.no_grad():
                fn = case.torch(torch, tt)
                ttimer = TorchCudaTimer(torch, timer) if cupy is not None else timer
                t, _ = timed(ttimer, fn, args)
            r["torch_median_s"] = harness.median(t)
            del tt
        results.append(r)
        if log:
            log(_progress_line(r))
        del host, dev
    return results


def time_numba_alternate(case, device, host, timer, args, log=None) -> dict:
    """On cuda: validate the op's Numba CUDA alternate like the CUDA C kernel, then time it."""
    runtime = device.runtime
    runtime.use_numba_kernels = True
    try:
        ok, err, message = validate(case, device, {k: _to_device(device, v) for k, v in host.items()}, host)
        if not ok:
            if log:
                log(f"FAILED {case.op} {case.shapes} (Numba alternate): {message}")
            return dict(numba_validated=False, numba_error=message, numba_median_s=None)
        dev = {k: _to_device(device, v) for k, v in host.items()}
        t = harness.repeat(timer, lambda: case.run(dev), args.warmup, args.repeats)
        return dict(numba_validated=True, numba_max_rel_err=err, numba_median_s=harness.median(t))
    finally:
        runtime.use_numba_kernels = False


def timed(timer, fn, args) -> tuple[list[float], float | None]:
    """harness.repeat, retried (up to --retries times) while other processes used more than
    --clean of the CPUs meanwhile; returns (times, others' share during the kept attempt)."""
    for attempt in range(args.retries + 1):
        meter = harness.OthersMeter()
        times = harness.repeat(timer, fn, args.warmup, args.repeats)
        others = meter.share()
        if others is None or others < args.clean:
            break
    return times, others


class TorchCudaTimer:
    """CUDA events on PyTorch's current stream (PyTorch and CuPy may not share a stream)."""

    def __init__(self, torch, flusher):
        self.torch, self.flusher = torch, flusher

    def flush(self):
        self.flusher.flush()
        self.torch.cuda.synchronize()

    def time(self, fn):
        start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def _rates(case: Case, seconds: float, peaks, tensor_cores: bool = False) -> dict:
    """GFLOP/s, GB/s, and the fraction of the peak that bounds the op: a GEMM op on TF32 tensor
    cores against the TF32 peak (where the GPU's is known), other compute-bound ops against FP32."""
    gflops = case.flops / seconds / 1e9
    gbps = case.bytes / seconds / 1e9
    compute_peak = peaks.tf32_gflops if tensor_cores and case.gemm_operands and peaks.tf32_gflops else peaks.gflops
    fraction = gflops / compute_peak if case.bound == "compute" else gbps / peaks.gbps
    return dict(gflops=gflops, gbps=gbps, peak_fraction=fraction, compute_peak_gflops=compute_peak)


def _progress_line(r: dict) -> str:
    return f"  {r['op']:<26} {r['shapes']:<40} {harness.fmt_time(r.get('median_s')):>10}"


# --- the command line -------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.split("\n\n")[0],
                                epilog="Shapes: --small is tile 188, base 8; --quick is tile 44, base 2, depth 3 "
                                       "(seconds, for tests); the default is the paper's 572 / 64 / 5.")
    p.add_argument("--device", choices=("cpu", "opencl", "cuda"), default="cpu")
    add_math_argument(p)
    p.add_argument("--tile", type=int, help="input tile (default 572)")
    p.add_argument("--base", type=int, help="channels of the first level (default 64)")
    p.add_argument("--depth", type=int, help="levels (default 5)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--small", action="store_true", help="tile 188, base 8, depth 5: a CPU run in a few minutes")
    p.add_argument("--quick", action="store_true", help="tile 44, base 2, depth 3, 1 warm-up, 2 repeats, no cache flush")
    p.add_argument("--ops", help=f"comma-separated op families to run (of {', '.join(OP_FAMILIES)}); default all")
    p.add_argument("--layers", help="comma-separated layer-name prefixes to keep (e.g. down0,up3,loss)")
    p.add_argument("--repeats", type=int, help="timed calls per op (default 5; --quick 2)")
    p.add_argument("--warmup", type=int, help="untimed calls first (default 1)")
    p.add_argument("--no-flush", action="store_true", help="do not evict the caches between repeats")
    p.add_argument("--no-ceiling", action="store_true", help="cpu: skip the BLAS GEMM ceiling column")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    p.add_argument("--clean", type=float, default=0.05,
                   help="retime an op when other processes used more than this share of the CPUs meanwhile (default 0.05)")
    p.add_argument("--retries", type=int, default=2, help="how many times to retime a disturbed op (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else SMALL if args.small else dict(tile=572, base=64, depth=5)
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else 1
    if args.quick:
        args.no_flush = True
    return args


def select(cases, args):
    if args.ops:
        families = {f.strip() for f in args.ops.split(",")}
        unknown = families - set(OP_FAMILIES)
        if unknown:
            print(f"error: unknown op families {sorted(unknown)}; choose from {', '.join(OP_FAMILIES)}", file=sys.stderr)
            raise SystemExit(2)
        cases = [c for c in cases if c.family in families]
    if args.layers:
        prefixes = tuple(s.strip() for s in args.layers.split(","))
        cases = [c for c in cases if any(layer.startswith(prefixes) for layer in c.layers)]
    return cases


def make_device(name: str, math: str | None = None):
    """The cunet device, or a clear error (exit 2) when it cannot be had here."""
    from cunet.device import DeviceUnavailableError, get_device

    try:
        return get_device(name, math=math)
    except (DeviceUnavailableError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv=None) -> int:
    args = parse_args(argv)
    device = make_device(args.device, args.math)
    from cunet.unet import InvalidSizeError

    try:
        cases = select(build_cases(args.tile, args.base, args.depth, args.batch), args)
    except InvalidSizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load_before = harness.load_average()
    cupy = device.runtime.cupy if args.device == "cuda" else None
    if args.device == "cuda":
        timer, peaks = harness.CudaTimer(cupy), harness.cuda_peaks(cupy)
        # CUDA events time the GPU, which other processes on the host's CPUs do not slow:
        # retiming "disturbed" ops would only spend scarce GPU minutes.
        args.retries = 0
    else:
        timer = harness.CpuTimer(device.synchronize, flush_bytes=0 if args.no_flush else 256 << 20)
        peaks = harness.measure_cpu_peaks(gemm_n=512 if args.quick else 2048, copy_bytes=(16 << 20) if args.quick else 512 << 20,
                                          repeats=2 if args.quick else 5)
        if args.device == "opencl":
            peaks.gflops_source += " (the CPU PoCL runs on)"
    torch = None if args.no_torch else harness.optional_torch()
    if torch is not None and args.device == "opencl":
        torch = None  # no PyTorch OpenCL backend to compare with
    if torch is not None and args.device == "cuda" and not torch.cuda.is_available():
        torch = None
    if torch is not None and device.runtime is not None:
        harness.torch_math(torch, device.runtime.math)
    # Progress goes to stderr in every mode: with --json too, so a run killed at a time limit
    # (the GPU check's) still says how far it got.
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    results = run_cases(cases, device, timer, args, peaks, torch=torch, cupy=cupy, log=log)
    config = dict(tile=args.tile, base=args.base, depth=args.depth, batch=args.batch, repeats=args.repeats,
                  warmup=args.warmup, flush=not args.no_flush, clean=args.clean)
    report = dict(benchmark="kernels", command=harness.command_line(), device=device.describe(), timer=timer.name,
                  machine=harness.machine(), config=config, load_average_before=load_before,
                  load_average_after=harness.load_average(),
                  peak=dict(gflops=peaks.gflops, gbps=peaks.gbps, gflops_source=peaks.gflops_source,
                            gbps_source=peaks.gbps_source, measured=peaks.measured),
                  results=results,
                  failed=sum(not r["validated"] or r.get("numba_validated") is False for r in results))
    if args.json:
        print(harness.dump_json(report))
    else:
        print(format_report(report, device.name))
    return 1 if report["failed"] else 0


def format_report(report: dict, device: str) -> str:
    """The table for people, with its header and totals."""
    c, p = report["config"], report["peak"]
    lines = [harness.header(f"cunet kernels: U-Net {c['tile']} / base {c['base']} / depth {c['depth']}, batch {c['batch']}",
                            report["device"], [
        f"timer: {report['timer']}; median of {c['repeats']} after {c['warmup']} warm-up; caches "
        + ("flushed before each repeat" if c["flush"] else "not flushed"),
        f"peak compute {p['gflops']:,.0f} GFLOP/s ({p['gflops_source']})",
        f"peak memory  {p['gbps']:,.1f} GB/s ({p['gbps_source']})",
        "every op validated against a NumPy reference before timing; FLOPs count a multiply-add as 2; "
        "bytes = each input read once + each output written once",
    ], command=report["command"], load=report["load_average_before"])]
    cols = [("op", "op"), ("shapes", "shapes"), ("count", "n"), ("time", "cunet"), ("gflops", "GFLOP/s"),
            ("gbps", "GB/s"), ("peak", "% peak")]
    extra = []
    if any("ceiling_gemm_s" in r for r in report["results"]):
        extra += [("gemm", "BLAS GEMM"), ("gemm_rate", "GEMM GFLOP/s")]
    if any("numba_median_s" in r for r in report["results"]):
        extra += [("numba", "Numba")]
    if any("torch_median_s" in r for r in report["results"]):
        extra += [("torch", "PyTorch"), ("vs_torch", "cunet/PyTorch")]
    rows, total, total_torch, total_gemm = [], 0.0, 0.0, 0.0
    for r in report["results"]:
        t = r.get("median_s")
        disturbed = (r.get("others_share") or 0.0) >= report["config"]["clean"]
        row = dict(op=r["op"], shapes=r["shapes"], count=r["count"],
                   time="FAILED" if not r["validated"] else harness.fmt_time(t) + ("*" if disturbed else ""))
        if t:
            total += t * r["count"]
            row.update(gflops=f"{r['gflops']:,.1f}" if r["flops"] else "-", gbps=f"{r['gbps']:,.1f}",
                       peak=f"{100 * r['peak_fraction']:.0f}% {'C' if r['bound'] == 'compute' else 'M'}")
        if "ceiling_gemm_s" in r:
            total_gemm += r["ceiling_gemm_s"] * r["count"]
            row.update(gemm=harness.fmt_time(r["ceiling_gemm_s"]), gemm_rate=f"{r['ceiling_gemm_gflops']:,.1f}")
        if "numba_median_s" in r:
            row["numba"] = harness.fmt_time(r["numba_median_s"])
        if "torch_median_s" in r:
            total_torch += r["torch_median_s"] * r["count"]
            row["torch"] = harness.fmt_time(r["torch_median_s"])
            if t:
                row["vs_torch"] = f"{t / r['torch_median_s']:.2f}"
        rows.append(row)
    lines.append(harness.format_table(cols + extra, rows, left=2))
    lines.append("")
    lines.append("% peak: C = of the compute peak (GEMM-shaped ops), M = of the memory peak (everything else); "
                 "n = times a step runs this shape; * = other processes used more than "
                 f"{100 * report['config']['clean']:.0f}% of the CPUs while it was timed, even after retries")
    lines.append(f"sum over one step's ops (time x n), cold caches: cunet {harness.fmt_time(total)}"
                 + (f", BLAS GEMM at the conv/upconv ops' M, N, K {harness.fmt_time(total_gemm)} (one big GEMM: not "
                    "always faster than cunet's chunked ones)" if total_gemm else "")
                 + (f", PyTorch (ops it has) {harness.fmt_time(total_torch)}" if total_torch else ""))
    if report["failed"]:
        lines.append(f"{report['failed']} op(s) FAILED validation and were not timed")
    lines.append(f"# load average at end: {' '.join(map(str, report['load_average_after']))}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
