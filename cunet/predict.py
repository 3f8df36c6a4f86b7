"""``python -m cunet.predict``: overlap-tile segmentation of images of any size.

    python -m cunet.predict --checkpoint runs/unet/checkpoint.npz --input slice.png --output pred/
    python -m cunet.predict --checkpoint ckpt.npz --input ../shared/data/isbi2012/train-volume.tif \\
        --output pred/ --overlay --tta

The image is mirrored at its borders and cut into input tiles whose output tiles cover
it exactly once (``cunet.data.tiling``); the network runs on ``--batch`` tiles at a time
and each result is written straight into the full-size probability map, so memory is
bounded by the tile batch plus the output, whatever the image size. Output tiles start
on a grid of 2^(depth-1) pixels, the shifts the max-pools are equivariant to, so the
stitched result has no seams and does not depend on the tile size.

For each input image ``NAME`` it writes ``NAME.prob.tif`` (float32 class probabilities,
one page per class), ``NAME.mask.png`` (the arg-max labels; for two classes in the ISBI
convention: 255 = cell, 0 = membrane) and, with ``--overlay``, ``NAME.overlay.png``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cunet.autograd import Tensor, no_grad
from cunet.checkpoint import CheckpointError, load_checkpoint
from cunet.data.loaders import IMAGE_SUFFIXES, image_to_float
from cunet.data.tiling import extract_tile, plan_tiles
from cunet.device import DEVICE_NAMES, Device, DeviceUnavailableError, add_math_argument, get_device
from cunet.unet import InvalidSizeError, UNet


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax over ``axis`` (host side: the class axis is tiny)."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def predict_probabilities(model: UNet, image: np.ndarray, tile: int, batch: int = 1, progress=None) -> np.ndarray:
    """Class probabilities [n_classes, H, W] float32 for one image [H, W] (floats, as the loaders give).

    ``tile`` is the network's input size; ``progress``, if given, is called with the number
    of tiles finished after each batch (e.g. a tqdm bar's ``update``).
    """
    if image.ndim != 2:
        raise ValueError(f"predict: expected one 2-D image, got shape {image.shape}")
    plan = plan_tiles(image.shape, tile, model.output_size(tile), align=2 ** (model.depth - 1))
    image = model.normalise(image)  # affine, so normalising before mirroring equals normalising each tile
    result = np.empty((model.config["n_classes"],) + image.shape, np.float32)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for start in range(0, len(plan), batch):
                chunk = plan[start:start + batch]
                x = np.stack([extract_tile(image, t) for t in chunk])[:, None].astype(np.float32)
                probs = softmax(model(Tensor(model.device.to_device(x))).numpy())
                for t, p in zip(chunk, probs):
                    (r0, r1), (c0, c1) = t.owned
                    result[:, r0:r1, c0:c1] = p[(slice(None), *t.owned_in_output())]
                if progress is not None:
                    progress(len(chunk))
    finally:
        model.train(was_training)
    return result


# The eight symmetries of the square: (number of 90-degree turns, flip left-right first).
DIHEDRAL = [(k, flip) for flip in (False, True) for k in range(4)]


def predict_with_tta(model: UNet, image: np.ndarray, tile: int, batch: int = 1, progress=None) -> np.ndarray:
    """Test-time augmentation: the mean of the predictions for the 8 flips/rotations, each mapped back."""
    total = None
    for k, flip in DIHEDRAL:
        view = np.rot90(np.fliplr(image) if flip else image, k)
        probs = predict_probabilities(model, np.ascontiguousarray(view), tile, batch, progress)
        back = np.rot90(probs, -k, axes=(1, 2))
        back = back[:, :, ::-1] if flip else back
        total = back if total is None else total + back
    return (total / len(DIHEDRAL)).astype(np.float32)


def model_from_checkpoint(path, device: Device) -> tuple[UNet, dict]:
    """The trained U-Net stored in a checkpoint, on ``device``, and the run's configuration."""
    ckpt = load_checkpoint(path)
    c = ckpt.config
    model = UNet(1, 2, c["base"], c["depth"], c["dropout"], seed=c["seed"],
                 input_mean=c["input_mean"], input_std=c["input_std"]).to(device)
    try:
        model.load_state_dict(ckpt.params)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit its own configuration: {exc}") from exc
    return model.eval(), c


def read_inputs(path) -> list[tuple[str, np.ndarray]]:
    """(name, float image [H, W]) for one image file, every page of a TIFF stack, or every image in a folder."""
    import tifffile
    from PIL import Image

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images in folder {path}")
        return [item for f in files for item in read_inputs(f)]
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    if path.suffix.lower() in (".tif", ".tiff"):
        array = tifffile.imread(path)
    else:
        array = np.asarray(Image.open(path).convert("L"))
    if array.ndim == 2:
        return [(path.stem, image_to_float(array, str(path)))]
    if array.ndim == 3:
        return [(f"{path.stem}_{i:03d}", image_to_float(a, f"{path}[{i}]")) for i, a in enumerate(array)]
    raise ValueError(f"{path}: expected a 2-D image or a stack of them, got shape {array.shape}")


def write_outputs(folder: Path, name: str, image: np.ndarray, probs: np.ndarray, overlay: bool) -> None:
    """NAME.prob.tif, NAME.mask.png and optionally NAME.overlay.png."""
    import tifffile
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / f"{name}.prob.tif", probs.astype(np.float32))
    labels = probs.argmax(axis=0).astype(np.uint8)
    mask = labels * 255 if probs.shape[0] == 2 else labels
    Image.fromarray(mask).save(folder / f"{name}.mask.png")
    if overlay:
        Image.fromarray(overlay_image(image, labels)).save(folder / f"{name}.overlay.png")


