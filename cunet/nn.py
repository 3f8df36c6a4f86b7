"""Modules: parameters, layers, state dicts, and moving between devices.

A :class:`Module` finds its parameters and sub-modules by walking its attributes in the
order they were assigned (lists of modules included), so ``named_parameters()`` has a
stable order and stable names ("down.0.conv1.weight"): the names checkpoints use.
"""
from __future__ import annotations

import math

import numpy as np

from cunet.autograd import Tensor
from cunet.device import Device, get_device
from cunet.functions import Conv2dFn, CropConcatFn, DropoutFn, MaxPool2x2Fn, ReLUFn, UpConv2x2Fn
from cunet.ops.common import check_int, check_real
from cunet.ops.random import SEED_LIMIT


class Parameter(Tensor):
    """A leaf tensor that training updates."""

    def __init__(self, data):
        super().__init__(data, requires_grad=True)


class Module:
    """Base class: parameter discovery, train/eval mode, state dicts, device moves."""

    training = True
    device: Device = get_device("cpu")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        """Compute the output; subclasses define it."""
        raise NotImplementedError

    def children(self):
        """(name, module) for each direct sub-module, lists flattened as name.index."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def named_parameters(self, prefix: str = ""):
        """(dotted name, Parameter) for every parameter, depth first, in assignment order."""
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self.children():
            yield from child.named_parameters(prefix + name + ".")

    def parameters(self) -> list[Parameter]:
        """Every parameter, in the order of named_parameters()."""
        return [p for _, p in self.named_parameters()]

    def modules(self):
        """This module and every sub-module, depth first."""
        yield self
        for _, child in self.children():
            yield from child.modules()

    def train(self, mode: bool = True) -> Module:
        """Training mode (drop-out active) or, with mode=False, evaluation mode."""
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        """Evaluation mode: drop-out off."""
        return self.train(False)

    def to(self, device: Device) -> Module:
        """Move every parameter to ``device`` (gradients are dropped)."""
        for m in self.modules():
            m.device = device
        for _, p in self.named_parameters():
            p.data, p.grad = device.to_device(_host(p.data)), None
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameter name -> NumPy copy of its value."""
        return {name: _host(p.data).copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Load values by name; names and shapes must match exactly (a clear error lists what doesn't)."""
        params = dict(self.named_parameters())
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(f"state dict does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, p in params.items():
            value = np.asarray(state[name])
            if value.shape != p.shape:
                raise ValueError(f"state dict: {name} has shape {value.shape}, the model expects {p.shape}")
            p.data = self.device.to_device(value.astype(p.dtype, copy=False))


def _host(array) -> np.ndarray:
    return Tensor(array).numpy()


def he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """Gaussian weights with std sqrt(2 / fan_in), as in the U-Net paper (He et al. 2015)."""
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


class Conv2d(Module):
    """Valid convolution, stride 1; ``relu=True`` fuses the ReLU into the kernel's epilogue."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, relu: bool, rng: np.random.Generator):
        fan_in = in_channels * kernel_size * kernel_size
        self.weight = Parameter(he_normal(rng, (out_channels, in_channels, kernel_size, kernel_size), fan_in))
        self.bias = Parameter(np.zeros(out_channels, np.float32))
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        return Conv2dFn.apply(x, self.weight, self.bias, relu=self.relu)


class UpConv2d(Module):
    """2x2 up-convolution, stride 2 (weights [in, out, 2, 2]).

    He initialisation with fan-in = in_channels: the 2x2 windows do not overlap, so each
    output pixel receives exactly one input pixel per input channel.
    """

    def __init__(self, in_channels: int, out_channels: int, rng: np.random.Generator):
        self.weight = Parameter(he_normal(rng, (in_channels, out_channels, 2, 2), in_channels))
        self.bias = Parameter(np.zeros(out_channels, np.float32))

    def forward(self, x: Tensor) -> Tensor:
        return UpConv2x2Fn.apply(x, self.weight, self.bias)


class MaxPool2d(Module):
    """2x2 max-pool, stride 2."""

    def forward(self, x: Tensor) -> Tensor:
        return MaxPool2x2Fn.apply(x)


class ReLU(Module):
    """Stand-alone ReLU (the U-Net fuses it into its convolutions instead)."""

    def forward(self, x: Tensor) -> Tensor:
        return ReLUFn.apply(x)


class CropConcat(Module):
    """Centre-crop the skip tensor to the upsampled one's size and join them on channels."""

    def forward(self, skip: Tensor, up: Tensor) -> Tensor:
        return CropConcatFn.apply(skip, up)


class Dropout(Module):
    """Inverted drop-out with counter-based masks: call k uses Philox stream k of ``seed``.

    ``calls`` counts training-mode forwards; a checkpoint stores it, so a resumed run draws
    exactly the masks the uninterrupted run would have drawn.
    """

    def __init__(self, p: float, seed: int):
        # Checked now, not at the first training step: the same rules as ops.dropout_forward.
        self.p = check_real("Dropout", "p", p, 0.0, 1.0)
        self.seed = check_int("Dropout", "seed", seed, 0, SEED_LIMIT)
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        stream, self.calls = self.calls, self.calls + 1
        return DropoutFn.apply(x, p=self.p, seed=self.seed, stream=stream % 2**32)
