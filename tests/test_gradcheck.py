"""cunet.gradcheck: the public finite-difference check an op's author runs; it must catch a wrong backward."""
import numpy as np
import pytest

from cunet.gradcheck import check_backward, numerical_gradient
from cunet.ops import upconv2x2_backward_input, upconv2x2_backward_params, upconv2x2_forward


def test_numerical_gradient_of_a_known_function():
    a = np.array([1.0, -2.0, 3.0])
    grad = numerical_gradient(lambda v: float(np.sum(v ** 3)), [a], 0)
    np.testing.assert_allclose(grad, 3 * a ** 2, rtol=1e-8)
    assert a.tolist() == [1.0, -2.0, 3.0]  # perturbed in place, then restored


def upconv_case(rng):
    x, w, b = rng.standard_normal((1, 2, 2, 3)), rng.standard_normal((2, 3, 2, 2)), rng.standard_normal(3)
    r = rng.standard_normal((1, 3, 4, 6))
    return [x, w, b], [upconv2x2_backward_input(r, w), *upconv2x2_backward_params(x, r)], r


def test_a_right_backward_passes(rng):
    inputs, grads, r = upconv_case(rng)
    check_backward(upconv2x2_forward, inputs, grads, r)


@pytest.mark.parametrize("plant", ["one element off", "scaled", "wrong shape", "transposed input"])
def test_a_planted_wrong_gradient_fails(plant, rng):
    inputs, grads, r = upconv_case(rng)
    if plant == "one element off":
        grads[1][0, 1, 1, 0] += 1e-4
    elif plant == "scaled":
        grads[2] = grads[2] * 1.001
    elif plant == "wrong shape":
        grads[0] = grads[0][..., :2]
    else:
        grads[1] = np.ascontiguousarray(grads[1].transpose(0, 1, 3, 2))
    with pytest.raises(AssertionError, match="input [012]"):
        check_backward(upconv2x2_forward, inputs, grads, r)
