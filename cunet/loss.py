"""The U-Net's training loss: per-pixel softmax cross-entropy, weighted by a precomputed map.

    E = (1 / P) * sum_x w(x) * -log p_{l(x)}(x),    p_k(x) = exp(a_k(x)) / sum_k' exp(a_k'(x))

over the P = N*H*W pixels of the output tiles: the weighted MEAN, so the learning rate
does not depend on the tile size or batch. w(x) is the paper's weight map (class balance
plus the border term that makes the network learn the thin separations between touching
cells; see cunet/data). With w = 1 this is the ordinary cross-entropy.
"""
from __future__ import annotations

import numpy as np

from cunet.autograd import Tensor
from cunet.functions import SoftmaxCrossEntropyFn


def weighted_cross_entropy(logits: Tensor, labels, weights=None) -> Tensor:
    """The loss above, as a one-element Tensor; ``labels`` [N,H,W] ints, ``weights`` [N,H,W] or None (all 1).

    ``labels`` and ``weights`` may be NumPy arrays whatever the logits' device: they are
    validated on the host and uploaded once (the cheapest way on a GPU, see softmax_ce_check).
    """
    if weights is None:
        weights = np.ones(tuple(labels.shape), logits.dtype)
    return SoftmaxCrossEntropyFn.apply(logits, labels=labels, weights=weights)
