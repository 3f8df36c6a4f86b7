"""cunet._host, the C++ 3x3 convolutions and up-convolution (kernels/host/), against NumPy.

The references below are written here, independently of the kernels: float64 einsums over
the 9 taps of the filter, on whole shifted views of the arrays. A result must lie within
the classical bound of a float32 sum of n products in any order (Higham, "Accuracy and
Stability of Numerical Algorithms", eq. 3.5): |computed - exact| <= gamma_n * sum |a_i b_i|,
gamma_n ~ n * 2^-24. It holds with or without fused multiply-adds, so a correct kernel
never fails it, while a missing or repeated term (an error ~ |a_i b_i|) is far outside it.

Shapes come from hypothesis and from explicit examples that reach each path of the
kernels: 1x1 outputs, C = 1, K = 2, odd sizes, channel counts that are not multiples of
any tile (filters per tile: 4 or 8; channels per weight-gradient task: 16), N > 1, rows
shorter than a vector, rows with a partial last vector, spans shorter than one tile.

Run by tests/sanitize_host.sh under AddressSanitizer and UBSan too: that script points
CUNET_HOST_MODULE at a sanitizer build of the module, which this file then loads instead of
the installed one. (So nothing here imports cunet.ops: Numba's compiler stays out of it.)
"""
from __future__ import annotations

import importlib.util
import math
import os
import platform
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "kernels" / "host").glob("*.[ch]pp"))


def load_host():
    """cunet._host, or the build that $CUNET_HOST_MODULE names (the sanitizer run's)."""
    path = os.environ.get("CUNET_HOST_MODULE")
    if path:
        spec = importlib.util.spec_from_file_location("cunet._host", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        import cunet._host as module
    except ImportError as exc:
        raise ImportError(f"cunet._host is not built ({exc}): `pip install -e .` compiles kernels/host/*.cpp "
                          "into it (a C++17 compiler with OpenMP is needed: apt install g++)") from exc
    return module


host = load_host()
BEST_LEVEL = host.simd_level()  # before any test selects another version


@pytest.fixture(scope="module", params=host.SIMD_LEVELS)
def level(request):
    """Each kernel test runs on every version of the kernels this CPU can execute (an AVX-512
    machine runs all three), each with its own register tile; the others are skipped."""
    if not host._cpu_supports(request.param):
        pytest.skip(f"this CPU cannot run the {request.param} version of the kernels")
    host._set_simd_level(request.param)
    yield request.param
    host._set_simd_level(BEST_LEVEL)


# --- references: the naive float64 ones of tests/test_conv2d.py (one reference per op) -------------
from test_conv2d import (assert_within_sum_bound, backward_input_reference,  # noqa: E402
                         backward_params_reference, forward_reference)


# --- running the kernels: into outputs prefilled with NaN, so an output left unwritten shows ----------
def run_forward(x, w, b, relu=False):
    y = np.full((x.shape[0], w.shape[0], x.shape[2] - 2, x.shape[3] - 2), np.nan, np.float32)
    assert host.conv3x3_forward(x, w, b, y, relu) is None
    return y


def run_backward_input(dy, w):
    dx = np.full((dy.shape[0], w.shape[1], dy.shape[2] + 2, dy.shape[3] + 2), np.nan, np.float32)
    host.conv3x3_backward_input(dy, w, dx)
    return dx


def run_backward_params(x, dy):
    dw = np.full((dy.shape[1], x.shape[1], 3, 3), np.nan, np.float32)
    db = np.full(dy.shape[1], np.nan, np.float32)
    host.conv3x3_backward_params(x, dy, dw, db)
    return dw, db


def random_case(seed, shape):
    """x, w, b, dy (float32, standard normal) for shape (N, C, K, OH, OW)."""
    N, C, K, OH, OW = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, OH + 2, OW + 2), dtype=np.float32)
    w = rng.standard_normal((K, C, 3, 3), dtype=np.float32)
    b = rng.standard_normal(K, dtype=np.float32)
    dy = rng.standard_normal((N, K, OH, OW), dtype=np.float32)
    return x, w, b, dy


# --- shapes ---------------------------------------------------------------------------------------
# Channel counts on both sides of every tile edge (4 and 8 filters per tile, 16 channels per
# weight-gradient task), and anything from 1 to 40. Output rows from 1 to 40 pixels: the
# vectors are 4, 8 or 16 floats and the forward's tile 4 (8 on ARM), 16 or 32 (tile_geometry()).
channels = st.one_of(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33]), st.integers(1, 40))


@st.composite
def conv_shapes(draw):
    """(N, C, K, OH, OW)."""
    return (draw(st.integers(1, 3)), draw(channels), draw(channels), draw(st.integers(1, 12)),
            draw(st.integers(1, 40)))


# Explicit shapes (N, C, K, OH, OW) for the paths a random draw may miss.
EDGE_SHAPES = [
    (1, 1, 1, 1, 1),     # 1x1 output, one channel, one filter: the scalar path
    (1, 1, 2, 5, 5),     # C = 1, K = 2 (the U-Net's head has K = 2; its first layer C = 1)
    (3, 2, 3, 1, 7),     # N > 1, a single output row, odd sizes
    (2, 3, 5, 4, 1),     # one output column: every wide row is mostly dropped columns
    (1, 4, 9, 3, 30),    # K = 9: a tile of 8 filters plus one; rows of 30 (the U-Net's bottom)
    (2, 33, 8, 6, 16),   # C = 33: two weight-gradient channel groups; OW = a whole vector
    (1, 5, 16, 5, 33),   # OW = 33: a partial last vector in every row (the masked step)
    (1, 3, 7, 9, 12),    # OW < 16: rows narrower than an AVX-512 vector (the buffered step)
    (2, 33, 33, 7, 13),  # wide channels, odd everything
]


def edge_examples(test):
    for i, shape in enumerate(EDGE_SHAPES):
        test = example(shape=shape, seed=i)(test)
    return test


# --- correctness ------------------------------------------------------------------------------------
@given(shape=conv_shapes(), seed=st.integers(0, 2**32 - 1))
@edge_examples
def test_forward_matches_reference(level, shape, seed):
    x, w, b, _ = random_case(seed, shape)
    y = run_forward(x, w, b)
    exact = forward_reference(x, w, b)
    abs_sum = forward_reference(np.abs(x), np.abs(w), np.abs(b))
    assert_within_sum_bound(y, exact, abs_sum, 9 * shape[1] + 1, f"forward {shape}")


@given(shape=conv_shapes(), seed=st.integers(0, 2**32 - 1))
@edge_examples
def test_backward_input_matches_reference(level, shape, seed):
    _, w, _, dy = random_case(seed, shape)
    dx = run_backward_input(dy, w)
    exact = backward_input_reference(dy, w)
    abs_sum = backward_input_reference(np.abs(dy), np.abs(w))
    assert_within_sum_bound(dx, exact, abs_sum, 9 * shape[2], f"backward input {shape}")


