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

Inputs are read exactly as training reads them (``cunet.data.loaders.read_stack``): 8- and
16-bit greyscale scaled by their range, floats in [0, 1]; a colour image is refused unless
its channels are equal, and an unreadable file is an error naming it.

Output names. Each input image is named by its full file name, extension included, and
each page of a multi-page TIFF adds its 3-digit index: ``a.png`` -> ``a.png``, page 2 of
``stack.tif`` -> ``stack.tif.002``. So ``a.png`` and ``a.tif`` in one folder never share
an output. For each such ``NAME`` it writes ``NAME.prob.tif`` (float32 class
probabilities, one page per class), ``NAME.mask.png`` (the arg-max labels; for two classes
in the ISBI convention: 255 = cell, 0 = membrane) and, with ``--overlay``,
``NAME.overlay.png``. Existing files are never overwritten: if any output would replace
one, predict stops before predicting anything and names it (use a new ``--output``
folder). A bad ``--output`` (a file, or a path under one) is reported before any work.

Images larger than memory. An ``--output`` ending in ``.zarr`` predicts one 2-D image (a
TIFF read lazily, a ``.zarr`` array, or a PNG) chunk by chunk on a Dask cluster
(``cunet.scale.dask_predict``, the ``dist`` extra) and writes the class probabilities as a
zarr array [n_classes, H, W] float32, equal bit for bit to what this command computes in
memory:

    python -m cunet.predict --checkpoint ckpt.npz --input big.tif --output big.prob.zarr \\
        [--chunk N] [--scheduler tcp://host:port] [--workers N] [--memory-limit 2GiB]

``--chunk`` (pixels, a multiple of the tile step; default: the multiple nearest 2048),
``--workers`` and ``--memory-limit`` (per worker) size the local cluster started when no
``--scheduler`` is given. Tiles run one at a time (``--batch 1``), without ``--tta``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from cunet.autograd import Tensor, no_grad
from cunet.checkpoint import CheckpointError, load_checkpoint
from cunet.data.loaders import image_files, image_to_float, read_slice, read_stack
from cunet.data.tiling import extract_tile, plan_tiles
from cunet.device import DEVICE_NAMES, Device, DeviceUnavailableError, add_math_argument, get_device
from cunet.runlog import current_umask
from cunet.unet import InvalidSizeError, UNet


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax over ``axis`` (host side: the class axis is tiny)."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def predict_plan(model: UNet, read_window, plan, result: np.ndarray, origin=(0, 0), batch: int = 1,
                 progress=None) -> np.ndarray:
    """Run the network on the tiles of ``plan`` and write each tile's owned part into ``result``.

    The one tile loop of cunet: ``predict_probabilities`` runs it over a whole image in
    memory, ``cunet.scale.dask_predict`` over the tiles of one chunk of an image larger
    than memory, so both compute every tile in exactly the same way.

    ``plan``: ``cunet.data.tiling.Tile`` objects (a whole plan from ``plan_tiles`` or a
    part of one). ``read_window(tile)`` returns the tile's input window [in, in], already
    normalised (``model.normalise``) and mirrored beyond the image's border.
    ``result``: [n_classes, h, w] float32, the region of the image whose top-left pixel is
    ``origin`` (row, column) in image coordinates; each tile's owned region ``owned -
    origin`` must lie inside it. Tiles run ``batch`` at a time (eval mode, no gradients,
    softmax over the classes); ``progress``, if given, is called with the number of tiles
    finished after each batch. Returns ``result``.
    """
    o0, o1 = origin
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for start in range(0, len(plan), batch):
                chunk = plan[start:start + batch]
                x = np.stack([read_window(t) for t in chunk])[:, None].astype(np.float32)
                probs = softmax(model(Tensor(model.device.to_device(x))).numpy())
                for t, p in zip(chunk, probs):
                    (r0, r1), (c0, c1) = t.owned
                    if r0 < o0 or c0 < o1 or r1 - o0 > result.shape[-2] or c1 - o1 > result.shape[-1]:
                        raise ValueError(f"predict_plan: tile owning {t.owned} lies outside the result, "
                                         f"which covers {result.shape[-2:]} pixels from {origin}")
                    result[:, r0 - o0:r1 - o0, c0 - o1:c1 - o1] = p[(slice(None), *t.owned_in_output())]
                if progress is not None:
                    progress(len(chunk))
    finally:
        model.train(was_training)
    return result


