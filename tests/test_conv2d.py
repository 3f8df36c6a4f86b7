"""Valid 2-D convolution (forward, backward input, backward params) against naive window loops.

Every device (cpu and PoCL) is compared with references that walk the output pixels one
by one and sum over the explicit R x R window: no im2col, no GEMM, nothing shared with the
implementation. Tolerances are the classical bound for a float32 sum of n products in
any order (Higham, "Accuracy and Stability of Numerical Algorithms", eq. 3.5):
|computed - exact| <= gamma_n * sum |a_i b_i|, gamma_n ~ n * 2^-24. It holds for every
summation order, with or without fused multiply-adds, so a correct kernel never fails it,
while a dropped or repeated term (error ~ |a_i b_i|) is far outside it.

In TF32 (the tensor-core kernels, emulated on PoCL: ``gemm_device``) the operands are
rounded to 10 mantissa bits before they are multiplied, and the products (11 x 11
significant bits) are exact in float32: so the reference rounds its inputs the same way
(helpers.tf32) and the float32 accumulation bound above holds unchanged. A skipped
rounding is then an error of ~2^-11 relative per term, hundreds of times the bound.
"""
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import cunet.cpu.conv2d as conv2d_module
from cunet.ops import conv2d_backward_input, conv2d_backward_params, conv2d_forward
import cunet.ops.gemm as gemm_module
from cunet.gradcheck import check_backward
from cunet.cpu.conv2d import CPU_ALGORITHMS
from cunet.ops.gemm import split_k, tile_config
from helpers import assert_oclgrind_clean, gemm_reference_inputs, run_under_oclgrind

EPS32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff u = 2^-24


# --- naive references (float64, one output pixel at a time) ----------------------------------
def forward_reference(x, w, b):
    """y[n,k,oh,ow] = b[k] + sum over the window x[n, :, oh:oh+R, ow:ow+R] times w[k]."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    N, _, H, W = x.shape
    K, _, R, _ = w.shape
    y = np.empty((N, K, H - R + 1, W - R + 1))
    for oh in range(H - R + 1):
        for ow in range(W - R + 1):
            window = x[:, :, oh:oh + R, ow:ow + R]
            y[:, :, oh, ow] = np.einsum("ncrs,kcrs->nk", window, w) + b
    return y


def backward_input_reference(dy, w):
    """Scatter: output pixel (oh, ow) sent dy[oh, ow] * w into the window it read."""
    dy, w = dy.astype(np.float64), w.astype(np.float64)
    N, K, OH, OW = dy.shape
    _, C, R, _ = w.shape
    dx = np.zeros((N, C, OH + R - 1, OW + R - 1))
    for oh in range(OH):
        for ow in range(OW):
            dx[:, :, oh:oh + R, ow:ow + R] += np.einsum("nk,kcrs->ncrs", dy[:, :, oh, ow], w)
    return dx


def backward_params_reference(x, dy):
    """dw sums dy[oh, ow] times the window it came from; db sums dy."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    N, C, H, W = x.shape
    _, K, OH, OW = dy.shape
    R = H - OH + 1
    dw, db = np.zeros((K, C, R, R)), np.zeros(K)
    for oh in range(OH):
        for ow in range(OW):
            dw += np.einsum("nk,ncrs->kcrs", dy[:, :, oh, ow], x[:, :, oh:oh + R, ow:ow + R])
            db += dy[:, :, oh, ow].sum(axis=0)
    return dw, db


def assert_within_sum_bound(got, exact, abs_sum, terms, what):
    """|got - exact| <= gamma_{terms+1} * abs_sum elementwise (abs_sum = the sum of |products|)."""
    bound = (terms + 1) * EPS32 / (1 - (terms + 1) * EPS32) * abs_sum + 1e-30
    excess = np.abs(got.astype(np.float64) - exact) - bound
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess.max() <= 0, (f"{what}: at {worst} got {got[worst]!r}, exact {exact[worst]!r}, "
                               f"allowed error {bound[worst]:.3g} ({terms} terms)")


