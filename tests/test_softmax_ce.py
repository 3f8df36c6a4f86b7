"""Weighted softmax cross-entropy against a naive float64 reference, on cpu and PoCL, and under Oclgrind.

The reference loops over pixels and takes the log-sum-exp of each pixel's K logits in
float64; the gradient reference writes w * (p - onehot) / (N*H*W) out per element; and a
float64 finite-difference check ties the backward to the forward on the cpu path.
"""
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from cunet.ops import softmax_ce_backward, softmax_ce_check, softmax_ce_forward
from cunet.ops.softmax_ce import BLOCK
from helpers import assert_oclgrind_clean, run_under_oclgrind, skip_without_pocl

# Widths around the 256-pixel block (one row of a wide image spans blocks) and 1x1 images.
widths = st.one_of(st.sampled_from([1, 2, 7, 255, 256, 257]), st.integers(1, 40))
label_dtypes = st.sampled_from([np.uint8, np.int32, np.int64])


def softmax_ce_reference(logits, labels, weights):
    """(loss, probs) in float64, pixel by pixel: loss = mean over pixels of w * (lse - z_label)."""
    z = logits.astype(np.float64)
    n_images, classes, height, width = z.shape
    probs, total = np.empty_like(z), 0.0
    for n in range(n_images):
        for h in range(height):
            for w in range(width):
                column = z[n, :, h, w]
                m = column.max()
                lse = m + np.log(np.sum(np.exp(column - m)))
                probs[n, :, h, w] = np.exp(column - lse)
                total += float(weights[n, h, w]) * (lse - column[labels[n, h, w]])
    return total / (n_images * height * width), probs


def grad_reference(probs, labels, weights, grad_loss):
    """dlogits[n, k, h, w] = grad_loss * w * (p_k - [k == label]) / (N*H*W), element by element."""
    p = probs.astype(np.float64)
    n_images, classes, height, width = p.shape
    out = np.empty_like(p)
    for n, k, h, w in np.ndindex(p.shape):
        onehot = 1.0 if labels[n, h, w] == k else 0.0
        out[n, k, h, w] = grad_loss * float(weights[n, h, w]) * (p[n, k, h, w] - onehot) / (n_images * height * width)
    return out


def make_inputs(rng, shape, scale=1.0, label_dtype=np.int32):
    """Logits ~ N(0, scale^2), labels uniform over the classes, weights in [0, 10) with some zeros."""
    n, classes, h, w = shape
    logits = (scale * rng.standard_normal(shape)).astype(np.float32)
    labels = rng.integers(0, classes, (n, h, w)).astype(label_dtype)
    weights = (10 * rng.random((n, h, w))).astype(np.float32)
    weights[rng.random((n, h, w)) < 0.2] = 0
    return logits, labels, weights


@given(n=st.integers(1, 3), classes=st.integers(2, 5), h=st.integers(1, 4), w=widths,
       scale=st.sampled_from([1.0, 10.0, 80.0]), label_dtype=label_dtypes, seed=st.integers(0, 2**32 - 1))