def predict_probabilities(model: UNet, image: np.ndarray, tile: int, batch: int = 1, progress=None) -> np.ndarray:
    """Class probabilities [n_classes, H, W] float32 for one image [H, W] (floats, as the loaders give).

    ``tile`` is the network's input size; ``progress``, if given, is called with the number
    of tiles finished after each batch (e.g. a tqdm bar's ``update``).
    """
    return _predict_prepared(model, _prepare(model, image), tile, batch, progress)


def _prepare(model: UNet, image: np.ndarray) -> np.ndarray:
    """The whole image as the network takes it (``UNet.prepare``), after checking it is one 2-D image."""
    if image.ndim != 2:
        raise ValueError(f"predict: expected one 2-D image, got shape {image.shape}")
    return model.prepare(image)  # the registration and an affine map: of the whole image, before mirroring


def _predict_prepared(model: UNet, prepared: np.ndarray, tile: int, batch: int, progress) -> np.ndarray:
    """``predict_probabilities`` of an image already through ``_prepare``."""
    plan = plan_tiles(prepared.shape, tile, model.output_size(tile), align=2 ** (model.depth - 1))
    result = np.empty((model.config["n_classes"],) + prepared.shape, np.float32)
    return predict_plan(model, lambda t: extract_tile(prepared, t), plan, result, batch=batch, progress=progress)


# The eight symmetries of the square: (number of 90-degree turns, flip left-right first).
DIHEDRAL = [(k, flip) for flip in (False, True) for k in range(4)]


def predict_with_tta(model: UNet, image: np.ndarray, tile: int, batch: int = 1, progress=None) -> np.ndarray:
    """Test-time augmentation: the mean of the predictions for the 8 flips/rotations, each mapped back.

    The image is prepared (registered, normalised) once, before it is turned: the registration
    moves it in its own frame, the one the labels were drawn in.
    """
    prepared, total = _prepare(model, image), None
    for k, flip in DIHEDRAL:
        view = np.rot90(np.fliplr(prepared) if flip else prepared, k)
        probs = _predict_prepared(model, np.ascontiguousarray(view), tile, batch, progress)
        back = np.rot90(probs, -k, axes=(1, 2))
        back = back[:, :, ::-1] if flip else back
        total = back if total is None else total + back
    return (total / len(DIHEDRAL)).astype(np.float32)


def model_from_checkpoint(path, device: Device) -> tuple[UNet, dict]:
    """The trained U-Net stored in a checkpoint, on ``device``, and the run's configuration.

    Its weights are the run's running average where it kept one (``--weight-average``),
    the weights of the last step otherwise (Checkpoint.inference_params).
    """
    ckpt = load_checkpoint(path)
    c = ckpt.config
    model = UNet(1, 2, c["base"], c["depth"], c["dropout"], seed=c["seed"],
                 input_mean=c["input_mean"], input_std=c["input_std"],
                 input_shift=c.get("input_shift", (0.0, 0.0))).to(device)  # checkpoints before 2026-12-07: none
    try:
        model.load_state_dict(ckpt.inference_params)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit its own configuration: {exc}") from exc
    return model.eval(), c


def input_files(path) -> list[Path]:
    """The image files ``--input`` names: one file, or the PNG/TIFF files of a folder."""
    path = Path(path)
    if path.is_dir():
        return image_files(path)
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    return [path]


def read_inputs(path) -> list[tuple[str, np.ndarray]]:
    """(name, float image [H, W]) for one image file, every page of a TIFF stack, or every image in a folder.

    Names are unique: the file name with its extension, plus ``.NNN`` for each page of a stack.
    """
    inputs = []
    for file in input_files(path):
        stack = read_stack(file)  # the training loaders' reader: same scaling, same refusals
        if len(stack) == 1:
            inputs.append((file.name, image_to_float(stack[0], str(file))))
        else:
            inputs += [(f"{file.name}.{i:03d}", image_to_float(page, f"{file}[{i}]")) for i, page in enumerate(stack)]
    return inputs


