"""Weighted softmax cross-entropy, the U-Net's loss, on every device.

    p_k(x)   = exp(z_k(x)) / sum_j exp(z_j(x))                   softmax over the K classes
    loss     = (1 / (N*H*W)) * sum_x w(x) * -log p_{l(x)}(x)
    dlogits  = grad_loss * w(x) * (p(x) - onehot(l(x))) / (N*H*W)

for logits z [N, K, H, W], labels l [N, H, W] (class indices) and the weight map
w [N, H, W] (class balance plus the paper's border term, made by cunet/data/weights.py).

Normalisation: the loss is the MEAN over all N*H*W pixels of the batch of the weighted
per-pixel loss (divided by the pixel count, not by the sum of the weights). So the
gradient's size, and with it a good learning rate, does not change with the tile size;
a summed loss would be N*H*W times larger, and so would its gradient.

Numerically stable: log-sum-exp with the maximum subtracted (every exponent <= 0), so
logits of any size give finite probabilities and losses. The forward returns the
probabilities, which is all the backward needs (dlogits = scaled p - onehot).

Checks, all before any launch: labels may be NumPy integer arrays (uint8, int32, int64,
...) or int32 device arrays; they are validated on the host (a device array is copied
back for it) and must lie in [0, K); host labels are then uploaded as int32. Weights live
where the logits live, with their dtype, and must be finite and non-negative (device
weights are copied back for the check, too: for a 388x388 tile that is 600 KB, tens of
microseconds per step, the price of an error message instead of a silently wrong loss).
A caller that runs forward and backward on the same inputs validates once with
softmax_ce_check and passes ``checked=True`` to both (cunet/functions.py does).

Unchecked labels are still memory-safe: ``checked=True`` skips looking at the values,
never the bounds. A pixel whose label lies outside [0, K) reads and writes nothing
outside its own K entries; its loss is NaN (so the mean loss is NaN) and its K gradient
entries are NaN, visibly wrong rather than a crash or a plausible number. The guard is
one integer comparison per pixel inside the loops, not a second pass over the labels.

Determinism: the loss is summed in a fixed order everywhere. cpu: a float64 partial per
image row, then np.sum over the rows. cuda/opencl: per-block tree sums, then one block
adds the partials (kernels/softmax_ce.cu explains the two passes).

cpu: Numba, parallel over rows (forward) or pixels (backward), in the input's precision
(float32, or float64 for gradient checks). cuda/opencl: kernels/softmax_ce.cu; on cuda the
Numba alternates (ops/numba_cuda/softmax_ce.py) run instead when the runtime asks. Both
Numba paths call the per-pixel functions below.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from cunet.cpu.parallel import njit_serial_or_parallel
from cunet.device import runtime_of
from cunet.kernels import kernel_module

from .common import check_float_array, check_real, check_same_device, check_same_dtype, grid_1d

BLOCK = 256  # threads per block; a power of two (the tree reduction halves it)
SOFTMAX_CE_CU = kernel_module("softmax_ce.cu", threads=BLOCK, SOFTMAX_CE_BLOCK=BLOCK)
LAYOUT = "N, K, H, W"


# --- per-pixel math, shared by the CPU loops and the Numba CUDA kernels -----------------
# The arrays are flat. Pixel q = n*H*W + h*W + w of the batch; its class-k value sits at
# pixel_offset(q) + k*H*W. Constants are np.float32 so float32 arithmetic stays float32 on
# the GPU (a bare 1.0 is a float64 in Numba); with float64 inputs they widen exactly.
# pixel_forward and pixel_backward are the only functions here that touch arrays; the
# Numba CUDA module compiles their Python source as CUDA device functions (see there).
# On the cpu they are inlined into the loops (inline='always'): a Numba call that passes
# arrays increments and decrements each array's reference count, atomically, and that
# cost 13x the arithmetic here (measured: the backward loop over a 388x388x2 map took 17 ms
# with the call, 1.3 ms inlined).
@njit(cache=True)
def pixel_offset(q, classes, plane):
    """Flat index of [n, 0, h, w] for pixel q of the batch (plane = H*W)."""
    n = q // plane
    return n * classes * plane + (q - n * plane)


@njit(cache=True)
def softmax_step(m, s, v):
    """Fold logit v into the running max m and sum s = sum_k exp(z_k - m) (online softmax)."""
    if v > m:  # a new maximum: rescale the sum so far to it
        return v, s * math.exp(m - v) + np.float32(1)
    return m, s + math.exp(v - m)


@njit(cache=True, inline="always")
def pixel_forward(logits, labels, weights, probs, q, classes, plane):
    """Write pixel q's K probabilities; return its weighted loss w * -log p_label = w * ((m - z_l) + log s).

    A label outside [0, K) (possible only with checked=True) gives a NaN loss and is never
    used as an index.
    """
    base = pixel_offset(q, classes, plane)
    m, s = logits[base], np.float32(1)  # exp(z_0 - m) = 1 with m = z_0
    for k in range(1, classes):
        m, s = softmax_step(m, s, logits[base + k * plane])
    inv_sum = np.float32(1) / s
    for k in range(classes):
        i = base + k * plane
        probs[i] = math.exp(logits[i] - m) * inv_sum
    label = labels[q]
    if 0 <= label < classes:
        z_label = logits[base + label * plane]
    else:  # unchecked and out of range: poison the loss instead of reading another pixel's (or no) memory
        z_label = np.float32(math.nan)
    return weights[q] * ((m - z_label) + math.log(s))


@njit(cache=True, inline="always")
def pixel_backward(probs, labels, weights, dlogits, q, classes, plane, scale):
    """dlogits of pixel q: scale * w * (p_k - [k == label]), scale = grad_loss / (N*H*W).

    A label outside [0, K) (possible only with checked=True) makes the pixel's K entries NaN.
    """
    base = pixel_offset(q, classes, plane)
    label = labels[q]
    g = scale * weights[q]
    if not 0 <= label < classes:  # no index is formed from the label here; NaN so the error shows
        g = g * np.float32(math.nan)
    for k in range(classes):
        i = base + k * plane
        p = probs[i]
        if k == label:
            p = p - np.float32(1)  # one rounding (none for p >= 0.5), then one multiply
        dlogits[i] = g * p


# --- cpu ----------------------------------------------------------------------------
# An exp per logit and a log per pixel: dearer per element than a copy, so the parallel
# loop pays off far earlier than common.PARALLEL_MIN_WORK (`python -m benchmarks.threshold`
# on 2 idle cores: the forward is 1.5x faster in parallel from 512 logits, the backward
# 0.9x at 4,096 and 1.7x at 8,192).
SOFTMAX_MIN_WORK = 1 << 13


@njit_serial_or_parallel(SOFTMAX_MIN_WORK)
def _forward_cpu(logits, labels, weights, probs, row_loss, classes, plane, width):
    """Probabilities, and per image row (n, h) the float64 sum of its pixels' losses."""
    for row in prange(row_loss.size):
        acc = 0.0
        for x in range(width):
            acc += pixel_forward(logits, labels, weights, probs, row * width + x, classes, plane)
        row_loss[row] = acc


