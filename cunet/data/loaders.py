"""Loading EM data sets from disk into the arrays the rest of cunet uses.

Two layouts are understood:

* **ISBI stacks**: a folder holding ``train-volume.tif`` (the raw slices) and
  ``train-labels.tif`` (the masks), each one multi-page TIFF of N slices.
* **A folder pair**: ``images/`` and ``labels/`` holding one 2-D PNG or TIFF file per
  slice, matched by file name without extension (``images/a.tif`` pairs with
  ``labels/a.png``).

Whatever the layout, the result is the same: images as float32 in [0, 1], shape
[N, H, W], scaled by the range of their dtype (uint8 / 255, uint16 / 65535); labels as
uint8 class indices, shape [N, H, W].

Label convention. ISBI 2012 masks are "in-out": 255 = cell interior, 0 = membrane. They
become class 1 (cell) and class 0 (membrane). A mask that already holds class indices
0..C-1 is kept as it is. Anything else (grey levels from a resized or JPEG-compressed
mask, negative or fractional values, a mix of both conventions) is refused with an error
that names the file, because silently guessing would train the network on wrong targets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

ISBI_VOLUME = "train-volume.tif"
ISBI_LABELS = "train-labels.tif"
#: File types a folder data set may hold (compared case-insensitively).
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass(frozen=True)
class Dataset:
    """Images and labels loaded from one place, with a name for every slice.

    ``images`` float32 [N, H, W] in [0, 1]; ``labels`` uint8 [N, H, W] class indices;
    ``names`` one string per slice (``"train-volume.tif[3]"`` or a file stem), so that a
    split or a figure can say exactly which slices it used; ``source`` where it came from.
    """

    images: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices) -> "Dataset":
        """The slices at ``indices`` (e.g. ``split.train``), in that order."""
        idx = [int(i) for i in indices]
        return Dataset(self.images[idx], self.labels[idx], tuple(self.names[i] for i in idx), self.source)


# --------------------------------------------------------------------------- images


def image_to_float(array: np.ndarray, source: str) -> np.ndarray:
    """Scale an image to float32 in [0, 1] by the range of its dtype.

    uint8 is divided by 255, uint16 by 65535 (any unsigned type by its maximum), bool
    becomes 0/1. Floating-point images must already lie in [0, 1]: a float has no
    natural range to scale by, so anything else is an error rather than a guess. Signed
    integers are refused for the same reason. ``source`` names the file in errors.
    """
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.unsignedinteger):
        return (array.astype(np.float64) / np.iinfo(array.dtype).max).astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"{source}: floating-point image must hold finite values in [0, 1], "
                f"found range [{np.nanmin(array)}, {np.nanmax(array)}]"
            )
        return array.astype(np.float32)
    raise ValueError(
        f"{source}: image dtype {array.dtype} has no known intensity range; "
        "expected unsigned integers (uint8, uint16), bool, or floats in [0, 1]"
    )


# --------------------------------------------------------------------------- labels


def _label_values(array: np.ndarray, source: str) -> np.ndarray:
    """The distinct values of a mask, checked to be non-negative integers."""
    values = np.unique(array)
    if array.dtype == bool:
        return values.astype(np.int64)
    if np.issubdtype(array.dtype, np.floating) and not np.all(values == np.round(values)):
        bad = values[values != np.round(values)][:5]
        raise ValueError(f"{source}: label values must be integers, found {bad.tolist()}")
    if values.size and values.min() < 0:
        raise ValueError(f"{source}: label values must be >= 0, found {values.min()}")
    return values.astype(np.int64)


def label_convention(array: np.ndarray, source: str) -> str:
    """Say which convention a mask uses: ``"in-out"``, ``"indices"`` or ``"blank"``.

    ``"in-out"``: values within {0, 255} with some 255 (ISBI; 255 = cell).
    ``"indices"``: class indices, every value below 255, some value above 0.
    ``"blank"``: all zero, which fits both. Anything else raises ValueError naming
    ``source`` and the values found.
    """
    values = _label_values(array, source)
    if values.size == 0 or values.max() == 0:
        return "blank"
    if values.max() < 255:
        return "indices"
    if set(values.tolist()) <= {0, 255}:
        return "in-out"
    shown = values[(values != 0) & (values != 255)][:8].tolist()
    raise ValueError(
        f"{source}: unexpected label values {shown}: expected either the ISBI in-out "
        "convention (only 0 = membrane and 255 = cell) or class indices 0..C-1 (< 255)"
    )


def normalise_labels(labels: list[np.ndarray], sources: list[str], n_classes: int | None = None) -> list[np.ndarray]:
    """Turn a data set's masks into uint8 class indices, all in one convention.

    ISBI in-out masks map 255 -> 1 (cell) and 0 -> 0 (membrane); index masks stay as
    they are. Mixing the conventions within one data set is an error (a {0, 1} mask next
    to a {0, 255} one means one of them is wrong). With ``n_classes`` given every value
    must be below it; without it the values used across the data set must be exactly
    0..C-1 with none missing, which catches grey-level masks such as {0, 128}.
    """
    conventions = [label_convention(a, s) for a, s in zip(labels, sources)]
    used = {c for c in conventions if c != "blank"}
    if len(used) > 1:
        first = {c: sources[conventions.index(c)] for c in used}
        raise ValueError(
            "labels mix conventions: "
            + "; ".join(f"{first[c]} uses {c}" for c in sorted(used))
            + ": expected all masks in one convention (0/255 in-out, or class indices 0..C-1)"
        )
    out = [(a == 255).astype(np.uint8) if c == "in-out" else a.astype(np.uint8) for a, c in zip(labels, conventions)]
    _check_classes(out, sources, n_classes)
    return out


def _check_classes(labels: list[np.ndarray], sources: list[str], n_classes: int | None) -> None:
    """Check class indices against ``n_classes``, or for gaps when it is not given."""
    per_file = [np.unique(a) for a in labels]
    if n_classes is not None:
        for values, source in zip(per_file, sources):
            if values.size and values.max() >= n_classes:
                raise ValueError(f"{source}: label value {values.max()} is not a class index below n_classes={n_classes}")
        return
    used = set(np.concatenate(per_file).tolist()) if per_file else set()
    missing = sorted(set(range(max(used, default=0) + 1)) - used)
    if missing:
        raise ValueError(
            f"labels use values {sorted(used)[:10]} but never {missing[:10]}: expected class indices "
            "0..C-1 without gaps (pass n_classes= if some classes are truly absent)"
        )


# --------------------------------------------------------------------------- files


def _read_tiff(path: Path) -> np.ndarray:
    """Read a TIFF file, turning any reader failure into an error that names the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return tifffile.imread(path)
    except Exception as exc:  # tifffile raises several types for corrupt files
        raise ValueError(f"{path}: cannot be read as a TIFF file ({type(exc).__name__}: {exc})") from exc