# --- the error bound of Winograd F(4x4, 3x3) -------------------------------------------------------
# Winograd computes y = A^T [ sum_c (G g G^T) * (B^T d B) ] A per 4x4 output tile, so its
# rounding error is not bounded by the direct sum's: the transforms add, subtract and scale
# before the products. The standard forward error analysis of a bilinear algorithm bounds
# it by gamma_k times the same computation run on absolute values, |A^T| [sum_c (|G| |g|
# |G^T|) * (|B^T| |d| |B|)] |A|, k being the most roundings on any path from an input to
# an output (a product by a constant that float32 cannot hold, 1/6, counts two: the
# constant's and the product's): the filter transform 8 (4 per stage), the input transform
# 4 (2 per stage), the product 1, the sum over C channels C, the output transform 6, the
# bias 1: k = C + 20. Backward input is the same on zero-padded dy (K channels, no bias).
# The weight gradient G^T [sum over tiles of (A dY A^T) * (B^T d B)] G: 4 + 4 + 1, the sum
# over every tile of every image (plus one add per chunk: at most 2 per tile), 10. The
# matrices are Lavin and Gray's (2016), written here independently of
# kernels/host/conv2d.cpp (whose comments count its roundings per stage).
WINOGRAD_TILE = 4
WINOGRAD_B_T = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=np.float64)
WINOGRAD_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                       [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
WINOGRAD_A_T = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                        dtype=np.float64)
ABS_B_T, ABS_G, ABS_A_T = np.abs(WINOGRAD_B_T), np.abs(WINOGRAD_G), np.abs(WINOGRAD_A_T)