@given(shape=conv_shapes(), seed=st.integers(0, 2**32 - 1))
@edge_examples
@example(shape=(1, 20, 70, 5, 9), seed=2)   # 9 (AVX-512) or 18 blocks of filters, the last partial: 3 or 5 groups
def test_backward_params_matches_reference(level, shape, seed):
    x, _, _, dy = random_case(seed, shape)
    dw, db = run_backward_params(x, dy)
    exact_w, exact_b = backward_params_reference(x, dy)
    abs_w, abs_b = backward_params_reference(np.abs(x), np.abs(dy))
    N, _, _, OH, OW = shape
    assert_within_sum_bound(dw, exact_w, abs_w, N * OH * OW, f"weight gradient {shape}")
    assert_within_sum_bound(db, exact_b, abs_b, N * OH * OW, f"bias gradient {shape}")


@given(shape=conv_shapes(), seed=st.integers(0, 2**32 - 1))
@edge_examples
def test_relu_is_max_of_the_plain_output_and_zero(level, shape, seed):
    """relu=True gives max(y, 0) of the very same sums, bit for bit."""
    x, w, b, _ = random_case(seed, shape)
    plain, fused = run_forward(x, w, b), run_forward(x, w, b, relu=True)
    np.testing.assert_array_equal(fused, np.maximum(plain, 0))


def test_relu_maps_nan_to_zero(level):
    """As fmaxf on the GPU and the Numba path: a NaN sum becomes 0 after the fused ReLU."""
    x, w, b, _ = random_case(0, (1, 2, 3, 4, 40))
    x[0, 1, 2, 20] = np.nan
    plain, fused = run_forward(x, w, b), run_forward(x, w, b, relu=True)
    assert np.isnan(plain).sum() == 3 * 3 * 3
    np.testing.assert_array_equal(fused, np.where(np.isnan(plain), 0, np.maximum(plain, 0)))


# --- NaN and infinity reach exactly the outputs that read them ---------------------------------------
def window(i, n_in, n_out):
    """The output positions o in [0, n_out) whose 3-tap window (o, o+1, o+2) contains input i."""
    return np.arange(max(0, i - 2), min(n_out, i + 1))


@st.composite
def shape_and_position(draw, tensor):
    """A shape and one element of `tensor` ('x' or 'dy'), edges and corners likely."""
    N, C, K, OH, OW = draw(conv_shapes())
    if tensor == "x":
        dims = (N, C, OH + 2, OW + 2)
    else:
        dims = (N, K, OH, OW)
    pos = tuple(draw(st.one_of(st.sampled_from([0, d - 1]), st.integers(0, d - 1))) for d in dims)
    return (N, C, K, OH, OW), pos


@given(case=shape_and_position("x"), seed=st.integers(0, 2**32 - 1))
@example(case=((1, 1, 2, 5, 40), (0, 0, 3, 0)), seed=0)      # column 0: what a wide row's dropped columns read
@example(case=((1, 1, 2, 5, 40), (0, 0, 3, 41)), seed=0)     # the last column
def test_nan_in_x_reaches_exactly_the_forward_outputs_that_read_it(level, case, seed):
    shape, (n, c, i, j) = case
    x, w, b, _ = random_case(seed, shape)
    x[n, c, i, j] = np.nan
    y = run_forward(x, w, b)
    expected = np.zeros(y.shape, bool)
    expected[n][:, window(i, x.shape[2], y.shape[2])[:, None], window(j, x.shape[3], y.shape[3])] = True
    np.testing.assert_array_equal(np.isnan(y), expected)


@given(case=shape_and_position("dy"), seed=st.integers(0, 2**32 - 1))
def test_nan_in_dy_reaches_exactly_the_input_gradients_of_its_window(level, case, seed):
    shape, (n, k, i, j) = case
    _, w, _, dy = random_case(seed, shape)
    dy[n, k, i, j] = np.nan
    dx = run_backward_input(dy, w)
    expected = np.zeros(dx.shape, bool)
    expected[n, :, i:i + 3, j:j + 3] = True
    np.testing.assert_array_equal(np.isnan(dx), expected)


@given(case=shape_and_position("x"), seed=st.integers(0, 2**32 - 1))
@example(case=((1, 1, 2, 5, 40), (0, 0, 3, 0)), seed=0)
@example(case=((1, 1, 2, 5, 40), (0, 0, 3, 41)), seed=0)
@example(case=((1, 1, 2, 5, 33), (0, 0, 2, 18)), seed=0)     # inside the last, masked vector step of a row
@example(case=((1, 1, 2, 5, 12), (0, 0, 2, 13)), seed=0)     # the last column of a row narrower than a vector
def test_nan_in_x_reaches_exactly_the_weight_gradients_of_its_taps(level, case, seed):
    """dw[:, c, r, s] is NaN exactly for the taps (r, s) through which some output read x[n, c, i, j]."""
    shape, (n, c, i, j) = case
    x, _, _, dy = random_case(seed, shape)
    x[n, c, i, j] = np.nan
    dw, db = run_backward_params(x, dy)
    OH, OW = dy.shape[2], dy.shape[3]
    expected = np.zeros(dw.shape, bool)
    for r in range(3):
        for s in range(3):
            expected[:, c, r, s] = 0 <= i - r < OH and 0 <= j - s < OW
    np.testing.assert_array_equal(np.isnan(dw), expected)
    assert np.isfinite(db).all()


@given(case=shape_and_position("dy"), seed=st.integers(0, 2**32 - 1))
def test_nan_in_dy_reaches_exactly_its_filters_gradients(level, case, seed):
    shape, (n, k, i, j) = case
    x, _, _, dy = random_case(seed, shape)
    dy[n, k, i, j] = np.nan
    dw, db = run_backward_params(x, dy)
    expected = np.zeros(dw.shape, bool)
    expected[k] = True
    np.testing.assert_array_equal(np.isnan(dw), expected)
    np.testing.assert_array_equal(np.isnan(db), np.arange(len(db)) == k)


@given(case=shape_and_position("x"), seed=st.integers(0, 2**32 - 1))
@example(case=((1, 1, 2, 5, 33), (0, 0, 2, 18)), seed=0)
@example(case=((1, 1, 2, 5, 33), (0, 0, 2, 34)), seed=0)
def test_infinity_in_x_stays_infinite_in_the_weight_gradient(level, case, seed):
    """With dy > 0, x[n,c,i,j] = +inf makes exactly its taps' dw +inf, never NaN: the partial last
    step of a row masks lanes off by selection, not by multiplying them with 0 (0 * inf = NaN)."""
    shape, (n, c, i, j) = case
    x, _, _, dy = random_case(seed, shape)
    dy = np.abs(dy) + np.float32(0.1)
    x[n, c, i, j] = np.inf
    dw, _ = run_backward_params(x, dy)
    OH, OW = dy.shape[2], dy.shape[3]
    expected = np.zeros(dw.shape, bool)
    for r in range(3):
        for s in range(3):
            expected[:, c, r, s] = 0 <= i - r < OH and 0 <= j - s < OW
    assert not np.isnan(dw).any()
    np.testing.assert_array_equal(np.isposinf(dw), expected)


