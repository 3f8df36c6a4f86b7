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

Reading files. One reader (``read_stack``) serves training, evaluation and
``python -m cunet.predict``, so every command reads an image the same way. Only what can
be read faithfully is accepted: single-channel greyscale (8- or 16-bit, bool, or floats
in [0, 1]). A colour file (RGB/RGBA PNG, RGB TIFF) is accepted only when its colour
channels are all equal and any alpha channel is fully opaque, i.e. when it is a grey
image stored as colour; otherwise it is refused with a request to convert it to
greyscale. Every failure (a truncated or corrupt file, an I/O error, NaN pixels) raises
ValueError or FileNotFoundError with a message that starts with the file's name.

Label convention. ISBI 2012 masks are "in-out": 255 = cell interior, 0 = membrane. They
become class 1 (cell) and class 0 (membrane). A mask that already holds class indices
0..C-1 is kept as it is. Masks are checked against ``n_classes``, which defaults to 2,
the U-Net's classes: a binary mask must hold 0/1 or 0/255. Anything else (a third class,
grey levels from a resized or JPEG-compressed mask, negative or fractional values, a mix
of both conventions) is refused with an error that names the file, because silently
guessing would train the network on wrong targets. A mask holding only one class is
accepted with a ``SingleClassLabelWarning``: it is legal, but teaches nothing about the
other class, and is often an empty or inverted mask by mistake.
"""

from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

ISBI_VOLUME = "train-volume.tif"
ISBI_LABELS = "train-labels.tif"
#: File types a folder data set may hold (compared case-insensitively).
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
#: The U-Net's classes: 0 = membrane, 1 = cell (what the loaders check masks against by default).
N_CLASSES = 2
CLASS_NAMES = ("membrane", "cell")


class SingleClassLabelWarning(UserWarning):
    """A mask holds a single class: legal, but it shows the network no example of the others."""


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
        _check_unit_range(array, source)
        return array.astype(np.float32)
    raise ValueError(
        f"{source}: image dtype {array.dtype} has no known intensity range; "
        "expected unsigned integers (uint8, uint16), bool, or floats in [0, 1]"
    )


def _check_unit_range(array: np.ndarray, source: str) -> None:
    """Refuse a float image holding NaN or infinite pixels (saying how many and where) or values outside [0, 1]."""
    finite = np.isfinite(array)
    if not finite.all():
        n_nan = int(np.count_nonzero(np.isnan(array)))
        n_inf = int(finite.size - np.count_nonzero(finite)) - n_nan
        first = np.unravel_index(np.argmin(finite), array.shape)  # argmin of a bool array: the first False
        raise ValueError(
            f"{source}: {n_nan} NaN and {n_inf} infinite pixel(s), the first at index {tuple(int(i) for i in first)}: "
            "a floating-point image must hold finite values in [0, 1]"
        )
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ValueError(
            f"{source}: floating-point image must hold values in [0, 1], found range [{array.min()}, {array.max()}]"
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


def normalise_labels(labels: list[np.ndarray], sources: list[str], n_classes: int | None = N_CLASSES) -> list[np.ndarray]:
    """Turn a data set's masks into uint8 class indices, all in one convention.

    ISBI in-out masks map 255 -> 1 (cell) and 0 -> 0 (membrane); index masks stay as
    they are. Mixing the conventions within one data set is an error (a {0, 1} mask next
    to a {0, 255} one means one of them is wrong). Every value must be a class index
    below ``n_classes`` (default 2, the U-Net's classes, so a binary mask holds 0/1 or
    0/255); with ``n_classes=None`` the values used across the data set must instead be
    exactly 0..C-1 with none missing, which catches grey-level masks such as {0, 128}.
    A mask holding one class only is kept, with a ``SingleClassLabelWarning`` naming it.
    """
    conventions = [label_convention(a, s) for a, s in zip(labels, sources)]
    out = [(a == 255).astype(np.uint8) if c == "in-out" else a.astype(np.uint8) for a, c in zip(labels, conventions)]
    present = [np.unique(a) for a in out]  # the classes each mask holds
    _check_classes(present, sources, n_classes)  # first: "values [0, 1, 2]" says more than "mixed"
    used = {c for c in conventions if c != "blank"}
    if len(used) > 1:
        first = {c: sources[conventions.index(c)] for c in used}
        raise ValueError(
            "labels mix conventions: "
            + "; ".join(f"{first[c]} uses {c}" for c in sorted(used))
            + ": expected all masks in one convention (0/255 in-out, or class indices 0..C-1)"
        )
    _warn_single_class(present, sources, n_classes)
    return out


def _expected_labels(n_classes: int) -> str:
    """What masks for ``n_classes`` classes may hold, in words for an error message."""
    if n_classes == 2:
        return "a binary mask: 0/1, or 0/255 (ISBI in-out: 0 = membrane, 255 = cell)"
    return f"class indices 0..{n_classes - 1}"


def _check_classes(present: list[np.ndarray], sources: list[str], n_classes: int | None) -> None:
    """Check each mask's classes against ``n_classes``, or the data set's for gaps when it is None."""
    if n_classes is not None:
        for values, source in zip(present, sources):
            if values.size and values.max() >= n_classes:
                shown = values[:8].tolist() + (["..."] if values.size > 8 else [])
                raise ValueError(
                    f"{source}: label values {shown} for n_classes={n_classes}: expected {_expected_labels(n_classes)}"
                )
        return
    used = set(np.concatenate(present).tolist()) if present else set()
    missing = sorted(set(range(max(used, default=0) + 1)) - used)
    if missing:
        raise ValueError(
            f"labels use values {sorted(used)[:10]} but never {missing[:10]}: expected class indices "
            "0..C-1 without gaps (pass n_classes= if some classes are truly absent)"
        )


def _warn_single_class(present: list[np.ndarray], sources: list[str], n_classes: int | None) -> None:
    """Warn about every mask that holds one class only (all membrane, or all cell)."""
    for values, source in zip(present, sources):
        if values.size == 1:
            c = int(values[0])
            name = f" ({CLASS_NAMES[c]})" if n_classes == N_CLASSES else ""
            warnings.warn(
                f"{source}: every pixel is class {c}{name}: this mask shows the network no example of "
                "the other class(es) (an empty or inverted mask?)",
                SingleClassLabelWarning,
                stacklevel=3,
            )


# --------------------------------------------------------------------------- files


@contextmanager
def _reading(path: Path, kind: str):
    """Turn any failure of a third-party reader into a ValueError that names the file.

    Pillow and tifffile raise many types for a bad file: OSError for truncated data or a
    failing disk, UnidentifiedImageError, TiffFileError, ValueError ("failed to read
    81920 bytes"), DecompressionBombError, ... A user needs to know which file and why,
    never a traceback. MemoryError passes through: it says nothing about the file.
    """
    try:
        yield
    except MemoryError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read as a {kind} file ({type(exc).__name__}: {exc})") from exc


def _what(is_label: bool) -> str:
    """What a file holds, for error messages."""
    return "mask" if is_label else "image"


def _opaque(dtype: np.dtype):
    """The value of a fully opaque alpha channel of this dtype."""
    return np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1


def _greyscale(array: np.ndarray, n_colour: int, path: Path, is_label: bool) -> np.ndarray:
    """The single channel of a grey image stored with channels (last axis: colours, then alpha).

    Accepted only when nothing is lost: all ``n_colour`` colour channels equal, and every
    further (alpha) channel fully opaque. A real colour image has no one right grey
    conversion (luma weights? one channel?), so it is refused rather than guessed.
    """
    colour, extra = array[..., :n_colour], array[..., n_colour:]
    if extra.size and not np.all(extra == _opaque(extra.dtype)):
        raise ValueError(
            f"{path}: {_what(is_label)} has a transparency (alpha) channel that is not fully opaque: "
            "save it as single-channel greyscale"
        )
    if not np.all(colour == colour[..., :1]):
        raise ValueError(
            f"{path}: colour {_what(is_label)} ({n_colour} channels that differ): convert it to greyscale "
            "(one channel) first"
        )
    return colour[..., 0]


# Pillow modes with channels: the number of colour channels (the rest are alpha).
_PNG_CHANNELS = {"RGB": 3, "RGBA": 3, "LA": 1}


def _read_png(path: Path, is_label: bool) -> np.ndarray:
    """A PNG's pixels via Pillow: greyscale as it is; palette PNGs only as labels (their indices are classes)."""
    from PIL import Image

    with _reading(path, "PNG"), Image.open(path) as img:
        if img.mode in ("P", "PA") and not is_label:
            img = img.convert("RGBA")  # an image's palette entries are its colours: check them as RGB
        mode, array = img.mode, np.asarray(img)  # asarray decodes: a truncated file fails here
    if mode in _PNG_CHANNELS:
        return _greyscale(array, _PNG_CHANNELS[mode], path, is_label)
    single_channel = {"1", "L", "I", "F"} | ({"P"} if is_label else set())
    if mode not in single_channel and not mode.startswith("I;16"):
        kind = "label (class indices)" if is_label else "greyscale image"
        raise ValueError(f"{path}: Pillow mode {mode!r}: expected a single-channel {kind}")
    if mode == "I" and array.size and array.min() >= 0 and array.max() <= 65535:
        array = array.astype(np.uint16)  # 16-bit PNGs open as 32-bit 'I' in some Pillow versions
    return array


class _ErrorLog(logging.Handler):
    """Collects the ERROR records a logger emits (tifffile logs corruption rather than raising)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _read_tiff(path: Path, is_label: bool) -> np.ndarray:
    """A TIFF's first series via tifffile as [H, W] or [N, H, W]; samples per pixel (RGB) must be grey."""
    P = tifffile.PHOTOMETRIC
    # A truncated stack can come back with fewer slices: tifffile logs "invalid page offset"
    # and returns the pages it found. Any error it logs makes the file unreadable here.
    log, logger = _ErrorLog(), logging.getLogger("tifffile")
    logger.addHandler(log)
    try:
        with _reading(path, "TIFF"), tifffile.TiffFile(path) as tif:
            if not tif.pages or not tif.series:
                array = None
            else:
                series = tif.series[0]
                array, axes, photometric = series.asarray(), series.axes, tif.pages[0].photometric
    finally:
        logger.removeHandler(log)
    if log.messages:
        raise ValueError(f"{path}: cannot be read as a TIFF file (corrupt or truncated: {log.messages[0]})")
    if array is None or array.size == 0:
        raise ValueError(f"{path}: holds no image data (an empty or truncated TIFF file)")
    # Palette values are indices into a colour table: intensities only for a label.
    allowed = {P.MINISBLACK, P.RGB} | ({P.PALETTE} if is_label else set())
    if photometric not in allowed:
        raise ValueError(
            f"{path}: TIFF photometric {getattr(photometric, 'name', photometric)}: "
            f"expected a single-channel greyscale (MINISBLACK) {_what(is_label)}"
        )
    if "S" in axes:  # samples per pixel: RGB(A), or grey plus extra samples
        n_colour = 3 if photometric == P.RGB else 1
        array = _greyscale(np.moveaxis(array, axes.index("S"), -1), n_colour, path, is_label)
    return array


def read_stack(path, is_label: bool = False) -> np.ndarray:
    """Read a PNG or TIFF file as single-channel slices [N, H, W] (one 2-D image: N = 1).

    The one reader behind the loaders and ``python -m cunet.predict``. Values keep the
    file's dtype (``image_to_float`` scales images); errors name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: not a PNG or TIFF file: expected a name ending in {', '.join(IMAGE_SUFFIXES)}")
    array = _read_png(path, is_label) if suffix == ".png" else _read_tiff(path, is_label)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"{path}: shape {array.shape}: expected a 2-D single-channel image or a stack of them [N, H, W]")
    return array


def read_slice(path, is_label: bool = False) -> np.ndarray:
    """Read one 2-D image or mask file (PNG or TIFF) as [H, W], erroring clearly on anything else."""
    stack = read_stack(path, is_label)
    if len(stack) != 1:
        raise ValueError(f"{path}: shape {stack.shape}: expected one 2-D single-channel slice")
    return stack[0]


def image_files(folder) -> list[Path]:
    """The PNG/TIFF files of a folder in natural order (``s2`` before ``s10``), hidden files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    files = [p for p in folder.iterdir()
             if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        raise FileNotFoundError(f"{folder}: found no image files: expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    return sorted(files, key=lambda p: (_natural_key(p.name), p.name))


# --------------------------------------------------------------------------- layouts


def load_isbi(volume_path, labels_path, n_classes: int | None = N_CLASSES) -> Dataset:
    """Load an ISBI-style pair of multi-page TIFFs (raw slices + masks) as a Dataset."""
    volume_path, labels_path = Path(volume_path), Path(labels_path)
    volume, masks = read_stack(volume_path), read_stack(labels_path, is_label=True)
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
    """Map file stem -> path for the image files of a folder (two files with one stem are an error)."""
    found: dict[str, Path] = {}
    for path in image_files(folder):
        if path.stem in found:
            raise ValueError(f"{folder}: two files share the name {path.stem!r} ({found[path.stem].name}, {path.name})")
        found[path.stem] = path
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


def load_folder(path, images_dir: str = "images", labels_dir: str = "labels", n_classes: int | None = N_CLASSES) -> Dataset:
    """Load a folder holding ``images/`` and ``labels/`` with one file per slice, matched by name."""
    root = Path(path)
    image_dir, label_dir = root / images_dir, root / labels_dir
    image_paths, label_paths = _files_by_stem(image_dir), _files_by_stem(label_dir)
    names = _match_pairs(image_paths, label_paths, image_dir, label_dir)
    images, masks = [], []
    for name in names:
        image, mask = read_slice(image_paths[name]), read_slice(label_paths[name], is_label=True)
        if image.shape != mask.shape:
            raise ValueError(
                f"shape mismatch: {image_paths[name]} is {image.shape}, {label_paths[name]} is {mask.shape}: "
                "expected a mask of the image's shape"
            )
        if images and image.shape != images[0].shape:
            raise ValueError(
                f"{image_paths[name]} is {image.shape} but {image_paths[names[0]]} is {images[0].shape}: "
                "expected all slices of a data set to share one shape"
            )
        images.append(image_to_float(image, str(image_paths[name])))
        masks.append(mask)
    labels = normalise_labels(masks, [str(label_paths[n]) for n in names], n_classes)
    return Dataset(np.stack(images), np.stack(labels), tuple(names), str(root))


def load_dataset(path, n_classes: int | None = N_CLASSES) -> Dataset:
    """Load a data set folder in either layout (ISBI stacks, or images/ + labels/).

    Looks first for ``train-volume.tif`` + ``train-labels.tif``, then for the ``images/``
    and ``labels/`` sub-folders; raises FileNotFoundError saying what it looked for when
    neither is there (or when only one half of a layout is). ``n_classes`` (default 2,
    the U-Net's) is what the masks are checked against; see ``normalise_labels``.
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