def _tiles(OH, OW):
    """Tile rows and columns: ceil(OH / 4), ceil(OW / 4)."""
    return -(-OH // WINOGRAD_TILE), -(-OW // WINOGRAD_TILE)


def _input_tiles_abs(ax, OH, OW):
    """|B^T| d |B| for every 6x6 input block d (stride 4) of |x|: [N, C, TH, TW, 6, 6]."""
    (TH, TW), m = _tiles(OH, OW), WINOGRAD_TILE
    ax = np.pad(ax, ((0, 0), (0, 0), (0, m * TH + 2 - ax.shape[2]), (0, m * TW + 2 - ax.shape[3])))
    d = np.lib.stride_tricks.sliding_window_view(ax, (m + 2, m + 2), axis=(2, 3))[:, :, ::m, ::m]
    return np.einsum("ai,ncxyij,bj->ncxyab", ABS_B_T, d, ABS_B_T)


def winograd_forward_scale(ax, aw):
    """|A^T| [sum_c (|G| |w| |G^T|) * (|B^T| |d| |B|)] |A| per output ([N, K, OH, OW]), ax, aw >= 0."""
    OH, OW = ax.shape[2] - 2, ax.shape[3] - 2
    U = np.einsum("ai,kcij,bj->kcab", ABS_G, aw.astype(np.float64), ABS_G)
    M = np.einsum("kcab,ncxyab->nkxyab", U, _input_tiles_abs(ax.astype(np.float64), OH, OW))
    Y = np.einsum("ua,nkxyab,vb->nkxuyv", ABS_A_T, M, ABS_A_T)
    N, K, TH, _, TW, _ = Y.shape
    return Y.reshape(N, K, WINOGRAD_TILE * TH, WINOGRAD_TILE * TW)[:, :, :OH, :OW]


def winograd_weight_grad_scale(ax, ady):
    """|G^T| [sum over tiles of (|A| |dY| |A^T|) * (|B^T| |d| |B|)] |G| per weight ([K, C, 3, 3])."""
    N, K, OH, OW = ady.shape
    (TH, TW), m = _tiles(OH, OW), WINOGRAD_TILE
    e = np.pad(ady.astype(np.float64), ((0, 0), (0, 0), (0, m * TH - OH), (0, m * TW - OW)))
    e = e.reshape(N, K, TH, m, TW, m).transpose(0, 1, 2, 4, 3, 5)
    D = np.einsum("ia,nkxyij,jb->nkxyab", ABS_A_T, e, ABS_A_T)
    S = np.einsum("nkxyab,ncxyab->kcab", D, _input_tiles_abs(ax.astype(np.float64), OH, OW))
    return np.einsum("ai,kcab,bj->kcij", ABS_G, S, ABS_G)


def winograd_bounds(x, w, b, dy):
    """((scale, k) of the forward, of the backward input, of the weight gradient) by Winograd:
    each result must lie within gamma_k * scale of the exact one (assert_within_sum_bound)."""
    N, C = x.shape[:2]
    K, OH, OW = dy.shape[1:]
    flipped = np.abs(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    padded = np.pad(np.abs(dy), ((0, 0), (0, 0), (2, 2), (2, 2)))
    TH, TW = _tiles(OH, OW)
    return ((winograd_forward_scale(abs(x), abs(w)) + abs(b)[:, None, None], C + 20),
            (winograd_forward_scale(padded, flipped), K + 19),
            (winograd_weight_grad_scale(abs(x), abs(dy)), 2 * N * TH * TW + 19))


# --- shapes -------------------------------------------------------------------------------------
# Channel counts that land on every tile shape (64x8: <= 8, 64x16: <= 16, 128x64: more),
# on both sides of each tile edge; output sizes from 1x1 up, so M = N*OH*OW is rarely a
# multiple of any BM; C from 1 (the U-Net's first layer) up.
channels = st.one_of(st.sampled_from([1, 2, 8, 9, 16, 17, 64, 65]), st.integers(1, 70))
in_channels = st.one_of(st.just(1), st.integers(1, 20))


@st.composite
def conv_shapes(draw, max_out=9):
    """(N, C, H, W, K, R) with OH, OW in [1, max_out]."""
    R = draw(st.sampled_from([1, 3]))
    N = draw(st.integers(1, 3))
    OH, OW = draw(st.integers(1, max_out)), draw(st.integers(1, max_out))
    return N, draw(in_channels), OH + R - 1, OW + R - 1, draw(channels), R


# Hypothesis draws the shapes; these examples make sure that, whatever it draws, every op
# runs every (tile shape, filter size) kernel module: columns 2, 16 and 17 pick the 64x8,
# 64x16 and 128x64 tiles, with several blocks along M.
def every_module(columns_at, **other_arguments):
    """Decorator: one @example per (columns, R); columns_at is the index of N_gemm in the shape."""
    def decorate(test):
        for columns in (2, 16, 17):
            for R in (1, 3):
                shape = [2, 5, 9 + R - 1, 10 + R - 1, 3, R]
                shape[columns_at] = columns
                test = example(shape=tuple(shape), seed=columns * R, **other_arguments)(test)
        return test
    return decorate


def random_case(seed, shape, dtype=np.float32):
    """x, w, b, dy for shape (N, C, H, W, K, R)."""
    N, C, H, W, K, R = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, R, R)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    dy = rng.standard_normal((N, K, H - R + 1, W - R + 1)).astype(dtype)
    return x, w, b, dy


# --- forward --------------------------------------------------------------------------------------
@given(shape=conv_shapes(), relu=st.booleans(), seed=st.integers(0, 2**32 - 1))
@every_module(columns_at=4, relu=True)
def test_forward_matches_reference(gemm_device, shape, relu, seed):
    device = gemm_device
    x, w, b, _ = random_case(seed, shape)
    y = device.to_host(conv2d_forward(device.to_device(x), device.to_device(w), device.to_device(b), relu=relu))
    x, w = gemm_reference_inputs(device, x, w)
    exact = forward_reference(x, w, b)
    abs_sum = forward_reference(np.abs(x), np.abs(w), np.abs(b))
    assert y.shape == exact.shape and y.dtype == np.float32
    if relu:
        exact = np.maximum(exact, 0)  # |relu(a) - relu(b)| <= |a - b|: the bound still holds
        assert (y >= 0).all()
    N, C, H, W, K, R = shape
    assert_within_sum_bound(y, exact, abs_sum, C * R * R + 1, f"conv2d_forward{shape}")


# --- backward input ---------------------------------------------------------------------------------
@given(shape=conv_shapes(), seed=st.integers(0, 2**32 - 1))
@every_module(columns_at=1)
def test_backward_input_matches_reference(gemm_device, shape, seed):
    device = gemm_device
    _, w, _, dy = random_case(seed, shape)
    dx = device.to_host(conv2d_backward_input(device.to_device(dy), device.to_device(w)))
    dy, w = gemm_reference_inputs(device, dy, w)
    exact = backward_input_reference(dy, w)
    abs_sum = backward_input_reference(np.abs(dy), np.abs(w))
    N, C, H, W, K, R = shape
    assert dx.shape == (N, C, H, W)
    assert_within_sum_bound(dx, exact, abs_sum, K * R * R, f"conv2d_backward_input{shape}")


# --- backward params ------------------------------------------------------------------------------
@given(shape=conv_shapes(), min_chunk=st.sampled_from([8, 40, gemm_module.SPLIT_MIN_CHUNK]),
       seed=st.integers(0, 2**32 - 1))
@every_module(columns_at=4, min_chunk=8)
def test_backward_params_matches_reference(gemm_device, shape, min_chunk, seed):
    """Also with short chunks, so that tiny shapes split the reduction over several blocks."""
    device = gemm_device
    x, _, _, dy = random_case(seed, shape)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gemm_module, "SPLIT_MIN_CHUNK", min_chunk)
        dw, db = (device.to_host(a) for a in conv2d_backward_params(device.to_device(x), device.to_device(dy)))
    x, dy = gemm_reference_inputs(device, x, dy)
    exact_w, exact_b = backward_params_reference(x, dy)
    abs_w, abs_b = backward_params_reference(np.abs(x), np.abs(dy))
    N, C, H, W, K, R = shape
    pixels = N * (H - R + 1) * (W - R + 1)
    assert dw.shape == (K, C, R, R) and db.shape == (K,)
    assert_within_sum_bound(dw, exact_w, abs_w, pixels, f"conv2d_backward_params{shape} dw")
    assert_within_sum_bound(db, exact_b, abs_b, pixels, f"conv2d_backward_params{shape} db")


