"""The shared GEMM main loop (kernels/gemm.h, cunet/ops/gemm.py): tile shapes, split-K, TF32.

The TF32 tensor-core path is proven on the CPU through its emulation (kernels/gemm.h): the
same kernel text on PoCL, with fragments by value. These tests show that the emulation and
the tests around it would catch what can go wrong in such a kernel: a skipped rounding, a
fragment read from the wrong place, a missing barrier. Each is planted in a copy of the
kernel sources and must make a test fail.
"""
import re
import shutil

import numpy as np
import pytest

import cunet.kernels
import cunet.ops.gemm as gemm_module
from cunet.device import get_device
from cunet.ops import conv2d_forward, upconv2x2_forward
from cunet.ops.gemm import TILE_CONFIGS, split_k, tile_config
from helpers import assert_oclgrind_clean, run_under_oclgrind, skip_without_pocl, tf32


# --- host-side choices ---------------------------------------------------------------------------
def test_tile_config_picks_the_narrowest_fitting_tile():
    assert [tile_config(n).BN for n in (1, 2, 8, 9, 16, 17, 64, 1024)] == [8, 8, 8, 16, 16, 64, 64, 64]
    for cfg in TILE_CONFIGS:  # the constraints the kernels' #error lines enforce
        assert cfg.threads % cfg.BM == 0 and cfg.threads % cfg.BK == 0 and cfg.threads % cfg.BN == 0
        assert (cfg.BM * cfg.BK) % cfg.threads == 0 and (cfg.BN * cfg.BK) % cfg.threads == 0
        warps, warps_n = cfg.threads // 32, cfg.threads // 32 // cfg.warps_m
        # TF32: whole 16 x 8 mma tiles per warp, as many accumulators as the FP32 thread tile
        assert (cfg.BM // cfg.warps_m) % 16 == 0 and (cfg.BN // warps_n) % 8 == 0 and warps % cfg.warps_m == 0
        assert (cfg.BM // cfg.warps_m // 16) * (cfg.BN // warps_n // 8) * 4 == cfg.TM * cfg.TN


@pytest.mark.parametrize("pixels,rows,cols", [(1, 10, 16), (100, 10, 2), (324900, 145, 16), (324900, 577, 64),
                                              (784, 9217, 1024), (18496, 2305, 256), (38416, 128, 256)])
def test_split_k_covers_every_pixel_once(pixels, rows, cols):
    cfg = tile_config(cols)
    splits, chunk = split_k(pixels, rows, cols, cfg)
    assert chunk % cfg.BK == 0 and splits >= 1
    assert (splits - 1) * chunk < pixels <= splits * chunk              # no empty chunk, none missing
    assert splits == 1 or chunk >= gemm_module.SPLIT_MIN_CHUNK // 2     # never tiny chunks
    assert splits * rows * cols <= 2 * gemm_module.SPLIT_TARGET_BLOCKS * cfg.BM * cfg.BN or splits == 1


def test_tf32_modules_are_for_sm80_and_newer():
    cfg = TILE_CONFIGS[0]
    tf32, fp32 = (gemm_module.gemm_module("conv2d.cu", cfg, math, FILTER=3) for math in ("tf32", "fp32"))
    assert tf32.define("MATH_TF32") == 1 and tf32.define("WARPS_M") == cfg.warps_m
    assert not tf32.builds_for("sm_75") and tf32.builds_for("sm_80") and tf32.builds_for("sm_90")
    assert fp32.define("MATH_TF32") == 0 and fp32.builds_for("sm_70")
    with pytest.raises(ValueError, match="math must be one of fp32, tf32"):
        gemm_module.gemm_module("conv2d.cu", cfg, "fp16")


def test_math_choice_by_device():
    skip_without_pocl()
    assert get_device("opencl").runtime.math == "fp32"
    assert get_device("opencl", math="tf32").runtime.math == "tf32"
    with pytest.raises(ValueError, match="the cpu device computes in FP32"):
        get_device("cpu", math="tf32")
    with pytest.raises(ValueError, match="--math must be one of fp32, tf32"):
        get_device("opencl", math="bf16")


# --- TF32 rounding, bit for bit --------------------------------------------------------------------
def special_values():
    """Ties (the 13 dropped bits exactly half), just below and above, both signs, subnormals,
    the largest float (rounds up to infinity), infinities and NaN."""
    bits = []
    for base in (0x3F800000, 0x40490000, 0x00000000, 0x00400000, 0x7F000000, 0x7F7FE000):
        for low in (0x0000, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x0001, 0x17FF, 0x1800):
            bits += [base | low, 0x80000000 | base | low]
    bits += [0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001]
    return np.array(bits, np.uint32).view(np.float32)


def test_the_reference_rounding_by_hand():
    one_plus = np.array([0x3F801000, 0x3F800FFF, 0x3F803000, 0xBF801000], np.uint32).view(np.float32)
    assert tf32(one_plus).view(np.uint32).tolist() == [0x3F802000, 0x3F800000, 0x3F804000, 0xBF802000]
    big = np.array([0x7F7FFFFF], np.uint32).view(np.float32)
    assert tf32(big).view(np.uint32)[0] == 0x7F800000       # past the largest TF32 value: infinity
    assert np.isnan(tf32(np.array([np.nan], np.float32)))[0]


def test_the_kernel_rounds_to_tf32_exactly_as_the_reference(opencl_tf32_device):
    """A 1x1 convolution with one input channel and weights 1: y = tf32(x) * 1 + 0, exactly
    (up to the sign of zero: the accumulator starts at +0, and +0 + -0 is +0)."""
    device = opencl_tf32_device
    x = special_values()
    n = x.size
    image = x.reshape(1, 1, 1, n)
    w, b = np.ones((16, 1, 1, 1), np.float32), np.zeros(16, np.float32)
    y = device.to_host(conv2d_forward(device.to_device(image), device.to_device(w), device.to_device(b)))
    want = tf32(x)
    for k in range(16):
        got = y[0, k, 0]
        same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want)) | (got == 0) & (want == 0)
        assert same.all(), [(hex(a), hex(g), hex(r)) for a, g, r in
                            zip(x.view(np.uint32)[~same], got.view(np.uint32)[~same], want.view(np.uint32)[~same])]