def output_paths(folder: Path, name: str, overlay: bool) -> dict[str, Path]:
    """The files written for the input ``name``, by kind: prob.tif, mask.png and optionally overlay.png."""
    kinds = ("prob.tif", "mask.png") + (("overlay.png",) if overlay else ())
    return {kind: folder / f"{name}.{kind}" for kind in kinds}


def check_output_folder(path) -> Path:
    """``--output`` as a Path, checked before any work: a folder, or one that can be made.

    Raises ValueError when it is a file, lies under a file, or cannot be written to.
    Nothing is created here: a run that fails later leaves no empty folder behind.
    """
    folder = Path(path)
    # The nearest part of the path that exists ("." or "/" at worst): what mkdir would build on.
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        if existing == folder:
            raise ValueError(f"--output {folder}: is a file, expected a folder (it is created if missing)")
        raise ValueError(f"--output {folder}: {existing} is a file, so no folder can be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--output {folder}: {existing} is not writable")
    return folder


def check_no_overwrite(folder: Path, names: list[str], overlay: bool) -> None:
    """Refuse to start if any output file exists already: earlier results are never replaced."""
    taken = [p for name in names for p in output_paths(folder, name, overlay).values() if p.exists() or p.is_symlink()]
    if taken:
        more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
        raise ValueError(
            f"--output {folder}: {taken[0]} already exists{more}: predict never overwrites; "
            "choose a new --output folder or move the old results away"
        )


def write_outputs(folder: Path, name: str, image: np.ndarray, probs: np.ndarray, overlay: bool) -> None:
    """NAME.prob.tif, NAME.mask.png and optionally NAME.overlay.png, each created new (never overwritten)."""
    import tifffile
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = output_paths(folder, name, overlay)
    labels = probs.argmax(axis=0).astype(np.uint8)
    mask = labels * 255 if probs.shape[0] == 2 else labels
    with _create(paths["prob.tif"]) as f:
        tifffile.imwrite(f, probs.astype(np.float32))
    with _create(paths["mask.png"]) as f:
        Image.fromarray(mask).save(f, format="PNG")
    if overlay:
        with _create(paths["overlay.png"]) as f:
            Image.fromarray(overlay_image(image, labels)).save(f, format="PNG")