def _read_png(path: Path, is_label: bool) -> np.ndarray:
    """Read a single-channel PNG with Pillow (palette PNGs only as labels: their indices are classes)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            array = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"{path}: cannot be read as a PNG file ({type(exc).__name__}: {exc})") from exc
    single_channel = {"1", "L", "I", "F"} | ({"P"} if is_label else set())
    if mode not in single_channel and not mode.startswith("I;16"):
        kind = "label (class indices)" if is_label else "greyscale image"
        raise ValueError(f"{path}: Pillow mode {mode!r}: expected a single-channel {kind}")
    if mode == "I" and array.size and array.min() >= 0 and array.max() <= 65535:
        array = array.astype(np.uint16)  # 16-bit PNGs open as 32-bit 'I' in some Pillow versions
    return array


def read_slice(path: Path, is_label: bool = False) -> np.ndarray:
    """Read one 2-D image or mask file (PNG or TIFF), erroring clearly on anything else."""
    path = Path(path)
    array = _read_png(path, is_label) if path.suffix.lower() == ".png" else _read_tiff(path)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{path}: shape {array.shape}: expected one 2-D single-channel slice")
    return array


def _read_stack(path: Path) -> np.ndarray:
    """Read a multi-page TIFF as [N, H, W] (a single page becomes N = 1)."""
    array = _read_tiff(path)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"{path}: shape {array.shape}: expected a stack of 2-D single-channel slices [N, H, W]")
    return array


# --------------------------------------------------------------------------- layouts


def load_isbi(volume_path, labels_path, n_classes: int | None = None) -> Dataset:
    """Load an ISBI-style pair of multi-page TIFFs (raw slices + masks) as a Dataset."""
    volume_path, labels_path = Path(volume_path), Path(labels_path)
    volume, masks = _read_stack(volume_path), _read_stack(labels_path)
    if len(volume) != len(masks):
        raise ValueError(
            f"slice count mismatch: {volume_path} has {len(volume)} slices, {labels_path} has {len(masks)}: "
            "expected one mask per slice"
        )
    if volume.shape != masks.shape:
        raise ValueError(
            f"shape mismatch: {volume_path} slices are {volume.shape[1:]}, {labels_path} slices are "
            f"{masks.shape[1:]}: expected equal slice shapes"
        )
    names = [f"{volume_path.name}[{i}]" for i in range(len(volume))]
    label_sources = [f"{labels_path}[slice {i}]" for i in range(len(volume))]
    images = image_to_float(volume, str(volume_path))
    labels = np.stack(normalise_labels(list(masks), label_sources, n_classes))
    return Dataset(images, labels, tuple(names), str(volume_path.parent))


def _natural_key(name: str):
    """Sort key that puts ``slice2`` before ``slice10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _files_by_stem(folder: Path) -> dict[str, Path]:
    """Map file stem -> path for the image files of a folder (hidden files skipped)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in found:
            raise ValueError(f"{folder}: two files share the name {path.stem!r} ({found[path.stem].name}, {path.name})")
        found[path.stem] = path
    if not found:
        raise FileNotFoundError(f"{folder}: found no image files: expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    return found


def _match_pairs(images: dict[str, Path], labels: dict[str, Path], image_dir: Path, label_dir: Path) -> list[str]:
    """The names present in both folders, or an error listing what is unmatched."""
    only_images = sorted(set(images) - set(labels), key=_natural_key)
    only_labels = sorted(set(labels) - set(images), key=_natural_key)
    if only_images or only_labels:
        raise ValueError(
            f"{image_dir} has {len(images)} images and {label_dir} has {len(labels)} labels, matched by file name: "
            f"images without a label: {only_images[:10]}; labels without an image: {only_labels[:10]}"
        )
    return sorted(images, key=_natural_key)


def load_folder(path, images_dir: str = "images", labels_dir: str = "labels", n_classes: int | None = None) -> Dataset:
    """Load a folder holding ``images/`` and ``labels/`` with one file per slice, matched by name."""
    root = Path(path)
    image_dir, label_dir = root / images_dir, root / labels_dir
    image_files, label_files = _files_by_stem(image_dir), _files_by_stem(label_dir)
    names = _match_pairs(image_files, label_files, image_dir, label_dir)
    images, masks = [], []
    for name in names:
        image, mask = read_slice(image_files[name]), read_slice(label_files[name], is_label=True)
        if image.shape != mask.shape:
            raise ValueError(
                f"shape mismatch: {image_files[name]} is {image.shape}, {label_files[name]} is {mask.shape}: "
                "expected a mask of the image's shape"
            )
        if images and image.shape != images[0].shape:
            raise ValueError(
                f"{image_files[name]} is {image.shape} but {image_files[names[0]]} is {images[0].shape}: "
                "expected all slices of a data set to share one shape"
            )
        images.append(image_to_float(image, str(image_files[name])))
        masks.append(mask)
    labels = normalise_labels(masks, [str(label_files[n]) for n in names], n_classes)
    return Dataset(np.stack(images), np.stack(labels), tuple(names), str(root))


def load_dataset(path, n_classes: int | None = None) -> Dataset:
    """Load a data set folder in either layout (ISBI stacks, or images/ + labels/).

    Looks first for ``train-volume.tif`` + ``train-labels.tif``, then for the ``images/``
    and ``labels/`` sub-folders; raises FileNotFoundError saying what it looked for when
    neither is there (or when only one half of a layout is).
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: expected a folder holding {ISBI_VOLUME} + {ISBI_LABELS}, or images/ + labels/")
    isbi = [(root / ISBI_VOLUME).exists(), (root / ISBI_LABELS).exists()]
    pair = [(root / "images").is_dir(), (root / "labels").is_dir()]
    if all(isbi):
        return load_isbi(root / ISBI_VOLUME, root / ISBI_LABELS, n_classes)
    if all(pair):
        return load_folder(root, n_classes=n_classes)
    if any(isbi):
        missing = ISBI_LABELS if isbi[0] else ISBI_VOLUME
        raise FileNotFoundError(f"{root}: found one ISBI stack but not {missing}")
    if any(pair):
        missing = "labels/" if pair[0] else "images/"
        raise FileNotFoundError(f"{root}: found one of images/ and labels/ but not {missing}")
    raise FileNotFoundError(
        f"{root}: found no data set: looked for the ISBI stacks {ISBI_VOLUME} + {ISBI_LABELS}, "
        "and for the sub-folders images/ + labels/ (PNG or TIFF files matched by name)"
    )
