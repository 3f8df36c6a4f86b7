"""The public API under bad input: a catalogue of calls, each with the outcome it must have.

Every op in ``cunet.ops.__all__`` is described once below (its arguments, their kinds, a
good call); the bad calls are generated from those descriptions by code: wrong dtype,
wrong rank, a list for an array, read-only and memory-mapped arrays, strided views,
arrays on the wrong device, labels and argmax codes out of range, NaN or negative
weights, and for every scalar a bool, a string, None, NaN, infinity, a value out of range
and the same value as a NumPy 64-bit scalar. The size functions and ``UNet`` get the same
treatment for their sizes, depths and normalisation.

Each case has one of two outcomes, and the test checks which:

* ``OK``: the call works and gives the plain call's answer (bit for bit; to float32
  precision where the case computes in float64);
* ``Refused(E)``: it raises E (TypeError or ValueError) before writing anything, and the
  message names the function and the argument.

Anything else fails the case: a Numba TypingError, an IndexError, KeyError or
StopIteration, any other exception, or an answer that differs from the plain call's.
(Inputs that could crash the process instead, unchecked labels, are tested in a
subprocess in test_softmax_ce.py.) The cases run on the cpu and on PoCL, and on a GPU
where there is one; the array mutations that only exist on the host (read-only,
memory-mapped, strided) run on the cpu.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from cunet import ops
from cunet.autograd import Tensor
from cunet.device import get_device
from cunet.unet import (UNet, check_input_size, input_size_for_output, is_valid_input_size, nearest_valid_sizes,
                        output_size, smallest_valid_input_size, valid_input_sizes)

# --- outcomes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    """The call raises ``error`` whose message names the function and matches ``names`` (the argument)."""

    error: type
    names: str  # a regex for the argument's name, e.g. r"\bseed\b"


OK = "ok"          # works, and equals the plain call exactly
CLOSE = "close"    # works, and equals the plain call to float32 precision (a float64 variant)


def argument(name: str) -> str:
    """A regex matching ``name`` as a word (so "x" does not match inside "max")."""
    return rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])"


# --- the ops, described once ---------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One argument of an op: its name, its kind, and what the op demands of it.

    kind: "float" (a float array), "labels", "argmax", "weights" (float, checked values),
    "real", "int" (scalars), "shape". rank: the rank the op insists on; "same" when it
    must match the op's other arrays; None for any shape. writes: the op writes into it.
    bad: out-of-range values of a scalar, each refused with a ValueError.
    """

    name: str
    kind: str
    rank: int | str | None = None
    writes: bool = False
    bad: tuple = ()


@dataclass
class Op:
    """An op of cunet.ops: its name (or a variant's label), a good call's arguments, and its Args."""

    label: str
    make: Callable[[np.random.Generator], dict]  # host values of the arguments, by name
    args: tuple[Arg, ...]
    takes_runtime: bool = False  # dropout_mask and philox_bits take the device as runtime=
    fn_name: str = ""

    def __post_init__(self):
        self.fn_name = self.fn_name or self.label.split("(")[0]

    @property
    def fn(self):
        return getattr(ops, self.fn_name)

    def arrays(self) -> list[Arg]:
        return [a for a in self.args if a.kind in ("float", "weights", "labels", "argmax")]

    def floats(self) -> list[Arg]:
        return [a for a in self.args if a.kind in ("float", "weights")]


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def maxpool_backward_args(rng):
    x = f32(rng, 1, 2, 4, 6)
    y, argmax = ops.maxpool2x2_forward(x)
    return dict(dy=f32(rng, *y.shape), argmax=argmax, input_shape=x.shape)


def loss_args(rng):
    return dict(logits=f32(rng, 1, 3, 2, 4), labels=rng.integers(0, 3, (1, 2, 4)).astype(np.uint8),
                weights=rng.random((1, 2, 4)).astype(np.float32))


def loss_backward_args(rng):
    args = loss_args(rng)
    probs = ops.softmax_ce_forward(args.pop("logits"), args["labels"], args["weights"])[1]
    return dict(probs=probs, **args, grad_loss=0.5)


