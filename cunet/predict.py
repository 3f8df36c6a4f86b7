"""Overlap-tile inference: segment an image of any size with bounded memory.

The image is mirrored at its borders and cut into input tiles whose output tiles cover
it exactly once (``cunet.data.tiling``); the network runs on ``batch`` tiles at a time
and the outputs are stitched. Output tiles start on a grid of 2^(depth-1) pixels, the
shifts the max-pools are equivariant to, so the stitched result has no seams and does
not depend on the tile size.
"""
from __future__ import annotations

import numpy as np

from cunet.autograd import Tensor, no_grad
from cunet.data.tiling import extract_tile, plan_tiles, stitch
from cunet.unet import UNet


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax over ``axis`` (host side: the class axis is tiny)."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def predict_probabilities(model: UNet, image: np.ndarray, tile: int, batch: int = 1, progress=None) -> np.ndarray:
    """Class probabilities [n_classes, H, W] for one image [H, W] (float, as the loaders give).

    ``tile`` is the network's input size; ``progress``, if given, is called with the number
    of tiles finished after each batch (e.g. a tqdm bar's ``update``).
    """
    if image.ndim != 2:
        raise ValueError(f"predict: expected one 2-D image, got shape {image.shape}")
    out_size = model.output_size(tile)
    plan = plan_tiles(image.shape, tile, out_size, align=2 ** (model.depth - 1))
    device, was_training = model.device, model.training
    model.eval()
    outputs = []
    try:
        with no_grad():
            for start in range(0, len(plan), batch):
                chunk = plan[start:start + batch]
                x = np.stack([extract_tile(image, t) for t in chunk])[:, None].astype(np.float32)
                logits = model(Tensor(device.to_device(x))).numpy()
                outputs.extend(softmax(logits))
                if progress is not None:
                    progress(len(chunk))
    finally:
        model.train(was_training)
    return stitch(outputs, plan, (model.config["n_classes"],) + image.shape).astype(np.float32)