@example(n=3, classes=2, h=1, w=1, scale=80.0, label_dtype=np.uint8, seed=0)  # 1x1 images, a batch of 3
def test_forward_matches_reference(device, n, classes, h, w, scale, label_dtype, seed):
    logits, labels, weights = make_inputs(np.random.default_rng(seed), (n, classes, h, w), scale, label_dtype)
    loss, probs = softmax_ce_forward(device.to_device(logits), labels, device.to_device(weights))
    ref_loss, ref_probs = softmax_ce_reference(logits, labels, weights)
    loss, probs = device.to_host(loss), device.to_host(probs)
    assert loss.shape == (1,) and loss.dtype == np.float32 and probs.dtype == np.float32
    assert np.all(np.isfinite(probs)) and np.isfinite(loss[0])
    # Tolerances: float32 computes z - m with one rounding, up to ~8e-6 absolute for
    # |z - m| ~ 160 (scale 80), and exp turns that into the same relative error in p;
    # the loss is a float32 sum of non-negative terms (no cancellation): ~1e-6 relative.
    np.testing.assert_allclose(probs, ref_probs, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(loss[0], ref_loss, rtol=1e-5, atol=1e-7)


@given(n=st.integers(1, 3), classes=st.integers(2, 5), h=st.integers(1, 4), w=widths,
       grad_loss=st.sampled_from([1.0, 0.5, -2.0]), seed=st.integers(0, 2**32 - 1))
@example(n=2, classes=5, h=1, w=1, grad_loss=1.0, seed=0)
def test_backward_matches_reference(device, n, classes, h, w, grad_loss, seed):
    logits, labels, weights = make_inputs(np.random.default_rng(seed), (n, classes, h, w), 3.0)
    probs = softmax_ce_reference(logits, labels, weights)[1].astype(np.float32)
    dlogits = device.to_host(softmax_ce_backward(device.to_device(probs), labels, device.to_device(weights), grad_loss))
    # A few float32 roundings per element, no cancellation beyond p - 1 (one rounding).
    # atol: probabilities below float32's normal range may be flushed to zero on a device.
    np.testing.assert_allclose(dlogits, grad_reference(probs, labels, weights, grad_loss), rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("scale", [80.0, 1000.0])
def test_extreme_logits_stay_finite(device, rng, scale):
    logits, labels, weights = make_inputs(rng, (2, 3, 5, 6))
    logits = np.where(rng.random(logits.shape) < 0.5, scale, -scale).astype(np.float32)  # exp(80) ~ 5e34
    loss, probs = (device.to_host(a) for a in softmax_ce_forward(device.to_device(logits), labels, device.to_device(weights)))
    ref_loss, ref_probs = softmax_ce_reference(logits, labels, weights)
    assert np.all(np.isfinite(probs)) and np.isfinite(loss[0]) and loss[0] > 0
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs, ref_probs, atol=1e-6)
    np.testing.assert_allclose(loss[0], ref_loss, rtol=1e-6)
    dlogits = device.to_host(softmax_ce_backward(device.to_device(probs), labels, device.to_device(weights)))
    assert np.all(np.isfinite(dlogits))


def test_many_classes(device, rng):
    """K is looped over, not built into the kernels: 64 classes work like 2."""
    logits, labels, weights = make_inputs(rng, (2, 64, 3, 7), scale=5.0)
    loss, probs = softmax_ce_forward(device.to_device(logits), labels, device.to_device(weights))
    ref_loss, ref_probs = softmax_ce_reference(logits, labels, weights)
    np.testing.assert_allclose(device.to_host(probs), ref_probs, rtol=2e-5, atol=1e-6)  # as above
    np.testing.assert_allclose(device.to_host(loss)[0], ref_loss, rtol=1e-5)
    dlogits = softmax_ce_backward(probs, labels, device.to_device(weights))
    np.testing.assert_allclose(device.to_host(dlogits), grad_reference(device.to_host(probs), labels, weights, 1.0),
                               rtol=1e-5, atol=1e-30)


def test_many_blocks_sum_in_two_passes(gpu_device, rng):
    """More than BLOCK partials, so each thread of the second pass adds several (its stride loop)."""
    shape = (1, 2, 257, 257)  # 66049 pixels: 259 blocks of 256
    assert shape[2] * shape[3] > BLOCK * BLOCK
    logits, labels, weights = make_inputs(rng, shape)
    loss, _ = softmax_ce_forward(gpu_device.to_device(logits), labels, gpu_device.to_device(weights))
    ref_loss, _ = softmax_ce_reference(logits, labels, weights)
    np.testing.assert_allclose(gpu_device.to_host(loss)[0], ref_loss, rtol=1e-5)


def test_loss_is_deterministic(device, rng):
    logits, labels, weights = make_inputs(rng, (2, 3, 31, 29))  # several blocks
    args = (device.to_device(logits), labels, device.to_device(weights))
    first = device.to_host(softmax_ce_forward(*args)[0])
    for _ in range(3):
        np.testing.assert_array_equal(device.to_host(softmax_ce_forward(*args)[0]), first)


def test_gradient_matches_finite_differences_float64(rng):
    """Central differences of the float64 cpu loss against softmax_ce_backward, every logit."""
    logits, labels, weights = make_inputs(rng, (2, 3, 2, 3), scale=2.0)
    logits, weights = logits.astype(np.float64), weights.astype(np.float64)
    grad_loss, eps = 1.7, 1e-6
    loss, probs = softmax_ce_forward(logits, labels, weights)
    assert loss.dtype == np.float64 and loss.shape == (1,)
    dlogits = softmax_ce_backward(probs, labels, weights, grad_loss)
    numeric = np.empty_like(logits)
    for i in np.ndindex(logits.shape):
        plus, minus = logits.copy(), logits.copy()
        plus[i] += eps
        minus[i] -= eps
        numeric[i] = grad_loss * (softmax_ce_forward(plus, labels, weights)[0][0]
                                  - softmax_ce_forward(minus, labels, weights)[0][0]) / (2 * eps)
    # Central differences: truncation O(eps^2) ~ 1e-12, round-off ~ 1e-16 / eps ~ 1e-10.
    np.testing.assert_allclose(dlogits, numeric, rtol=1e-6, atol=1e-9)
    assert np.abs(dlogits).max() > 1e-3  # the check compared something


def test_mean_normalisation(device):
    """The loss is the mean over pixels: a uniform prediction over K classes costs w * log K per pixel."""
    logits = np.zeros((2, 4, 3, 5), np.float32)
    labels = np.zeros((2, 3, 5), np.uint8)
    weights = np.full((2, 3, 5), 2.0, np.float32)
    loss = device.to_host(softmax_ce_forward(device.to_device(logits), labels, device.to_device(weights))[0])
    np.testing.assert_allclose(loss[0], 2.0 * np.log(4), rtol=1e-6)


def test_device_labels_int32(gpu_device, rng):
    logits, labels, weights = make_inputs(rng, (2, 3, 4, 5))
    dev = gpu_device
    from_host = dev.to_host(softmax_ce_forward(dev.to_device(logits), labels, dev.to_device(weights))[0])
    from_device = dev.to_host(softmax_ce_forward(dev.to_device(logits), dev.to_device(labels), dev.to_device(weights))[0])
    np.testing.assert_array_equal(from_device, from_host)
    labels[0, 0, 0] = 3
    with pytest.raises(ValueError, match="1 pixel"):
        softmax_ce_forward(dev.to_device(logits), dev.to_device(labels), dev.to_device(weights))


def test_checked_inputs_give_the_same_results(device, rng):
    """softmax_ce_check once, then checked=True: the same loss and gradient as validating each call."""
    logits, labels, weights = make_inputs(rng, (2, 3, 4, 5), label_dtype=np.uint8)
    z, w = device.to_device(logits), device.to_device(weights)
    prepared, w_prepared = softmax_ce_check(z, labels, w)
    assert w_prepared is w  # already on the device, validated, passed through
    assert prepared.dtype == np.int32 and device.to_host(prepared).tolist() == labels.tolist()
    loss, probs = softmax_ce_forward(z, labels, w)
    loss_checked, probs_checked = softmax_ce_forward(z, prepared, w, checked=True)
    np.testing.assert_array_equal(device.to_host(loss_checked), device.to_host(loss))
    np.testing.assert_array_equal(device.to_host(softmax_ce_backward(probs_checked, prepared, w, 0.5, checked=True)),
                                  device.to_host(softmax_ce_backward(probs, labels, w, 0.5)))
    with pytest.raises(ValueError, match="1 pixel"):   # softmax_ce_check validates the values
        bad = labels.copy()
        bad[1, 3, 4] = 7
        softmax_ce_check(z, bad, w)
    with pytest.raises(TypeError, match="with checked=True, labels must be what softmax_ce_check returned"):
        softmax_ce_forward(z, labels, w, checked=True)   # uint8 labels were never prepared
    with pytest.raises(ValueError, match=r"labels must be \[N, H, W\] = \(2, 4, 5\)"):
        softmax_ce_backward(probs, prepared[:1], w, checked=True)   # shapes are still checked


# A script that runs softmax_ce_forward and _backward with checked=True on labels holding
# one bad value, in a fresh interpreter: an out-of-bounds access may kill the process, and
# then it is this test that fails, not pytest that dies.
UNCHECKED_LABEL_SCRIPT = """
import sys
import numpy as np
from cunet.device import get_device
from cunet.ops import softmax_ce_backward, softmax_ce_check, softmax_ce_forward
device = get_device(sys.argv[1], **({"opencl_platform": "pocl"} if sys.argv[1] == "opencl" else {}))
rng = np.random.default_rng(0)
logits, weights = rng.standard_normal((2, 3, 4, 5)).astype(np.float32), np.ones((2, 4, 5), np.float32)
z, w = device.to_device(logits), device.to_device(weights)
labels, _ = softmax_ce_check(z, np.zeros((2, 4, 5), np.uint8), w)
host = device.to_host(labels)
host[1, 2, 3] = int(sys.argv[2])  # what the check would have refused
labels = device.to_device(host)
loss, probs = softmax_ce_forward(z, labels, w, checked=True)
dlogits = device.to_host(softmax_ce_backward(probs, labels, w, checked=True))
print(float(device.to_host(loss)[0]), int(np.isnan(dlogits).sum()), int(np.isnan(dlogits[1, :, 2, 3]).sum()))
"""


def run_unchecked_label(device_name: str, label: int) -> str:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", UNCHECKED_LABEL_SCRIPT, device_name, str(label)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"an unchecked label of {label} crashed the process (status {proc.returncode}):\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("label", [3, 5, -1, 2**30, -(2**31)])
def test_unchecked_labels_out_of_range_give_nan_not_a_crash(label):
    """checked=True skips the value check, not memory safety: an out-of-range label poisons its
    pixel (loss NaN, its 3 gradient entries NaN, nothing else) instead of reading or writing
    outside the arrays (2**30 segfaulted; 5 gave a finite, wrong loss)."""
    loss, nan_entries, nan_in_pixel = run_unchecked_label("cpu", label).split()
    assert loss == "nan" and nan_entries == "3" and nan_in_pixel == "3"


@pytest.mark.parametrize("label", [5, -1, 2**30])
def test_unchecked_labels_on_opencl(label):
    skip_without_pocl()
    loss, nan_entries, _ = run_unchecked_label("opencl", label).split()
    assert loss == "nan" and nan_entries == "3"


def count_copies(runtime, monkeypatch):
    """Record the dtype of every array the runtime copies to the host or to the device."""
    copies = {"to_host": [], "to_device": []}
    for name, calls in copies.items():
        original = getattr(runtime, name)
        monkeypatch.setattr(runtime, name, lambda array, _original=original, _calls=calls: (
            _calls.append(np.dtype(array.dtype).name), _original(array))[1])
    return copies


@pytest.mark.parametrize("weights_on", ["device", "host"])
def test_the_loss_function_validates_once_per_step(gpu_device, weights_on, rng, monkeypatch):
    """Forward + backward of the autograd loss validate once: device weights are copied to the
    host once (validating in each op did it twice); host weights, what training passes, are
    checked where they are and uploaded once, so nothing is copied back and the step never
    waits for the GPU. Host labels are uploaded once."""
    from cunet.autograd import Tensor
    from cunet.loss import weighted_cross_entropy

    logits, labels, weights = make_inputs(rng, (1, 2, 6, 7), label_dtype=np.uint8)
    z = Tensor(gpu_device.to_device(logits), requires_grad=True)
    w = gpu_device.to_device(weights) if weights_on == "device" else weights
    copies = count_copies(gpu_device.runtime, monkeypatch)
    weighted_cross_entropy(z, labels, w).backward()
    uploaded_weights = 0 if weights_on == "device" else 1
    assert copies["to_host"].count("float32") == 1 - uploaded_weights, copies   # device weights, checked
    assert copies["to_device"].count("float32") == uploaded_weights, copies      # host weights, uploaded
    assert copies["to_host"].count("int32") == 0, copies      # host labels need no copy back
    assert copies["to_device"].count("int32") == 1, copies    # the labels, uploaded
    monkeypatch.undo()
    expected = grad_reference(softmax_ce_reference(logits, labels, weights)[1], labels, weights, 1.0)
    # The device's probabilities carry a few float32 roundings (|error| <= ~4u, u = 2^-24),
    # which p - 1 does not shrink: an absolute error of 8u * w / pixels, plus rtol for the rest.
    atol = 8 * 2.0**-24 * float(weights.max()) / labels.size
    np.testing.assert_allclose(gpu_device.to_host(z.grad), expected, rtol=1e-5, atol=atol)


def test_host_weights_are_validated_before_upload(gpu_device, rng):
    from cunet.autograd import Tensor
    from cunet.loss import weighted_cross_entropy

    logits, labels, weights = make_inputs(rng, (1, 2, 3, 4))
    weights[0, 1, 2] = -1.0
    with pytest.raises(ValueError, match=r"weights must be finite and non-negative; 1 pixel.*weights\[0, 1, 2\] = -1"):
        weighted_cross_entropy(Tensor(gpu_device.to_device(logits)), labels, weights)


def test_weights_default_to_ones_on_every_device(device, rng):
    """weights=None: the plain mean cross-entropy (the ones are made on the host and uploaded)."""
    from cunet.autograd import Tensor
    from cunet.loss import weighted_cross_entropy

    logits, labels, _ = make_inputs(rng, (2, 3, 4, 5))
    loss = weighted_cross_entropy(Tensor(device.to_device(logits)), labels).item()
    ones = np.ones(labels.shape, np.float32)
    np.testing.assert_allclose(loss, softmax_ce_reference(logits, labels, ones)[0], rtol=1e-5)


@pytest.fixture
def refuse_launches(device, monkeypatch):
    """Make any kernel launch (or the cpu loops) fail the test: errors must come before the first launch."""
    def refuse(*args, **kwargs):
        raise AssertionError("work was launched before the inputs were validated")

    import cunet.ops.softmax_ce as module

    monkeypatch.setattr(module, "_forward_cpu", refuse)
    monkeypatch.setattr(module, "_backward_cpu", refuse)
    if device.runtime is not None:
        monkeypatch.setattr(device.runtime, "launch", refuse)


def test_bad_input(device, rng, refuse_launches):
    logits, labels, weights = make_inputs(rng, (2, 3, 4, 5), label_dtype=np.uint8)
    z, w = device.to_device(logits), device.to_device(weights)
    fwd = softmax_ce_forward
    bad = labels.copy()
    bad[0, 0, :3] = [3, 255, 3]
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, K\) with K = 3.*3 pixel\(s\) hold values outside it: 3, 255"):
        fwd(z, bad, w)
    negative = labels.astype(np.int64)
    negative[1, 2, 3] = -1
    with pytest.raises(ValueError, match=r"softmax_ce_backward: labels .*1 pixel\(s\) hold values outside it: -1"):
        softmax_ce_backward(z, negative, w)
    with pytest.raises(TypeError, match="labels has dtype float32; expected an integer dtype"):
        fwd(z, labels.astype(np.float32), w)
    with pytest.raises(TypeError, match="labels has dtype bool"):
        fwd(z, labels.astype(bool), w)
    with pytest.raises(ValueError, match=r"labels must be \[N, H, W\] = \(2, 4, 5\) to match logits \(2, 3, 4, 5\)"):
        fwd(z, labels[:, :3].copy(), w)
    with pytest.raises(ValueError, match=r"weights must be \[N, H, W\] = \(2, 4, 5\)"):
        fwd(z, labels, device.to_device(weights[:1].copy()))
    negative_w = weights.copy()
    negative_w[1, 0, 2] = -0.5
    with pytest.raises(ValueError, match=r"weights must be finite and non-negative; 1 pixel\(s\) are not, e.g. weights\[1, 0, 2\] = -0.5"):
        fwd(z, labels, device.to_device(negative_w))
    with pytest.raises(ValueError, match="weights must be finite"):
        fwd(z, labels, device.to_device(np.full_like(weights, np.nan)))
    with pytest.raises(ValueError, match="needs K >= 2 classes"):
        fwd(device.to_device(logits[:, :1].copy()), np.zeros((2, 4, 5), np.uint8), w)
    with pytest.raises(ValueError, match=r"logits must be \[N, K, H, W\]"):
        fwd(device.to_device(logits[0].copy()), labels, w)
    with pytest.raises(ValueError, match="has no pixels"):
        fwd(device.to_device(np.zeros((0, 3, 4, 5), np.float32)), labels[:0], device.to_device(weights[:0]))
    with pytest.raises(TypeError, match="labels must be an integer array"):
        fwd(z, labels.tolist(), w)
    with pytest.raises(ValueError, match="grad_loss must be finite"):
        softmax_ce_backward(z, labels, w, float("inf"))
    if device.name == "cpu":
        with pytest.raises(ValueError, match="dtypes must match"):
            fwd(logits, labels, weights.astype(np.float64))
    else:
        with pytest.raises(TypeError, match="device labels must be contiguous int32"):
            fwd(z, device.to_device(labels.astype(np.float32)), w)
        with pytest.raises(ValueError, match="one device"):
            fwd(z, labels, weights)


def oclgrind_case_softmax_ce(device):
    """Forward (both passes) and backward over 300 pixels: two blocks, the second mostly idle."""
    logits, labels, weights = make_inputs(np.random.default_rng(0), (1, 3, 5, 60))
    loss, probs = softmax_ce_forward(device.to_device(logits), labels, device.to_device(weights))
    device.to_host(loss)
    device.to_host(softmax_ce_backward(probs, labels, device.to_device(weights)))


@pytest.mark.oclgrind
def test_softmax_ce_under_oclgrind(tmp_path):
    assert_oclgrind_clean(run_under_oclgrind("test_softmax_ce", "oclgrind_case_softmax_ce", tmp_path))