F4 = dict(kind="float", rank=4)
SAME = dict(kind="float", rank="same")
P = Arg("p", "real", bad=(-0.1, 1.0, 1 - 1e-9))          # 1 - 1e-9 is 1 in float32
SEED = Arg("seed", "int", bad=(-1, 2**64))
STREAM = Arg("stream", "int", bad=(-1, 2**32))
LOSS = (Arg("labels", "labels", rank=3), Arg("weights", "weights", rank=3))

OPS = [
    Op("conv2d_forward", lambda r: dict(x=f32(r, 1, 2, 6, 6), w=f32(r, 3, 2, 3, 3), b=f32(r, 3)),
       (Arg("x", **F4), Arg("w", **F4), Arg("b", "float", rank=1))),
    Op("conv2d_backward_input", lambda r: dict(dy=f32(r, 1, 3, 4, 4), w=f32(r, 3, 2, 3, 3)),
       (Arg("dy", **F4), Arg("w", **F4))),
    Op("conv2d_backward_params", lambda r: dict(x=f32(r, 1, 2, 6, 6), dy=f32(r, 1, 3, 4, 4)),
       (Arg("x", **F4), Arg("dy", **F4))),
    Op("maxpool2x2_forward", lambda r: dict(x=f32(r, 1, 2, 4, 6)), (Arg("x", **F4),)),
    Op("maxpool2x2_backward", maxpool_backward_args,
       (Arg("dy", **F4), Arg("argmax", "argmax", rank=4), Arg("input_shape", "shape"))),
    Op("upconv2x2_forward", lambda r: dict(x=f32(r, 1, 3, 3, 4), w=f32(r, 3, 2, 2, 2), b=f32(r, 2)),
       (Arg("x", **F4), Arg("w", **F4), Arg("b", "float", rank=1))),
    Op("upconv2x2_backward_input", lambda r: dict(dy=f32(r, 1, 2, 6, 8), w=f32(r, 3, 2, 2, 2)),
       (Arg("dy", **F4), Arg("w", **F4))),
    Op("upconv2x2_backward_params", lambda r: dict(x=f32(r, 1, 3, 3, 4), dy=f32(r, 1, 2, 6, 8)),
       (Arg("x", **F4), Arg("dy", **F4))),
    Op("crop_concat_forward", lambda r: dict(skip=f32(r, 1, 2, 8, 8), up=f32(r, 1, 3, 4, 4)),
       (Arg("skip", **F4), Arg("up", **F4))),
    Op("crop_concat_backward", lambda r: dict(dy=f32(r, 1, 5, 4, 4), skip_shape=(1, 2, 8, 8)),
       (Arg("dy", **F4), Arg("skip_shape", "shape"))),
    Op("relu_forward", lambda r: dict(x=f32(r, 2, 3, 4)), (Arg("x", "float"),)),
    Op("relu_backward", lambda r: dict(y=np.maximum(f32(r, 2, 3, 4), 0), dy=f32(r, 2, 3, 4)),
       (Arg("y", **SAME), Arg("dy", **SAME))),
    Op("relu_backward(out=)", lambda r: dict(y=np.maximum(f32(r, 2, 3, 4), 0), dy=f32(r, 2, 3, 4),
                                             out=np.zeros((2, 3, 4), np.float32)),
       (Arg("y", **SAME), Arg("dy", **SAME), Arg("out", **SAME, writes=True))),
    Op("dropout_forward", lambda r: dict(x=f32(r, 3, 5), p=0.3, seed=7, stream=1),
       (Arg("x", "float"), P, SEED, STREAM)),
    Op("dropout_backward", lambda r: dict(dy=f32(r, 3, 5), p=0.3, seed=7, stream=1),
       (Arg("dy", "float"), P, SEED, STREAM)),
    Op("dropout_mask", lambda r: dict(shape=(3, 5), p=0.3, seed=7, stream=1), (Arg("shape", "shape"), P, SEED, STREAM),
       takes_runtime=True),
    Op("philox_bits", lambda r: dict(n_counters=5, seed=7, stream=1),
       (Arg("n_counters", "int", bad=(-1, 2**31, 2**40)), SEED, STREAM), takes_runtime=True),
    Op("softmax_ce_check", loss_args, (Arg("logits", **F4), *LOSS)),
    Op("softmax_ce_forward", loss_args, (Arg("logits", **F4), *LOSS)),
    Op("softmax_ce_backward", loss_backward_args,
       (Arg("probs", **F4), *LOSS, Arg("grad_loss", "real"))),
    Op("sgd_momentum_update", lambda r: dict(param=f32(r, 5, 3), velocity=f32(r, 5, 3), grad=f32(r, 5, 3),
                                             lr=0.01, momentum=0.9, weight_decay=1e-3),
       (Arg("param", **SAME, writes=True), Arg("velocity", **SAME, writes=True), Arg("grad", **SAME),
        Arg("lr", "real", bad=(-0.1, 1e39)), Arg("momentum", "real", bad=(-0.1, 1.0)),
        Arg("weight_decay", "real", bad=(-1.0,)))),
    Op("weight_average_update", lambda r: dict(average=f32(r, 5, 3), param=f32(r, 5, 3), decay=0.9),
       (Arg("average", **SAME, writes=True), Arg("param", **SAME), Arg("decay", "real", bad=(-0.1, 1.5)))),
    Op("add_inplace", lambda r: dict(y=f32(r, 5, 3), x=f32(r, 5, 3)),
       (Arg("y", **SAME, writes=True), Arg("x", **SAME))),
]


