"""The U-Net's size arithmetic and structure (no kernels run here)."""
import numpy as np
import pytest

from cunet.unet import InvalidSizeError, UNet, check_input_size, output_size, valid_input_sizes


def test_paper_sizes():
    assert output_size(572, 5) == 388
    sizes = valid_input_sizes(5, 600)
    assert sizes[:3] == [188, 204, 220] and 572 in sizes
    assert all(b - a == 16 for a, b in zip(sizes, sizes[1:]))


def naive_valid(size, depth):
    """Follow the size through the network by hand: conv conv pool per level, conv conv up per level."""
    for _ in range(depth - 1):
        size -= 4
        if size <= 0 or size % 2:
            return False
        size //= 2
    size -= 4
    for _ in range(depth - 1):
        if size <= 0:
            return False
        size = 2 * size - 4
    return size > 0


@pytest.mark.parametrize("depth", [2, 3, 4, 5, 6])
def test_valid_sizes_match_a_hand_trace(depth):
    assert valid_input_sizes(depth, 700) == [s for s in range(1, 701) if naive_valid(s, depth)]


def test_invalid_size_names_the_nearest_valid_ones():
    with pytest.raises(InvalidSizeError, match="use 556 or 572"):
        check_input_size(570, 5)
    with pytest.raises(InvalidSizeError, match=r"use 188 \(the smallest valid size\)"):
        check_input_size(100, 5)


@pytest.mark.parametrize("depth", [6, 7, 8])
def test_small_inputs_of_deep_networks_name_the_smallest_valid_size(depth):
    """Far below a deep network's smallest valid size (a search window of old raised StopIteration)."""
    smallest = next(s for s in range(1, 10**5) if naive_valid(s, depth))
    with pytest.raises(InvalidSizeError, match=rf"use {smallest} \(the smallest valid size\)"):
        check_input_size(10, depth)


def test_depth_below_one_is_refused():
    with pytest.raises(InvalidSizeError, match="depth must be at least 1"):
        check_input_size(572, 0)


def count_by_hand(base, depth, c_in=1, classes=2):
    """Weights + biases, level by level, from the paper's description."""
    conv = lambda ci, co, k: ci * co * k * k + co  # noqa: E731
    ch = [base * 2**i for i in range(depth)]
    total = sum(conv(a, b, 3) + conv(b, b, 3) for a, b in zip([c_in] + ch[:-1], ch))
    total += sum(conv(ch[i + 1], ch[i], 2) + conv(2 * ch[i], ch[i], 3) + conv(ch[i], ch[i], 3) for i in range(depth - 1))
    return total + conv(base, classes, 1)


@pytest.mark.parametrize("base,depth", [(64, 5), (16, 5), (4, 3)])
def test_parameter_count(base, depth):
    model = UNet(base=base, depth=depth)
    assert sum(p.data.size for p in model.parameters()) == count_by_hand(base, depth)
    if (base, depth) == (64, 5):
        assert count_by_hand(64, 5) == 31_030_658  # "31.0 M" in the architecture notes


def test_he_initialisation_spread():
    model = UNet(base=8, depth=3, seed=1)
    w = model.down[1].conv2.weight.data  # [16, 16, 3, 3], fan-in 144
    assert abs(w.std() - np.sqrt(2 / 144)) < 0.1 * np.sqrt(2 / 144)
    assert all((p.data == 0).all() for name, p in model.named_parameters() if name.endswith("bias"))


def test_state_dict_round_trip_and_errors():
    a, b = UNet(base=2, depth=2, seed=1), UNet(base=2, depth=2, seed=2)
    b.load_state_dict(a.state_dict())
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
    state = a.state_dict()
    state["head.weight"] = state["head.weight"][:1]
    with pytest.raises(ValueError, match="head.weight has shape"):
        b.load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        b.load_state_dict({})