@njit_serial_or_parallel(SOFTMAX_MIN_WORK)
def _backward_cpu(probs, labels, weights, dlogits, classes, plane, scale):
    for q in prange(labels.size):
        pixel_backward(probs, labels, weights, dlogits, q, classes, plane, scale)


# --- checks (host side, before any launch) ----------------------------------------------
def _check_pixel_shape(op: str, arg: str, a, expected: tuple, name: str, scores) -> None:
    if tuple(a.shape) != expected:
        raise ValueError(
            f"{op}: {arg} must be [N, H, W] = {expected} to match {name} {tuple(scores.shape)} "
            f"[{LAYOUT}], got shape {tuple(a.shape)}"
        )


def _check_labels(op: str, labels, runtime, expected: tuple, classes: int, name: str, scores):
    """Validate the labels on the host; return them as int32 on the scores' device."""
    if not (hasattr(labels, "shape") and hasattr(labels, "dtype")):
        raise TypeError(f"{op}: labels must be an integer array, got {type(labels).__name__}")
    on_device = runtime_of(labels) is not None
    if on_device:
        check_same_device(op, **{name: scores, "labels": labels})
        if labels.dtype != np.int32 or not labels.flags.c_contiguous:
            raise TypeError(f"{op}: device labels must be contiguous int32, got {labels.dtype}; "
                            "or pass a NumPy integer array (uint8, int32, int64)")
    elif labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{op}: labels has dtype {labels.dtype}; expected an integer dtype "
                        "(uint8, int32, int64, ...) holding class indices")
    _check_pixel_shape(op, "labels", labels, expected, name, scores)
    host = runtime.to_host(labels) if on_device else np.asarray(labels)
    bad = host[(host < 0) | (host >= classes)]
    if bad.size:
        values = np.unique(bad)
        listing = ", ".join(str(v) for v in values[:8]) + (", ..." if values.size > 8 else "")
        raise ValueError(f"{op}: labels must be class indices in [0, K) with K = {classes} ({name} axis 1); "
                         f"{bad.size} pixel(s) hold values outside it: {listing}")
    if on_device:
        return labels
    host = np.ascontiguousarray(host, np.int32)
    return host if runtime is None else runtime.to_device(host)