def test_backward_params_is_deterministic_with_many_splits(device, monkeypatch):
    """Split-then-sum in a fixed order: two runs agree bit for bit (no atomics anywhere)."""
    monkeypatch.setattr(gemm_module, "SPLIT_MIN_CHUNK", 16)
    x, _, _, dy = random_case(7, (2, 3, 12, 13, 5, 3))
    assert split_k(2 * 10 * 11, 3 * 9 + 1, 5, tile_config(5))[0] > 5
    runs = [[device.to_host(a) for a in conv2d_backward_params(device.to_device(x), device.to_device(dy))]
            for _ in range(2)]
    for first, second in zip(*runs):
        np.testing.assert_array_equal(first, second)


# --- the U-Net's own degenerate layers, one example each (hypothesis may not draw them) --------
@pytest.mark.parametrize("shape", [
    (1, 1, 12, 13, 16, 3),    # first layer: C = 1, K_gemm = 9
    (2, 20, 3, 3, 2, 1),      # last layer: 1x1 to 2 classes
    (1, 3, 3, 3, 70, 3),      # 1x1 output, more filters than one tile
])
def test_unet_edge_layers(device, shape):
    x, w, b, dy = random_case(3, shape)
    to = device.to_device
    N, C, H, W, K, R = shape
    y = device.to_host(conv2d_forward(to(x), to(w), to(b)))
    assert_within_sum_bound(y, forward_reference(x, w, b), forward_reference(abs(x), abs(w), abs(b)), C * R * R + 1, "y")
    dx = device.to_host(conv2d_backward_input(to(dy), to(w)))
    assert_within_sum_bound(dx, backward_input_reference(dy, w), backward_input_reference(abs(dy), abs(w)), K * R * R, "dx")
    dw, db = (device.to_host(a) for a in conv2d_backward_params(to(x), to(dy)))
    (ew, eb), (aw, ab) = backward_params_reference(x, dy), backward_params_reference(abs(x), abs(dy))
    assert_within_sum_bound(dw, ew, aw, dy[:, 0].size, "dw")
    assert_within_sum_bound(db, eb, ab, dy[:, 0].size, "db")


