"""Loaders and splits, on tiny TIFF/PNG fixtures written into tmp_path by the tests."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from cunet.data.loaders import SingleClassLabelWarning, load_dataset, load_folder, load_isbi, read_stack
from cunet.data.splits import Split, make_split

RNG = np.random.default_rng(1234)


def _isbi_folder(tmp_path, n=3, shape=(16, 20), labels=None):
    """Write train-volume.tif / train-labels.tif; return (folder, raw volume, raw labels)."""
    volume = RNG.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    if labels is None:
        labels = np.where(RNG.random((n, *shape)) < 0.7, 255, 0).astype(np.uint8)
    _write(tmp_path / "train-volume.tif", volume)
    _write(tmp_path / "train-labels.tif", labels)
    return tmp_path, volume, labels


def _pair_folder(tmp_path, names=("a", "b"), shape=(12, 10), image_ext=".png", label_ext=".png"):
    """Write images/ and labels/ with one slice per name; return (folder, images, labels) raw."""
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    images, labels = {}, {}
    for name in names:
        images[name] = RNG.integers(0, 256, size=shape, dtype=np.uint8)
        labels[name] = np.where(RNG.random(shape) < 0.5, 255, 0).astype(np.uint8)
        _write(tmp_path / "images" / f"{name}{image_ext}", images[name])
        _write(tmp_path / "labels" / f"{name}{label_ext}", labels[name])
    return tmp_path, images, labels


def _write(path, array):
    """PNG through Pillow, anything else through tifffile."""
    if path.suffix == ".png":
        Image.fromarray(array).save(path)
    else:
        tifffile.imwrite(path, array, photometric="minisblack")  # greyscale pages, never RGB


# ----------------------------------------------------------------- good inputs


def test_isbi_stacks_load_scaled_and_in_out_labels(tmp_path):
    folder, volume, labels = _isbi_folder(tmp_path)
    data = load_dataset(folder)
    assert data.images.dtype == np.float32 and data.images.shape == (3, 16, 20)
    assert data.labels.dtype == np.uint8 and data.labels.shape == (3, 16, 20)
    np.testing.assert_array_equal(data.images, (volume / 255.0).astype(np.float32))
    np.testing.assert_array_equal(data.labels, (labels == 255).astype(np.uint8))  # 255 = cell = class 1
    assert data.names == ("train-volume.tif[0]", "train-volume.tif[1]", "train-volume.tif[2]")


def test_folder_pair_matches_by_name_across_formats(tmp_path):
    folder, images, labels = _pair_folder(tmp_path, names=("s10", "s2", "s1"), image_ext=".tif", label_ext=".png")
    data = load_dataset(folder)
    assert data.names == ("s1", "s2", "s10")  # natural order, not "s1", "s10", "s2"
    for i, name in enumerate(data.names):
        np.testing.assert_array_equal(data.images[i], (images[name] / 255.0).astype(np.float32))
        np.testing.assert_array_equal(data.labels[i], labels[name] == 255)


def test_sixteen_bit_images_scale_by_65535(tmp_path):
    folder, _, _ = _pair_folder(tmp_path, names=("a",))
    raw = RNG.integers(0, 65536, size=(12, 10), dtype=np.uint16)
    (folder / "images" / "a.png").unlink()
    _write(folder / "images" / "a.tif", raw)
    data = load_folder(folder)
    np.testing.assert_array_equal(data.images[0], (raw / 65535.0).astype(np.float32))


def test_sixteen_bit_png_scales_by_65535(tmp_path):
    folder, _, _ = _pair_folder(tmp_path, names=("a",))
    raw = RNG.integers(0, 65536, size=(12, 10), dtype=np.uint16)
    Image.fromarray(raw).save(folder / "images" / "a.png")
    np.testing.assert_array_equal(load_folder(folder).images[0], (raw / 65535.0).astype(np.float32))


def test_multiclass_labels_stay_as_they_are(tmp_path):
    labels = RNG.integers(0, 3, size=(2, 8, 8), dtype=np.uint8)
    labels[0, 0, :3] = [0, 1, 2]  # every class present
    folder, _, _ = _isbi_folder(tmp_path, n=2, shape=(8, 8), labels=labels)
    np.testing.assert_array_equal(load_dataset(folder, n_classes=3).labels, labels)  # asked for outright


def test_equal_channel_colour_files_are_read_as_grey(tmp_path):
    """A grey image saved as RGB (or opaque RGBA) loses nothing: it is accepted as its one channel."""
    folder, images, _ = _pair_folder(tmp_path)
    grey = images["a"]
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(folder / "images" / "a.png")
    Image.fromarray(np.dstack([images["b"]] * 3 + [np.full_like(grey, 255)])).save(folder / "images" / "b.png")
    data = load_dataset(folder)
    np.testing.assert_array_equal(data.images[0], (grey / 255.0).astype(np.float32))
    np.testing.assert_array_equal(data.images[1], (images["b"] / 255.0).astype(np.float32))


def test_subset_keeps_names_in_step(tmp_path):
    folder, volume, _ = _isbi_folder(tmp_path, n=4)
    part = load_dataset(folder).subset([3, 1])
    assert part.names == ("train-volume.tif[3]", "train-volume.tif[1]")
    np.testing.assert_array_equal(part.images[0], (volume[3] / 255.0).astype(np.float32))


# ----------------------------------------------------------------- bad inputs


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        load_isbi(tmp_path / "nope.tif", tmp_path / "nope-labels.tif")


def test_half_an_isbi_layout_names_the_missing_stack(tmp_path):
    _write(tmp_path / "train-volume.tif", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match="train-labels.tif"):
        load_dataset(tmp_path)


def test_empty_folder_says_what_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(tmp_path)
    message = str(info.value)
    assert "train-volume.tif" in message and "train-labels.tif" in message and "images/" in message


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_dataset(tmp_path / "absent")


def test_empty_images_subfolder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(FileNotFoundError, match="images.*found no image files"):
        load_dataset(tmp_path)


def test_missing_labels_subfolder(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="labels/"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("name", ["train-labels.tif", "train-volume.tif"])
def test_unreadable_tiff_is_named(tmp_path, name):
    folder, _, _ = _isbi_folder(tmp_path)
    (folder / name).write_bytes(b"this is not a TIFF file at all")
    with pytest.raises(ValueError, match=name):
        load_dataset(folder)


def test_unreadable_png_is_named(tmp_path):
    folder, _, _ = _pair_folder(tmp_path)
    (folder / "labels" / "b.png").write_bytes(b"\x89PNG but truncated")
    with pytest.raises(ValueError, match="b.png"):
        load_dataset(folder)


@pytest.mark.parametrize("options", [dict(photometric="minisblack"), dict(photometric="minisblack", compression="zlib"),
                                     dict(imagej=True)], ids=["plain", "zlib", "imagej"])
@pytest.mark.parametrize("keep", [200, 0.5])
def test_truncated_tiff_is_named(tmp_path, options, keep):
    """Cut in half, a compressed or ImageJ stack used to come back as one slice, silently."""
    folder, _, _ = _isbi_folder(tmp_path, n=3, shape=(64, 64))
    path = folder / "train-volume.tif"
    tifffile.imwrite(path, RNG.integers(0, 256, size=(3, 64, 64), dtype=np.uint8), **options)
    data = path.read_bytes()
    path.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(ValueError, match="train-volume.tif: (cannot be read|holds no image data)"):
        read_stack(path)


def test_tiff_without_pages_says_so(tmp_path):
    path = tmp_path / "empty.tif"
    tifffile.imwrite(path, np.zeros((4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:8])  # the header alone: no image directory
    with pytest.raises(ValueError, match="empty.tif: holds no image data"):
        read_stack(path)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_os_errors_while_reading_name_the_file(tmp_path, monkeypatch, suffix):
    """A failing disk (EIO), or any reader failure, becomes an error naming the file."""
    import PIL.Image

    path = tmp_path / f"x{suffix}"
    _write(path, np.zeros((4, 4), np.uint8))

    def fail(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(PIL.Image, "open", fail)
    monkeypatch.setattr(tifffile, "TiffFile", fail)
    with pytest.raises(ValueError, match=f"x\\{suffix}: cannot be read.*Input/output error"):
        read_stack(path)


def test_decompression_bomb_is_named(tmp_path, monkeypatch):
    import PIL.Image

    _write(tmp_path / "big.png", np.zeros((64, 64), np.uint8))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses > 2x this: DecompressionBombError
    with pytest.raises(ValueError, match="big.png: cannot be read.*DecompressionBombError"):
        read_stack(tmp_path / "big.png")


def test_stack_count_mismatch(tmp_path):
    folder, _, labels = _isbi_folder(tmp_path, n=3)
    _write(folder / "train-labels.tif", labels[:2])
    with pytest.raises(ValueError, match="3 slices.*2"):
        load_dataset(folder)


def test_folder_count_mismatch_lists_unmatched(tmp_path):
    folder, _, _ = _pair_folder(tmp_path, names=("a", "b", "c"))
    (folder / "labels" / "c.png").unlink()
    with pytest.raises(ValueError, match=r"3 images.*2 labels.*\['c'\]"):
        load_dataset(folder)


def test_stack_shape_mismatch(tmp_path):
    folder, _, _ = _isbi_folder(tmp_path, n=2, shape=(8, 8))
    _write(folder / "train-labels.tif", np.zeros((2, 8, 9), np.uint8))
    with pytest.raises(ValueError, match=r"shape mismatch.*\(8, 8\).*\(8, 9\)"):
        load_dataset(folder)


def test_pair_shape_mismatch_names_both_files(tmp_path):
    folder, _, _ = _pair_folder(tmp_path)
    _write(folder / "labels" / "b.png", np.zeros((12, 11), np.uint8))
    with pytest.raises(ValueError, match="b.png.*b.png"):
        load_dataset(folder)


def test_slices_of_different_sizes(tmp_path):
    folder, _, _ = _pair_folder(tmp_path)
    _write(folder / "images" / "b.png", np.zeros((5, 5), np.uint8))
    _write(folder / "labels" / "b.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match="share one shape"):
        load_dataset(folder)


def test_grey_level_label_values_are_refused(tmp_path):
    labels = np.zeros((2, 8, 8), np.uint8)
    labels[1, 2, 2], labels[1, 3, 3] = 255, 128  # a resized or compressed in-out mask
    folder, _, _ = _isbi_folder(tmp_path, n=2, shape=(8, 8), labels=labels)
    with pytest.raises(ValueError, match=r"train-labels.tif\[slice 1\].*\[128\]"):
        load_dataset(folder)


def test_label_values_with_gaps_are_refused(tmp_path):
    labels = np.zeros((1, 8, 8), np.uint8)
    labels[0, :4] = 128
    folder, _, _ = _isbi_folder(tmp_path, n=1, shape=(8, 8), labels=labels)
    with pytest.raises(ValueError, match="without gaps"):
        load_dataset(folder, n_classes=None)  # inferred classes: 0..C-1 with none missing
    with pytest.raises(ValueError, match=r"\[0, 128\] for n_classes=2"):
        load_dataset(folder)  # the default: the U-Net's two classes
    np.testing.assert_array_equal(load_dataset(folder, n_classes=129).labels, labels)  # said outright: accepted


def test_mixed_label_conventions_are_refused(tmp_path):
    folder, _, labels = _pair_folder(tmp_path)
    _write(folder / "labels" / "b.png", (labels["b"] == 255).astype(np.uint8))  # 0/1 beside a 0/255 mask
    with pytest.raises(ValueError, match="mix conventions"):
        load_dataset(folder)


def test_colour_image_is_refused(tmp_path):
    folder, _, _ = _pair_folder(tmp_path)
    Image.fromarray(RNG.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)).save(folder / "images" / "a.png")
    with pytest.raises(ValueError, match="a.png: colour image.*convert it to greyscale"):
        load_dataset(folder)


def test_rgb_tiff_is_refused_not_read_as_a_stack(tmp_path):
    """An RGB TIFF [H, W, 3] is one colour image, not H slices of W x 3."""
    folder, _, _ = _pair_folder(tmp_path, image_ext=".tif")
    tifffile.imwrite(folder / "images" / "a.tif", RNG.integers(0, 256, size=(12, 10, 3), dtype=np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match="a.tif: colour image.*convert it to greyscale"):
        load_dataset(folder)


def test_transparent_png_is_refused(tmp_path):
    folder, images, _ = _pair_folder(tmp_path)
    alpha = np.full((12, 10), 255, np.uint8)
    alpha[0, 0] = 0
    Image.fromarray(np.dstack([images["a"]] * 3 + [alpha])).save(folder / "images" / "a.png")
    with pytest.raises(ValueError, match="a.png.*alpha"):
        load_dataset(folder)


def test_palette_tiff_image_is_refused(tmp_path):
    """A palette TIFF's values are colour-table indices, not intensities (as a mask they are classes)."""
    folder, _, _ = _pair_folder(tmp_path, image_ext=".tif")
    colormap = np.zeros((3, 256), np.uint16)
    tifffile.imwrite(folder / "images" / "a.tif", np.zeros((12, 10), np.uint8), photometric="palette", colormap=colormap)
    with pytest.raises(ValueError, match="a.tif.*PALETTE"):
        load_dataset(folder)