def _check_weight_values(op: str, weights, runtime) -> None:
    host = weights if runtime is None else runtime.to_host(weights)
    bad = ~(np.isfinite(host) & (host >= 0))
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{op}: weights must be finite and non-negative; {int(bad.sum())} pixel(s) are not, "
                         f"e.g. weights[{', '.join(map(str, first))}] = {host[first]}")


def _check_prepared_labels(op: str, labels, runtime, expected: tuple, name: str, scores):
    """checked=True: labels must already be softmax_ce_check's result (contiguous int32 where
    the scores are); their values are not looked at again."""
    if runtime_of(labels) is not runtime or labels.dtype != np.int32 or not labels.flags.c_contiguous:
        raise TypeError(f"{op}: with checked=True, labels must be what softmax_ce_check returned (contiguous "
                        f"int32 on the {name}' device), got {getattr(labels, 'dtype', type(labels).__name__)}"
                        f"{' on the host' if runtime_of(labels) is None else ''}")
    _check_pixel_shape(op, "labels", labels, expected, name, scores)


def _check_loss_inputs(op: str, name: str, scores, labels, weights, checked: bool = False,
                       weight_values_checked: bool = False):
    """Validate (logits or probs, labels, weights); return (runtime, labels as int32 on the device).

    ``checked``: the values (label range, finite non-negative weights) were validated by
    softmax_ce_check already; only shapes, dtypes and devices are checked again, so no
    device array is copied to the host.
    """
    runtime = check_float_array(op, name, scores, 4, LAYOUT)
    n, classes, h, w = scores.shape
    if classes < 2:
        raise ValueError(f"{op}: {name} needs K >= 2 classes on axis 1 of [{LAYOUT}], got shape {tuple(scores.shape)}")
    if n * h * w == 0:
        raise ValueError(f"{op}: {name} has no pixels (shape {tuple(scores.shape)}); the mean loss is undefined")
    check_float_array(op, "weights", weights, 3, "N, H, W")
    check_same_device(op, **{name: scores, "weights": weights})
    check_same_dtype(op, **{name: scores, "weights": weights})
    _check_pixel_shape(op, "weights", weights, (n, h, w), name, scores)
    if checked:
        _check_prepared_labels(op, labels, runtime, (n, h, w), name, scores)
        return runtime, labels
    labels = _check_labels(op, labels, runtime, (n, h, w), classes, name, scores)
    if not weight_values_checked:
        _check_weight_values(op, weights, runtime)
    return runtime, labels


# --- shared launch glue ---------------------------------------------------------------
def softmax_ce_grid(pixels: int):
    """(grid, block): one thread per pixel of the batch, BLOCK threads per block, rounded up."""
    return grid_1d(pixels, BLOCK)


def _forward_device(runtime, logits, labels, weights):
    n, classes, h, w = logits.shape
    pixels = n * h * w
    probs, loss = runtime.empty(logits.shape), runtime.empty((1,))
    grid, block = softmax_ce_grid(pixels)
    partial = runtime.empty((grid[0],))  # one float per block of pass 1
    sizes = (np.int32(pixels), np.int32(classes), np.int32(h * w))
    sum_args = (partial, loss, np.int32(grid[0]), np.int32(pixels))
    if runtime.use_numba_kernels:
        from .numba_cuda import softmax_ce as numba_ce

        flat = tuple(a.reshape(-1) for a in (logits, labels, weights, probs))
        runtime.launch_numba(numba_ce.softmax_ce_forward, grid, block, flat + (partial,) + sizes)
        runtime.launch_numba(numba_ce.softmax_ce_sum, (1, 1, 1), block, sum_args)
    else:
        runtime.launch(SOFTMAX_CE_CU, "softmax_ce_forward", grid, block, (logits, labels, weights, probs, partial) + sizes)
        runtime.launch(SOFTMAX_CE_CU, "softmax_ce_sum", (1, 1, 1), block, sum_args)
    return loss, probs


