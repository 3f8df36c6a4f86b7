"""cunet.figures: every teaching figure is written whole, at its fixed pixel size, not blank
and reproducible; the command line's choices and errors; and the implicit-GEMM index map
against an im2col built independently (with planted bugs that it must catch).

Small and fast: the figures are drawn at a low dpi on a 96 px synthetic slice.
"""
from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cunet import figures
from cunet.data import Dataset, make_synthetic

ROOT = Path(__file__).resolve().parents[1]
DPI = 30


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def tiny_dataset() -> Dataset:
    """One 96 px synthetic slice as a Dataset (no instances: the figures derive them)."""
    images, labels, _ = make_synthetic(1, 96, seed=3)
    return Dataset(images, labels, ("tiny",), "test")


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """All six figures, drawn once into a fresh folder, with the progress reports."""
    out = tmp_path_factory.mktemp("figures")
    reports = []
    paths = figures.draw_figures(out, data=tiny_dataset(), dpi=DPI, progress=lambda *a: reports.append(a))
    return out, paths, reports


# --------------------------------------------------------------------------- the files


def test_every_figure_is_written_in_order(drawn):
    out, paths, reports = drawn
    assert [p.name for p in paths] == [f"{n}.png" for n in figures.FIGURES]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no temporary files left
    assert [r[0] for r in reports] == paths


@pytest.mark.parametrize("name", list(figures.FIGURES))
def test_figure_has_its_fixed_size_and_is_not_blank(drawn, name):
    import matplotlib.image

    path = drawn[0] / f"{name}.png"
    assert png_size(path) == figures.pixel_size(name, DPI)
    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.shape[:2][::-1] == figures.pixel_size(name, DPI)
    assert pixels.var() > 0
    inked = np.mean(pixels.min(axis=-1) < 0.9)  # share of pixels that are not (nearly) white
    assert inked > 0.03, f"{name}: only {inked:.1%} of the figure has anything drawn"


def test_figures_are_reproducible(tmp_path):
    names = ["elastic", "weight_map"]
    first = figures.draw_figures(tmp_path / "a", names, data=tiny_dataset(), dpi=20)
    second = figures.draw_figures(tmp_path / "b", names, data=tiny_dataset(), dpi=20)
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), f"{a.name} differs between two runs"


