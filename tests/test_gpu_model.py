"""The whole U-Net on a kernel runtime against the cpu path: what a GPU day must confirm.

Each test runs on every runtime of the ``gpu_device`` fixture: PoCL here (the same
kernels/*.cu, so the test itself is proven on every run), and on ``cuda`` with the CUDA C
kernels and with the Numba alternates where a GPU is present (skipped with the reason
where not). Loss and gradients, a few SGD steps, an exact resume, and overlap-tile
prediction independent of the tile size.
"""
import copy

import numpy as np

from cunet import predict, train
from cunet.autograd import Tensor
from cunet.checkpoint import load_checkpoint
from cunet.device import get_device
from cunet.loss import weighted_cross_entropy
from cunet.optim import SGD
from cunet.unet import UNet, output_size, valid_input_sizes

DEPTH, BASE, SIZE = 3, 4, 76  # 76 -> 36: every op family, both conv kernels, small enough for PoCL


def model_pair(device, seed=5, dropout=0.5):
    """The same random U-Net on the cpu and on ``device``, with non-zero biases."""
    cpu = UNet(base=BASE, depth=DEPTH, dropout=dropout, seed=seed)
    rng = np.random.default_rng(seed)
    for p in cpu.parameters():
        p.data = p.data + 0.02 * rng.standard_normal(p.data.shape).astype(np.float32)
    return cpu, copy.deepcopy(cpu).to(device)


def batch(rng, n=2):
    out = output_size(SIZE, DEPTH)
    x = rng.standard_normal((n, 1, SIZE, SIZE)).astype(np.float32)
    return x, rng.integers(0, 2, (n, out, out)).astype(np.uint8), rng.uniform(0.5, 3, (n, out, out)).astype(np.float32)


def loss_and_backward(model, device, x, labels, weights):
    loss = weighted_cross_entropy(model(Tensor(device.to_device(x))), labels, weights)
    loss.backward()
    return loss.item()


def assert_params_close(cpu_model, dev_model, device, what):
    for (name, p), (_, q) in zip(cpu_model.named_parameters(), dev_model.named_parameters()):
        ref, got = getattr(p, what), device.to_host(getattr(q, what))
        # float32 sums of up to ~10^4 terms in another order (tiled GEMMs, split-K, two-pass
        # loss): relative to the array's scale, not element by element
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max(), err_msg=f"{what} {name}")


def test_loss_and_every_gradient_match_the_cpu_path(gpu_device, rng):
    cpu_model, dev_model = model_pair(gpu_device)  # drop-out on: the Philox mask is the same on both
    x, labels, weights = batch(rng)
    cpu_loss = loss_and_backward(cpu_model, get_device("cpu"), x, labels, weights)
    dev_loss = loss_and_backward(dev_model, gpu_device, x, labels, weights)
    np.testing.assert_allclose(dev_loss, cpu_loss, rtol=1e-5)
    assert_params_close(cpu_model, dev_model, gpu_device, "grad")


def test_sgd_steps_track_the_cpu_path(gpu_device, rng):
    cpu_model, dev_model = model_pair(gpu_device, dropout=0.0)
    optimisers = [SGD(m.parameters(), lr=0.01, momentum=0.99) for m in (cpu_model, dev_model)]
    for _ in range(3):
        x, labels, weights = batch(rng, 1)
        for model, device, opt in zip((cpu_model, dev_model), (get_device("cpu"), gpu_device), optimisers):
            loss_and_backward(model, device, x, labels, weights)
            opt.step()
            opt.zero_grad()
    assert_params_close(cpu_model, dev_model, gpu_device, "data")


def device_args(device):
    """The train command's options that select ``device``."""
    return ["--device", device.name] + (["--kernels", "numba"] if device.runtime.use_numba_kernels else [])


def test_resume_on_the_device_is_bit_identical(gpu_device, tmp_path):
    tiny = ["--tile", "44", "--base", "2", "--depth", "2", "--synthetic-images", "3", "--quiet", "--lr", "0.01",
            "--sync-every", "2", *device_args(gpu_device)]
    assert train.main([*tiny, "--steps", "4", "--out", str(tmp_path / "straight")]) == 0
    assert train.main([*tiny, "--steps", "2", "--out", str(tmp_path / "split")]) == 0
    assert train.main(["--resume", str(tmp_path / "split" / "checkpoint.npz"), "--steps", "4", "--quiet",
                       *device_args(gpu_device)]) == 0
    a, b = (load_checkpoint(tmp_path / name / "checkpoint.npz") for name in ("straight", "split"))
    assert a.step == b.step == 4
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)


def test_prediction_does_not_depend_on_the_tile_size(gpu_device, rng):
    _, model = model_pair(gpu_device)
    image = rng.random((70, 101)).astype(np.float32)
    small, large = valid_input_sizes(DEPTH, 300)[2], valid_input_sizes(DEPTH, 300)[-1]
    a = predict.predict_probabilities(model, image, small, batch=3)
    b = predict.predict_probabilities(model, image, large)
    assert a.shape == (2, 70, 101)
    # float32 convolutions summed in different blockings: a few ulps of the logits
    np.testing.assert_allclose(a, b, atol=2e-6)
