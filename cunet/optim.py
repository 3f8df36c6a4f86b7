"""SGD with momentum (Caffe's convention, as the U-Net paper trained): one fused kernel per tensor.

    v <- momentum * v - lr * (g + weight_decay * p)
    p <- p + v

The paper uses momentum 0.99 with a batch of one large tile: with so few samples per
step, a high momentum lets many previous samples shape each update.
"""
from __future__ import annotations

import numpy as np

from cunet.autograd import Tensor
from cunet.device import runtime_of
from cunet.nn import Parameter
from cunet.ops import sgd_momentum_update


class SGD:
    """Momentum SGD over a list of Parameters; velocities live on the parameters' device."""

    def __init__(self, params: list[Parameter], lr: float = 0.01, momentum: float = 0.99, weight_decay: float = 0.0):
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"SGD needs lr >= 0, 0 <= momentum < 1, weight_decay >= 0; got {lr}, {momentum}, {weight_decay}")
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocities = [self._zeros_like(p) for p in self.params]

    @staticmethod
    def _zeros_like(p: Parameter):
        data = p.data
        runtime = runtime_of(data)
        return np.zeros_like(data) if runtime is None else runtime.zeros(data.shape, data.dtype)

    def step(self) -> None:
        """Apply one update from the parameters' .grad (parameters without a gradient are skipped)."""
        for p, v in zip(self.params, self.velocities):
            if p.grad is not None:
                sgd_momentum_update(p.data, v, p.grad, self.lr, self.momentum, self.weight_decay)

    def zero_grad(self) -> None:
        """Forget the gradients (the next backward writes fresh ones)."""
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        """Hyper-parameters and NumPy copies of the velocities, in parameter order."""
        return dict(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                    velocities=[Tensor(v).numpy().copy() for v in self.velocities])

    def load_state_dict(self, state: dict) -> None:
        """Restore velocities (shapes must match the parameters) and hyper-parameters."""
        velocities = state["velocities"]
        if len(velocities) != len(self.params):
            raise ValueError(f"optimiser state has {len(velocities)} velocity buffers, the model has {len(self.params)} parameters")
        for i, (p, v) in enumerate(zip(self.params, velocities)):
            if tuple(v.shape) != p.shape:
                raise ValueError(f"optimiser state: velocity {i} has shape {tuple(v.shape)}, parameter has {p.shape}")
        runtime = runtime_of(self.params[0].data) if self.params else None
        self.velocities = [np.array(v, dtype=p.dtype) if runtime is None else runtime.to_device(np.asarray(v, p.dtype))
                           for p, v in zip(self.params, velocities)]
        self.lr, self.momentum, self.weight_decay = state["lr"], state["momentum"], state["weight_decay"]