def test_tf32_differs_from_fp32_where_it_should(opencl_device, opencl_tf32_device, rng):
    """The two math modes really run different arithmetic: results differ by about 2^-11."""
    x = rng.standard_normal((1, 32, 6, 6)).astype(np.float32)
    w, b = rng.standard_normal((64, 32, 3, 3)).astype(np.float32), np.zeros(64, np.float32)
    y32, y_tf = (d.to_host(conv2d_forward(d.to_device(x), d.to_device(w), d.to_device(b)))
                 for d in (opencl_device, opencl_tf32_device))
    relative = np.abs(y_tf - y32).max() / np.abs(y32).max()
    assert 1e-5 < relative < 1e-2, relative


# --- planted bugs: each must fail a test -----------------------------------------------------------
PLANTS = {
    # The emulation reads B's column 2q + h + 1 instead of 2q + h: a wrong fragment offset.
    "wrong fragment offset": ("gemm.h", "Bs[(r0 + k) * LDB + n0 + 2 * q + h]", "Bs[(r0 + k) * LDB + n0 + 2 * q + h + 1]"),
    # The load rounds nothing: tf32_round returns its argument.
    "skipped rounding": ("gemm.h", "return as_float((u + 0x1000u) & 0xffffe000u);", "return v;"),
    # The accumulator's row map swaps the two halves of the 16-row tile.
    "wrong accumulator row": ("gemm.h", "lane / 4 + 8 * ((e % 4) / 2)", "lane / 4 + 8 * (1 - (e % 4) / 2)"),
}


def planted_kernel_dir(tmp_path, file, old, new):
    """A copy of the kernel sources with one replacement in ``file``."""
    planted = tmp_path / "kernels"
    shutil.copytree(cunet.kernels.KERNEL_DIR, planted, ignore=shutil.ignore_patterns("__pycache__"))
    text = (planted / file).read_text()
    assert text.count(old) == 1, f"the plant's target is not unique in {file}: {old!r}"
    (planted / file).write_text(text.replace(old, new))
    return planted