def test_every_public_op_is_in_the_catalogue():
    assert sorted(ops.__all__) == sorted({op.fn_name for op in OPS})


# --- the bad calls, generated ----------------------------------------------------------


@dataclass
class Case:
    """One call: ``mutate(args, device, tmp_path)`` changes the good call's arguments in place."""

    op: Op
    what: str
    mutate: Callable
    expected: object
    devices: tuple = ("cpu", "gpu")  # "gpu": opencl, and cuda where there is one

    @property
    def id(self) -> str:
        return f"{self.op.label}-{self.what}"


def host(a, device):
    """A NumPy array of ``a``, wherever it is (a mutation may have left it on the host)."""
    return a if isinstance(a, np.ndarray) else device.to_host(a)


def setter(name: str, value_of: Callable):
    """A mutation replacing argument ``name`` by value_of(current value, device, tmp_path)."""
    def mutate(args, device, tmp_path):
        args[name] = value_of(args[name], device, tmp_path)
    return mutate


def read_only(a, device, tmp_path):
    a = np.array(host(a, device))
    a.setflags(write=False)
    return a


def memory_mapped(a, device, tmp_path):
    """A read-only memory map of the array, as np.load(..., mmap_mode="r") gives."""
    path = tmp_path / f"mapped-{id(a)}.npy"
    np.save(path, host(a, device))
    return np.load(path, mmap_mode="r")


def strided(a, device, tmp_path):
    """The same values as a non-contiguous view (every other element of a wider last axis)."""
    values = host(a, device)
    wide = np.zeros(values.shape[:-1] + (2 * values.shape[-1],), values.dtype)
    wide[..., ::2] = values
    return wide[..., ::2]


def first_set_to(value, dtype=None):
    """A change of values: a copy (as ``dtype``) whose first element is ``value``."""
    def change(h):
        h = h.astype(dtype or h.dtype)  # astype copies
        h.flat[0] = value
        return h
    return change


