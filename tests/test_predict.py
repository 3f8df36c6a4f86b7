"""Overlap-tile prediction and the predict/evaluate command lines."""
import json
import tracemalloc

import numpy as np
import pytest
import tifffile
from PIL import Image

from cunet import evaluate, predict
from cunet.checkpoint import save_checkpoint
from cunet.device import get_device
from cunet.unet import UNet, input_size_for_output, valid_input_sizes


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
    config = dict(tile=tile, **{k: model.config[k] for k in ("base", "depth", "dropout", "seed", "input_mean", "input_std")})
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
    assert names == sorted(f"{n}.{kind}" for n in ("a", "stack_000", "stack_001")
                           for kind in ("prob.tif", "mask.png", "overlay.png"))
    probs = tifffile.imread(out / "a.prob.tif")
    assert probs.shape == (2, 40, 60) and probs.dtype == np.float32
    mask = np.asarray(Image.open(out / "a.mask.png"))
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
    assert report["slices"] == [0, 2] and len(report["per_slice"]) == 2
    keys = {"pixel_error", "rand_error", "warping_error", "iou_cell", "dice_cell", "iou_membrane", "dice_membrane", "seg"}
    assert set(report["mean"]) == keys
    assert set(report["per_slice"][0]) == keys | {"slice", "name"}
    assert report["mean"]["pixel_error"] == pytest.approx(np.mean([s["pixel_error"] for s in report["per_slice"]]))


def test_evaluate_slices_parsing():
    assert evaluate.parse_slices("0-2,7", 10) == [0, 1, 2, 7]
    with pytest.raises(ValueError, match="out of range"):
        evaluate.parse_slices("8-12", 10)
    with pytest.raises(ValueError, match="expected indices"):
        evaluate.parse_slices("a-b", 10)


def test_predict_and_evaluate_on_opencl(tmp_path, checkpoint, rng, capsys):
    data = fixture_folder(tmp_path, rng, n=1, size=24)
    assert evaluate.main(["--checkpoint", str(checkpoint), "--data", str(data), "--device", "opencl", "--json"]) == 0
    opencl = json.loads(capsys.readouterr().out)["mean"]
    assert evaluate.main(["--checkpoint", str(checkpoint), "--data", str(data), "--device", "cpu", "--json"]) == 0
    cpu = json.loads(capsys.readouterr().out)["mean"]
    assert opencl == pytest.approx(cpu, abs=1e-6)


def test_model_from_checkpoint_keeps_normalisation(checkpoint):
    model, config = predict.model_from_checkpoint(checkpoint, get_device("cpu"))
    assert model.config["input_mean"] == 0.5 and model.config["input_std"] == 0.25 and not model.training