@pytest.mark.parametrize("stack", [False, True])
def test_nan_pixels_are_counted_and_located(tmp_path, stack):
    image = np.full((3, 12, 10), 0.5, np.float32)
    image[1, 2, 3] = image[1, 5, 5] = np.nan
    image[2, 0, 0] = np.inf
    if stack:
        folder, _, _ = _isbi_folder(tmp_path, n=3, shape=(12, 10))
        _write(folder / "train-volume.tif", image)
        expected = r"train-volume.tif: 2 NaN and 1 infinite pixel\(s\), the first at index \(1, 2, 3\)"
    else:
        folder, _, _ = _pair_folder(tmp_path, image_ext=".tif")
        _write(folder / "images" / "a.tif", image[1])
        expected = r"a.tif: 2 NaN and 0 infinite pixel\(s\), the first at index \(2, 3\)"
    with pytest.raises(ValueError, match=expected):
        load_dataset(folder)


def test_three_class_mask_is_refused_by_default(tmp_path):
    """The U-Net has two classes: a 0/1/2 mask names its file, the values and what is expected."""
    folder, _, _ = _pair_folder(tmp_path)
    _write(folder / "labels" / "b.png", RNG.integers(0, 3, size=(12, 10), dtype=np.uint8))
    _write(folder / "labels" / "a.png", RNG.integers(0, 2, size=(12, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"b.png: label values \[0, 1, 2\] for n_classes=2: expected a binary mask: 0/1, or 0/255"):
        load_dataset(folder)


@pytest.mark.parametrize("value, expected", [(0, r"class 0 \(membrane\)"), (255, r"class 1 \(cell\)")])
def test_single_class_mask_warns(tmp_path, value, expected):
    folder, _, _ = _pair_folder(tmp_path)
    _write(folder / "labels" / "b.png", np.full((12, 10), value, np.uint8))
    with pytest.warns(SingleClassLabelWarning, match="b.png: every pixel is " + expected) as record:
        data = load_dataset(folder)
    assert len(record) == 1 and len(data) == 2  # a warning, not an error; the other mask is fine


def test_single_class_slice_of_a_stack_is_named(tmp_path):
    labels = np.where(RNG.random((3, 8, 8)) < 0.5, 255, 0).astype(np.uint8)
    labels[1] = 0
    folder, _, _ = _isbi_folder(tmp_path, shape=(8, 8), labels=labels)
    with pytest.warns(SingleClassLabelWarning, match=r"train-labels.tif\[slice 1\]: every pixel is class 0"):
        load_dataset(folder)


def test_float_image_outside_unit_range_is_refused(tmp_path):
    folder, _, _ = _pair_folder(tmp_path, image_ext=".tif")
    _write(folder / "images" / "a.tif", np.full((12, 10), 3.0, np.float32))
    with pytest.raises(ValueError, match="a.tif.*\\[0, 1\\]"):
        load_dataset(folder)


# ----------------------------------------------------------------- splits


def test_tail_split_is_the_readme_split():
    split = make_split(25)
    assert split.train == list(range(20)) and split.val == [20, 21, 22, 23, 24] and split.method == "tail"


def test_seeded_split_is_reproducible_disjoint_and_complete():
    a, b, c = make_split(30, seed=7), make_split(30, seed=7), make_split(30, seed=8)
    assert a == b and a.val != c.val
    assert sorted(a.train + a.val) == list(range(30)) and not set(a.train) & set(a.val)
    assert len(a.val) == 6 and a.seed == 7


def test_explicit_split_and_json_round_trip(tmp_path):
    split = make_split(5, val=[4, 0], names=list("abcde"))
    assert split.train == [1, 2, 3] and split.val == [0, 4] and split.method == "explicit"
    assert Split.from_json(split.to_json()) == split
    split.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == split
    assert json.loads((tmp_path / "split.json").read_text())["val"] == [0, 4]


@pytest.mark.parametrize("val", [[5], [1, 1], [-1]])
def test_bad_explicit_split(val):
    with pytest.raises(ValueError, match="distinct and within"):
        make_split(5, val=val)
