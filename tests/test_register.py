"""Registering images to their labels' grid (cunet.data.register) and where the model applies it.

The oracle for a known offset is a Fourier shift (scipy.ndimage.fourier_shift), a different
resampling from the cubic spline ``register`` uses: the synthetic labels are exactly on their
image's grid (their measured offset is ~0.01 px), so moving the image by a known amount gives
labels whose offset is that amount.
"""
import numpy as np
import pytest
from scipy import ndimage

from cunet import predict
from cunet.data import label_offset, make_synthetic, register
from cunet.train import TrainConfig, load_data
from cunet.unet import UNet


@pytest.fixture(scope="module")
def synthetic():
    images, labels, _ = make_synthetic(4, size=256, seed=3)
    return images.astype(np.float64), labels


def moved(images: np.ndarray, offset) -> np.ndarray:
    """Each image moved by ``offset`` (dy, dx) px: pixel (y, x) of the result shows point (y - dy, x - dx)."""
    return np.stack([np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(im), offset)).real for im in images])


def test_synthetic_labels_sit_on_their_images_grid(synthetic):
    dy, dx = label_offset(*synthetic)
    assert abs(dy) < 0.03 and abs(dx) < 0.03


@pytest.mark.parametrize("offset", [(0.4, -0.3), (-0.7, 0.2), (1.3, 0.6), (0.0, -1.0)])
def test_label_offset_measures_a_known_offset(synthetic, offset):
    images, labels = synthetic
    # The image moved down by dy: label pixel y now annotates image point y + dy.
    dy, dx = label_offset(moved(images, offset), labels)
    assert dy == pytest.approx(offset[0], abs=0.05) and dx == pytest.approx(offset[1], abs=0.05)


def test_a_blob_one_pixel_below_its_label_reads_plus_one():
    """The sign convention on a hand-made case: a dark 3 x 3 blob drawn one row below its label."""
    image = np.ones((24, 24))
    image[11:14, 9:12] = 0.0
    labels = np.ones((24, 24), np.uint8)
    labels[10:13, 9:12] = 0
    # The correlation is symmetric about its peak, so the parabola adds nothing.
    assert label_offset(image, labels) == pytest.approx((1.0, 0.0), abs=1e-9)


@pytest.mark.parametrize("offset", [(0.6, 0.15), (-0.45, 0.8)])
def test_register_removes_the_offset(synthetic, offset):
    images, labels = synthetic
    shifted = moved(images, offset)
    registered = register(shifted, offset)
    assert registered.dtype == np.float32 and registered.shape == images.shape
    dy, dx = label_offset(registered, labels)
    assert abs(dy) < 0.05 and abs(dx) < 0.05
    # and the pixels themselves come back (to the two resamplings' difference, which is
    # largest on the pixel noise), away from the borders the Fourier shift wraps
    inner = (slice(None), slice(8, -8), slice(8, -8))
    rms = lambda a: float(np.sqrt(np.mean((a[inner] - images[inner]) ** 2)))  # noqa: E731
    assert rms(registered) < 0.35 * rms(shifted)  # a wrong sign: about 2x


def test_register_by_zero_is_the_image_itself(synthetic):
    images = synthetic[0]
    assert register(images, (0.0, 0.0)) is images


@pytest.mark.parametrize("images, labels, match", [
    (np.zeros((20, 20)), np.ones((20, 20)), "one class only"),
    (np.zeros((20, 20)), np.ones((20, 21)), "one shape"),
    (np.zeros((6, 6)), np.ones((6, 6)), "too small"),
])
def test_label_offset_refuses_what_it_cannot_measure(images, labels, match):
    with pytest.raises(ValueError, match=match):
        label_offset(images, labels)


def test_label_offset_refuses_an_offset_at_the_edge_of_the_search(synthetic):
    images, labels = synthetic
    with pytest.raises(ValueError, match="edge of the"):
        label_offset(moved(images, (2.0, 0.0)), labels, search=2)


# The model registers whole images before it predicts, so a model trained with an offset
# predicts on image I what the same weights without one predict on register(I).

def small_models(shift):
    base = dict(base=2, depth=3, dropout=0.5, seed=4, input_mean=0.5, input_std=0.25)
    shifted, plain = UNet(**base, input_shift=shift), UNet(**base)
    rng = np.random.default_rng(4)
    for p, q in zip(shifted.parameters(), plain.parameters()):
        p.data = q.data = q.data + 0.05 * rng.standard_normal(q.data.shape).astype(np.float32)
    return shifted, plain