# --- threads ------------------------------------------------------------------------------------------
# Each op splits its work over outputs (forward, backward input: blocks of filters x rows;
# weight gradient: blocks of filters x groups of channels), and every output is summed by
# one task in an order fixed by the shapes alone: the results must be the same bits with
# any number of threads. (Not across CPUs that run different versions: the weight
# gradient's lane count is the vector width.)
THREAD_COUNTS = (1, 2, 3, 5)


@pytest.fixture
def restore_threads():
    before = host.max_threads()
    yield
    host.set_num_threads(before)


def run_all(x, w, b, dy):
    """Every op once; and the size of the thread team each op's main loop ran on."""
    y = run_forward(x, w, b, relu=True)
    teams = [host._last_team_size()]
    dx = run_backward_input(dy, w)
    teams.append(host._last_team_size())
    dw, db = run_backward_params(x, dy)
    teams.append(host._last_team_size())
    return (y, dx, dw, db), teams


def assert_same_bits_with_any_thread_count(ops, what):
    """ops: [(name, call)], a call returning an array or a tuple of them. Each runs with every
    team of THREAD_COUNTS, must have used all of it, and must give the bits it gave on one thread."""
    results = {}
    for threads in THREAD_COUNTS:
        host.set_num_threads(threads)
        for name, call in ops:
            out = call()
            results[threads, name] = out if isinstance(out, tuple) else (out,)
            assert host._last_team_size() == threads, f"{what} {name} ran on {host._last_team_size()} of {threads} threads"
    for threads in THREAD_COUNTS[1:]:
        for name, _ in ops:
            for one, many in zip(results[1, name], results[threads, name]):
                np.testing.assert_array_equal(many, one, err_msg=f"{what} {name}: {threads} threads vs 1")


# (N, C, K, OH, OW): every op >= 2**21 multiply-adds, so each runs in parallel
# (1, 20, 70, ...): the weight gradient splits its 9 or 18 blocks of filters into groups of
# at most 4, more of them for more threads: the sums must not notice.
@pytest.mark.parametrize("shape", [(2, 8, 24, 38, 38), (1, 20, 9, 40, 45), (3, 3, 40, 14, 61), (1, 20, 70, 12, 20)])
def test_results_do_not_depend_on_the_number_of_threads(level, shape, restore_threads):
    x, w, b, dy = random_case(7, shape)
    assert_same_bits_with_any_thread_count([("forward", lambda: run_forward(x, w, b, relu=True)),
                                            ("backward input", lambda: run_backward_input(dy, w)),
                                            ("weight gradient", lambda: run_backward_params(x, dy))], f"{shape}")


def test_fma_versions_give_the_same_bits():
    """The AVX-512 and AVX2 versions sum every output of the forward and the backward input in
    the same order, one FMA per product, whatever their tiles: the same bits. (Not the weight
    gradient, whose lane count is the vector width; the x86 baseline has no FMA.)"""
    if not (host._cpu_supports("avx512") and host._cpu_supports("avx2")):
        pytest.skip("this CPU cannot run both the avx512 and the avx2 version")
    try:
        for shape in [(2, 5, 9, 7, 40), (1, 3, 17, 2, 13), (1, 20, 8, 31, 33)]:
            x, w, b, dy = random_case(3, shape)
            results = {}
            for name in ("avx512", "avx2"):
                host._set_simd_level(name)
                results[name] = run_forward(x, w, b, relu=True), run_backward_input(dy, w)
            for one, other in zip(results["avx512"], results["avx2"]):
                np.testing.assert_array_equal(one, other, err_msg=str(shape))
    finally:
        host._set_simd_level(BEST_LEVEL)


def test_small_ops_run_on_the_calling_thread(restore_threads):
    """Below ~2M multiply-adds an op does not wake the thread team (it would cost more than it saves)."""
    host.set_num_threads(2)
    x, w, b, dy = random_case(1, (1, 2, 2, 8, 8))
    assert run_all(x, w, b, dy)[1] == [1, 1, 1]