def test_only_own_files_are_touched(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "implicit_gemm.png").write_bytes(b"an old figure")
    figures.draw_figures(tmp_path, ["implicit_gemm"], dpi=20)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert png_size(tmp_path / "implicit_gemm.png") == figures.pixel_size("implicit_gemm", 20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["implicit_gemm.png", "notes.txt"]


def test_a_noisy_figure_is_squeezed_under_the_budget_keeping_its_colours():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(400, 400), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb[:50, :50] = (255, 0, 255)  # an overlay colour
    full = figures.encode_png(rgb, max_bytes=10**9)
    small = figures.encode_png(rgb, max_bytes=len(full) // 2)
    assert len(small) <= len(full) // 2
    from io import BytesIO

    from PIL import Image

    back = np.asarray(Image.open(BytesIO(small)).convert("RGB"))
    assert (back[:50, :50] == (255, 0, 255)).all()
    assert np.abs(back[50:, 50:].astype(int) - rgb[50:, 50:]).max() <= 256 // 16  # at worst 16 grey levels


# --------------------------------------------------------------------------- the command line


def test_cli_writes_only_the_chosen_figures(tmp_path, capsys):
    assert figures.main(["--out", str(tmp_path), "--only", "implicit_gemm,unet", "--dpi", "20"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["implicit_gemm.png", "unet.png"]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2  # one progress line per figure, in FIGURES order
    assert "unet.png" in lines[0] and "320x180 px" in lines[0]
    assert "implicit_gemm.png" in lines[1]


def test_cli_unknown_name_exits_2_naming_the_valid_ones(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cunet.figures", "--out", str(tmp_path / "out"), "--only",
                           "unet,nope"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    assert "'nope'" in proc.stderr and all(name in proc.stderr for name in figures.FIGURES)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make", ["missing", "not a data set"])
def test_cli_bad_data_folder_exits_2(tmp_path, capsys, make):
    data = tmp_path / "data"
    if make == "not a data set":
        data.mkdir()
    out = tmp_path / "out"
    assert figures.main(["--out", str(out), "--data", str(data), "--only", "unet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(data) in err
    assert "train-volume.tif" in err  # says what a data folder should hold
    assert not out.exists()  # nothing written before the data were read


# --------------------------------------------------------------------------- the implicit-GEMM index map


def im2col_offsets(batch, C, H, W, F):
    """The textbook im2col of x = 0, 1, 2, ... (so each value is its own flat offset): rows
    (c, r, s), columns (n, oh, ow); from NumPy's sliding windows, not the kernel's arithmetic."""
    x = np.arange(batch * C * H * W).reshape(batch, C, H, W)
    windows = np.lib.stride_tricks.sliding_window_view(x, (F, F), axis=(2, 3))  # [n, c, oh, ow, r, s]
    return windows.transpose(1, 4, 5, 0, 2, 3).reshape(C * F * F, -1)


SHAPES = [(1, 2, 8, 8, 3), (2, 3, 7, 10, 3), (1, 5, 4, 6, 1), (3, 1, 5, 3, 3)]


@pytest.mark.parametrize("shape", SHAPES)
def test_gather_offsets_equal_an_independent_im2col(shape):
    batch, C, H, W, F = shape
    assert np.array_equal(figures.gather_matrix(batch, C, H, W, F), im2col_offsets(batch, C, H, W, F))


def test_gather_offsets_on_random_shapes_and_values():
    rng = np.random.default_rng(7)
    for _ in range(20):
        batch, C, H, W = rng.integers(1, 4), rng.integers(1, 6), rng.integers(3, 12), rng.integers(3, 12)
        F = int(rng.choice([1, 3]))
        x = rng.normal(size=(batch, C, H, W))
        a = x.ravel()[figures.gather_matrix(batch, C, H, W, F)]
        assert np.array_equal(a, x.ravel()[im2col_offsets(batch, C, H, W, F)])


def test_edge_of_a_block_tile_loads_zero():
    C, H, W = 2, 8, 8
    offsets = figures.gather_matrix(1, C, H, W, 3, rows=24, cols=64)  # KG = 18, M = 36
    assert (offsets[18:] == -1).all() and (offsets[:, 36:] == -1).all()
    assert (offsets[:18, :36] >= 0).all()


def planted(bug):
    """A copy of the kernel's index arithmetic with one planted ``bug`` (None: faithful)."""
    def offsets(kk, m, batch, C, H, W, F=3):
        FF, OH, OW = F * F, H - F + 1, W - F + 1
        OHW = OH * OW
        n = m // OHW
        p = m - n * OHW
        oh = p // OW
        ow = p - oh * OW + (1 if bug == "ow off by one" else 0)
        a_base = n * C * H * W + oh * (OW if bug == "oh*OW" else W) + ow
        c = kk // FF
        rs = kk - c * FF
        r = rs // (FF if bug == "r = rs / FF" else F)
        s = rs - r * F + (1 if bug == "s off by one" else 0)
        return a_base + c * H * W + r * (OW if bug == "r*OW" else W) + s
    return offsets


def _matches_im2col(fn, batch, C, H, W, F) -> bool:
    KG, M = C * F * F, batch * (H - F + 1) * (W - F + 1)
    got = fn(np.arange(KG)[:, None], np.arange(M)[None, :], batch, C, H, W, F)
    return np.array_equal(got, im2col_offsets(batch, C, H, W, F))


def test_the_planted_copy_is_faithful():
    assert _matches_im2col(planted(None), 2, 3, 7, 10, 3)


@pytest.mark.parametrize("bug", ["ow off by one", "s off by one", "oh*OW", "r*OW", "r = rs / FF"])
def test_a_planted_bug_fails_the_im2col_check(bug):
    assert not _matches_im2col(planted(bug), 2, 3, 7, 10, 3)


def test_index_arithmetic_is_the_kernels():
    """The Python index map copies kernels/conv2d.cu: if the kernel's decomposition changes,
    this fails and the figure (and conv_gather_offsets) must follow."""
    source = re.sub(r"\s+", " ", (ROOT / "kernels" / "conv2d.cu").read_text())
    for line in ("a_base = n * C * H * W + oh * W + ow;",
                 "int c = kk / FF, rs = kk - c * FF, r = rs / FILTER, s = rs - r * FILTER;",
                 "x + a_base + c * H * W + r * W + s"):
        assert line in source, f"kernels/conv2d.cu no longer has: {line}"


# --------------------------------------------------------------------------- the drawings' data


def test_unet_layout_follows_the_layer_table():
    from cunet.summary import layer_table

    rows = layer_table(188, base=8, depth=4)
    boxes, arrows, _ = figures.unet_layout(rows)
    kinds = [k for k, *_ in arrows]
    assert kinds.count("pool") == 3 and kinds.count("up") == 3 and kinds.count("copy") == 3
    assert kinds.count("conv") == 2 * 4 + 2 * 3 and kinds[-1] == "head"
    assert (boxes[0].channels, boxes[0].size) == (1, 188)
    assert (boxes[-1].channels, boxes[-1].size) == (2, rows[-1].output_shape[2])


def test_step_phases_cover_the_step_in_order():
    from cunet.trace import record_train_step

    launches = record_train_step(188, 4, 4)
    phases = figures.step_phases(launches)
    assert [p[0] for p in phases] == ["forward", "loss", "backward", "SGD update"]
    assert phases[0][1] == 0 and phases[-1][2] == len(launches)
    assert all(a[2] == b[1] for a, b in zip(phases, phases[1:]))
    times = figures.modelled_seconds(launches)
    shares = figures.kernel_shares(launches, times)
    assert sum(n for _, _, n, _ in shares) == len(launches)
    assert np.isclose(sum(t for _, t, _, _ in shares), times.sum())