def array_cases(op: Op, arg: Arg) -> list[Case]:
    """Bad (and good) variants of one array argument."""
    name, refused = arg.name, Refused(ValueError, argument(arg.name))
    wrong_type = Refused(TypeError, argument(arg.name))
    cases = [Case(op, f"{name}-list", setter(name, lambda a, d, t: host(a, d).tolist()), wrong_type)]
    # The changed array goes where the argument lives: labels on the host, the rest on the device.
    place = (lambda d, h: h) if arg.kind == "labels" else (lambda d, h: d.to_device(h))
    with_device = lambda f: setter(name, lambda a, d, t: place(d, f(host(a, d))))  # noqa: E731
    if arg.rank is not None:  # a fixed rank, or one that must match the other arrays'
        cases.append(Case(op, f"{name}-rank+1", with_device(lambda h: h[None]), refused))
    if arg.kind in ("float", "weights"):
        cases.append(Case(op, f"{name}-int32", with_device(lambda h: h.astype(np.int32)), wrong_type))
        cases.append(Case(op, f"{name}-float16", with_device(lambda h: h.astype(np.float16)), wrong_type, ("cpu",)))
        if len(op.floats()) > 1:  # one float64 among float32s
            cases.append(Case(op, f"{name}-float64", with_device(lambda h: h.astype(np.float64)), refused, ("cpu",)))
    if arg.kind == "weights":
        cases += [Case(op, f"{name}-holds-{v}", with_device(first_set_to(v)), refused) for v in (np.nan, np.inf, -1.0)]
    if arg.kind == "labels":  # loss_args has K = 3 classes
        cases += [Case(op, f"{name}-holds-{v}", with_device(first_set_to(v, t)), refused)
                  for v, t in ((3, np.uint8), (-1, np.int64), (255, np.uint8))]
        as_dtype = lambda k: setter(name, lambda a, d, t: host(a, d).astype(k))  # noqa: E731
        cases += [Case(op, f"{name}-{np.dtype(k).name}", as_dtype(k), wrong_type) for k in (np.float32, np.bool_)]
        cases += [Case(op, f"{name}-{np.dtype(k).name}", as_dtype(k), OK) for k in (np.int32, np.int64)]
    if arg.kind == "argmax":
        cases.append(Case(op, f"{name}-int32", with_device(lambda h: h.astype(np.int32)), wrong_type))
        cases.append(Case(op, f"{name}-holds-4", with_device(first_set_to(4)), refused))
    # Host-only variants. Host labels are copied to int32 anyway: any layout is fine.
    host_ok = OK if arg.kind == "labels" or not arg.writes else refused
    cases.append(Case(op, f"{name}-read-only", setter(name, read_only), host_ok, ("cpu",)))
    cases.append(Case(op, f"{name}-memory-mapped", setter(name, memory_mapped), host_ok, ("cpu",)))
    cases.append(Case(op, f"{name}-strided", setter(name, strided), OK if arg.kind == "labels" else refused, ("cpu",)))
    # An array left on the host while the others are on the device: the labels may be (they
    # are uploaded), and softmax_ce_check validates and uploads host weights too.
    if len(op.arrays()) > 1 and arg.kind != "labels":
        host_weights_ok = arg.kind == "weights" and op.fn_name == "softmax_ce_check"
        left_on_host = setter(name, lambda a, d, t: host(a, d))
        cases.append(Case(op, f"{name}-left-on-host", left_on_host, OK if host_weights_ok else refused, ("gpu",)))
    return cases


NOT_A_NUMBER = (("bool", True), ("str", "1"), ("None", None), ("array", np.array([1.0])), ("complex", 1j))


def scalar_cases(op: Op, arg: Arg) -> list[Case]:
    """Bad (and good) variants of one scalar argument."""
    name = arg.name
    refused, wrong_type = Refused(ValueError, argument(name)), Refused(TypeError, argument(name))
    cases = [Case(op, f"{name}-{what}", setter(name, lambda a, d, t, v=v: v), wrong_type) for what, v in NOT_A_NUMBER]
    cases += [Case(op, f"{name}={v!r}", setter(name, lambda a, d, t, v=v: v), refused) for v in arg.bad]
    if arg.kind == "real":
        cases += [Case(op, f"{name}={v}", setter(name, lambda a, d, t, v=v: v), refused) for v in (math.nan, math.inf)]
        cases.append(Case(op, f"{name}-float64", setter(name, lambda a, d, t: np.float64(a)), OK))
    else:
        cases.append(Case(op, f"{name}-float", setter(name, lambda a, d, t: float(a)), wrong_type))
        cases += [Case(op, f"{name}-{np.dtype(k).name}", setter(name, lambda a, d, t, k=k: k(a)), OK)
                  for k in (np.int64, np.uint64)]
    return cases


def shape_cases(op: Op, arg: Arg) -> list[Case]:
    name = arg.name
    first = lambda f: setter(name, lambda a, d, t: (f(a[0]),) + tuple(a[1:]))  # noqa: E731
    return [
        Case(op, f"{name}-float-entry", first(lambda s: s + 0.5), Refused(TypeError, argument(name))),
        Case(op, f"{name}-negative-entry", first(lambda s: -1), Refused(ValueError, argument(name))),
        Case(op, f"{name}-int64-entries", setter(name, lambda a, d, t: tuple(np.int64(s) for s in a)), OK),
    ]


