"""The optimiser: SGD with momentum (Caffe's convention, as the U-Net paper trained), one
fused kernel per tensor, and the running average of the weights it visits (WeightAverage).

    v <- momentum * v - lr * (g + weight_decay * p)
    p <- p + v

The paper uses momentum 0.99 with a batch of one large tile: with so few samples per
step, a high momentum lets many previous samples shape each update.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from cunet.autograd import Tensor
from cunet.device import runtime_of
from cunet.nn import Parameter
from cunet.ops import sgd_momentum_update, weight_average_update


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
        self.velocities = _on_params_device(self.params, state["velocities"], "optimiser state: velocity")
        self.lr, self.momentum, self.weight_decay = state["lr"], state["momentum"], state["weight_decay"]


class WeightAverage:
    """An exponential moving average of the parameters (Polyak averaging), one kernel per tensor.

    After step t the average moves towards the weights by 1 - decay_t, with
    decay_t = min(decay, (1 + t) / (10 + t)): the first steps' weights, far from any minimum,
    are forgotten quickly, and from t ~ 1 / (1 - decay) on the average spans the last
    ~1 / (1 - decay) steps. With a batch of one tile SGD keeps moving around a minimum;
    the average of where it went sits nearer the middle (README: the ISBI recipe measures it).
    ``swapped_in`` puts the average into the model for validation, and back.
    """

    def __init__(self, params: list[Parameter], decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"the weight average needs 0 < decay < 1, got {decay}")
        self.params, self.decay = list(params), decay
        self.averages = [self._copy(p.data) for p in self.params]

    @staticmethod
    def _copy(data):
        runtime = runtime_of(data)
        return data.copy() if runtime is None else runtime.to_device(Tensor(data).numpy())

    def decay_at(self, step: int) -> float:
        """The decay of the update after step ``step`` (counted from 1)."""
        return min(self.decay, (1 + step) / (10 + step))

    def update(self, step: int) -> None:
        """Move every average towards its parameter, after SGD step ``step``."""
        decay = self.decay_at(step)
        for p, a in zip(self.params, self.averages):
            weight_average_update(a, p.data, decay)

    @contextmanager
    def swapped_in(self):
        """The averages in the parameters' place for the ``with`` block (the parameters are restored after it)."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        for i, p in enumerate(self.params):   # the arrays trade places, nothing is copied
            p.data, self.averages[i] = self.averages[i], p.data

    def host_averages(self) -> list[np.ndarray]:
        """NumPy copies of the averages, in parameter order."""
        return [Tensor(a).numpy().copy() for a in self.averages]

    def load(self, averages: list[np.ndarray]) -> None:
        """Restore saved averages (shapes must match the parameters)."""
        self.averages = _on_params_device(self.params, averages, "weight average")


def _on_params_device(params: list[Parameter], arrays: list[np.ndarray], what: str) -> list:
    """Copies of saved per-parameter arrays in the parameters' dtype, on their device; a
    ValueError naming ``what`` if their number or a shape does not fit the parameters."""
    if len(arrays) != len(params):
        raise ValueError(f"{what}: {len(arrays)} tensors saved, the model has {len(params)} parameters")
    for i, (p, a) in enumerate(zip(params, arrays)):
        if tuple(a.shape) != p.shape:
            raise ValueError(f"{what} {i} has shape {tuple(a.shape)}, parameter has {p.shape}")
    runtime = runtime_of(params[0].data) if params else None
    return [np.array(a, dtype=p.dtype) if runtime is None else runtime.to_device(np.asarray(a, p.dtype))
            for p, a in zip(params, arrays)]
