"""Autograd mechanics with tiny NumPy Functions defined here (independent of the kernels)."""
import numpy as np
import pytest

from cunet.autograd import Function, Tensor, no_grad


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):
        return g * self.b, g * self.a


class Sum(Function):
    def forward(self, a):
        self.shape = a.shape
        return np.array([a.sum()])

    def backward(self, g):
        return (np.full(self.shape, 1.0 if g is None else g[0]),)


def leaf(values):
    return Tensor(np.asarray(values, np.float64), requires_grad=True)


def test_chain_and_product_rule():
    x, w = leaf([1.0, 2.0, 3.0]), leaf([4.0, 5.0, 6.0])
    Sum.apply(Mul.apply(x, w)).backward()
    np.testing.assert_array_equal(x.grad, [4.0, 5.0, 6.0])
    np.testing.assert_array_equal(w.grad, [1.0, 2.0, 3.0])


def test_gradients_accumulate_where_a_tensor_has_two_consumers():
    """d/dx sum(h * h) with h = x * w is 2 h w: h feeds Mul twice (like a skip connection)."""
    x, w = leaf([1.0, -2.0]), leaf([3.0, 0.5])
    h = Mul.apply(x, w)
    Sum.apply(Mul.apply(h, h)).backward()
    np.testing.assert_allclose(x.grad, 2 * (x.data * w.data) * w.data)


def test_diamond_graph_visits_each_node_once():
    x = leaf([2.0])
    a, b = Mul.apply(x, leaf([3.0])), Mul.apply(x, leaf([5.0]))
    Sum.apply(Mul.apply(a, b)).backward()  # d/dx (3x * 5x) = 30 x
    np.testing.assert_allclose(x.grad, [60.0])


def test_graph_is_freed_after_backward():
    x = leaf([1.0])
    y = Mul.apply(x, leaf([2.0]))
    loss = Sum.apply(y)
    loss.backward()
    assert loss.creator is None and y.creator is None


def test_leaf_gradients_add_up_over_two_backward_calls():
    x = leaf([1.0, 1.0])
    Sum.apply(Mul.apply(x, leaf([2.0, 3.0]))).backward()
    Sum.apply(Mul.apply(x, leaf([2.0, 3.0]))).backward()
    np.testing.assert_array_equal(x.grad, [4.0, 6.0])


def test_no_grad_records_nothing():
    x = leaf([1.0])
    with no_grad():
        y = Mul.apply(x, x)
    assert y.creator is None and not y.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_deep_chain_does_not_hit_the_recursion_limit():
    x = leaf([1.0])
    y = x
    for _ in range(5000):
        y = Mul.apply(y, Tensor(np.array([1.0])))
    Sum.apply(y).backward()
    np.testing.assert_array_equal(x.grad, [1.0])


def test_no_grad_is_per_thread_and_interleaving_threads_restore_it():
    """Two threads inside no_grad at once, leaving in the other order than they came (as two
    Dask tasks predicting in one worker can): neither may leave the mode switched off, and
    the main thread keeps recording meanwhile. (A module-wide flag did: A saves True, B
    saves False, A restores True, B restores False - for everyone.)"""
    import threading

    from cunet.autograd import grad_enabled, no_grad

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with no_grad():
            a_in.set()
            b_in.wait(5)
            seen["a"] = grad_enabled()
        a_out.set()

    def b():
        a_in.wait(5)
        with no_grad():
            b_in.set()
            a_out.wait(5)
            seen["b"] = grad_enabled()
        seen["b after"] = grad_enabled()

    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    a_in.wait(5)
    seen["main meanwhile"] = grad_enabled()
    for t in threads:
        t.join(5)
    assert seen == {"a": False, "b": False, "b after": True, "main meanwhile": True}
    assert grad_enabled()