def test_prediction_registers_the_image_first(rng):
    shift = (0.6, -0.35)
    shifted, plain = small_models(shift)
    image = rng.random((61, 70)).astype(np.float32)
    expected = predict.predict_probabilities(plain, register(image, shift), 76)
    np.testing.assert_array_equal(predict.predict_probabilities(shifted, image, 76), expected)
    assert not np.allclose(predict.predict_probabilities(plain, image, 76), expected, atol=1e-3)


def test_tta_registers_before_it_turns_the_image(rng):
    """The offset is in the image's own frame: registering each turned copy instead would move
    it the wrong way in all but one of the eight views."""
    shift = (0.6, -0.35)
    shifted, plain = small_models(shift)
    image = rng.random((64, 64)).astype(np.float32)
    expected = predict.predict_with_tta(plain, register(image, shift), 76)
    np.testing.assert_array_equal(predict.predict_with_tta(shifted, image, 76), expected)


@pytest.mark.parametrize("shift, match", [
    ((0.5,), "two numbers"), (0.5, "two numbers"), (("a", 0.0), "real number"),
    ((float("nan"), 0.0), "input_shift must be"), ((9.0, 0.0), "input_shift must be"),
])
def test_unet_checks_its_input_shift(shift, match):
    with pytest.raises((TypeError, ValueError), match=match):
        UNet(base=2, depth=2, input_shift=shift)


def test_training_measures_the_offset_on_its_training_images_only(monkeypatch, synthetic):
    images, labels = synthetic[0][:2], synthetic[1][:2]
    images = np.concatenate([moved(images, (0.5, -0.25)), images[:1]]).astype(np.float32)  # the last one held out
    labels = np.concatenate([labels, labels[:1]])
    monkeypatch.setattr("cunet.train.make_synthetic", lambda n, size, seed: (images, labels, None))
    config = TrainConfig(tile=76, base=2, depth=3, steps=1, lr=0.001, synthetic_images=3, val_fraction=0.34,
                         input_shift=None)
    data = load_data(config)
    assert config.input_shift == list(label_offset(images[:2], labels[:2]))
    assert config.input_shift == pytest.approx([0.5, -0.25], abs=0.05)
    np.testing.assert_array_equal(np.stack(data.sampler.images), register(images[:2], config.input_shift))
    assert config.input_mean == pytest.approx(float(np.mean(data.sampler.images)))
    np.testing.assert_array_equal(data.val_images, images[2:])  # prediction registers these itself


def test_checkpoints_carry_the_shift_and_older_ones_have_none(tmp_path):
    from test_predict import write_checkpoint

    from cunet.checkpoint import save_checkpoint
    from cunet.device import get_device

    shifted, plain = small_models((0.6, -0.35))
    config = dict(tile=76, **{k: v for k, v in plain.config.items() if k not in ("in_channels", "n_classes",
                                                                               "input_shift")})
    old = save_checkpoint(tmp_path / "old.npz", plain.state_dict(), [], dict(step=0, config=config))  # none stored
    assert predict.model_from_checkpoint(old, get_device("cpu"))[0].config["input_shift"] == [0.0, 0.0]
    path = write_checkpoint(tmp_path / "new.npz", shifted, tile=76)
    assert predict.model_from_checkpoint(path, get_device("cpu"))[0].config["input_shift"] == [0.6, -0.35]
    # (chunked prediction of such a checkpoint: tests/test_dask_predict.py)


def test_the_isbi_preset_measures_the_shift_and_the_command_line_overrides_it():
    from cunet import train

    device = train.get_device("cpu")
    preset = ["--preset", "isbi-cpu-1h", "--data", "somewhere"]
    assert train.resolve_config(train.parse_args(preset), device).input_shift is None  # measured at the start
    assert train.resolve_config(train.parse_args([*preset, "--input-shift", "0,0"]), device).input_shift == [0, 0]
    plain = train.resolve_config(train.parse_args(["--steps", "1"]), device)
    assert plain.input_shift == [0.0, 0.0]
    assert train.resolve_config(train.parse_args(["--input-shift", "auto"]), device).input_shift is None
    assert train.resolve_config(train.parse_args(["--input-shift", "0.5,-1"]), device).input_shift == [0.5, -1.0]
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--input-shift", "0.5"])
    assert exit_.value.code == 2
    with pytest.raises(ValueError, match="--input-shift must be two offsets of at most 8 px"):
        train.resolve_config(train.parse_args(["--input-shift", "0,12"]), device)