def overlay_image(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The grey image in RGB with predicted membrane (class 0) pixels tinted red."""
    grey = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    membrane = labels == 0
    rgb[membrane] = (0.45 * rgb[membrane] + 0.55 * np.array([255, 40, 40])).astype(np.uint8)
    return rgb


# The errors a command line turns into "error: ..." and exit code 2 (bad input, not a bug).
USER_ERRORS = (DeviceUnavailableError, CheckpointError, InvalidSizeError, FileNotFoundError, ValueError)


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """The options predict and evaluate share: checkpoint, device, kernels, math, tile, batch, tta."""
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by python -m cunet.train")
    parser.add_argument("--device", choices=DEVICE_NAMES, default="auto")
    parser.add_argument("--kernels", choices=("cuda", "numba"), default="cuda", help="on cuda: CUDA C or Numba alternates")
    add_math_argument(parser)
    parser.add_argument("--tile", type=int, help="input tile size (default: the checkpoint's training tile)")
    parser.add_argument("--batch", type=int, default=1, help="tiles per forward pass (memory grows with it)")
    parser.add_argument("--tta", action="store_true", help="average over the 8 flips/rotations (8x the time)")


def load_for_inference(args: argparse.Namespace) -> tuple[Device, UNet, int]:
    """Device, model and tile from parsed options; raises one of USER_ERRORS on bad input."""
    if args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    device = get_device(args.device, kernels=args.kernels, math=args.math)
    model, config = model_from_checkpoint(args.checkpoint, device)
    tile = args.tile or config["tile"]
    model.output_size(tile)  # a clear error naming valid sizes, before any work
    return device, model, tile


def main(argv=None) -> int:
    """Entry point; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m cunet.predict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_arguments(p)
    p.add_argument("--input", required=True, help="an image (PNG/TIFF), a TIFF stack, or a folder of images")
    p.add_argument("--output", required=True, help="folder for NAME.prob.tif, NAME.mask.png, NAME.overlay.png")
    p.add_argument("--overlay", action="store_true", help="also write PNG overlays of the mask on the image")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    try:
        device, model, tile = load_for_inference(args)
        inputs = read_inputs(args.input)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    predict = predict_with_tta if args.tta else predict_probabilities
    from tqdm import tqdm

    for name, image in inputs:
        n_tiles = len(plan_tiles(image.shape, tile, model.output_size(tile), 2 ** (model.depth - 1))) * (8 if args.tta else 1)
        with tqdm(total=n_tiles, unit="tile", desc=name, disable=args.quiet) as bar:
            probs = predict(model, image, tile, args.batch, progress=bar.update)
        write_outputs(Path(args.output), name, image, probs, args.overlay)
    print(f"wrote {len(inputs)} prediction(s) to {args.output} (device {device.describe()}, tile {tile})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