def op_cases(op: Op) -> list[Case]:
    cases = []
    for arg in op.args:
        kind_cases = {"real": scalar_cases, "int": scalar_cases, "shape": shape_cases}.get(arg.kind, array_cases)
        cases += kind_cases(op, arg)
    if op.floats():  # every float array in float64: the cpu computes in it, a device refuses it
        def all_float64(args, device, tmp_path):
            for a in op.floats():
                args[a.name] = device.to_device(host(args[a.name], device).astype(np.float64))
        first = op.floats()[0].name
        cases.append(Case(op, "all-float64", all_float64, CLOSE, ("cpu",)))
        cases.append(Case(op, "all-float64", all_float64, Refused(TypeError, argument(first)), ("gpu",)))
    return cases


# Known gaps: a case that fails today, with what it needs (a strict xfail: the fix fails the mark).
KNOWN_GAPS: dict[str, str] = {}  # case id -> why it fails today (a strict xfail: fixing it fails the mark)

CASES = [case for op in OPS for case in op_cases(op)]
DEVICE_CASES = [
    pytest.param(device, case, id=f"{device}-{case.id}",
                 marks=[pytest.mark.xfail(reason=KNOWN_GAPS[case.id], strict=True)] if case.id in KNOWN_GAPS else [])
    for case in CASES for device in ("cpu", "opencl", "cuda")
    if ("cpu" if device == "cpu" else "gpu") in case.devices
]


# --- running a case ----------------------------------------------------------------------


@pytest.fixture
def named_device(request):
    def get(name):
        if name == "cpu":
            return get_device("cpu")
        return request.getfixturevalue({"opencl": "opencl_device", "cuda": "cuda_device"}[name])
    return get


def prepared_args(op: Op, device) -> dict:
    """The good call's arguments on ``device`` (labels stay on the host: that is what callers pass)."""
    args = op.make(np.random.default_rng(0))
    for a in op.arrays():
        if a.kind != "labels":
            args[a.name] = device.to_device(args[a.name])
    if op.takes_runtime:
        args["runtime"] = device.runtime
    return args


def outcome(op: Op, args: dict, device) -> list[np.ndarray]:
    """What the call produced, on the host: its return values, then every array it writes into."""
    returned = op.fn(**args)
    values = returned if isinstance(returned, tuple) else () if returned is None else (returned,)
    values += tuple(args[a.name] for a in op.args if a.writes)
    return [host(v, device) for v in values]


def snapshot(op: Op, args: dict, device) -> list[np.ndarray]:
    """Copies of the arrays the op writes into, to show a refused call changed nothing."""
    return [np.array(host(args[a.name], device)) for a in op.args if a.writes and hasattr(args[a.name], "shape")]


def assert_refused(call, expected: Refused, fn_name: str):
    """The call raises exactly the expected class of error, naming the function and the argument."""
    try:
        call()
    except (TypeError, ValueError) as exc:
        message = str(exc)
        assert isinstance(exc, expected.error), f"{type(exc).__name__} instead of {expected.error.__name__}: {message}"
        assert f"{fn_name}:" in message, f"the message does not name {fn_name}: {message}"
        assert re.search(expected.names, message), f"the message does not name {expected.names}: {message}"
        assert "numba" not in type(exc).__module__, f"a Numba error leaked out: {message}"
    else:
        pytest.fail(f"no error; expected a {expected.error.__name__} from {fn_name}")