@contextlib.contextmanager
def _create(path: Path):
    """Write a new file whole: into a temporary file beside it, then linked into place only if
    nothing has taken the name meanwhile (os.link fails rather than replace). A crash leaves no
    half-written file under an output's name, and a file that appeared since
    ``check_no_overwrite`` is an error, not replaced."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)  # reopened by name: the image writers read the file object's name
    try:
        with open(temporary, "wb") as f:
            yield f
        os.chmod(temporary, 0o666 & ~current_umask())
        try:
            os.link(temporary, path)
        except FileExistsError:
            raise ValueError(f"{path} appeared while predicting: predict never overwrites; not replaced") from None
    finally:
        Path(temporary).unlink(missing_ok=True)


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


def is_zarr_output(path) -> bool:
    """Whether ``--output`` names a zarr array (ends in ``.zarr``): the Dask path for large images."""
    return str(path).rstrip("/\\").lower().endswith(".zarr")


# The options of the Dask path, with their defaults there (None in argparse: given or not).
DASK_DEFAULTS = dict(chunk=None, scheduler=None, workers=2, memory_limit="2GiB")


def main_large(args: argparse.Namespace) -> int:
    """``--output X.zarr``: one image predicted chunk by chunk on a Dask cluster (cunet.scale.dask_predict)."""
    try:
        from cunet.scale import dask_predict
        from dask.utils import parse_bytes
    except ImportError as exc:
        print(f"error: a .zarr --output needs the dist extra (pip install -e '.[dist]'): {exc}", file=sys.stderr)
        return 2
    try:
        if args.tta or args.overlay or args.batch != 1:
            given = [o for o, on in (("--tta", args.tta), ("--overlay", args.overlay),
                                     (f"--batch {args.batch}", args.batch != 1)) if on]
            raise ValueError(f"{', '.join(given)}: not with a .zarr --output, which predicts tile by tile "
                             "(batch 1) to equal in-memory prediction bit for bit; write a folder --output instead")
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {args.workers}")
        if args.memory_limit is not None:
            try:
                parse_bytes(args.memory_limit)
            except (ValueError, TypeError):
                raise ValueError(f"--memory-limit {args.memory_limit!r}: expected a size such as 2GiB "
                                 "or 500MB") from None
        output = dask_predict.check_output(args.output)
        device, model, tile = load_for_inference(args)
        source = Path(args.input)
        if not source.exists():
            raise FileNotFoundError(f"input {source} does not exist")
        if source.suffix.lower() == ".png":  # no lazy PNG reader: read it here, as the folder path does
            source = read_slice(source)
        options = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in DASK_DEFAULTS.items()}
        path = dask_predict.predict_large(args.checkpoint, source, output, tile=tile, device=device.name,
                                          kernels=args.kernels, math=args.math, progress=not args.quiet, **options)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except dask_predict.WorkerLostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    import zarr

    result = zarr.open_array(str(path), mode="r")
    info = result.attrs["cunet"]
    print(f"wrote {path}: {result.shape[1]} x {result.shape[2]} probabilities, chunk {info['chunk']} "
          f"(device {device.describe()}, tile {tile})")
    return 0


def main(argv=None) -> int:
    """Entry point; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m cunet.predict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_arguments(p)
    p.add_argument("--input", required=True, help="an image (PNG/TIFF), a TIFF stack, or a folder of images")
    p.add_argument("--output", required=True, help="folder for NAME.prob.tif, NAME.mask.png, NAME.overlay.png "
                   "(NAME: the input's file name; existing files are never overwritten); or X.zarr: one large "
                   "image predicted on a Dask cluster into a zarr array [class, H, W]")
    p.add_argument("--overlay", action="store_true", help="also write PNG overlays of the mask on the image")
    p.add_argument("--quiet", action="store_true")
    large = p.add_argument_group("large images (an --output ending in .zarr)")
    large.add_argument("--chunk", type=int, help="chunk side in pixels, a multiple of the tile step "
                       "(default: the multiple nearest 2048)")
    large.add_argument("--scheduler", help="a Dask scheduler's address, tcp://host:port (default: a local cluster)")
    large.add_argument("--workers", type=int, help="worker processes of the local cluster (default 2)")
    large.add_argument("--memory-limit", help="memory limit of each local worker (default 2GiB)")
    args = p.parse_args(argv)
    if is_zarr_output(args.output):
        return main_large(args)
    given = [f"--{k.replace('_', '-')}" for k in DASK_DEFAULTS if getattr(args, k) is not None]
    if given:
        print(f"error: {', '.join(given)}: only with an --output ending in .zarr (prediction on a Dask cluster)",
              file=sys.stderr)
        return 2
    try:
        output = check_output_folder(args.output)
        device, model, tile = load_for_inference(args)
        inputs = read_inputs(args.input)
        check_no_overwrite(output, [name for name, _ in inputs], args.overlay)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    predict = predict_with_tta if args.tta else predict_probabilities
    from tqdm import tqdm

    for name, image in inputs:
        n_tiles = len(plan_tiles(image.shape, tile, model.output_size(tile), 2 ** (model.depth - 1))) * (8 if args.tta else 1)
        with tqdm(total=n_tiles, unit="tile", desc=name, disable=args.quiet) as bar:
            probs = predict(model, image, tile, args.batch, progress=bar.update)
        try:
            write_outputs(output, name, image, probs, args.overlay)
        except USER_ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(f"wrote {len(inputs)} prediction(s) to {output} (device {device.describe()}, tile {tile})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
