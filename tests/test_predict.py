"""Overlap-tile prediction and the predict/evaluate command lines."""
import json
import tracemalloc

import numpy as np
import pytest
import tifffile
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from cunet import evaluate, isbi, predict
from cunet.checkpoint import save_checkpoint
from cunet.device import get_device
from cunet.unet import UNet, input_size_for_output, valid_input_sizes
from helpers import skip_without_pocl


def small_model(depth=3, base=2, seed=4):
    model = UNet(base=base, depth=depth, dropout=0.5, seed=seed, input_mean=0.5, input_std=0.25)
    rng = np.random.default_rng(seed)
    for p in model.parameters():  # non-zero biases, so every layer matters
        p.data = p.data + 0.05 * rng.standard_normal(p.data.shape).astype(np.float32)
    return model


@pytest.mark.parametrize("shape", [(70, 101), (33, 20), (128, 128)])
def test_result_does_not_depend_on_the_tile_size(shape, rng):
    model = small_model()
    image = rng.random(shape).astype(np.float32)
    small, large = valid_input_sizes(3, 300)[2], valid_input_sizes(3, 300)[-1]
    a = predict.predict_probabilities(model, image, small, batch=3)
    b = predict.predict_probabilities(model, image, large)
    assert a.shape == (2,) + shape
    # float32 convolutions summed in different blockings: a few ulps of the logits
    np.testing.assert_allclose(a, b, atol=2e-6)


def test_stitched_tiles_equal_one_tile_over_the_whole_image(rng):
    """No seams: many small tiles give what one tile covering everything gives."""
    model = small_model()
    image = rng.random((90, 90)).astype(np.float32)
    whole = predict.predict_probabilities(model, image, input_size_for_output(90, 3))
    tiled = predict.predict_probabilities(model, image, valid_input_sizes(3, 300)[2])
    np.testing.assert_allclose(tiled, whole, atol=2e-6)


def test_probabilities_are_a_distribution(rng):
    probs = predict.predict_probabilities(small_model(), rng.random((40, 50)).astype(np.float32), 76)
    assert probs.dtype == np.float32 and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=0), 1, atol=1e-6)


def test_tta_is_equivariant_to_flips_and_rotations(rng):
    model = small_model()
    image = rng.random((48, 48)).astype(np.float32)
    p = predict.predict_with_tta(model, image, 76)
    q = predict.predict_with_tta(model, np.ascontiguousarray(np.rot90(np.fliplr(image))), 76)
    np.testing.assert_allclose(np.fliplr(np.rot90(q, -1, axes=(1, 2)).transpose(1, 2, 0)).transpose(2, 0, 1), p, atol=2e-6)


@pytest.mark.slow
def test_memory_is_bounded_by_the_tile_batch_for_a_4096_image(rng):
    model = small_model(depth=2, base=2)
    image = rng.random((4096, 4096)).astype(np.float32)
    tile = input_size_for_output(256, 2)
    tracemalloc.start()
    probs = predict.predict_probabilities(model, image, tile, batch=2)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    output_bytes = probs.nbytes
    # The output (128 MiB) plus a normalised copy of the image (64 MiB) plus a few tiles'
    # activations: far below an untiled forward pass (~2 GiB of activations at base 2).
    assert peak < output_bytes + image.nbytes + 64 * 2**20, peak / 2**20


def write_checkpoint(path, model, tile):
    config = dict(tile=tile, **{k: v for k, v in model.config.items() if k not in ("in_channels", "n_classes")})
    return save_checkpoint(path, model.state_dict(), [], dict(step=0, config=config))


@pytest.fixture
def checkpoint(tmp_path):
    return write_checkpoint(tmp_path / "ckpt.npz", small_model(), tile=76)


def test_predict_cli_on_an_image_a_stack_and_a_folder(tmp_path, checkpoint, rng):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray((rng.random((40, 60)) * 255).astype(np.uint8)).save(folder / "a.png")
    tifffile.imwrite(folder / "stack.tif", (rng.random((2, 30, 30)) * 255).astype(np.uint8))
    out = tmp_path / "out"
    assert predict.main(["--checkpoint", str(checkpoint), "--input", str(folder), "--output", str(out),
                         "--device", "cpu", "--overlay", "--quiet"]) == 0
    names = sorted(p.name for p in out.iterdir())
    # Outputs are named by the input's full file name, plus the page index for a stack.
    assert names == sorted(f"{n}.{kind}" for n in ("a.png", "stack.tif.000", "stack.tif.001")
                           for kind in ("prob.tif", "mask.png", "overlay.png"))
    probs = tifffile.imread(out / "a.png.prob.tif")
    assert probs.shape == (2, 40, 60) and probs.dtype == np.float32
    mask = np.asarray(Image.open(out / "a.png.mask.png"))
    np.testing.assert_array_equal(mask, np.where(probs.argmax(0) == 1, 255, 0))


