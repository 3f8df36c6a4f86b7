"""The U-Net's ops, one module per family: checks, CPU path, and shared launch code.

Importing this package declares every kernel module, which is how the compile check
(``python -m cunet.kernels check``) finds them all.
"""
from .add import add_inplace
from .conv2d import conv2d_backward_input, conv2d_backward_params, conv2d_forward
from .crop_concat import crop_concat_backward, crop_concat_forward
from .dropout import dropout_backward, dropout_forward, dropout_mask
from .maxpool import maxpool2x2_backward, maxpool2x2_forward
from .random import philox_bits
from .relu import relu_backward, relu_forward
from .sgd import sgd_momentum_update, weight_average_update
from .softmax_ce import softmax_ce_backward, softmax_ce_check, softmax_ce_forward
from .upconv import upconv2x2_backward_input, upconv2x2_backward_params, upconv2x2_forward

__all__ = [
    "conv2d_forward", "conv2d_backward_input", "conv2d_backward_params",
    "maxpool2x2_forward", "maxpool2x2_backward",
    "upconv2x2_forward", "upconv2x2_backward_input", "upconv2x2_backward_params",
    "crop_concat_forward", "crop_concat_backward",
    "relu_forward", "relu_backward",
    "dropout_forward", "dropout_backward", "dropout_mask", "philox_bits",
    "softmax_ce_check", "softmax_ce_forward", "softmax_ce_backward",
    "sgd_momentum_update", "weight_average_update", "add_inplace",
]