# --- float64 on cpu, and finite-difference gradient checks ------------------------------------
@pytest.mark.parametrize("R", [1, 3])
def test_cpu_float64_matches_reference(R):
    x, w, b, dy = random_case(11, (2, 3, 6, 7, 4, R), np.float64)
    y = conv2d_forward(x, w, b)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, forward_reference(x, w, b), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv2d_backward_input(dy, w), backward_input_reference(dy, w), rtol=1e-12, atol=1e-12)
    dw, db = conv2d_backward_params(x, dy)
    ew, eb = backward_params_reference(x, dy)
    np.testing.assert_allclose(dw, ew, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, eb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("R", [1, 3])
def test_cpu_chunks_of_rows_match_reference(monkeypatch, rows, R):
    """The im2col path works a few output rows at a time: 1 row, and 2 with a short last chunk."""
    monkeypatch.setattr(conv2d_module, "CPU_ALGORITHM", "im2col")  # even for 3 -> 4 channels
    monkeypatch.setattr(conv2d_module, "CPU_CHUNK_ELEMENTS", rows * (3 * R * R + 4) * 8)
    monkeypatch.setattr(conv2d_module, "CPU_CHUNK_MIN_COLUMNS", 1)
    assert conv2d_module._chunk_rows(3, 4, R, 8) == rows
    x, w, b, dy = random_case(13, (2, 3, 7, 8, 4, R), np.float64)
    np.testing.assert_allclose(conv2d_forward(x, w, b, relu=True), np.maximum(forward_reference(x, w, b), 0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv2d_backward_input(dy, w), backward_input_reference(dy, w), rtol=1e-12, atol=1e-12)
    dw, db = conv2d_backward_params(x, dy)
    ew, eb = backward_params_reference(x, dy)
    np.testing.assert_allclose(dw, ew, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, eb, rtol=1e-12, atol=1e-12)


def test_cpu_chunks_are_bounded_and_not_too_narrow():
    """~CPU_CHUNK_ELEMENTS per im2col chunk, but at least CPU_CHUNK_MIN_COLUMNS columns per GEMM."""
    budget, min_columns = conv2d_module.CPU_CHUNK_ELEMENTS, conv2d_module.CPU_CHUNK_MIN_COLUMNS
    for C, K, W in [(16, 16, 570), (64, 64, 570), (128, 128, 66), (512, 512, 66), (1024, 1024, 32)]:
        rows = conv2d_module._chunk_rows(C, K, 3, W)
        assert rows * W >= min_columns
        assert (C * 9 + K) * rows * W <= budget or rows == -(-min_columns // W)


@pytest.mark.parametrize("R", [1, 3])
def test_backward_ops_match_finite_differences(R):
    """loss = sum(y * G): dL/dx, dL/dw, dL/db from the backward ops, and numerically."""
    x, w, b, G = random_case(5, (2, 3, 5, 6, 4, R), np.float64)
    dx = conv2d_backward_input(G, w)
    dw, db = conv2d_backward_params(x, G)
    # loss is linear in each argument, so central differences are exact up to rounding
    # (~1e-16 * |loss| / h ~ 1e-9): 1e-7 leaves room and still fails on any wrong term.
    check_backward(conv2d_forward, [x, w, b], [dx, dw, db], G, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("algorithm", CPU_ALGORITHMS)
@pytest.mark.parametrize("shape", [(1, 16, 70, 75, 32, 3), (2, 64, 20, 18, 2, 1), (1, 1, 92, 92, 16, 3)])
def test_cpu_matches_pytorch_on_unet_sized_layers(shape, algorithm):
    """Shapes too big for the naive loops, several chunks each: against PyTorch's autograd, in float64."""
    torch = pytest.importorskip("torch")
    x, w, b, dy = random_case(17, shape, np.float64)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb)
    ty.backward(torch.from_numpy(dy))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv2d_module, "CPU_ALGORITHM", algorithm)
        patch.setattr(conv2d_module, "CPU_CHUNK_ELEMENTS", 1 << 16)
        patch.setattr(conv2d_module, "CPU_CHUNK_MIN_COLUMNS", 1)
        y = conv2d_forward(x, w, b)
        dx = conv2d_backward_input(dy, w)
        dw, db = conv2d_backward_params(x, dy)
    for ours, theirs in ((y, ty), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-10)


# --- cpu: the three algorithms, the C++ direct kernels, Winograd and im2col + BLAS --------------
def cpu_ops(algorithm, x, w, b, dy, relu=False):
    """(y, dx, dw, db) from the cpu ops, with every layer on ``algorithm`` (Winograd: 3x3 only)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv2d_module, "CPU_ALGORITHM", algorithm)
        return (conv2d_forward(x, w, b, relu=relu), conv2d_backward_input(dy, w)) + conv2d_backward_params(x, dy)


@pytest.mark.parametrize("algorithm", CPU_ALGORITHMS)
@given(shape=conv_shapes(), relu=st.booleans(), seed=st.integers(0, 2**32 - 1))
@example(shape=(1, 2, 3, 3, 5, 3), relu=False, seed=1)   # 1x1 output: only the zero-padded edges in dx
@example(shape=(2, 3, 4, 5, 9, 3), relu=True, seed=2)    # 2x3 output, 4 + 4 + 1 filters
@example(shape=(1, 1, 12, 13, 16, 3), relu=True, seed=3)  # the U-Net's first layer
def test_cpu_algorithms_match_reference(algorithm, shape, relu, seed):
    """Each cpu algorithm on its own, on every shape (K % 4 leftovers, 1-pixel outputs, C = 1)."""
    x, w, b, dy = random_case(seed, shape)
    y, dx, dw, db = cpu_ops(algorithm, x, w, b, dy, relu)
    N, C, H, W, K, R = shape
    OH, OW = H - R + 1, W - R + 1
    (ew, eb), (aw, ab) = backward_params_reference(x, dy), backward_params_reference(abs(x), abs(dy))
    if algorithm == "winograd" and R == 3:   # the bound above; the exact values still come from the naive loops
        (y_scale, y_terms), (dx_scale, dx_terms), (dw_scale, dw_terms) = winograd_bounds(x, w, b, dy)
    else:
        y_scale, y_terms = forward_reference(abs(x), abs(w), abs(b)), C * R * R + 1
        dx_scale, dx_terms = backward_input_reference(abs(dy), abs(w)), K * R * R
        dw_scale, dw_terms = aw, N * OH * OW
    exact = forward_reference(x, w, b)
    assert_within_sum_bound(y, np.maximum(exact, 0) if relu else exact, y_scale, y_terms, f"{algorithm} forward{shape}")
    assert_within_sum_bound(dx, backward_input_reference(dy, w), dx_scale, dx_terms, f"{algorithm} backward input{shape}")
    assert_within_sum_bound(dw, ew, dw_scale, dw_terms, f"{algorithm} dw{shape}")
    assert_within_sum_bound(db, eb, ab, N * OH * OW, f"{algorithm} db{shape}")


@pytest.mark.parametrize("algorithm", CPU_ALGORITHMS)
def test_cpu_algorithms_float64(algorithm):
    x, w, b, dy = random_case(19, (2, 5, 9, 8, 6, 3), np.float64)
    y, dx, dw, db = cpu_ops(algorithm, x, w, b, dy)
    assert {a.dtype for a in (y, dx, dw, db)} == {np.dtype(np.float64)}
    np.testing.assert_allclose(y, forward_reference(x, w, b), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, backward_input_reference(dy, w), rtol=1e-12, atol=1e-12)
    ew, eb = backward_params_reference(x, dy)
    np.testing.assert_allclose(dw, ew, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, eb, rtol=1e-12, atol=1e-12)


def test_cpu_direct_is_the_same_for_any_thread_count():
    """The C++ kernels split work over outputs only, so 1 thread and all of them agree bit for bit."""
    from cunet import _host
    x, w, b, dy = random_case(23, (2, 6, 31, 29, 9, 3))
    assert conv2d_module.cpu_algorithm("weight_grad", 6, 9, 3, 29, 27, x.dtype) == "direct"
    threads = _host.max_threads()
    try:
        runs = []
        for n in sorted({1, 2, threads}):
            _host.set_num_threads(n)
            runs.append(cpu_ops("direct", x, w, b, dy, relu=True))
    finally:
        _host.set_num_threads(threads)
    for run in runs[1:]:
        for first, other in zip(runs[0], run):
            np.testing.assert_array_equal(first, other)


def test_wide_layers_take_winograd_narrow_ones_direct_and_blas_the_rest(monkeypatch):
    """float32 3x3 runs on the C++ kernels: Winograd for wide layers, the direct sums elsewhere
    (the weight gradient by C*K, the other two by their multiply-adds per transformed value);
    float64 (gradient checks), 1x1, or no cunet._host: im2col + BLAS."""
    pick = conv2d_module.cpu_algorithm
    wide = conv2d_module.WINOGRAD_MIN_CK
    assert pick("weight_grad", 1, wide, 3, 2, 2) == "winograd" and pick("weight_grad", 1, wide - 1, 3, 999, 999) == "direct"
    intensity = conv2d_module.winograd_intensity
    assert intensity(60, 60, 240, 1) == pytest.approx(20)   # 60 x 1 tiles: 1 / (3/60)
    for C, K, OH, OW in [(128, 128, 280, 280), (512, 512, 52, 52), (1024, 512, 54, 54)]:   # base 64: faster
        assert intensity(C, K, OH, OW) >= conv2d_module.WINOGRAD_MIN_INTENSITY
        assert pick("forward", C, K, 3, OH, OW) == "winograd" and pick("input_grad", C, K, 3, OH, OW) == "winograd"
    for C, K, OH, OW in [(1024, 1024, 28, 28), (128, 128, 64, 64), (64, 128, 282, 282)]:   # slower
        assert intensity(C, K, OH, OW) < conv2d_module.WINOGRAD_MIN_INTENSITY
        assert pick("forward", C, K, 3, OH, OW) == "direct"
        assert pick("weight_grad", C, K, 3, OH, OW) == ("winograd" if C * K >= wide else "direct")
    assert pick("input_grad", 128, 128, 3, 64, 64) == "direct" and pick("input_grad", 64, 128, 3, 282, 282) == "direct"
    # the backward input's tiles are those of its own output, (OH + 2) x (OW + 2)
    assert conv2d_module.winograd_wins("input_grad", 1024, 1024, 28, 28)   # 8 x 8 tiles: 57
    assert not conv2d_module.winograd_wins("forward", 1024, 1024, 28, 28)   # 7 x 7 tiles: 45
    assert pick("forward", 16, 16, 3, 9, 9, np.float64) == "im2col"
    assert pick("forward", 512, 512, 3, 64, 64, np.float64) == "im2col"
    assert pick("forward", 16, 2, 1, 9, 9) == "im2col"
    assert pick("input_grad", 512, 512, 1, 64, 64) == "im2col"
    with pytest.raises(ValueError, match="op 'backward'"):
        pick("backward", 16, 16, 3, 9, 9)
    assert "C++ kernels (cunet._host" in conv2d_module.host_kernels_status()
    monkeypatch.setattr(conv2d_module, "_host", None)
    monkeypatch.setattr(conv2d_module, "HOST_IMPORT_ERROR", "No module named 'cunet._host'")
    assert pick("forward", 16, 16, 3, 9, 9) == "im2col"
    assert pick("weight_grad", 512, 512, 3, 64, 64) == "im2col"
    assert "not built (No module named 'cunet._host'): `pip install -e .`" in conv2d_module.host_kernels_status()
    x, w, b, dy = random_case(37, (1, 3, 9, 10, 4, 3))   # and the ops still work, through im2col
    assert_within_sum_bound(conv2d_forward(x, w, b), forward_reference(x, w, b),
                            forward_reference(abs(x), abs(w), abs(b)), 3 * 9 + 1, "im2col fallback")


@pytest.mark.parametrize("algorithm", CPU_ALGORITHMS)
def test_cpu_nan_propagates(algorithm):
    """The loops' fast-math flags (FMA contraction, reassociation) do not assume NaN away."""
    x, w, b, dy = random_case(29, (1, 3, 8, 9, 5, 3))
    # read by outputs 3..5 x 4..6 and by every tap of dw; by Winograd F(4x4, 3x3)'s tiles, the
    # same outputs (which tile outputs read which inputs: tests/test_host_conv.py)
    x[0, 1, 5, 6] = np.nan
    y, _, dw, _ = cpu_ops(algorithm, x, w, b, dy)
    assert np.isnan(y[0, :, 3:6, 4:7]).all() and np.isfinite(y[0, :, :3]).all() and np.isfinite(y[0, :, :, :4]).all()
    assert np.isnan(dw[:, 1]).all() and np.isfinite(dw[:, 0]).all()
    y = cpu_ops(algorithm, x, w, b, dy, relu=True)[0]
    assert (y[0, :, 3:6, 4:7] == 0).all()  # ReLU maps NaN to 0, as fmaxf does on the GPU


@pytest.mark.parametrize("algorithm", CPU_ALGORITHMS)
def test_cpu_memory_is_bounded(algorithm):
    """No whole im2col matrix (9x the input): bounded scratch memory.

    tracemalloc sees NumPy's allocations: the peak may hold the result and at most one
    chunk's buffers (im2col or col2im). The C++ kernels (direct and Winograd) allocate in
    C++, which tracemalloc does not see: their scratch is counted by cunet._host and checked
    exactly in tests/test_host_conv.py (test_scratch_memory_is_the_documented_buffers_and_no_more,
    test_winograd_scratch_is_the_documented_buffers).
    """
    import tracemalloc
    x, w, b, dy = random_case(31, (1, 16, 130, 130, 16, 3))
    chunk = 2 * conv2d_module.CPU_CHUNK_ELEMENTS * x.itemsize
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv2d_module, "CPU_ALGORITHM", algorithm)
        allowance = {"direct": 1 << 18, "im2col": chunk, "winograd": 1 << 18}[algorithm]
        for call, result_bytes in [
            (lambda: conv2d_forward(x, w, b, relu=True), dy.nbytes),
            (lambda: conv2d_backward_input(dy, w), x.nbytes),
            (lambda: conv2d_backward_params(x, dy), w.nbytes + b.nbytes),
        ]:
            call()  # warm (compiles, caches)
            tracemalloc.start()
            try:
                call()
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak <= result_bytes + allowance, (algorithm, peak, result_bytes)


# --- bad input ----------------------------------------------------------------------------------------
def test_bad_input(device, rng):
    to = device.to_device
    x = to(rng.standard_normal((1, 3, 8, 8)).astype(np.float32))
    w = to(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    b = to(np.zeros(4, np.float32))
    dy = to(rng.standard_normal((1, 4, 6, 6)).astype(np.float32))
    cases = [
        (TypeError, r"conv2d_forward: x has dtype int32; expected float32",
         lambda: conv2d_forward(to(np.zeros((1, 3, 8, 8), np.int32)), w, b)),
        (ValueError, r"conv2d_forward: x must be \[N, C, H, W\], got shape \(3, 8, 8\)",
         lambda: conv2d_forward(to(np.zeros((3, 8, 8), np.float32)), w, b)),
        (ValueError, r"conv2d_forward: w must be \[K, C, R, R\], got shape \(4, 3, 3\)",
         lambda: conv2d_forward(x, to(np.zeros((4, 3, 3), np.float32)), b)),
        (ValueError, r"conv2d_forward: x \(1, 3, 8, 8\) has 3 channels but w \(4, 2, 3, 3\) expects 2",
         lambda: conv2d_forward(x, to(np.zeros((4, 2, 3, 3), np.float32)), b)),
        (ValueError, r"conv2d_forward: w \(4, 3, 2, 2\) has a 2x2 filter; only 1x1 and 3x3",
         lambda: conv2d_forward(x, to(np.zeros((4, 3, 2, 2), np.float32)), b)),
        (ValueError, r"conv2d_forward: w \(4, 3, 3, 1\) is \[K, C, R, S\] with a non-square 3x1 filter",
         lambda: conv2d_forward(x, to(np.zeros((4, 3, 3, 1), np.float32)), b)),
        (ValueError, r"conv2d_forward: b has shape \(3,\); expected \(4,\)",
         lambda: conv2d_forward(x, w, to(np.zeros(3, np.float32)))),
        (ValueError, r"conv2d_forward: x \(1, 3, 2, 8\) is smaller than the 3x3 filter",
         lambda: conv2d_forward(to(np.zeros((1, 3, 2, 8), np.float32)), w, b)),
        (ValueError, r"conv2d_forward: x \(0, 3, 8, 8\) has batch size 0",
         lambda: conv2d_forward(to(np.zeros((0, 3, 8, 8), np.float32)), w, b)),
        (ValueError, r"conv2d_backward_input: dy \(1, 5, 6, 6\) has 5 channels but w \(4, 3, 3, 3\) has 4 filters",
         lambda: conv2d_backward_input(to(np.zeros((1, 5, 6, 6), np.float32)), w)),
        (ValueError, r"conv2d_backward_input: w \(4, 3, 5, 5\) has a 5x5 filter",
         lambda: conv2d_backward_input(dy, to(np.zeros((4, 3, 5, 5), np.float32)))),
        (ValueError, r"conv2d_backward_params: x \(1, 3, 8, 8\) and dy \(1, 4, 7, 7\) imply a 2x2 filter",
         lambda: conv2d_backward_params(x, to(np.zeros((1, 4, 7, 7), np.float32)))),
        (ValueError, r"conv2d_backward_params: x \(1, 3, 8, 8\) and dy \(1, 4, 6, 8\) imply a 3x1 filter",
         lambda: conv2d_backward_params(x, to(np.zeros((1, 4, 6, 8), np.float32)))),
        (ValueError, r"conv2d_backward_params: x \(1, 3, 8, 8\) and dy \(2, 4, 6, 6\) have different batch sizes",
         lambda: conv2d_backward_params(x, to(np.zeros((2, 4, 6, 6), np.float32)))),
    ]
    if device.name == "cpu":
        cases += [
            (ValueError, r"conv2d_forward: x must be C-contiguous",
             lambda: conv2d_forward(np.zeros((1, 3, 8, 16), np.float32)[..., ::2], w, b)),
            (ValueError, r"conv2d_backward_params: dtypes must match, got x float64, dy float32",
             lambda: conv2d_backward_params(np.zeros((1, 3, 8, 8)), dy)),
        ]
    else:
        cases += [
            (ValueError, r"conv2d_forward: all arguments must be on one device",
             lambda: conv2d_forward(x, w, np.zeros(4, np.float32))),
        ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()


# --- Oclgrind: every kernel, the wide and the narrow tiles, tiny shapes, FP32 and TF32 -----------
# Columns 17, 16 and 2 pick the 128x64, 64x16 and 64x8 tiles: in TF32 each runs the
# tensor-core main loop (its fragment loads from the shared tiles, under race detection).
def oclgrind_case_forward(device):
    """Wide and narrow tiles, ragged M, ReLU on and off."""
    for shape, relu in (((1, 2, 5, 6, 17, 3), True), ((1, 2, 4, 5, 16, 3), False), ((2, 3, 4, 5, 2, 1), False)):
        x, w, b, _ = random_case(1, shape)
        y = device.to_host(conv2d_forward(device.to_device(x), device.to_device(w), device.to_device(b), relu=relu))
        exact = forward_reference(*gemm_reference_inputs(device, x, w), b)
        np.testing.assert_allclose(y, np.maximum(exact, 0) if relu else exact, rtol=1e-4, atol=1e-4)


def oclgrind_case_backward_input(device):
    """Wide and narrow tiles; dy read across its zero-padded border."""
    for shape in ((1, 17, 5, 4, 2, 3), (1, 16, 4, 5, 3, 3), (2, 3, 5, 6, 4, 3)):
        _, w, _, dy = random_case(2, shape)
        dx = device.to_host(conv2d_backward_input(device.to_device(dy), device.to_device(w)))
        np.testing.assert_allclose(dx, backward_input_reference(*gemm_reference_inputs(device, dy, w)),
                                   rtol=1e-4, atol=1e-4)


def oclgrind_case_backward_params(device):
    """Both kernels (partials and their sum), several splits, a short last chunk, every tile."""
    gemm_module.SPLIT_MIN_CHUNK = 16  # this runs in a fresh interpreter: no need to restore
    for shape in ((1, 2, 6, 7, 17, 3), (1, 2, 5, 6, 16, 3), (2, 3, 4, 5, 2, 1)):
        x, _, _, dy = random_case(3, shape)
        dw, db = (device.to_host(a) for a in conv2d_backward_params(device.to_device(x), device.to_device(dy)))
        exact_w, exact_b = backward_params_reference(*gemm_reference_inputs(device, x, dy))
        np.testing.assert_allclose(dw, exact_w, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(db, exact_b, rtol=1e-4, atol=1e-4)


@pytest.mark.oclgrind
@pytest.mark.parametrize("math", ["fp32", "tf32"])
@pytest.mark.parametrize("case", ["oclgrind_case_forward", "oclgrind_case_backward_input", "oclgrind_case_backward_params"])
def test_conv2d_under_oclgrind(case, math, tmp_path):
    assert_oclgrind_clean(run_under_oclgrind("test_conv2d", case, tmp_path, math=math))