def _backward_device(runtime, probs, labels, weights, scale):
    n, classes, h, w = probs.shape
    dlogits = runtime.empty(probs.shape)
    grid, block = softmax_ce_grid(n * h * w)
    scalars = (np.int32(n * h * w), np.int32(classes), np.int32(h * w), np.float32(scale))
    if runtime.use_numba_kernels:
        from .numba_cuda import softmax_ce as numba_ce

        flat = tuple(a.reshape(-1) for a in (probs, labels, weights, dlogits))
        runtime.launch_numba(numba_ce.softmax_ce_backward, grid, block, flat + scalars)
    else:
        runtime.launch(SOFTMAX_CE_CU, "softmax_ce_backward", grid, block, (probs, labels, weights, dlogits) + scalars)
    return dlogits


# --- public ops -----------------------------------------------------------------------
def softmax_ce_check(logits, labels, weights):
    """Validate the loss inputs once; return (labels as contiguous int32, weights), both on the logits' device.

    Each op validates its inputs by default, and for device arrays that means copying the
    labels and weights to the host (and uploading host labels): twice per training step,
    once in forward and once in backward. A caller that runs both (the autograd Function)
    validates here once and passes the result with ``checked=True``.

    Labels and weights may be NumPy arrays even when the logits live on a device: they are
    then validated on the host, where they already are, and uploaded once. That is what a
    training loop should pass, since checking device weights means copying them back, and
    every copy to the host waits for the GPU to finish all the work queued before it.
    """
    op = "softmax_ce_check"
    runtime = check_float_array(op, "logits", logits, 4, LAYOUT)
    upload_weights = runtime is not None and isinstance(weights, np.ndarray)
    if upload_weights:
        _check_weight_values(op, weights, None)
        weights = runtime.to_device(weights)
    labels = _check_loss_inputs(op, "logits", logits, labels, weights, weight_values_checked=upload_weights)[1]
    return labels, weights


def softmax_ce_forward(logits, labels, weights, checked: bool = False):
    """(loss, probs) for logits [N, K, H, W], labels [N, H, W] in [0, K), weights [N, H, W] >= 0.

    loss = mean over the N*H*W pixels of w(x) * -log softmax(logits)_{l(x)}(x): shape (1,),
    the logits' dtype, on their device. probs = softmax over axis 1, like logits.
    ``checked=True``: labels come from :func:`softmax_ce_check` and the values are not
    validated again (shapes, dtypes and devices still are). The loops stay memory-safe for
    any label: one outside [0, K) makes its pixel's loss, and so the returned loss, NaN.
    """
    op = "softmax_ce_forward"
    runtime, labels = _check_loss_inputs(op, "logits", logits, labels, weights, checked)
    if runtime is not None:
        return _forward_device(runtime, logits, labels, weights)
    n, classes, h, w = logits.shape
    probs = np.empty_like(logits)
    row_loss = np.empty(n * h, np.float64)  # one partial per image row: a fixed summation order
    _forward_cpu(logits.reshape(-1), labels.reshape(-1), weights.reshape(-1), probs.reshape(-1),
                 row_loss, classes, h * w, w, work=logits.size)
    return np.array([np.sum(row_loss) / (n * h * w)], logits.dtype), probs


def softmax_ce_backward(probs, labels, weights, grad_loss: float = 1.0, checked: bool = False):
    """dlogits [N, K, H, W] = grad_loss * w(x) * (probs - onehot(labels)) / (N*H*W).

    ``probs`` is softmax_ce_forward's second output; ``grad_loss`` is dL/dloss (1 when the
    loss is the objective itself, any finite real number); ``checked`` as in
    :func:`softmax_ce_forward`: an unchecked label outside [0, K) makes its pixel's K
    gradient entries NaN.
    """
    op = "softmax_ce_backward"
    grad_loss = check_real(op, "grad_loss", grad_loss)
    runtime, labels = _check_loss_inputs(op, "probs", probs, labels, weights, checked)
    n, classes, h, w = probs.shape
    scale = float(grad_loss) / (n * h * w)
    if runtime is not None:
        return _backward_device(runtime, probs, labels, weights, scale)
    dlogits = np.empty_like(probs)
    _backward_cpu(probs.reshape(-1), labels.reshape(-1), weights.reshape(-1), dlogits.reshape(-1),
                  classes, h * w, probs.dtype.type(scale), work=probs.size)
    return dlogits