def expected_scratch_bytes(shape, threads):
    """What each op may hold besides its arguments, from the documented tile geometry:
    (forward, backward input, backward params) in bytes."""
    N, C, K, OH, OW = shape
    g = host.tile_geometry()
    KB, KBw, L = g["forward_filters"], g["wgrad_filters"], g["wgrad_lanes"]
    packed = lambda filters, channels: -(-filters // KB) * KB * channels * 9   # noqa: E731
    forward = packed(K, C)
    # one band of padded dy per thread: the rows of a task plus 2, every channel (a task: up
    # to kTaskOutputs = 2048 wide outputs in conv2d.cpp, on rows OW + 4 wide, the OH + 2 rows
    # of dx in groups of equal rows); then the filters, a zero bias
    groups = -(-(OH + 2) // max(1, min(OH + 2, -(-2048 // (OW + 4)))))
    rows = -(-(OH + 2) // groups)
    backward_input = threads * K * (rows + 2) * (OW + 4) + packed(C, K) + C
    # the weight gradient: a zero row of dy, and per thread its totals (a task's blocks of
    # filters: at most kWgradTaskKblocks = 4, split further only until every thread has a task
    # among the equal groups of up to 32 channels) and a band of dy on rows rounded up to
    # whole vectors (kWgradOutputs = 1024 outputs), 16 floats for alignment
    kblocks, cgroups = -(-K // KBw), -(-C // 32)
    channels = -(-C // cgroups)
    kgroups = min(kblocks, max(-(-kblocks // 4), -(-threads // cgroups)))
    task_kblocks = -(-kblocks // kgroups)
    band = KBw * max(1, min(OH, -(-1024 // OW))) * -(-OW // L) * L
    backward_params = OW + threads * (task_kblocks * channels * 3 * KBw * 3 * L + band + 16)
    return tuple(4 * n for n in (forward, backward_input, backward_params))


@pytest.mark.parametrize("shape", [(2, 20, 9, 40, 45), (1, 3, 40, 14, 61)])
def test_scratch_memory_is_the_documented_buffers_and_no_more(level, shape, restore_threads):
    """Bounded scratch: packed filters, the backward input's bands of padded dy and the
    weight gradient's totals once per thread (not once per task, nor growing with the image)."""
    host.set_num_threads(2)
    x, w, b, dy = random_case(11, shape)
    held = []
    for op in (lambda: run_forward(x, w, b), lambda: run_backward_input(dy, w), lambda: run_backward_params(x, dy)):
        op()
        held.append(host._scratch_peak_bytes())
    assert tuple(held) == expected_scratch_bytes(shape, 2)
    taller = (shape[0], shape[1], shape[2], 4 * shape[3], shape[4])   # a planted whole-image buffer would grow
    x, w, b, dy = random_case(11, taller)
    run_backward_input(dy, w)
    assert host._scratch_peak_bytes() == expected_scratch_bytes(taller, 2)[1]
    run_backward_params(x, dy)
    assert host._scratch_peak_bytes() == expected_scratch_bytes(taller, 2)[2]


def test_fma_peak_is_a_finite_positive_rate_in_every_version(level):
    """The FMA loop runs in each version and reports FLOPs over a measured time (its speed is
    benchmarks.conv2d_cpu's business, not a test's)."""
    rate = host.fma_peak_gflops(10**5)
    assert math.isfinite(rate) and rate > 0, rate
    with pytest.raises(ValueError, match="fma_peak_gflops: iterations must be >= 1, got 0"):
        host.fma_peak_gflops(0)


def test_set_num_threads_refuses_zero():
    with pytest.raises(ValueError, match="n must be >= 1"):
        host.set_num_threads(0)


# --- Winograd F(4x4, 3x3) (winograd=True) --------------------------------------------------------------
# The same three ops with 4x fewer multiplies. Its rounding error is bounded by the
# analysis of tests/test_conv2d.py (the computation run on absolute values, through the
# transforms), not by the direct sum's.
from test_conv2d import (WINOGRAD_A_T, WINOGRAD_B_T, WINOGRAD_G, winograd_bounds,  # noqa: E402
                         winograd_forward_scale)


def winograd_ops(x, w, b, dy, relu=False):
    """[(name, call)] for the three ops by Winograd, each writing into outputs prefilled with NaN."""
    def forward():
        y = np.full((x.shape[0], w.shape[0], x.shape[2] - 2, x.shape[3] - 2), np.nan, np.float32)
        host.conv3x3_forward(x, w, b, y, relu, winograd=True)
        return y

    def backward_input():
        dx = np.full(x.shape, np.nan, np.float32)
        host.conv3x3_backward_input(dy, w, dx, winograd=True)
        return dx

    def backward_params():
        dw, db = np.full(w.shape, np.nan, np.float32), np.full(w.shape[0], np.nan, np.float32)
        host.conv3x3_backward_params(x, dy, dw, db, winograd=True)
        return dw, db
    return [("forward", forward), ("backward input", backward_input), ("weight gradient", backward_params)]


def run_winograd(x, w, b, dy, relu=False):
    """(y, dx, dw, db) by Winograd."""
    (_, forward), (_, backward_input), (_, backward_params) = winograd_ops(x, w, b, dy, relu)
    return (forward(), backward_input()) + backward_params()


def assert_winograd_within_bound(shape, x, w, b, dy, y, dx, dw, db):
    """Each Winograd result within gamma_k of the naive reference, k and the scale from the
    error analysis of tests/test_conv2d.py (db: a plain sum, the direct bound)."""
    N, C, K, OH, OW = shape
    (y_scale, y_terms), (dx_scale, dx_terms), (dw_scale, dw_terms) = winograd_bounds(x, w, b, dy)
    assert_within_sum_bound(y, forward_reference(x, w, b), y_scale, y_terms, f"Winograd forward {shape}")
    assert_within_sum_bound(dx, backward_input_reference(dy, w), dx_scale, dx_terms, f"Winograd backward input {shape}")
    (exact_w, exact_b), (_, abs_b) = backward_params_reference(x, dy), backward_params_reference(abs(x), abs(dy))
    assert_within_sum_bound(dw, exact_w, dw_scale, dw_terms, f"Winograd weight gradient {shape}")
    assert_within_sum_bound(db, exact_b, abs_b, N * OH * OW, f"Winograd bias gradient {shape}")


@given(shape=conv_shapes(), seed=st.integers(0, 2**32 - 1))
@edge_examples
@example(shape=(1, 20, 70, 5, 9), seed=2)   # 9 or 18 blocks of filters, the last partial; odd output
def test_winograd_matches_reference(level, shape, seed):
    x, w, b, dy = random_case(seed, shape)
    assert_winograd_within_bound(shape, x, w, b, dy, *run_winograd(x, w, b, dy))


def test_winograd_is_its_documented_matrices(level):
    """One tile, one channel, one filter: the kernels compute A^T [(G g G^T) * (B^T d B)] A and
    G^T [(A dY A^T) * (B^T d B)] G with Lavin and Gray's matrices (tests/test_conv2d.py's,
    written from the paper). G's sixths and 24ths are not exact in float32, so to the error
    bound of those formulas; a wrong entry of any matrix moves a result by ~its scale."""
    B_T, G, A_T = WINOGRAD_B_T, WINOGRAD_G, WINOGRAD_A_T
    rng = np.random.default_rng(5)
    d, g, dY = (rng.integers(-8, 9, shape).astype(np.float32) for shape in ((1, 1, 6, 6), (1, 1, 3, 3), (1, 1, 4, 4)))
    y, _, dw, _ = run_winograd(d, g, np.zeros(1, np.float32), dY)
    V, absV = B_T @ d[0, 0] @ B_T.T, abs(B_T) @ abs(d[0, 0]) @ abs(B_T.T)
    y_exact = A_T @ ((G @ g[0, 0] @ G.T) * V) @ A_T.T
    y_scale = abs(A_T) @ ((abs(G) @ abs(g[0, 0]) @ abs(G.T)) * absV) @ abs(A_T.T)
    assert_within_sum_bound(y[0, 0], y_exact, y_scale, 21, "one tile's forward")
    dw_exact = G.T @ ((A_T.T @ dY[0, 0] @ A_T) * V) @ G
    dw_scale = abs(G.T) @ ((abs(A_T.T) @ abs(dY[0, 0]) @ abs(A_T)) * absV) @ abs(G)
    assert_within_sum_bound(dw[0, 0], dw_exact, dw_scale, 21, "one tile's weight gradient")


def test_winograd_relu_is_max_of_the_plain_output_and_zero(level):
    x, w, b, dy = random_case(4, (2, 5, 7, 9, 11))
    x[0, 1, 3, 3] = np.nan
    plain, fused = run_winograd(x, w, b, dy)[0], run_winograd(x, w, b, dy, relu=True)[0]
    assert np.isnan(plain).any()
    np.testing.assert_array_equal(fused, np.where(np.isnan(plain), 0, np.maximum(plain, 0)))


def winograd_reach(at, shape, w):
    """The outputs a NaN at position ``at`` of an input of ``shape`` reaches through Winograd's
    transforms with the filters w: those whose absolute-value computation (tests/test_conv2d.py's
    error scale) it feeds. (Each transform reads exactly the nonzero entries of its matrix, and a
    NaN times anything but zero is NaN; random filters have no zero in G g G^T.)"""
    indicator = np.zeros(shape)
    indicator[at] = 1
    return winograd_forward_scale(indicator, np.abs(w)) > 0


@given(case=shape_and_position("x"), seed=st.integers(0, 2**32 - 1))
def test_winograd_nan_in_x_reaches_exactly_the_outputs_that_read_it(level, case, seed):
    """Output p of a tile uses the transformed rows u with A^T[p, u] != 0, which use the block's
    input rows r with B^T[u, r] != 0: for F(4x4, 3x3) more than the 3x3 window (output row 0
    reads rows 0..4), so a NaN in x spoils its window and the rest of the tiles whose 6x6
    blocks hold it, as winograd_reach works out; the input gradient not at all; and (every
    tap of dw being made from all 36 sums) some weight gradient of its channel, of every
    filter, and of no other channel."""
    shape, (n, c, i, j) = case
    x, w, b, dy = random_case(seed, shape)
    x[n, c, i, j] = np.nan
    y, dx, dw, db = run_winograd(x, w, b, dy)
    direct = np.zeros(y.shape, bool)
    direct[n][:, window(i, x.shape[2], y.shape[2])[:, None], window(j, x.shape[3], y.shape[3])] = True
    reach = winograd_reach((n, c, i, j), x.shape, w)
    assert (reach >= direct).all()   # the oracle itself: never less than the direct sum's reach
    np.testing.assert_array_equal(np.isnan(y), reach)
    assert np.isfinite(dx).all() and np.isfinite(db).all()
    np.testing.assert_array_equal(np.isnan(dw).any(axis=(2, 3)), np.broadcast_to(np.arange(shape[1]) == c, dw.shape[:2]))


@given(case=shape_and_position("dy"), seed=st.integers(0, 2**32 - 1))
def test_winograd_nan_in_dy_reaches_its_window_and_tiles_and_its_filter(level, case, seed):
    """dx is the forward on dy padded by 2: a NaN reaches its 3x3 window and the rest of its tiles."""
    shape, (n, k, i, j) = case
    x, w, b, dy = random_case(seed, shape)
    dy[n, k, i, j] = np.nan
    _, dx, dw, db = run_winograd(x, w, b, dy)
    direct = np.zeros(dx.shape, bool)
    direct[n, :, i:i + 3, j:j + 3] = True
    padded_shape = dy.shape[:2] + (dy.shape[2] + 4, dy.shape[3] + 4)
    reach = winograd_reach((n, k, i + 2, j + 2), padded_shape, w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    assert (reach >= direct).all()
    np.testing.assert_array_equal(np.isnan(dx), reach)
    np.testing.assert_array_equal(np.isnan(dw).any(axis=(2, 3)), np.broadcast_to((np.arange(shape[2]) == k)[:, None],
                                                                                  dw.shape[:2]))
    np.testing.assert_array_equal(np.isnan(db), np.arange(shape[2]) == k)


# (N, C, K, OH, OW): each op's products >= 2**21 multiply-adds (36 K C x the tiles rounded up
# to blocks), so they run in parallel; odd sizes, filters and channels off the tiles.
@pytest.mark.parametrize("shape", [(2, 32, 40, 38, 38), (1, 64, 70, 12, 20), (1, 65, 33, 31, 29)])
def test_winograd_results_do_not_depend_on_the_number_of_threads(level, shape, restore_threads):
    x, w, b, dy = random_case(9, shape)
    assert_same_bits_with_any_thread_count(winograd_ops(x, w, b, dy, relu=True), f"Winograd {shape}")


WINOGRAD_CHUNK_BYTES = 32 * 1024 * 1024   # kWinogradChunkBytes in conv2d.cpp


@contextmanager
def winograd_chunk_budget(budget):
    """The Winograd chunk budget set to ``budget`` bytes (host._set_winograd_chunk_bytes), then restored."""
    before = host._set_winograd_chunk_bytes(budget)
    try:
        yield
    finally:
        host._set_winograd_chunk_bytes(before)


def winograd_scratch_bytes(shape, budget=WINOGRAD_CHUNK_BYTES):
    """(forward, backward input, backward params) scratch of the Winograd ops, from conv2d.cpp's
    documented buffers: the transformed filters, and one chunk's transformed input and products
    (36 (C + K) floats a tile, whole rows of tiles within the budget, at least a block of
    tiles), each of the 36 planes a cache line (16 floats) longer; the backward input also
    holds dy padded by 2 and a zero bias. The weight gradient: V (whole blocks of channels), D
    (whole blocks of filters), for a chunk of whole rows of tiles, and the sums X."""
    N, C, K, OH, OW = shape
    g = host.tile_geometry()
    KB, L = g["forward_filters"], g["forward_pixels"]
    plane = lambda floats: 36 * (floats + 16)   # noqa: E731
    whole = lambda n, block: -(-n // block) * block   # noqa: E731

    def chunk_tiles(C, K, OH, OW):
        per_row, rows = -(-OW // 4), -(-OH // 4)
        tiles = max(L, budget // (36 * (C + K) * 4))
        return max(1, min(rows, tiles // per_row)) * per_row

    def forward(C, K, OH, OW):
        T = whole(chunk_tiles(C, K, OH, OW), L)
        return plane(whole(K, KB) * C) + plane(T * C) + plane(K * T)

    T = chunk_tiles(C, K, OH, OW)
    params = plane(whole(C, L) * T) + plane(whole(K, KB) * T) + plane(K * C)
    backward_input = forward(K, C, OH + 2, OW + 2) + C + N * K * (OH + 4) * (OW + 4)
    return tuple(4 * n for n in (forward(C, K, OH, OW), backward_input, params))


def winograd_scratch_held(x, w, b, dy):
    """The scratch peak of each Winograd op, in bytes."""
    held = []
    N, K, OH, OW = dy.shape
    for op in (lambda: host.conv3x3_forward(x, w, b, np.empty(dy.shape, np.float32), winograd=True),
               lambda: host.conv3x3_backward_input(dy, w, np.empty_like(x), winograd=True),
               lambda: host.conv3x3_backward_params(x, dy, np.empty_like(w), np.empty_like(b), winograd=True)):
        op()
        held.append(host._scratch_peak_bytes())
    return tuple(held)


@pytest.mark.parametrize("shape", [(2, 20, 9, 40, 45), (1, 3, 40, 14, 61), (1, 256, 256, 128, 128)])
def test_winograd_scratch_is_the_documented_buffers(shape):
    """Chunks bound the transformed tiles (the 256-channel layer at 128 x 128 takes 3 chunks)."""
    x, w, b, dy = random_case(13, shape)
    default = host._set_winograd_chunk_bytes(WINOGRAD_CHUNK_BYTES)
    host._set_winograd_chunk_bytes(default)
    assert default == WINOGRAD_CHUNK_BYTES, "the module's chunk budget is not the documented one"
    assert winograd_scratch_held(x, w, b, dy) == winograd_scratch_bytes(shape)
    with winograd_chunk_budget(1 << 16):
        assert winograd_scratch_held(x, w, b, dy) == winograd_scratch_bytes(shape, 1 << 16)


@given(shape=conv_shapes(), budget=st.integers(1, 1 << 16), seed=st.integers(0, 2**32 - 1))
@example(shape=(2, 33, 9, 12, 40), budget=1, seed=0)   # one row of tiles per chunk, two images
def test_winograd_chunks_give_the_reference(level, shape, budget, seed):
    """Small budgets split small layers into chunks of a few rows of tiles: each chunk's tiles
    land where they belong and the weight gradient sums them all."""
    x, w, b, dy = random_case(seed, shape)
    with winograd_chunk_budget(budget):
        results = run_winograd(x, w, b, dy)
    assert_winograd_within_bound(shape, x, w, b, dy, *results)


# --- the up-convolution ----------------------------------------------------------------------------------
# Its references are tests/test_upconv.py's (one reference per op): float64 loops over the
# 2x2 output blocks, returning the sums and the sums of |terms| for the error bound.
from test_upconv import backward_input_reference as upconv_input_reference  # noqa: E402
from test_upconv import backward_params_reference as upconv_params_reference  # noqa: E402
from test_upconv import upconv_reference  # noqa: E402


@st.composite
def upconv_shapes(draw):
    """(N, C, K, H, W) of the input x: channels on both sides of every tile edge (the forward's
    product rows are 4K, in blocks of 4 or 8), rows from 1 pixel to past two tiles."""
    return (draw(st.integers(1, 3)), draw(channels), draw(channels), draw(st.integers(1, 9)),
            draw(st.integers(1, 40)))


UPCONV_EDGES = [
    (1, 1, 1, 1, 1),      # one pixel: the one-at-a-time path
    (2, 3, 2, 1, 31),     # a span one pixel short of an AVX-512 tile
    (1, 5, 3, 2, 16),     # two rows of 16: the tile crosses the end of a row (AVX-512)
    (1, 9, 5, 7, 33),     # odd everything; K = 5: a partial block of product rows
    (3, 17, 9, 4, 40),    # N > 1, rows longer than a tile, the last tile moved back
    (1, 64, 32, 28, 28),  # a base-64 bottom layer's shape, smaller
    (1, 13, 3, 3, 5),     # weight gradient: 13 channels = 2 tiles of 6 + 1 (AVX-512), a span of 15 < 16 pixels
    (2, 70, 17, 2, 20),   # weight gradient: 17 filters, two groups of filters
    (1, 300, 5, 30, 40),  # weight gradient: 300 channels x 26 rows of 40 pass 1 MiB: two groups of channels
]


def upconv_case(seed, shape):
    rng = np.random.default_rng(seed)
    N, C, K, H, W = shape
    return (rng.standard_normal((N, C, H, W), dtype=np.float32), rng.standard_normal((C, K, 2, 2), dtype=np.float32),
            rng.standard_normal(K, dtype=np.float32), rng.standard_normal((N, K, 2 * H, 2 * W), dtype=np.float32))


def run_upconv(x, w, b):
    y = np.full((x.shape[0], w.shape[1], 2 * x.shape[2], 2 * x.shape[3]), np.nan, np.float32)
    host.upconv2x2_forward(x, w, b, y)
    return y


def run_upconv_input(dy, w):
    dx = np.full((dy.shape[0], w.shape[0], dy.shape[2] // 2, dy.shape[3] // 2), np.nan, np.float32)
    host.upconv2x2_backward_input(dy, w, dx)
    return dx


def run_upconv_params(x, dy):
    dw = np.full((x.shape[1], dy.shape[1], 2, 2), np.nan, np.float32)
    db = np.full(dy.shape[1], np.nan, np.float32)
    host.upconv2x2_backward_params(x, dy, dw, db)
    return dw, db


def assert_upconv_within_bound(got, exact_and_abs, terms, what):
    exact, abs_sum = exact_and_abs
    assert_within_sum_bound(got, exact, abs_sum, terms, what)


def upconv_edge_examples(test):
    for i, shape in enumerate(UPCONV_EDGES):
        test = example(shape=shape, seed=i)(test)
    return test


@given(shape=upconv_shapes(), seed=st.integers(0, 2**32 - 1))
@upconv_edge_examples
def test_upconv_matches_reference(level, shape, seed):
    x, w, b, dy = upconv_case(seed, shape)
    N, C, K, H, W = shape
    assert_upconv_within_bound(run_upconv(x, w, b), upconv_reference(x, w, b), C + 1, f"up-convolution {shape}")
    assert_upconv_within_bound(run_upconv_input(dy, w), upconv_input_reference(dy, w), 4 * K,
                               f"up-convolution backward input {shape}")
    dw, db = run_upconv_params(x, dy)
    dw_exact, dw_abs, db_exact, db_abs = upconv_params_reference(x, dy)
    assert_within_sum_bound(dw, dw_exact, dw_abs, N * H * W, f"up-convolution weight gradient {shape}")
    assert_within_sum_bound(db, db_exact, db_abs, 4 * N * H * W, f"up-convolution bias gradient {shape}")


@pytest.mark.parametrize("shape", [(1, 5, 3, 4, 37), (2, 3, 9, 1, 5)])
def test_upconv_nan_reaches_exactly_its_outputs(level, shape):
    """A NaN in x reaches the 2x2 block of every output channel above it and the weight gradient
    of its channel, nothing else; a NaN in dy reaches the input pixel under its block in every
    channel, and the weight and bias gradients of its filter's tap."""
    x, w, b, dy = upconv_case(5, shape)
    N, C, K, H, W = shape
    n, c, i, j = N - 1, C // 2, H - 1, W // 2
    x[n, c, i, j] = np.nan
    expected = np.zeros((N, K, 2 * H, 2 * W), bool)
    expected[n, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2] = True
    np.testing.assert_array_equal(np.isnan(run_upconv(x, w, b)), expected)
    dw, db = run_upconv_params(x, dy)
    expected = np.zeros((C, K, 2, 2), bool)
    expected[c] = True
    np.testing.assert_array_equal(np.isnan(dw), expected)
    assert not np.isnan(db).any()
    x[n, c, i, j] = 0.0
    dy[n, K - 1, 2 * i + 1, 2 * j] = np.nan
    expected = np.zeros((N, C, H, W), bool)
    expected[n, :, i, j] = True
    np.testing.assert_array_equal(np.isnan(run_upconv_input(dy, w)), expected)
    dw, db = run_upconv_params(x, dy)
    expected = np.zeros((C, K, 2, 2), bool)
    expected[:, K - 1, 1, 0] = True
    np.testing.assert_array_equal(np.isnan(dw), expected)
    np.testing.assert_array_equal(np.isnan(db), np.arange(K) == K - 1)


@pytest.mark.parametrize("shape", [(2, 24, 12, 30, 37), (1, 40, 70, 9, 61), (1, 300, 5, 30, 40)])
def test_upconv_results_do_not_depend_on_the_number_of_threads(level, shape, restore_threads):
    """Each output is summed by one task, over its product's rows in order: the same bits with any team."""
    x, w, b, dy = upconv_case(9, shape)
    assert_same_bits_with_any_thread_count([("forward", lambda: run_upconv(x, w, b)),
                                            ("backward input", lambda: run_upconv_input(dy, w)),
                                            ("weight gradient", lambda: run_upconv_params(x, dy))],
                                           f"up-convolution {shape}")


@pytest.mark.parametrize("shape", [(2, 20, 9, 10, 45), (1, 3, 40, 7, 61), (1, 70, 33, 5, 12)])
def test_upconv_scratch_is_the_documented_buffers(shape, restore_threads):
    """The packed weights (whole blocks of product rows), and for the backward input one band of
    dY per thread: 4K rows x (a task's input rows, ~2048 pixels in equal groups) x W; the
    weight gradient's per-thread totals and band."""
    host.set_num_threads(2)
    x, w, b, dy = upconv_case(3, shape)
    N, C, K, H, W = shape
    geometry = host.tile_geometry()
    KB = geometry["forward_filters"]
    run_upconv(x, w, b)
    assert host._scratch_peak_bytes() == 4 * (-(-4 * K // KB) * KB * C)
    groups = -(-H // max(1, min(H, -(-2048 // W))))
    rows = -(-H // groups)
    run_upconv_input(dy, w)
    assert host._scratch_peak_bytes() == 4 * (-(-C // KB) * KB * 4 * K + 2 * 4 * K * rows * W)
    # the weight gradient: zeros for a band of x (~1024 pixels' rows), and per thread its totals
    # (a task's channels: equal groups of whole tiles whose band of x fits 1 MiB; its filters:
    # as many as fit 256 KiB of totals, split further only until every thread has a task) and
    # a band of dY (4 taps x the band's pixels, rounded up to a whole vector)
    CB, L = geometry["upconv_grad_channels"], geometry["wgrad_lanes"]
    rows = max(1, min(H, -(-1024 // W)))
    cgroups = -(-C // (max(1, (1 << 20) // (CB * rows * W * 4)) * CB))
    channels = -(-(-(-C // cgroups)) // CB) * CB
    per_filter = min(C, channels) * 4 * L * 4
    kgroups = min(K, max(-(-K // max(1, (256 << 10) // per_filter)), -(-2 // cgroups)))
    task_k = -(-K // kgroups)
    band = 4 * -(-(rows * W) // L) * L
    run_upconv_params(x, dy)
    assert host._scratch_peak_bytes() == 4 * (rows * W + 2 * (task_k * min(C, channels) * 4 * L + band + 16))


# --- argument checks ------------------------------------------------------------------------------------
def good_forward_args():
    x, w, b, _ = random_case(0, (2, 3, 4, 5, 6))
    return dict(x=x, w=w, b=b, y=np.zeros((2, 4, 5, 6), np.float32))


@pytest.mark.parametrize("change, message", [
    (dict(x=np.zeros((2, 3, 7, 8))), r"conv3x3_forward: x has dtype float64; expected float32"),
    (dict(w=np.zeros((4, 3, 3, 3), np.float16)), r"w has dtype float16; expected float32"),
    (dict(y=np.zeros((2, 4, 5, 6), np.float64)), r"y has dtype float64"),
    (dict(b=np.zeros(4, ">f4")), r"b has dtype >f4; expected float32"),
    (dict(x=np.zeros((3, 7, 8), np.float32)), r"x must be \[N, C, H, W\] \(4-D\), got shape \(3, 7, 8\)"),
    (dict(w=np.zeros((4, 3, 5, 5), np.float32)), r"w has shape \(4, 3, 5, 5\); expected \(4, 3, 3, 3\)"),
    (dict(w=np.zeros((4, 2, 3, 3), np.float32)), r"w has shape \(4, 2, 3, 3\); expected \(4, 3, 3, 3\)"),
    (dict(b=np.zeros(5, np.float32)), r"b has shape \(5,\); expected \(4,\)"),
    (dict(y=np.zeros((2, 4, 6, 6), np.float32)), r"y has shape \(2, 4, 6, 6\); expected \(2, 4, 5, 6\) = \[N, K, H-2, W-2\]"),
    (dict(x=np.zeros((2, 3, 2, 8), np.float32)), r"x \(2, 3, 2, 8\) is smaller than the 3x3 filter"),
    (dict(x=np.zeros((0, 3, 7, 8), np.float32)), r"x \(0, 3, 7, 8\) is empty \(N = 0\)"),
    (dict(x=np.zeros((2, 3, 8, 7), np.float32).transpose(0, 1, 3, 2)), r"x \(2, 3, 7, 8\) must be C-contiguous"),
])
def test_forward_refuses_bad_arguments(change, message):
    args = good_forward_args() | change
    with pytest.raises(ValueError, match=message):
        host.conv3x3_forward(args["x"], args["w"], args["b"], args["y"], False)


def test_not_an_array_is_a_type_error():
    args = good_forward_args()
    with pytest.raises(TypeError, match="conv3x3_forward: x must be a NumPy array, got list"):
        host.conv3x3_forward(args["x"].tolist(), args["w"], args["b"], args["y"])


def test_outputs_must_be_writable_and_separate():
    args = good_forward_args()
    args["y"].setflags(write=False)
    with pytest.raises(ValueError, match="y is read-only"):
        host.conv3x3_forward(**args)
    x = np.zeros((1, 4, 7, 7), np.float32)
    with pytest.raises(ValueError, match="y overlaps x in memory"):
        host.conv3x3_forward(x, np.zeros((4, 4, 3, 3), np.float32), np.zeros(4, np.float32),
                             x.reshape(-1)[:100].reshape(1, 4, 5, 5))
    dw = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="dw overlaps db in memory"):
        host.conv3x3_backward_params(np.zeros((1, 3, 7, 7), np.float32), np.zeros((1, 4, 5, 5), np.float32),
                                     dw, dw.reshape(-1)[:4])


@pytest.mark.parametrize("call, message", [
    (lambda: host.conv3x3_backward_input(np.zeros((1, 4, 5, 5), np.float32), np.zeros((3, 2, 3, 3), np.float32),
                                         np.zeros((1, 2, 7, 7), np.float32)),
     r"conv3x3_backward_input: w has shape \(3, 2, 3, 3\); expected \(4, 2, 3, 3\)"),
    (lambda: host.conv3x3_backward_input(np.zeros((1, 4, 5, 5), np.float32), np.zeros((4, 2, 3, 3), np.float32),
                                         np.zeros((1, 2, 5, 5), np.float32)),
     r"dx has shape \(1, 2, 5, 5\); expected \(1, 2, 7, 7\) = \[N, C, OH\+2, OW\+2\]"),
    (lambda: host.conv3x3_backward_params(np.zeros((1, 3, 7, 7), np.float32), np.zeros((2, 4, 5, 5), np.float32),
                                          np.zeros((4, 3, 3, 3), np.float32), np.zeros(4, np.float32)),
     r"conv3x3_backward_params: dy has shape \(2, 4, 5, 5\); expected \(1, 4, 5, 5\)"),
    (lambda: host.conv3x3_backward_params(np.zeros((1, 3, 7, 7), np.float32), np.zeros((1, 4, 5, 5), np.float32),
                                          np.zeros((4, 3, 3, 3), np.float32), np.zeros(4, np.float64)),
     r"db has dtype float64; expected float32"),
    (lambda: host.upconv2x2_forward(np.zeros((1, 3, 4, 5), np.float32), np.zeros((2, 4, 2, 2), np.float32),
                                    np.zeros(4, np.float32), np.zeros((1, 4, 8, 10), np.float32)),
     r"upconv2x2_forward: w has shape \(2, 4, 2, 2\); expected \(3, 4, 2, 2\)"),
    (lambda: host.upconv2x2_forward(np.zeros((1, 3, 4, 5), np.float32), np.zeros((3, 4, 2, 2), np.float32),
                                    np.zeros(4, np.float32), np.zeros((1, 4, 8, 9), np.float32)),
     r"y has shape \(1, 4, 8, 9\); expected \(1, 4, 8, 10\) = \[N, K, 2H, 2W\]"),
    (lambda: host.upconv2x2_forward(np.zeros((1, 3, 4, 5)), np.zeros((3, 4, 2, 2), np.float32),
                                    np.zeros(4, np.float32), np.zeros((1, 4, 8, 10), np.float32)),
     r"upconv2x2_forward: x has dtype float64; expected float32"),
    (lambda: host.upconv2x2_backward_input(np.zeros((1, 4, 8, 9), np.float32), np.zeros((3, 4, 2, 2), np.float32),
                                           np.zeros((1, 3, 4, 4), np.float32)),
     r"upconv2x2_backward_input: dy \(1, 4, 8, 9\) must have an even height and width"),
    (lambda: host.upconv2x2_backward_input(np.zeros((1, 4, 8, 10), np.float32), np.zeros((3, 5, 2, 2), np.float32),
                                           np.zeros((1, 3, 4, 5), np.float32)),
     r"w has shape \(3, 5, 2, 2\); expected \(3, 4, 2, 2\)"),
    (lambda: host.upconv2x2_backward_input(np.zeros((1, 4, 8, 10), np.float32), np.zeros((3, 4, 2, 2), np.float32),
                                           np.zeros((1, 3, 4, 4), np.float32)),
     r"dx has shape \(1, 3, 4, 4\); expected \(1, 3, 4, 5\) = \[N, C, H, W\]"),
    (lambda: host.upconv2x2_backward_params(np.zeros((1, 3, 4, 5), np.float32), np.zeros((1, 4, 8, 9), np.float32),
                                            np.zeros((3, 4, 2, 2), np.float32), np.zeros(4, np.float32)),
     r"upconv2x2_backward_params: dy has shape \(1, 4, 8, 9\); expected \(1, 4, 8, 10\)"),
    (lambda: host.upconv2x2_backward_params(np.zeros((1, 3, 4, 5), np.float32), np.zeros((1, 4, 8, 10), np.float32),
                                            np.zeros((4, 3, 2, 2), np.float32), np.zeros(4, np.float32)),
     r"dw has shape \(4, 3, 2, 2\); expected \(3, 4, 2, 2\)"),
])
def test_other_ops_refuse_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- the build --------------------------------------------------------------------------------------------
def cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def test_simd_level_names_the_version_this_cpu_runs():
    level = BEST_LEVEL  # what simd_level() said when the module was loaded
    assert level in host.SIMD_LEVELS == ("avx512", "avx2", "generic")
    # the best version the CPU's features allow (__builtin_cpu_supports) ...
    assert level == host._simd_level_by_cpu_features()
    assert host._cpu_supports(level) and host._cpu_supports("generic")
    # ... and the one /proc/cpuinfo's flags call for, where there are any
    flags = cpu_flags()
    if flags is None or "sse2" not in flags:  # not an x86 Linux machine: nothing more to compare with
        return
    # GCC's resolver: avx512f first, then the x86-64-v3 level (AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE)
    v3 = {"avx2", "fma", "bmi1", "bmi2", "f16c", "abm", "movbe"} <= flags
    expected = "avx512" if "avx512f" in flags else "avx2" if v3 else "generic"
    assert level == expected, f"simd_level() = {level!r}, but this CPU's flags say {expected!r}"
    assert host._cpu_supports("avx512") == ("avx512f" in flags) and host._cpu_supports("avx2") == v3


def test_set_simd_level_refuses_unknown_and_unsupported_levels():
    with pytest.raises(ValueError, match="level must be 'avx512', 'avx2' or 'generic', got 'sse9'"):
        host._set_simd_level("sse9")
    for name in host.SIMD_LEVELS:
        if not host._cpu_supports(name):
            with pytest.raises(ValueError, match=f"this CPU cannot run the '{name}' version"):
                host._set_simd_level(name)
    assert host.simd_level() == BEST_LEVEL


def test_tile_geometry_is_the_documented_one():
    generic = (4, 8, 4, 4) if platform.machine().lower() in ("aarch64", "arm64") else (4, 4, 4, 4)
    documented = {"avx512": (8, 32, 8, 16), "avx2": (4, 16, 4, 8), "generic": generic}
    g = host.tile_geometry()
    assert (g["forward_filters"], g["forward_pixels"], g["wgrad_filters"], g["wgrad_lanes"]) == documented[host.simd_level()]


def test_the_module_is_newer_than_its_sources():
    """An editable install does not rebuild by itself: a stale module would test old code."""
    built = Path(host.__file__).stat().st_mtime
    stale = [str(p.relative_to(ROOT)) for p in SOURCES if p.stat().st_mtime > built]
    assert not stale, (f"{host.__file__} is older than {', '.join(stale)}: rebuild it with `pip install -e .` "
                       "(or `python setup.py build_ext --inplace`)")


def test_setup_names_what_to_install_without_a_compiler(tmp_path):
    """setup.py with no C++ compiler on PATH stops with a message that says what to install."""
    pytest.importorskip("pybind11")
    env = dict(os.environ, CXX=str(tmp_path / "no-such-g++"), CC=str(tmp_path / "no-such-gcc"))
    env.pop("LD_PRELOAD", None)
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
                           "--build-temp", str(tmp_path / "tmp")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "no C++ compiler was found" in out and "apt install g++" in out and "build-essential" in out, out
