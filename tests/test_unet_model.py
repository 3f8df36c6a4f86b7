"""The whole U-Net: finite-difference gradients, PyTorch agreement, and learning one image."""
import numpy as np
import pytest

from cunet.autograd import Tensor
from cunet.data import make_synthetic
from cunet.loss import weighted_cross_entropy
from cunet.optim import SGD
from cunet.unet import UNet, output_size, valid_input_sizes


def tiny_batch(model, size, batch, rng, dtype=np.float32):
    out = output_size(size, model.depth)
    x = rng.standard_normal((batch, 1, size, size)).astype(dtype)
    labels = rng.integers(0, 2, (batch, out, out)).astype(np.int32)
    weights = rng.uniform(0.5, 3.0, (batch, out, out)).astype(dtype)
    return x, labels, weights


def loss_of(model, x, labels, weights):
    model.dropout.calls = 0  # the same drop-out mask on every evaluation
    return weighted_cross_entropy(model(Tensor(x)), labels, weights)


@pytest.mark.parametrize("depth,base", [(2, 2), (3, 2)])
def test_whole_unet_gradients_match_finite_differences(depth, base, rng):
    model = UNet(base=base, depth=depth, dropout=0.5, seed=3)
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
        p.data += 0.01 * rng.standard_normal(p.data.shape)  # non-zero biases, so their gradients matter
    size = valid_input_sizes(depth, 200)[1]
    x, labels, weights = tiny_batch(model, size, 2, rng, np.float64)
    loss_of(model, x, labels, weights).backward()
    eps = 1e-6
    for name, p in model.named_parameters():
        flat, grad = p.data.reshape(-1), p.grad.reshape(-1)
        for i in rng.choice(flat.size, size=min(3, flat.size), replace=False):
            saved = flat[i]
            flat[i] = saved + eps
            up = loss_of(model, x, labels, weights).item()
            flat[i] = saved - eps
            down = loss_of(model, x, labels, weights).item()
            flat[i] = saved
            numeric = (up - down) / (2 * eps)
            # central differences in float64: truncation ~eps^2, rounding ~1e-16/eps = 1e-10
            assert abs(numeric - grad[i]) <= 1e-6 * max(1.0, abs(numeric)), (name, i, numeric, grad[i])


def test_every_gradient_is_a_contiguous_array_like_its_parameter(rng):
    """The ops' contract with SGD and autograd: gradients are whole C-contiguous arrays."""
    model = UNet(base=2, depth=3, seed=1)
    x, labels, weights = tiny_batch(model, 76, 1, rng)
    loss_of(model, x, labels, weights).backward()
    for name, p in model.named_parameters():
        assert p.grad.shape == p.shape and p.grad.dtype == p.dtype, name
        assert p.grad.flags.c_contiguous, f"{name}: gradient is a strided view"


torch = pytest.importorskip("torch", reason="PyTorch is an optional peer: pip install torch==2.13.0")
F = torch.nn.functional


def torch_unet_loss(model, params, x, labels, weights):
    """The same U-Net written with PyTorch ops, on the same weights (drop-out off)."""
    def conv(m, h, relu=True):
        h = F.conv2d(h, params[m + ".weight"], params[m + ".bias"])
        return F.relu(h) if relu else h

    h, skips = torch.from_numpy(x), []
    for i in range(model.depth):
        h = conv(f"down.{i}.conv2", conv(f"down.{i}.conv1", h))
        if i < model.depth - 1:
            skips.append(h)
            h = F.max_pool2d(h, 2)
    for j in range(model.depth - 1):
        h = F.conv_transpose2d(h, params[f"up.{j}.up.weight"], params[f"up.{j}.up.bias"], stride=2)
        skip = skips.pop()
        m = (skip.shape[-1] - h.shape[-1]) // 2
        h = torch.cat([skip[..., m:m + h.shape[-2], m:m + h.shape[-1]], h], dim=1)
        h = conv(f"up.{j}.conv2", conv(f"up.{j}.conv1", h))
    logits = conv("head", h, relu=False)
    per_pixel = F.cross_entropy(logits, torch.from_numpy(labels).long(), reduction="none")
    return (torch.from_numpy(weights) * per_pixel).mean()


def torch_params(model):
    return {n: torch.tensor(p.numpy(), requires_grad=True) for n, p in model.named_parameters()}


@pytest.mark.parametrize("depth,base,size", [(3, 4, 76), (5, 2, 188)])
def test_loss_and_every_gradient_match_pytorch(depth, base, size, rng):
    model = UNet(base=base, depth=depth, dropout=0.0, seed=5)
    x, labels, weights = tiny_batch(model, size, 2, rng)
    loss = loss_of(model, x, labels, weights)
    loss.backward()
    params = torch_params(model)
    ref = torch_unet_loss(model, params, x, labels, weights)
    ref.backward()
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-5)
    for name, p in model.named_parameters():
        g_ref = params[name].grad.numpy()
        # float32 sums over up to ~10^5 terms in different orders: relative to the gradient's scale
        np.testing.assert_allclose(p.grad, g_ref, rtol=1e-3, atol=1e-4 * np.abs(g_ref).max(), err_msg=name)


def test_twenty_sgd_steps_track_pytorch(rng):
    model = UNet(base=4, depth=3, dropout=0.0, seed=7)
    params = torch_params(model)
    ours = SGD(model.parameters(), lr=0.01, momentum=0.99)
    theirs = torch.optim.SGD(params.values(), lr=0.01, momentum=0.99)  # v = m v + g; p -= lr v
    for _ in range(20):
        x, labels, weights = tiny_batch(model, 76, 1, rng)
        loss_of(model, x, labels, weights).backward()
        ours.step()
        ours.zero_grad()
        theirs.zero_grad()
        torch_unet_loss(model, params, x, labels, weights).backward()
        theirs.step()
    for name, p in model.named_parameters():
        ref = params[name].detach().numpy()
        # 20 steps of float32 training from identical starts; differences stay at rounding level
        np.testing.assert_allclose(p.numpy(), ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max(), err_msg=name)


@pytest.mark.slow
def test_small_unet_overfits_one_synthetic_image():
    """Plain SGD drives the loss on one image from 0.53 to below a fifth of that.

    Measured: our loss and PyTorch's follow the same curve (0.525, 0.311, 0.231, ... 0.087
    at step 200) and both then spike, as plain SGD does near a sharp minimum; so the test
    looks at the first 200 steps, where the decline is smooth.
    """
    images, labels, _ = make_synthetic(1, size=128, seed=11)
    model = UNet(base=8, depth=3, dropout=0.0, seed=0, input_mean=images.mean(), input_std=images.std())
    size = 124  # depth 3: 124 -> 84 output; crop the image so the output window is inside it
    out = output_size(size, 3)
    m = (size - out) // 2
    x = model.normalise(np.ascontiguousarray(images[0][:size, :size][None, None]))
    y = np.ascontiguousarray(labels[0][m:m + out, m:m + out][None], np.int32)
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for step in range(200):
        loss = weighted_cross_entropy(model(Tensor(x)), y)
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert min(losses[-20:]) < 0.2 * losses[0], losses[::20]
