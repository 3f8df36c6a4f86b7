"""Every U-Net op as a differentiable Function: forward and backward in a few lines each.

Each class calls the op code in ``cunet.ops`` (which picks the device from the arrays)
and saves exactly what its backward needs. Shapes are checked by the ops themselves.
Backward returns fresh arrays, which autograd may accumulate into in place.
"""
from __future__ import annotations

from cunet import ops
from cunet.autograd import Function, Tensor


class Conv2dFn(Function):
    """Valid (unpadded) convolution, stride 1, 3x3 or 1x1, with an optional fused ReLU."""

    def forward(self, x, w, b, relu=False):
        y = ops.conv2d_forward(x, w, b, relu=relu)
        self.x, self.w, self.y, self.relu = x, w, (y if relu else None), relu
        return y

    def backward(self, dy):
        if self.relu:  # the fused ReLU's backward first: dy * [y > 0], in place (dy is ours alone)
            dy = ops.relu_backward(self.y, dy, out=dy)
        x_in = self.inputs[0]
        dx = ops.conv2d_backward_input(dy, self.w) if x_in.requires_grad else None
        dw, db = ops.conv2d_backward_params(self.x, dy)
        return dx, dw, db


class ReLUFn(Function):
    """max(x, 0) as a separate op (the convolutions fuse it instead)."""

    def forward(self, x):
        self.y = ops.relu_forward(x)
        return self.y

    def backward(self, dy):
        return (ops.relu_backward(self.y, dy),)


class MaxPool2x2Fn(Function):
    """2x2 max-pool, stride 2; the backward routes each gradient to the recorded argmax."""

    def forward(self, x):
        y, self.argmax = ops.maxpool2x2_forward(x)
        self.input_shape = tuple(x.shape)
        return y

    def backward(self, dy):
        # the argmax came from maxpool2x2_forward: no need to copy it back to check its codes
        return (ops.maxpool2x2_backward(dy, self.argmax, self.input_shape, checked=True),)


class UpConv2x2Fn(Function):
    """2x2 up-convolution (transposed convolution), stride 2."""

    def forward(self, x, w, b):
        self.x, self.w = x, w
        return ops.upconv2x2_forward(x, w, b)

    def backward(self, dy):
        dx = ops.upconv2x2_backward_input(dy, self.w) if self.inputs[0].requires_grad else None
        dw, db = ops.upconv2x2_backward_params(self.x, dy)
        return dx, dw, db


class CropConcatFn(Function):
    """Centre crop of the skip tensor joined on channels with the upsampled tensor (skip first)."""

    def forward(self, skip, up):
        self.skip_shape = tuple(skip.shape)
        return ops.crop_concat_forward(skip, up)

    def backward(self, dy):
        return ops.crop_concat_backward(dy, self.skip_shape)


class DropoutFn(Function):
    """Inverted drop-out; the mask is regenerated from (seed, stream) in backward, never stored."""

    def forward(self, x, p, seed, stream):
        self.p, self.seed, self.stream = p, seed, stream
        return ops.dropout_forward(x, p, seed, stream)

    def backward(self, dy):
        return (ops.dropout_backward(dy, self.p, self.seed, self.stream),)


class SoftmaxCrossEntropyFn(Function):
    """Weighted per-pixel softmax cross-entropy; a one-element loss (the mean over pixels)."""

    def forward(self, logits, labels, weights):
        # Validate (and upload host labels and weights) once for forward and backward: on a
        # GPU each validation of a device array copies it to the host, a synchronisation.
        self.labels, self.weights = ops.softmax_ce_check(logits, labels, weights)
        loss, self.probs = ops.softmax_ce_forward(logits, self.labels, self.weights, checked=True)
        return loss

    def backward(self, grad):
        scale = 1.0 if grad is None else float(Tensor(grad).item())
        return (ops.softmax_ce_backward(self.probs, self.labels, self.weights, grad_loss=scale, checked=True),)