@pytest.mark.parametrize("device_name,case", DEVICE_CASES)
def test_op_catalogue(named_device, tmp_path, device_name, case):
    device = named_device(device_name)
    op = case.op
    args = prepared_args(op, device)
    case.mutate(args, device, tmp_path)
    if isinstance(case.expected, Refused):
        before = snapshot(op, args, device)
        assert_refused(lambda: op.fn(**args), case.expected, op.fn_name)
        for kept, now in zip(before, snapshot(op, args, device)):
            np.testing.assert_array_equal(now, kept, err_msg="a refused call wrote into its output")
        return
    got, plain = outcome(op, args, device), outcome(op, prepared_args(op, device), device)
    assert len(got) == len(plain)
    for g, p in zip(got, plain):
        if case.expected == CLOSE:
            np.testing.assert_allclose(g, p, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(g, p)


# --- the size functions and UNet ---------------------------------------------------------

SIZE_FUNCTIONS = {  # name: (call with (size, depth), the size argument's name)
    "output_size": (lambda s, d: output_size(s, d), "input_size"),
    "is_valid_input_size": (lambda s, d: is_valid_input_size(s, d), "input_size"),
    "check_input_size": (lambda s, d: check_input_size(s, d), "input_size"),
    "nearest_valid_sizes": (lambda s, d: nearest_valid_sizes(s, d), "input_size"),
    "valid_input_sizes": (lambda s, d: valid_input_sizes(d, s), "up_to"),
    "input_size_for_output": (lambda s, d: input_size_for_output(s, d), "min_output"),
    "smallest_valid_input_size": (lambda s, d: smallest_valid_input_size(d), None),
}
BAD_INTEGERS = (("float", 5.0), ("bool", True), ("str", "5"), ("None", None))


def size_cases():
    """(id, function name, call, expected outcome, the plain call for OK cases)."""
    for fn, (call, size_name) in SIZE_FUNCTIONS.items():
        plain = lambda c=call: c(572, 5)  # noqa: E731
        yield f"{fn}-depth-0", fn, lambda c=call: c(572, 0), Refused(ValueError, argument("depth")), None
        yield f"{fn}-depth--3", fn, lambda c=call: c(572, -3), Refused(ValueError, argument("depth")), None
        yield f"{fn}-depth-int64", fn, lambda c=call: c(572, np.int64(5)), OK, plain
        for what, value in BAD_INTEGERS:
            yield (f"{fn}-depth-{what}", fn, lambda c=call, v=value: c(572, v), Refused(TypeError, argument("depth")),
                   None)
        if size_name:
            yield f"{fn}-size-int64", fn, lambda c=call: c(np.int64(572), 5), OK, plain
            for what, value in BAD_INTEGERS:
                yield (f"{fn}-{size_name}-{what}", fn, lambda c=call, v=value: c(v, 5),
                       Refused(TypeError, argument(size_name)), None)
    for size in (571, 0, -5):  # sizes the network cannot take: the error names the size and what would fit
        for fn in ("output_size", "check_input_size"):
            call = SIZE_FUNCTIONS[fn][0]
            yield (f"{fn}-size-{size}", fn, lambda c=call, s=size: c(s, 5), Refused(ValueError, r"input size .* use \d+"),
                   None)


UNET_ARGS = {  # argument: (a good value, kind, out-of-range values)
    "in_channels": (1, "int", (0,)), "n_classes": (2, "int", (1,)), "base": (2, "int", (0,)),
    "depth": (2, "int", (1, 32)),
    "dropout": (0.5, "real", (-0.1, 1.0)), "seed": (3, "int", (-1, 2**64)),
    "input_mean": (0.5, "real", (1e39,)), "input_std": (0.25, "real", (0.0, -1.0, 1e39)),
}


def unet_cases():
    for name, (good, kind, bad) in UNET_ARGS.items():
        build = lambda v, n=name: UNet(**{"base": 2, "depth": 2, n: v}).config  # noqa: E731
        plain = lambda g=good, b=build: b(g)  # noqa: E731
        for what, value in NOT_A_NUMBER + (() if kind == "real" else (("float", float(good)),)):
            yield f"UNet-{name}-{what}", "UNet", lambda v=value, b=build: b(v), Refused(TypeError, argument(name)), None
        for value in bad + ((math.nan, math.inf, -math.inf) if kind == "real" else ()):
            yield (f"UNet-{name}={value!r}", "UNet", lambda v=value, b=build: b(v), Refused(ValueError, argument(name)),
                   None)
        wide = np.float64 if kind == "real" else np.int64
        yield f"UNet-{name}-{wide.__name__}", "UNet", lambda g=good, b=build, w=wide: b(w(g)), OK, plain

    def forward(size):
        model = UNet(base=1, depth=2)
        return model(Tensor(np.zeros((1, 1, size, size), np.float32)))
    yield ("UNet.forward-size-19", "UNet.forward", lambda: forward(19), Refused(ValueError, r"input size 19 .*use 18 or 20"),
           None)


@pytest.mark.parametrize("fn_name,call,expected,plain",
                         [pytest.param(*case[1:], id=case[0]) for case in [*size_cases(), *unet_cases()]])
def test_size_and_model_catalogue(fn_name, call, expected, plain):
    if isinstance(expected, Refused):
        assert_refused(call, expected, fn_name)
    else:
        assert call() == plain()
