"""Checking a backward against finite differences: what to run when you add an op.

An op's backward is right when, for a scalar loss L = sum(r * forward(inputs)) with a
random r, the gradients it returns (backward(r) with respect to each input) equal the
loss's numerical derivatives. :func:`check_backward` computes those by central
differences, (L(a + h e_i) - L(a - h e_i)) / 2h for every element i of every input, in
float64 (the cpu path takes float64 for exactly this), and fails naming the input and the
element that disagree. For an op linear in each input (a convolution) the differences are
exact up to rounding; for a piecewise one (max-pool, ReLU) keep the inputs away from the
kinks by more than h.

    from cunet.gradcheck import check_backward

    x, w = rng.standard_normal((2, 3, 5, 6)), rng.standard_normal((4, 3, 3, 3))
    r = rng.standard_normal((2, 4, 3, 4))                  # dL/dy
    check_backward(lambda x, w: my_forward(x, w), [x, w],
                   [my_backward_input(r, w), my_backward_weights(x, r)], r)

Keep the shapes tiny: it calls the forward twice per input element.
"""
from __future__ import annotations

import numpy as np


def numerical_gradient(loss, inputs: list[np.ndarray], which: int, h: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``loss(*inputs)`` with respect to every element of ``inputs[which]``."""
    a = inputs[which]
    grad = np.empty(a.shape, np.float64)
    for i in np.ndindex(a.shape):
        saved = a[i]
        a[i] = saved + h
        plus = loss(*inputs)
        a[i] = saved - h
        minus = loss(*inputs)
        a[i] = saved
        grad[i] = (plus - minus) / (2 * h)
    return grad


def check_backward(forward, inputs: list[np.ndarray], grads: list, dy: np.ndarray, h: float = 1e-6,
                   rtol: float = 1e-6, atol: float = 1e-8) -> None:
    """Assert that ``grads[i]`` is d(sum(dy * forward(*inputs)))/d(inputs[i]) for every i with a gradient.

    ``forward`` returns one array (or a tuple whose first element is the output); ``inputs``
    are float64 arrays (perturbed in place and restored); ``grads[i]`` is None for an input
    that gets no gradient. Raises AssertionError naming the input and the worst element.
    """
    def loss(*args):
        y = forward(*args)
        return float(np.sum(dy * (y[0] if isinstance(y, tuple) else y)))

    for which, grad in enumerate(grads):
        if grad is None:
            continue
        if np.asarray(grad).shape != inputs[which].shape:
            raise AssertionError(f"input {which}: gradient shape {np.shape(grad)} != input shape {inputs[which].shape}")
        numeric = numerical_gradient(loss, inputs, which, h)
        error = np.abs(np.asarray(grad, np.float64) - numeric) - (atol + rtol * np.abs(numeric))
        if error.max() > 0:
            worst = np.unravel_index(np.argmax(error), error.shape)
            raise AssertionError(f"input {which}: the backward gives {np.asarray(grad)[worst]!r} at {worst}, "
                                 f"finite differences {numeric[worst]!r} (rtol {rtol}, atol {atol})")
