"""The cpu convolutions: unpadded 3x3 (and 1x1) correlations, forward and both backwards.

What ``cunet.ops.conv2d`` runs on the cpu device, after it has checked the arguments (it
has: every array here is dense, of one float dtype, with matching shapes). Three
algorithms, picked per op by the layer's shape (:func:`cpu_algorithm`):

    direct    float32 3x3 layers with few channels (the top of the U-Net): the C++ kernels
              of kernels/host/ (module cunet._host), register-blocked loops on OpenMP threads;
    winograd  float32 3x3 layers with many channels (the bottom): Winograd F(4x4, 3x3) in
              the same C++ module, 4x fewer multiplies than a direct sum;
    im2col    1x1 layers, and everything the C++ kernels do not cover (float64, which the
              gradient checks use; a cunet whose C++ module was not built): each chunk of a
              few output rows becomes one BLAS GEMM.

Why not one. A GEMM is fast when all three of its dimensions are large: it then loads each
operand once per tile and does tens of multiply-adds per load. At the top of the U-Net
the filter dimensions are tiny (K = 16 outputs, C*9 = 144 reduction terms at base 16),
so BLAS spends its time packing panels and copying the im2col matrix, which is 9x the
image and does only K multiply-adds per element copied; the direct kernels instead keep a
tile of 8 filters x 32 pixels in registers for the whole sum (kernels/host/conv2d.cpp) and
run at up to 92% of the FMA units' measured peak (`python -m benchmarks.conv2d_cpu`).
Winograd turns each layer into 36 products of matrices [K, C] x [C, tiles] on the same
register tile, around transforms of the input (C x tiles), the filters (K x C) and the
products (K x tiles): where all three of C, K and the tiles are large the products
dominate and the fewer multiplies win (1.2-1.8x on the bottom of a base-64 U-Net), where
one is small its transform does. `python -m benchmarks.conv2d_cpu --pick` times the two
per op and layer; cpu_algorithm below holds what it found.
"""
from __future__ import annotations

import numpy as np
from numba import njit

try:  # built by `pip install -e .` (setup.py); its absence is reported, not fatal
    from cunet import _host
    HOST_IMPORT_ERROR = None
except ImportError as exc:
    _host = None
    HOST_IMPORT_ERROR = str(exc)

# Where auto sends a float32 3x3 op when the C++ kernels are built. The products of a
# Winograd layer multiply K x C x tiles; its transforms touch C x tiles (the input), K x C
# (the filters) and K x tiles (the products) values each. Their ratio,
#     intensity = 1 / (1/C + 1/K + 1/tiles)
# (tiles: the op's own 4x4 output tiles), says how many multiply-adds each transformed value
# pays for. Measured with `python -m benchmarks.conv2d_cpu --pick --base 64 --base 16`
# (each op by the direct kernels and by F(4x4, 3x3), interleaved; 2-core AMD EPYC, AVX-512,
# 2026-12-07, three runs): the forward and backward input are faster by Winograd on every
# layer of intensity >= 63 (1.2-1.8x: 512 -> 512 at 54 x 54, 18 ms against 29), faster or
# tied at 54-57 (the base-64 bottom's backward input, 1024 -> 1024 and 512 -> 1024 at 32 x
# 32: 37 against 45-70 ms, 20 against 25), slower at 45 (its forward, 1024 -> 1024 at 30 x
# 30: 43 against 39) and 51-52 (base 16's 128 -> 128 at 66 x 66, by ~0.6 ms); between 45
# and 60 on base 16's small layers the runs disagree by more than the two differ (~1.5 ms).
# The weight gradient sums over the tiles inside its products and transforms the filters'
# gradient once, so only C x K counts: Winograd is faster on every layer from 128 x 128
# channel pairs on (up to 2.4x: 1024 -> 1024 at 30 x 30, 33 ms against 80) and tied or
# mixed below. The step itself agrees: base 16's train step with the thresholds lowered,
# alternating round by round (12 rounds each, one process): this rule 251 ms, C*K >= 64 x
# 128 257 ms, and intensity >= 45 or 35 as well 270 ms (Winograd's transforms, cheap beside
# the layer's own call in --pick, cost more among the step's other work).
WINOGRAD_MIN_INTENSITY = 53
WINOGRAD_MIN_CK = 128 * 128