def test_predict_cli_errors(tmp_path, checkpoint, capsys):
    assert predict.main(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "missing.png"),
                         "--output", str(tmp_path), "--device", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    assert predict.main(["--checkpoint", str(checkpoint), "--input", str(image), "--output", str(tmp_path),
                         "--device", "cpu", "--tile", "75"]) == 2
    assert "use 72 or 76" in capsys.readouterr().err


def run_predict(checkpoint, source, out, *extra):
    """predict.main on the cpu, quietly; returns the exit code."""
    return predict.main(["--checkpoint", str(checkpoint), "--input", str(source), "--output", str(out),
                         "--device", "cpu", "--quiet", *extra])


def test_inputs_sharing_a_stem_get_their_own_outputs(tmp_path, checkpoint):
    """a.png and a.tif in one folder used to overwrite each other while saying "wrote 2"."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 24), np.uint8)).save(folder / "a.png")
    tifffile.imwrite(folder / "a.tif", np.full((20, 24), 200, np.uint8))
    assert run_predict(checkpoint, folder, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png.mask.png", "a.png.prob.tif", "a.tif.mask.png", "a.tif.prob.tif"]
    model, _ = predict.model_from_checkpoint(checkpoint, get_device("cpu"))
    for name, value in (("a.png", 0), ("a.tif", 200)):
        expected = predict.predict_probabilities(model, np.full((20, 24), value / 255, np.float32), 76)
        np.testing.assert_allclose(tifffile.imread(out / f"{name}.prob.tif"), expected, atol=1e-6)


def test_predict_never_overwrites_earlier_results(tmp_path, checkpoint, capsys):
    image, out = tmp_path / "a.png", tmp_path / "out"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(image)
    assert run_predict(checkpoint, image, out) == 0
    (out / "a.png.mask.png").write_bytes(b"the user's edited mask")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert run_predict(checkpoint, image, out, "--overlay") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output") and "already exists" in err and "a.png.prob.tif" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing added, nothing replaced


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    raw = np.arange(0, 65536, 257, dtype=np.uint16)[:240].reshape(12, 20)
    Image.fromarray(raw).save(tmp_path / "deep.png")
    [(name, image)] = predict.read_inputs(tmp_path / "deep.png")
    assert name == "deep.png"
    np.testing.assert_array_equal(image, (raw / 65535.0).astype(np.float32))  # convert("L") made it all 1.0


def test_rgb_tiff_is_one_colour_image_not_a_stack(tmp_path):
    colour = np.random.default_rng(0).integers(0, 256, size=(128, 20, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", colour, photometric="rgb")
    with pytest.raises(ValueError, match="rgb.tif: colour image.*convert it to greyscale"):
        predict.read_inputs(tmp_path / "rgb.tif")  # it was read as 128 slices of 20 x 3
    grey = np.repeat(colour[..., :1], 3, axis=-1)  # grey stored as RGB loses nothing: accepted
    tifffile.imwrite(tmp_path / "grey.tif", grey, photometric="rgb")
    [(name, image)] = predict.read_inputs(tmp_path / "grey.tif")
    np.testing.assert_array_equal(image, (colour[..., 0] / 255.0).astype(np.float32))


def _random_bytes(path):
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())


def _truncated_tiff(path):
    tifffile.imwrite(path, np.zeros((320, 256), np.uint8))
    path.write_bytes(path.read_bytes()[:2000])  # "failed to read 81920 bytes, got 1744"


@pytest.mark.parametrize("name, make", [("noise.png", _random_bytes), ("cut.tif", _truncated_tiff)])
def test_unreadable_input_is_an_error_naming_the_file(tmp_path, checkpoint, capsys, name, make):
    make(tmp_path / name)
    assert run_predict(checkpoint, tmp_path / name, tmp_path / "out") == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / name}: cannot be read")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["under a file", "is a file"])
def test_bad_output_is_found_before_any_work(tmp_path, checkpoint, capsys, monkeypatch, where):
    (tmp_path / "notes.txt").write_text("not a folder")
    out = tmp_path / "notes.txt" / "pred" if where == "under a file" else tmp_path / "notes.txt"

    def no_work(*args):
        raise AssertionError("started work before checking --output")

    monkeypatch.setattr(predict, "load_for_inference", no_work)
    monkeypatch.setattr(predict, "read_inputs", no_work)
    assert run_predict(checkpoint, tmp_path / "any.png", out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --output {out}: ") and "notes.txt" in err and "is a file" in err


def fixture_folder(tmp_path, rng, n=3, size=40):
    for sub in ("images", "labels"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(n):
        Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(tmp_path / "data" / "images" / f"s{i}.png")
        label = np.full((size, size), 255, np.uint8)
        label[:, size // 2] = 0  # a membrane line between two cells
        Image.fromarray(label).save(tmp_path / "data" / "labels" / f"s{i}.png")
    return tmp_path / "data"


def test_evaluate_cli_json_is_stable(tmp_path, checkpoint, rng, capsys):
    data = fixture_folder(tmp_path, rng)
    assert evaluate.main(["--checkpoint", str(checkpoint), "--data", str(data), "--slices", "0,2",
                          "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["slices"] == [0, 2] and set(report["challenge"]) == {"single"}  # "tta" only with --tta
    headline = report["challenge"]["single"]
    assert set(headline["scores"]) == set(headline["best_threshold"]) == set(isbi.METRICS)
    assert headline["thresholds"] == list(isbi.CHALLENGE_THRESHOLDS) and len(headline["curves"]["rand_error"]) == 11
    diagnostics = report["diagnostics"]
    assert "not the challenge's method" in diagnostics["method"] and len(diagnostics["per_slice"]) == 2
    keys = {"pixel_error", "rand_error", "warping_error", "iou_cell", "dice_cell", "iou_membrane", "dice_membrane", "seg"}
    assert set(diagnostics["mean"]) == keys
    assert set(diagnostics["per_slice"][0]) == keys | {"slice", "name"}
    assert diagnostics["mean"]["pixel_error"] == pytest.approx(np.mean([s["pixel_error"] for s in diagnostics["per_slice"]]))


def test_evaluate_tta_reports_both_ways(tmp_path, checkpoint, rng, capsys):
    data = fixture_folder(tmp_path, rng, n=1, size=24)
    assert evaluate.main(["--checkpoint", str(checkpoint), "--data", str(data), "--device", "cpu", "--tta"]) == 0
    out = capsys.readouterr().out
    assert "single prediction" in out and "mean of 8 flips/rotations" in out and "diagnostics:" in out
    assert evaluate.main(["--checkpoint", str(checkpoint), "--data", str(data), "--device", "cpu", "--tta", "--json"]) == 0
    challenge = json.loads(capsys.readouterr().out)["challenge"]
    assert set(challenge) == {"single", "tta"}


def test_evaluate_slices_parsing():
    assert evaluate.parse_slices("0-2,7", 10) == [0, 1, 2, 7]
    assert evaluate.parse_slices(" 3 , 5,3,4-5", 10) == [3, 4, 5]  # spaces, repeats and overlaps are fine
    assert evaluate.parse_slices(None, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="out of range"):
        evaluate.parse_slices("8-12", 10)
    with pytest.raises(ValueError, match="expected indices"):
        evaluate.parse_slices("a-b", 10)
    with pytest.raises(ValueError, match=r"'5-2' is descending \(write '2-5'\).*slices 0\.\.9"):
        evaluate.parse_slices("5-2", 10)  # was an empty selection, then an IndexError
    with pytest.raises(ValueError, match=r"cannot read '-1' \(indices start at 0\)"):
        evaluate.parse_slices("-1", 10)


def test_huge_slice_range_is_refused_without_building_it():
    """'0-999999999' grew past 15 GB and listed every index in its message."""
    tracemalloc.start()
    with pytest.raises(ValueError) as info:
        evaluate.parse_slices("0-999999999", 25)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20 and len(str(info.value)) < 250
    assert "'999999999' is out of range" in str(info.value) and "slices 0..24" in str(info.value)
    with pytest.raises(ValueError, match=r"'9999.*\.\.\.' is out of range.*slices 0\.\.24"):
        evaluate.parse_slices("0-" + "9" * 5000, 25)  # past int()'s own 4300-digit limit
    assert evaluate.parse_slices("0" * 5000 + "3", 25) == [3]


@st.composite
def slice_parts(draw, n, max_size=6):
    """Valid --slices parts for n slices, as (text, indices) pairs."""
    parts = []
    for _ in range(draw(st.integers(0, max_size))):
        first = draw(st.integers(0, n - 1))
        last = draw(st.integers(first, n - 1))
        pad = draw(st.sampled_from(["", " "]))
        if draw(st.booleans()):
            parts.append((f"{pad}{first}{pad}", [first]))
        else:
            parts.append((f"{pad}{first}-{last}{pad}", list(range(first, last + 1))))
    return parts


@st.composite
def valid_slice_specs(draw):
    n = draw(st.integers(1, 60))
    parts = draw(slice_parts(n, max_size=6).filter(bool))
    return n, ",".join(text for text, _ in parts), sorted({i for _, indices in parts for i in indices})


@given(valid_slice_specs())
def test_valid_slice_specs_give_their_indices(spec):
    n, text, expected = spec
    assert evaluate.parse_slices(text, n) == expected


def _bad_slice_part(n):
    """One part that no number of slices n makes valid: past the end, descending, negative or unreadable."""
    big = st.integers(n, 10**30)
    return st.one_of(
        big.map(str),
        st.tuples(st.integers(0, n - 1), big).map(lambda t: f"{t[0]}-{t[1]}"),
        st.integers(1, 10**12).flatmap(lambda hi: st.integers(0, hi - 1).map(lambda lo: f"{hi}-{lo}")),
        st.integers(0, 10**12).map(lambda k: f"-{k}"),
        st.sampled_from(["", " ", "a", "1-", "-", "1--2", "1-2-3", "0x1", "1.5", "+1", "\u0663", "1 2"]),
        st.text(alphabet="abc-+.x ", min_size=1, max_size=500),  # no digits: never valid, maybe long
    )


@st.composite
def invalid_slice_specs(draw):
    n = draw(st.integers(1, 60))
    good = [text for text, _ in draw(slice_parts(n, max_size=3))]
    at = draw(st.integers(0, len(good)))
    return n, ",".join(good[:at] + [draw(_bad_slice_part(n))] + good[at:])


@given(invalid_slice_specs())
def test_invalid_slice_specs_give_a_short_error(spec):
    n, text = spec
    with pytest.raises(ValueError) as info:
        evaluate.parse_slices(text, n)
    message = str(info.value)
    assert message.startswith("--slices ") and "expected indices and ascending ranges" in message
    assert f"the data has slices 0..{n - 1}" in message and len(message) < 300


@given(st.text(max_size=200), st.integers(0, 40))
def test_any_slice_text_gives_indices_or_a_short_value_error(text, n):
    try:
        chosen = evaluate.parse_slices(text, n)
    except ValueError as exc:
        assert len(str(exc)) < 300
    else:
        assert chosen == sorted(set(chosen)) and all(0 <= i < n for i in chosen)


def test_predict_and_evaluate_on_opencl(tmp_path, checkpoint, rng, capsys):
    skip_without_pocl()
    data = fixture_folder(tmp_path, rng, n=1, size=24)
    assert evaluate.main(["--checkpoint", str(checkpoint), "--data", str(data), "--device", "opencl", "--json"]) == 0
    opencl = json.loads(capsys.readouterr().out)
    assert evaluate.main(["--checkpoint", str(checkpoint), "--data", str(data), "--device", "cpu", "--json"]) == 0
    cpu = json.loads(capsys.readouterr().out)
    assert opencl["diagnostics"]["mean"] == pytest.approx(cpu["diagnostics"]["mean"], abs=1e-6)
    assert opencl["challenge"]["single"]["scores"] == pytest.approx(cpu["challenge"]["single"]["scores"], abs=1e-6)


def test_model_from_checkpoint_keeps_normalisation(checkpoint):
    model, config = predict.model_from_checkpoint(checkpoint, get_device("cpu"))
    assert model.config["input_mean"] == 0.5 and model.config["input_std"] == 0.25 and not model.training


def test_outputs_are_written_whole_and_never_replace_a_file_that_appears(tmp_path, monkeypatch):
    """A write that fails half-way leaves nothing under the output's name; a file that appears
    under the name while predicting is refused, not replaced."""
    probs = np.full((2, 4, 5), 0.5, np.float32)
    image = np.zeros((4, 5), np.float32)
    import tifffile

    def failing(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", failing)
    with pytest.raises(OSError):
        predict.write_outputs(tmp_path, "a.png", image, probs, overlay=False)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no half file, no temporary left
    (tmp_path / "b.png.mask.png").write_bytes(b"the user's")
    with pytest.raises(ValueError, match="appeared while predicting"):
        predict.write_outputs(tmp_path, "b.png", image, probs, overlay=False)
    assert (tmp_path / "b.png.mask.png").read_bytes() == b"the user's"
    assert not list(tmp_path.glob(".*.tmp"))
