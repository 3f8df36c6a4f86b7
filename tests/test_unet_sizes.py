"""The U-Net's size arithmetic and structure (no kernels run here)."""
import numpy as np
import pytest

from cunet.unet import (InvalidSizeError, UNet, check_input_size, input_size_for_output, is_valid_input_size,
                        nearest_valid_sizes, output_size, smallest_valid_input_size, valid_input_sizes)


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


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6])
def test_valid_sizes_match_a_hand_trace(depth):
    assert valid_input_sizes(depth, 700) == [s for s in range(1, 701) if naive_valid(s, depth)]


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6, 7])
def test_nearest_sizes_and_size_for_output_match_a_search(depth):
    """The closed-form lattice against a plain search, for every size up to 900."""
    valid = [s for s in range(1, 1800) if naive_valid(s, depth)]
    assert smallest_valid_input_size(depth) == valid[0]
    for size in range(-3, 900):
        below = [s for s in valid if s < size]
        assert nearest_valid_sizes(size, depth) == (below[-1] if below else None, next(s for s in valid if s > size))
    for wanted in range(-2, 200, 7):
        assert input_size_for_output(wanted, depth) == next(s for s in valid if output_size(s, depth) >= wanted)


def test_deep_networks_answer_at_once():
    """Depth 30 starts at 12 * 2**29 - 4: found by formula, where a search would take minutes."""
    with pytest.raises(InvalidSizeError, match=rf"use {12 * 2**29 - 4} \(the smallest valid size\)"):
        check_input_size(100, 30)
    assert valid_input_sizes(9, 100) == [] and smallest_valid_input_size(9) == 3068
    size = input_size_for_output(10**9)  # a search would try 6e7 sizes
    assert output_size(size) >= 10**9 > output_size(size - 16)


SIZE_FUNCTIONS = {
    "output_size": lambda depth: output_size(572, depth),
    "is_valid_input_size": lambda depth: is_valid_input_size(572, depth),
    "valid_input_sizes": lambda depth: valid_input_sizes(depth, 600),
    "nearest_valid_sizes": lambda depth: nearest_valid_sizes(572, depth),
    "input_size_for_output": lambda depth: input_size_for_output(388, depth),
    "smallest_valid_input_size": lambda depth: smallest_valid_input_size(depth),
    "check_input_size": lambda depth: check_input_size(572, depth),
}


@pytest.mark.parametrize("fn", SIZE_FUNCTIONS)
@pytest.mark.parametrize("depth", [0, -1])
def test_every_size_function_refuses_depth_below_one(fn, depth):
    """output_size(572, 0) was 568 and is_valid_input_size(572, 0) True: a depth-0 network does not exist."""
    with pytest.raises(InvalidSizeError, match=rf"{fn}: depth must be at least 1 .*got {depth}"):
        SIZE_FUNCTIONS[fn](depth)


@pytest.mark.parametrize("fn", SIZE_FUNCTIONS)
@pytest.mark.parametrize("depth", [5.0, True, "5", None])
def test_every_size_function_refuses_a_non_integer_depth(fn, depth):
    with pytest.raises(TypeError, match=f"{fn}: depth must be an integer"):
        SIZE_FUNCTIONS[fn](depth)


@pytest.mark.parametrize("call,fn,arg", [
    (lambda: output_size(572.0), "output_size", "input_size"),    # was 388.0
    (lambda: output_size(True, 1), "output_size", "input_size"),
    (lambda: check_input_size("572"), "check_input_size", "input_size"),
    (lambda: is_valid_input_size(571.5), "is_valid_input_size", "input_size"),
    (lambda: valid_input_sizes(5, 600.0), "valid_input_sizes", "up_to"),
    (lambda: input_size_for_output(None), "input_size_for_output", "min_output"),
])
def test_sizes_must_be_integers(call, fn, arg):
    with pytest.raises(TypeError, match=f"{fn}: {arg} must be an integer"):
        call()


def test_numpy_integer_sizes_work_and_give_ints():
    assert output_size(np.int64(572), np.int32(5)) == 388 and type(output_size(np.int64(572))) is int


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


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(input_mean=float("nan")), ValueError, "input_mean must be finite, got nan"),   # was accepted
    (dict(input_mean=float("inf")), ValueError, "input_mean must be finite, got inf"),   # was accepted
    (dict(input_mean=1e39), ValueError, "input_mean must be finite in float32"),
    (dict(input_std=float("nan")), ValueError, "input_std must be finite and > 0, got nan"),
    (dict(input_std=float("inf")), ValueError, "input_std must be finite and > 0, got inf"),  # was accepted
    (dict(input_std=0.0), ValueError, "input_std must be finite and > 0, got 0.0"),
    (dict(input_std=-1), ValueError, "input_std must be finite and > 0"),
    (dict(input_std="1"), TypeError, "input_std must be a real number"),
    (dict(depth=1), ValueError, r"depth must be in \[2, 32\), got 1"),
    (dict(depth=2.0), TypeError, "depth must be an integer"),
    (dict(base=0), ValueError, "base must be in"),
    (dict(base=True), TypeError, "base must be an integer"),
    (dict(n_classes=1), ValueError, "n_classes must be in"),
    (dict(in_channels=0), ValueError, "in_channels must be in"),
    (dict(dropout=float("nan")), ValueError, r"dropout must be in \[0, 1\), got nan"),
    (dict(dropout="0.5"), TypeError, "dropout must be a real number"),
    (dict(seed=-1), ValueError, r"seed must be in \[0, 2\*\*64\), got -1"),
    (dict(seed=1.5), TypeError, "seed must be an integer"),
    (dict(base=2**20, depth=12), ValueError, "base 1048576 and depth 12 give the bottom level 2147483648 channels"),
])
def test_unet_refuses_bad_arguments_by_name(kwargs, error, message):
    with pytest.raises(error, match=f"UNet: {message}"):
        UNet(**{"base": 2, "depth": 2} | kwargs)


def test_unet_config_holds_plain_numbers():
    """NumPy scalars are accepted (a mean measured with NumPy) and stored as Python numbers."""
    model = UNet(base=np.int64(2), depth=np.int32(2), input_mean=np.float32(0.5), input_std=np.float64(0.25),
                 seed=np.uint64(3), input_shift=np.array([0.5, -0.25], np.float32))
    assert model.config == dict(in_channels=1, n_classes=2, base=2, depth=2, dropout=0.5, seed=3, input_mean=0.5,
                                input_std=0.25, input_shift=[0.5, -0.25])
    values = [v for v in model.config.values() if not isinstance(v, list)] + model.config["input_shift"]
    assert all(type(v) in (int, float) for v in values)


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