def winograd_intensity(C: int, K: int, OH: int, OW: int) -> float:
    """Multiply-adds per transformed value of Winograd F(4x4, 3x3) on C -> K channels and an
    OH x OW output: 1 / (1/C + 1/K + 1/tiles)."""
    tiles = -(-OH // 4) * -(-OW // 4)
    return 1.0 / (1.0 / C + 1.0 / K + 1.0 / tiles)


def winograd_wins(op: str, C: int, K: int, OH: int, OW: int) -> bool:
    """Whether Winograd F(4x4, 3x3) runs ``op`` of a float32 3x3 layer C -> K with an OH x OW
    output faster than the direct kernels (the rule measured above). The backward input is a
    forward over dy padded by 2, with C and K swapped: (OH + 2) x (OW + 2) outputs."""
    if op == "weight_grad":
        return C * K >= WINOGRAD_MIN_CK
    if op == "input_grad":
        return winograd_intensity(K, C, OH + 2, OW + 2) >= WINOGRAD_MIN_INTENSITY
    return winograd_intensity(C, K, OH, OW) >= WINOGRAD_MIN_INTENSITY


# im2col path. Elements of one chunk's im2col matrix plus its GEMM output (8 MB in
# float32). Every BLAS call has a fixed cost (waking its threads, packing panels), so
# fewer, bigger chunks won in measurements here (2^18 to 2^23 tried; 2^21 was fastest or
# within noise for 64 to 256 channels); the chunk still sits in the last-level cache when
# the GEMM and the epilogue read it. But a chunk also gets at least CPU_CHUNK_MIN_COLUMNS
# output positions: each BLAS call packs the whole [K, C*9] weight matrix (9 MB at 512
# channels), and the deep layers' rows are so short (66, 30 pixels) that 2^21 elements
# would be a few rows, a call per few hundred columns. Measured at 512 -> 512 channels,
# 66x66: forward 141 ms with 396 columns per call, 113 ms with 1,584.
CPU_CHUNK_ELEMENTS = 1 << 21
CPU_CHUNK_MIN_COLUMNS = 1536

# Which algorithm every layer takes: "auto" picks by op and shape (:func:`cpu_algorithm`);
# one of CPU_ALGORITHMS sends every op it can run down that path (the tests and
# benchmarks/conv2d_cpu.py use this to check and time each algorithm on its own).
CPU_ALGORITHMS = ("direct", "winograd", "im2col")
CPU_ALGORITHM = "auto"
CPU_OPS = ("forward", "input_grad", "weight_grad")


def host_runs(R: int, dtype) -> bool:
    """Whether the C++ kernels (direct or Winograd) can run a layer: 3x3, float32, and cunet._host built."""
    return R == 3 and np.dtype(dtype) == np.float32 and _host is not None


def cpu_algorithm(op: str, C: int, K: int, R: int, OH: int, OW: int, dtype=np.float32) -> str:
    """The cpu algorithm for ``op`` (one of CPU_OPS) of a layer of C -> K channels, an R x R
    filter, an OH x OW output and ``dtype``; the backward ops pass their layer's C, K, OH, OW."""
    if op not in CPU_OPS:
        raise ValueError(f"cpu_algorithm: op {op!r}; expected one of {CPU_OPS}")
    chosen = CPU_ALGORITHM
    if chosen not in ("auto",) + CPU_ALGORITHMS:
        raise ValueError(f"conv2d: CPU_ALGORITHM is {CPU_ALGORITHM!r}; expected 'auto' or one of {CPU_ALGORITHMS}")
    if not host_runs(R, dtype):
        return "im2col"
    if chosen == "auto":
        return "winograd" if winograd_wins(op, C, K, OH, OW) else "direct"
    return chosen


def host_kernels_status() -> str:
    """One line for a run's log: which cpu convolution kernels this process runs."""
    if _host is None:
        return (f"cpu convolutions: im2col + BLAS only; the C++ kernels (cunet._host) are not built "
                f"({HOST_IMPORT_ERROR}): `pip install -e .` builds them")
    return (f"cpu convolutions: C++ kernels (cunet._host, {_host.simd_level()}, {_host.max_threads()} threads) for "
            f"3x3 layers and up-convolutions: Winograd F(4x4, 3x3) on the wide layers (weight gradient: C*K >= "
            f"{WINOGRAD_MIN_CK}; forward and backward input: 1/(1/C + 1/K + 1/tiles) >= {WINOGRAD_MIN_INTENSITY}), "
            f"direct sums elsewhere")


# --- im2col: chunks of output rows, one BLAS GEMM each -------------------------------------------
# The two Numba helpers below are deliberately serial: BLAS already runs each chunk's GEMM
# on every core, and two pools busy at once on 2 cores slow both (cunet/cpu/__init__.py).
def _chunk_rows(C: int, K: int, R: int, W: int) -> int:
    """Output rows per chunk: (C*R*R + K) * rows * W elements fit in CPU_CHUNK_ELEMENTS,
    but at least CPU_CHUNK_MIN_COLUMNS columns (rows * W) per GEMM."""
    return max(1, CPU_CHUNK_ELEMENTS // ((C * R * R + K) * W), -(-CPU_CHUNK_MIN_COLUMNS // W))


@njit(cache=True)
def _gather_im2col(x_img, R, W, q0, n, cols):
    """cols[(c, r, s), q] = x_img[c, q0 + q + r*W + s] for q < n: C*R*R contiguous copies."""
    RR = R * R
    for i in range(cols.shape[0]):
        c = i // RR
        r = (i - c * RR) // R
        start = q0 + r * W + (i - c * RR - r * R)
        for q in range(n):
            cols[i, q] = x_img[c, start + q]


@njit(cache=True)
def _bias_relu_epilogue(wide, b, relu, out):
    """out[k, i, j] = wide[k, i, j] + b[k], then max(., 0) if relu, over out's shape."""
    K, count, OW = out.shape
    for k in range(K):
        for i in range(count):
            for j in range(OW):
                v = wide[k, i, j] + b[k]
                out[k, i, j] = (v if v > 0.0 else 0.0) if relu else v   # NaN -> 0, as fmaxf


def _im2col_chunks(x_img: np.ndarray, R: int, W: int, OH: int, rows: int):
    """Yield (oh0, cols) with cols[(c, r, s), q] = x_img[c, oh0*W + q + r*W + s].

    ``x_img`` is one image flattened to [C, H*W]; each chunk covers output rows
    [oh0, oh0 + rows) computed at the input's width W, and the last chunk stops R-1
    short of its last row (those columns lie past the output's edge anyway). For a 1x1
    filter the chunk is a slice of x_img itself; otherwise a buffer that is reused for
    the next chunk: use it before asking for the next.
    """
    C = x_img.shape[0]
    length = OH * W - (R - 1)
    buffer = np.empty((C * R * R, rows * W), x_img.dtype) if R > 1 else None
    for oh0 in range(0, OH, rows):
        q0 = oh0 * W
        n = min(rows * W, length - q0)
        if R == 1:
            yield oh0, x_img[:, q0:q0 + n]
        else:
            _gather_im2col(x_img, R, W, q0, n, buffer)
            yield oh0, buffer[:, :n]


def _im2col_correlate(x: np.ndarray, w: np.ndarray, b=None, relu: bool = False) -> np.ndarray:
    """Valid cross-correlation [N, C, H, W] * [K, C, R, R] -> [N, K, OH, OW], plus b, then ReLU.

    Per chunk of output rows: one GEMM into ``wide`` ([K, rows, W]: each row W long, its
    last R-1 values past the output's edge), then, while that is still in cache, the
    epilogue copies the OW valid columns into y, adding the bias and applying the ReLU.
    """
    N, C, H, W = x.shape
    K, R = w.shape[0], w.shape[2]
    OH, OW = H - R + 1, W - R + 1
    rows = min(OH, _chunk_rows(C, K, R, W))
    wmat = w.reshape(K, C * R * R)
    bias = np.zeros(K, x.dtype) if b is None else b
    wide = np.empty((K, rows, W), x.dtype)
    y = np.empty((N, K, OH, OW), x.dtype)
    for n in range(N):
        for oh0, cols in _im2col_chunks(x[n].reshape(C, H * W), R, W, OH, rows):
            np.matmul(wmat, cols, out=wide.reshape(K, rows * W)[:, :cols.shape[1]])
            count = min(rows, OH - oh0)
            _bias_relu_epilogue(wide, bias, relu, y[n, :, oh0:oh0 + count])
    return y


def _im2col_weight_grad(x, dy):
    """dw[k, (c,r,s)] = sum_q dy[k, q] * cols[(c,r,s), q], one GEMM per im2col chunk; db = sum dy.

    dy is copied a chunk at a time onto rows of the input's width W (the R-1 columns past
    the output's edge stay 0, so the garbage columns of the im2col chunk add nothing).
    """
    N, C, H, W = x.shape
    K, OH, OW = dy.shape[1:]
    R = H - OH + 1
    rows = min(OH, _chunk_rows(C, K, R, W))
    dwmat = np.zeros((K, C * R * R), x.dtype)
    wide = np.zeros((K, rows, W), x.dtype)
    for n in range(N):
        for oh0, cols in _im2col_chunks(x[n].reshape(C, H * W), R, W, OH, rows):
            count = min(rows, OH - oh0)
            wide[:, :count, :OW] = dy[n, :, oh0:oh0 + count]
            dwmat += wide.reshape(K, rows * W)[:, :cols.shape[1]] @ cols.T
    db = dy.reshape(N, K, OH * OW).sum(axis=2).sum(axis=0)
    return dwmat.reshape(K, C, R, R), db


@njit(cache=True)
def _col2im_add(dcols, R, OW, oh0, count, dx_img):
    """dx_img[c, oh0 + i + r, j + s] += dcols[(c, r, s), i*OW + j] for i < count, j < OW."""
    RR = R * R
    for idx in range(dcols.shape[0]):
        c, r, s = idx // RR, (idx % RR) // R, idx % R
        for i in range(count):
            src, dst = dcols[idx, i * OW:(i + 1) * OW], dx_img[c, oh0 + i + r, s:s + OW]
            for j in range(OW):
                dst[j] += src[j]


def _col2im_input_grad(dy: np.ndarray, w: np.ndarray) -> np.ndarray:
    """dx [N, C, OH+R-1, OW+R-1] of a valid convolution: im2col run backwards ("col2im").

    The forward was y = W cols; so d(cols) = W^T dy, one GEMM per chunk of dy rows reading
    dy in place: dcols[(c, r, s), q] = sum_k w[k, (c, r, s)] dy[k, q]. Each row of dcols is
    then added into dx at its shift: cols[(c, r, s), (oh, ow)] was x[c, oh + r, ow + s].
    Chunks are added in order, so the overlapping rows of neighbouring chunks always sum
    the same way.

    Measured against the forward over dy zero-padded by R-1 (with the flipped filter):
    1.2-2x faster on every layer it runs (130 -> 105 ms at 512 -> 512 channels, 66x66),
    because it needs no padded copy and no im2col gather, and its GEMM has M = C*R*R
    rows (large) instead of C.
    """
    N, K, OH, OW = dy.shape
    C, R = w.shape[1], w.shape[2]
    wT = w.reshape(K, C * R * R).T   # a transposed view: BLAS reads it as is
    if R == 1:   # no shifts to add: dx is the GEMM's output itself (the head, 16 <- 2 at 388^2: 1.48 -> 0.37 ms)
        dx = np.empty((N, C, OH, OW), dy.dtype)
        np.matmul(wT, dy.reshape(N, K, OH * OW), out=dx.reshape(N, C, OH * OW))
        return dx
    rows = min(OH, _chunk_rows(C, K, R, OW))
    dcols = np.empty((C * R * R, rows * OW), dy.dtype)
    dx = np.zeros((N, C, OH + R - 1, OW + R - 1), dy.dtype)
    for n in range(N):
        for oh0 in range(0, OH, rows):
            count = min(rows, OH - oh0)
            out = dcols[:, :count * OW]
            np.matmul(wT, dy[n, :, oh0:oh0 + count].reshape(K, count * OW), out=out)
            _col2im_add(out, R, OW, oh0, count, dx[n])
    return dx


# --- the three ops, each picking its algorithm ---------------------------------------------------
def correlate(x: np.ndarray, w: np.ndarray, b: np.ndarray, relu: bool = False) -> np.ndarray:
    """conv2d_forward on the cpu: y = b + valid cross-correlation of x with w, then ReLU if relu."""
    N, C, H, W = x.shape
    K, R = w.shape[0], w.shape[2]
    algorithm = cpu_algorithm("forward", C, K, R, H - R + 1, W - R + 1, x.dtype)
    if algorithm == "im2col":
        return _im2col_correlate(x, w, b, relu)
    y = np.empty((N, K, H - 2, W - 2), x.dtype)
    _host.conv3x3_forward(x, w, b, y, relu=relu, winograd=algorithm == "winograd")
    return y


def input_grad(dy: np.ndarray, w: np.ndarray) -> np.ndarray:
    """conv2d_backward_input on the cpu: dx, the correlation of dy (zero-padded by R-1) with
    the filter turned by 180 degrees and its C and K swapped (im2col: run backwards)."""
    N, K, OH, OW = dy.shape
    C, R = w.shape[1], w.shape[2]
    algorithm = cpu_algorithm("input_grad", C, K, R, OH, OW, dy.dtype)
    if algorithm == "im2col":
        return _col2im_input_grad(dy, w)
    dx = np.empty((N, C, OH + 2, OW + 2), dy.dtype)
    _host.conv3x3_backward_input(dy, w, dx, winograd=algorithm == "winograd")
    return dx


def params_grad(x: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """conv2d_backward_params on the cpu: (dw, db)."""
    N, C, H, W = x.shape
    K, OH, OW = dy.shape[1:]
    R = H - OH + 1
    algorithm = cpu_algorithm("weight_grad", C, K, R, OH, OW, x.dtype)
    if algorithm == "im2col":
        return _im2col_weight_grad(x, dy)
    dw, db = np.empty((K, C, 3, 3), x.dtype), np.empty(K, x.dtype)
    _host.conv3x3_backward_params(x, dy, dw, db, winograd=algorithm == "winograd")
    return dw, db
