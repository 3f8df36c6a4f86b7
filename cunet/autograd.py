"""Reverse-mode automatic differentiation, in one page.

A :class:`Tensor` wraps a device array (NumPy on ``cpu``, CuPy on ``cuda``, PyOpenCL on
``opencl``). Calling a :class:`Function` runs its forward op on the arrays and, when any
input wants a gradient, returns a Tensor that remembers the Function that made it. The
Function keeps whatever its backward needs (``self.save``). ``loss.backward()`` then:

1. sorts the graph topologically (every consumer before what it consumes),
2. walks it once, calling each Function's ``backward`` with the gradient of its output
   and then dropping the Function and the tensor (so activations are freed as it goes),
3. sums gradients where a tensor fed two consumers (each U-Net skip connection does),
4. stores ``.grad`` on the leaves that asked for it (the parameters) and drops the graph.

Functions never look at the device: they call ``cunet.ops``, which dispatches on the
arrays. Activations and the gradients of non-leaf tensors are freed as soon as they have
been used, so memory falls during backward from its peak at the start (the activations
plus about one layer's gradients).
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from cunet.device import runtime_of
from cunet.ops import add_inplace

# Whether ops record the graph, per thread: two threads predicting at once (a Dask worker
# runs several tasks in threads) must not restore each other's setting.
_grad_mode = threading.local()


def grad_enabled() -> bool:
    """Whether this thread records the graph (False inside ``no_grad``)."""
    return getattr(_grad_mode, "enabled", True)


@contextlib.contextmanager
def no_grad():
    """Within this block no graph is recorded (inference: activations are freed at once). Per thread."""
    previous = grad_enabled()
    _grad_mode.enabled = False
    try:
        yield
    finally:
        _grad_mode.enabled = previous


class Tensor:
    """A device array, whether it needs a gradient, its gradient, and the Function that made it."""

    def __init__(self, data, requires_grad: bool = False, creator: Function | None = None):
        self.data = data
        self.requires_grad = requires_grad
        self.grad = None
        self.creator = creator

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        return tuple(self.data.shape)

    @property
    def dtype(self):
        """The array's dtype."""
        return self.data.dtype

    def numpy(self) -> np.ndarray:
        """A NumPy copy of the data (the array itself on cpu)."""
        runtime = runtime_of(self.data)
        return np.asarray(self.data) if runtime is None else runtime.to_host(self.data)

    def item(self) -> float:
        """The value of a one-element tensor as a Python float (waits for the device)."""
        return float(self.numpy().reshape(-1)[0])

    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires it.

        ``grad`` defaults to None, which each loss Function reads as 1 (a scalar loss).
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (was it made under no_grad?)")
        grads = {id(self): grad}
        # Popped, not iterated: once its creator's backward has run, a tensor is referenced by
        # nothing here, so its array (an activation) is freed at once unless the caller holds
        # it. Walking a list that kept every tensor would keep every activation to the end.
        pending = _topological_order(self)[::-1]
        while pending:
            tensor = pending.pop()
            g = grads.pop(id(tensor), None)
            if tensor.creator is None:  # a leaf: keep its gradient
                if g is not None:
                    tensor.grad = g if tensor.grad is None else _accumulate(tensor.grad, g)
                continue
            input_grads = tensor.creator.backward(g)
            for inp, ig in zip(tensor.creator.inputs, input_grads):
                if ig is None or not inp.requires_grad:
                    continue
                grads[id(inp)] = ig if id(inp) not in grads else _accumulate(grads[id(inp)], ig)
            tensor.creator = None  # free the graph (and the arrays the Function saved)

    def __repr__(self) -> str:
        kind = "leaf" if self.creator is None else type(self.creator).__name__
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, requires_grad={self.requires_grad}, {kind})"


def _accumulate(total, more):
    """total += more, on whichever device they live; returns total."""
    add_inplace(total, more)
    return total


def _topological_order(root: Tensor) -> list[Tensor]:
    """Tensors reachable from ``root`` through creators, each after all of its consumers."""
    order, seen = [], set()
    stack = [(root, False)]
    while stack:  # iterative depth-first search: deep nets must not hit Python's recursion limit
        tensor, children_done = stack.pop()
        if children_done:
            order.append(tensor)
            continue
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        stack.append((tensor, True))
        if tensor.creator is not None:
            stack.extend((t, False) for t in tensor.creator.inputs if t.requires_grad)
    return order[::-1]


class Function:
    """One differentiable op. Subclasses implement ``forward(*arrays, **params)`` and ``backward(grad)``.

    ``forward`` receives the inputs' arrays and returns the output array, saving what the
    backward needs on ``self``. ``backward`` receives the output's gradient array and
    returns one gradient array (or None) per input Tensor, in order.
    """

    inputs: tuple[Tensor, ...] = ()

    @classmethod
    def apply(cls, *inputs: Tensor, **params) -> Tensor:
        """Run the forward op; record the graph edge when gradients are wanted."""
        fn = cls()
        out = fn.forward(*(t.data for t in inputs), **params)
        needs_grad = grad_enabled() and any(t.requires_grad for t in inputs)
        if not needs_grad:
            return Tensor(out)
        fn.inputs = inputs
        return Tensor(out, requires_grad=True, creator=fn)

    def forward(self, *arrays, **params):
        """Compute the output array from the input arrays."""
        raise NotImplementedError

    def backward(self, grad):
        """Return the gradients of the inputs given the gradient of the output."""
        raise NotImplementedError
