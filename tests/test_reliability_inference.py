"""The inference command lines on bad inputs: one catalogue of cases, one table-driven test.

Each case builds its inputs in tmp_path with code (tiny images), runs ``python -m
cunet.predict`` or ``python -m cunet.evaluate`` in-process through ``main(argv)`` and checks
the class of the outcome:

* ``ok``: exit code 0, then the case's own check of what was written;
* ``error``: exit code 2, an ``error:`` line on stderr that names the file or option at
  fault, no traceback, and nothing written or overwritten: every file and folder under
  tmp_path is the same before and after the run.

A case that raises instead (a traceback for the user) fails the test with the exception.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import tifffile
from PIL import Image
from test_predict import small_model, write_checkpoint  # the checkpoint pattern of test_predict.py

from cunet import evaluate, predict
from cunet.device import get_device

SIZE = 24  # pixels per side: every case stays a fraction of a second


@dataclass(frozen=True)
class Case:
    """One row of the catalogue.

    ``build(tmp_path)`` writes the inputs and returns the command's own arguments (the
    checkpoint and ``--device cpu`` are added); ``names`` must appear in the error line
    (or, for ``ok``, ``check(tmp_path, checkpoint, stdout)`` inspects the result).
    """

    id: str
    command: str  # "predict" or "evaluate"
    build: Callable[[Path], list[str]]
    expect: str  # "ok" or "error"
    names: tuple[str, ...] = ()
    check: Callable[[Path, Path, str], None] | None = None


# ----------------------------------------------------------------- inputs, made by code


def grey(value=None, seed=0) -> np.ndarray:
    """A SIZE x SIZE uint8 image: constant ``value``, or random."""
    if value is not None:
        return np.full((SIZE, SIZE), value, np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)


def png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def predict_args(source: Path, out: Path) -> list[str]:
    return ["--input", str(source), "--output", str(out)]


def sixteen_bit_png(tmp: Path) -> list[str]:
    raw = np.linspace(0, 65535, SIZE * SIZE).astype(np.uint16).reshape(SIZE, SIZE)
    png(tmp / "deep.png", raw)
    return predict_args(tmp / "deep.png", tmp / "out")


def check_sixteen_bit(tmp: Path, checkpoint: Path, stdout: str) -> None:
    """The map is the prediction for raw / 65535: not for an image clipped to 255 (all white)."""
    raw = np.asarray(Image.open(tmp / "deep.png")).astype(np.float64)
    model, _ = predict.model_from_checkpoint(checkpoint, get_device("cpu"))
    expected = predict.predict_probabilities(model, (raw / 65535).astype(np.float32), 76)
    np.testing.assert_allclose(tifffile.imread(tmp / "out" / "deep.png.prob.tif"), expected, atol=1e-6)


def rgb_tiff(tmp: Path) -> list[str]:
    colour = np.random.default_rng(1).integers(0, 256, (128, SIZE, 3), dtype=np.uint8)
    tifffile.imwrite(tmp / "rgb.tif", colour, photometric="rgb")  # once read as 128 slices of 24 x 3
    return predict_args(tmp / "rgb.tif", tmp / "out")


def rgb_png(tmp: Path) -> list[str]:
    png(tmp / "rgb.png", np.random.default_rng(2).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    return predict_args(tmp / "rgb.png", tmp / "out")


def empty_file(tmp: Path) -> list[str]:
    (tmp / "empty.tif").write_bytes(b"")
    return predict_args(tmp / "empty.tif", tmp / "out")


def truncated_tiff(tmp: Path) -> list[str]:
    tifffile.imwrite(tmp / "cut.tif", np.zeros((320, 256), np.uint8))
    (tmp / "cut.tif").write_bytes((tmp / "cut.tif").read_bytes()[:2000])  # "failed to read 81920 bytes"
    return predict_args(tmp / "cut.tif", tmp / "out")


def random_bytes_png(tmp: Path) -> list[str]:
    (tmp / "noise.png").write_bytes(np.random.default_rng(3).integers(0, 256, 500, dtype=np.uint8).tobytes())
    return predict_args(tmp / "noise.png", tmp / "out")


def nan_image(tmp: Path) -> list[str]:
    image = np.full((SIZE, SIZE), 0.5, np.float32)
    image[3, 4] = np.nan
    tifffile.imwrite(tmp / "nan.tif", image)
    return predict_args(tmp / "nan.tif", tmp / "out")


def same_stem(tmp: Path) -> list[str]:
    (tmp / "in").mkdir()
    png(tmp / "in" / "a.png", grey(seed=0))
    tifffile.imwrite(tmp / "in" / "a.tif", grey(seed=1))
    return predict_args(tmp / "in", tmp / "out")


def check_same_stem(tmp: Path, checkpoint: Path, stdout: str) -> None:
    """Both inputs kept their own outputs (they used to overwrite each other)."""
    written = sorted(p.name for p in (tmp / "out").iterdir())
    assert written == ["a.png.mask.png", "a.png.prob.tif", "a.tif.mask.png", "a.tif.prob.tif"]
    a_png, a_tif = (tifffile.imread(tmp / "out" / f"{n}.prob.tif") for n in ("a.png", "a.tif"))
    assert not np.allclose(a_png, a_tif)
    assert "wrote 2 prediction(s)" in stdout


def output_under_a_file(tmp: Path) -> list[str]:
    png(tmp / "a.png", grey())
    (tmp / "notes.txt").write_text("a file, not a folder")
    return predict_args(tmp / "a.png", tmp / "notes.txt" / "pred")


def output_is_a_file(tmp: Path) -> list[str]:
    png(tmp / "a.png", grey())
    (tmp / "notes.txt").write_text("a file, not a folder")
    return predict_args(tmp / "a.png", tmp / "notes.txt")


def existing_output_file(tmp: Path) -> list[str]:
    png(tmp / "a.png", grey())
    (tmp / "out").mkdir()
    (tmp / "out" / "a.png.mask.png").write_bytes(b"the user's hand-corrected mask")
    return predict_args(tmp / "a.png", tmp / "out")


# evaluate: a folder pair of two slices with two-class masks (a membrane line between cells)


def dataset(tmp: Path) -> Path:
    root = tmp / "data"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for i in range(2):
        png(root / "images" / f"s{i}.png", grey(seed=i))
        label = grey(255)
        label[:, SIZE // 2] = 0
        png(root / "labels" / f"s{i}.png", label)
    return root


def evaluate_args(root: Path, *extra: str) -> list[str]:
    return ["--data", str(root), "--json", *extra]


def slices(spec: str) -> Callable[[Path], list[str]]:
    """A build for ``evaluate --slices spec`` on the two-slice data set."""
    return lambda tmp: evaluate_args(dataset(tmp), f"--slices={spec}")  # '=' lets a spec start with '-'


def check_two_slices(tmp: Path, checkpoint: Path, stdout: str) -> None:
    assert json.loads(stdout)["slices"] == [0, 1]


def nan_in_dataset(tmp: Path) -> list[str]:
    root = dataset(tmp)
    (root / "images" / "s1.png").unlink()
    image = np.full((SIZE, SIZE), 0.5, np.float32)
    image[2, 5] = np.nan
    tifffile.imwrite(root / "images" / "s1.tif", image)
    return evaluate_args(root)


def three_class_mask(tmp: Path) -> list[str]:
    root = dataset(tmp)
    png(root / "labels" / "s1.png", np.arange(SIZE * SIZE).reshape(SIZE, SIZE).astype(np.uint8) % 3)
    return evaluate_args(root)


CATALOGUE = [
    Case("16-bit PNG", "predict", sixteen_bit_png, "ok", check=check_sixteen_bit),
    Case("RGB TIFF", "predict", rgb_tiff, "error", ("rgb.tif", "convert it to greyscale")),
    Case("RGB PNG", "predict", rgb_png, "error", ("rgb.png", "convert it to greyscale")),
    Case("empty file", "predict", empty_file, "error", ("empty.tif", "cannot be read")),
    Case("truncated TIFF", "predict", truncated_tiff, "error", ("cut.tif", "cannot be read")),
    Case("random bytes named .png", "predict", random_bytes_png, "error", ("noise.png", "cannot be read")),
    Case("NaN image", "predict", nan_image, "error", ("nan.tif", "1 NaN")),
    Case("two inputs with the same stem", "predict", same_stem, "ok", check=check_same_stem),
    Case("--output under a file", "predict", output_under_a_file, "error", ("--output", "notes.txt", "is a file")),
    Case("--output is a file", "predict", output_is_a_file, "error", ("--output", "notes.txt", "is a file")),
    Case("existing output file", "predict", existing_output_file, "error", ("a.png.mask.png", "already exists")),
    Case("evaluate --slices 0,1", "evaluate", slices("0,1"), "ok", check=check_two_slices),
    Case("evaluate --slices 5-2", "evaluate", slices("5-2"), "error", ("--slices", "descending", "0..1")),
    Case("evaluate --slices 1-0", "evaluate", slices("1-0"), "error", ("--slices", "descending")),
    Case("evaluate --slices huge range", "evaluate", slices("0-999999999"), "error", ("--slices", "out of range", "0..1")),
    Case("evaluate --slices -1", "evaluate", slices("-1"), "error", ("--slices", "indices start at 0")),
    Case("evaluate --slices 2", "evaluate", slices("2"), "error", ("--slices", "out of range")),
    Case("evaluate --slices a", "evaluate", slices("a"), "error", ("--slices", "expected indices")),
    Case("evaluate --slices 0,,1", "evaluate", slices("0,,1"), "error", ("--slices", "expected indices")),
    Case("evaluate --slices empty", "evaluate", slices(""), "error", ("--slices", "expected indices")),
    Case("evaluate NaN image", "evaluate", nan_in_dataset, "error", ("s1.tif", "1 NaN", "(2, 5)")),
    Case("evaluate three-class mask", "evaluate", three_class_mask, "error", ("s1.png", "[0, 1, 2]", "binary mask")),
]

MAINS = {"predict": predict.main, "evaluate": evaluate.main}


# ----------------------------------------------------------------- the test


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root: a file's bytes, or None for a folder."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A tiny trained-looking U-Net (depth 3, base 2, tile 76), as in tests/test_predict.py."""
    return write_checkpoint(tmp_path / "ckpt" / "ckpt.npz", small_model(), tile=76)


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.id for c in CATALOGUE])
def test_bad_input_outcome(case: Case, tmp_path, checkpoint, capsys):
    work = tmp_path / "case"
    work.mkdir()
    argv = case.build(work) + ["--checkpoint", str(checkpoint), "--device", "cpu"]
    argv += ["--quiet"] if case.command == "predict" else []
    before = snapshot(tmp_path)
    capsys.readouterr()
    try:
        code = MAINS[case.command](argv)
    except Exception as exc:  # what a user would see as a traceback
        pytest.fail(f"{case.id}: raised {type(exc).__name__}: {exc}")
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if case.expect == "ok":
        assert code == 0, err
        case.check(work, checkpoint, out)
        return
    assert code == 2, (out, err)
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, err
    for name in case.names:
        assert name in error_lines[0], f"{name!r} not named in {error_lines[0]!r}"
    assert len(error_lines[0]) < 400  # short: never a list of every index
    assert snapshot(tmp_path) == before, "an error run wrote or changed files"