def tf32_conv_and_upconv_agree_with_reference(device, rng):
    """The checks of test_conv2d / test_upconv in miniature, on the tensor-core tiles."""
    from test_conv2d import assert_within_sum_bound, forward_reference
    from test_upconv import assert_within_bound, upconv_reference

    x = rng.standard_normal((1, 5, 6, 7)).astype(np.float32)
    w, b = rng.standard_normal((17, 5, 3, 3)).astype(np.float32), rng.standard_normal(17).astype(np.float32)
    y = device.to_host(conv2d_forward(device.to_device(x), device.to_device(w), device.to_device(b)))
    xr, wr = tf32(x), tf32(w)
    assert_within_sum_bound(y, forward_reference(xr, wr, b), forward_reference(np.abs(xr), np.abs(wr), np.abs(b)),
                            5 * 9 + 1, "conv2d_forward")
    wu, bu = rng.standard_normal((5, 4, 2, 2)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    yu = device.to_host(upconv2x2_forward(device.to_device(x), device.to_device(wu), device.to_device(bu)))
    assert_within_bound(yu, *upconv_reference(tf32(x), tf32(wu), bu), terms=5)


def test_the_checks_pass_on_the_real_kernels(opencl_tf32_device, rng):
    tf32_conv_and_upconv_agree_with_reference(opencl_tf32_device, rng)


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_a_planted_bug_fails_the_checks(plant, tmp_path, monkeypatch, rng):
    skip_without_pocl()
    monkeypatch.setattr(cunet.kernels, "KERNEL_DIR", planted_kernel_dir(tmp_path, *PLANTS[plant]))
    device = get_device("opencl", math="tf32")  # a new runtime: nothing compiled from the real sources
    with pytest.raises(AssertionError):
        tf32_conv_and_upconv_agree_with_reference(device, rng)


def oclgrind_case_planted(device):
    """Runs under Oclgrind with the kernel sources at $CUNET_KERNEL_DIR (a planted copy)."""
    import os

    cunet.kernels.KERNEL_DIR = __import__("pathlib").Path(os.environ["CUNET_KERNEL_DIR"])
    x = np.random.default_rng(0).standard_normal((1, 3, 5, 6)).astype(np.float32)
    w, b = np.ones((17, 3, 3, 3), np.float32), np.zeros(17, np.float32)
    device.to_host(conv2d_forward(device.to_device(x), device.to_device(w), device.to_device(b)))


@pytest.mark.oclgrind
def test_a_missing_barrier_is_a_race_under_oclgrind(tmp_path, monkeypatch):
    """Without the barrier after the tile product, the next step's loads refill the half of the
    shared tiles that other work-items still read their fragments from: Oclgrind must report
    the race (and the real sources, on the same case, must be clean)."""
    lines = (cunet.kernels.KERNEL_DIR / "gemm.h").read_text().splitlines(keepends=True)
    product = next(i for i, line in enumerate(lines) if "gemm_tile_product(As + half_" in line)
    barrier = lines[product + 1]
    assert "__syncthreads();" in barrier
    planted = planted_kernel_dir(tmp_path, "gemm.h", lines[product] + barrier, lines[product])
    monkeypatch.setenv("CUNET_KERNEL_DIR", str(planted))
    log = run_under_oclgrind("test_gemm", "oclgrind_case_planted", tmp_path, math="tf32")
    assert re.search(r"race", log), log[:2000]
    with pytest.raises(AssertionError, match="Oclgrind reported"):
        assert_oclgrind_clean(log)
    monkeypatch.setenv("CUNET_KERNEL_DIR", str(cunet.kernels.KERNEL_DIR))
    (tmp_path / "real").mkdir()
    assert_oclgrind_clean(run_under_oclgrind("test_gemm", "oclgrind_case_planted", tmp_path / "real", math="tf32"))


def test_math_default_and_refusal_on_cuda_by_compute_capability():
    """cuda: tf32 by default from sm_80 on (as cuDNN and PyTorch do for convolutions), fp32
    before; asking for tf32 on a GPU without TF32 tensor cores is a clear error."""
    from types import SimpleNamespace

    from cunet.device import Device, choose_math

    def gpu(sm):
        return Device("cuda", SimpleNamespace(compute_capability=lambda: sm, math="fp32"))

    for sm, default in ((70, "fp32"), (75, "fp32"), (80, "tf32"), (90, "tf32")):
        device = gpu(sm)
        choose_math(device, None)
        assert device.runtime.math == default, sm
    device = gpu(90)
    choose_math(device, "fp32")
    assert device.runtime.math == "fp32"
    with pytest.raises(ValueError, match="needs TF32 tensor cores .sm_80 and newer.; this GPU is sm_75: use --math fp32"):
        choose_math(gpu(75), "tf32")
