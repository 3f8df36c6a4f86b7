"""Checks and launch arithmetic shared by every op.

Every public op validates its inputs here before touching a kernel, so bad input fails
the same way on every device: a TypeError or ValueError that names the op, the argument,
what it got and what it expected.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from cunet.device import Runtime, runtime_of

INT32_LIMIT = 2**31  # kernels index with 32-bit int (prelude rule 8)


def check_float_array(op: str, name: str, a, ndim: int | None = None, layout: str = "") -> Runtime | None:
    """Validate one float tensor argument and return the runtime that owns it (None: cpu).

    float32 everywhere; float64 is accepted on the ``cpu`` device too (for gradient checks).
    ``layout`` (e.g. ``"N, C, H, W"``) is named in the rank error.
    """
    if not (hasattr(a, "shape") and hasattr(a, "dtype") and hasattr(a, "flags")):
        raise TypeError(f"{op}: {name} must be an array, got {type(a).__name__}")
    runtime = runtime_of(a)
    allowed = (np.float32, np.float64) if runtime is None else (np.float32,)
    if a.dtype not in allowed:
        expected = "float32 (or float64 on the cpu device)" if runtime is None else "float32"
        raise TypeError(f"{op}: {name} has dtype {a.dtype}; expected {expected}")
    if ndim is not None and a.ndim != ndim:
        what = f"[{layout}]" if layout else f"{ndim}-D"
        raise ValueError(f"{op}: {name} must be {what}, got shape {tuple(a.shape)}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{op}: {name} must be C-contiguous (got a strided view); copy it first")
    if a.size >= INT32_LIMIT:
        raise ValueError(
            f"{op}: {name} has {a.size} elements; kernels index with 32-bit ints, so a tensor "
            f"must have fewer than 2**31 (split the batch or use smaller tiles)"
        )
    return runtime


def check_writable(op: str, name: str, a) -> None:
    """An array the op writes into (an output or an in-place argument) is not read-only.

    Inputs that are only read may be read-only (a memory map, an array after
    ``setflags(write=False)``); the Numba loops compile a read-only variant for them. An
    output cannot be: Numba would refuse to compile the store with a TypingError that
    names neither the op nor the argument, and NumPy with a message that names neither.
    """
    if not getattr(a.flags, "writeable", True):  # device arrays have no such flag: always writable
        raise ValueError(f"{op}: {name} is read-only, but the op writes into it; pass a writable array "
                         f"(e.g. a copy: {name}.copy())")


def check_same_shape(op: str, **arrays) -> None:
    """All the named arrays have one shape."""
    shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{n} {s}" for n, s in shapes.items())
        raise ValueError(f"{op}: shapes must match, got {listing}")


def check_same_device(op: str, **arrays) -> Runtime | None:
    """All the named arrays live on one device; returns its runtime (None: cpu)."""
    runtimes = {name: runtime_of(a) for name, a in arrays.items()}
    distinct = {id(r) for r in runtimes.values()}
    if len(distinct) > 1:
        listing = ", ".join(f"{n} on {'cpu' if r is None else r.name}" for n, r in runtimes.items())
        raise ValueError(f"{op}: all arguments must be on one device, got {listing}")
    return next(iter(runtimes.values()))


def check_same_dtype(op: str, **arrays) -> None:
    """All the named arrays have one dtype."""
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{n} {d}" for n, d in dtypes.items())
        raise ValueError(f"{op}: dtypes must match, got {listing}")


# --- scalar arguments -------------------------------------------------------------------
# The kernels take their scalars as 32-bit words: float32 rates, int32 sizes, uint32 seeds
# and streams. A Python or NumPy number of any width is accepted if its value fits; the
# checks below refuse the rest by name (a bool is refused too: True is an int to Python,
# but never a meaningful learning rate or seed), so nothing is silently wrapped or rounded
# to a different meaning on its way into a kernel.
def _bound(v) -> str:
    """A bound as people write it: 2**32 rather than 4294967296."""
    if isinstance(v, int) and v >= 2**16 and v & (v - 1) == 0:
        return f"2**{v.bit_length() - 1}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _requirement(low, high, low_open: bool = False, high_open: bool = True) -> str:
    """'finite', 'finite and >= 0' or 'in [0, 1)': what a real argument must be."""
    if low == -math.inf and high == math.inf:
        return "finite"
    if high == math.inf:
        return f"finite and {'>' if low_open else '>='} {_bound(low)}"
    return f"in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}{')' if high_open else ']'}"


def check_int(op: str, name: str, value, low: int | None = None, high: int | None = None) -> int:
    """An integer argument with low <= value < high (either bound may be None: no bound).

    A Python or NumPy integer, not a bool or a float (a seed of 1.5 or a size of 2.0 is a
    mistake, not a number to round). Returns it as a Python int. TypeError for the wrong
    kind, ValueError out of range; both name the op, the argument, its value and what is
    accepted.
    """
    if low is not None and high is not None:
        accepted = f"in [{_bound(low)}, {_bound(high)})"
    elif low is not None:
        accepted = f">= {_bound(low)}"
    elif high is not None:
        accepted = f"< {_bound(high)}"
    else:
        accepted = ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an integer{' ' + accepted if accepted else ''}, "
                        f"got {value!r} ({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value >= high):
        raise ValueError(f"{op}: {name} must be {accepted}, got {value}")
    return value


def check_real(op: str, name: str, value, low: float = -math.inf, high: float = math.inf,
               low_open: bool = False, high_open: bool = True, float32: bool = True) -> float:
    """A finite real argument between ``low`` and ``high`` (by default low <= value < high).

    A Python or NumPy int or float, not a bool. ``float32``: the value goes to a kernel
    (or into float32 data) as a float32, so the rounded value must be finite and in range
    too (p = 1 - 1e-9 is below 1, its float32 is 1). Returns it as a Python float.
    """
    required = _requirement(low, high, low_open, high_open)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number ({required}), got {value!r} ({type(value).__name__})")

    def fits(v: float) -> bool:  # false for NaN too
        above = low < v if low_open else low <= v
        below = v < high if high_open else v <= high
        return math.isfinite(v) and above and below

    if not fits(float(value)):
        raise ValueError(f"{op}: {name} must be {required}, got {value!r}")
    if float32:
        with np.errstate(over="ignore"):  # 1e300 becomes inf: refused below, not warned about
            rounded = float(np.float32(value))
        if not fits(rounded):
            raise ValueError(f"{op}: {name} must be {required} in float32, the precision the kernels use; "
                             f"{value!r} rounds to {rounded!r}")
    return float(value)


def check_shape(op: str, name: str, shape) -> tuple[int, ...]:
    """A shape argument: a sequence of integers >= 0 (no floats, no bools); returns a tuple of ints."""
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__"):
        raise TypeError(f"{op}: {name} must be a sequence of integers, got {shape!r} ({type(shape).__name__})")
    return tuple(check_int(op, f"{name}[{i}]", s, 0, INT32_LIMIT) for i, s in enumerate(shape))


def ceil_div(a: int, b: int) -> int:
    """Smallest integer >= a / b, for rounding grids up."""
    return -(-a // b)


def grid_1d(n: int, threads: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, block) for one thread per element over ``n`` elements, the grid rounded up."""
    return (ceil_div(n, threads), 1, 1), (threads, 1, 1)


def check_output_size(op: str, name: str, shape) -> None:
    """An output an op is about to allocate fits 32-bit kernel indexing (prelude rule 8).

    check_float_array covers the inputs; this covers outputs larger than any input (an
    up-convolution's y is 4K/C times its x, a max-pool's dx four times its dy).
    """
    size = 1
    for s in shape:
        size *= int(s)
    if size >= INT32_LIMIT:
        raise ValueError(
            f"{op}: {name} would have shape {tuple(int(s) for s in shape)} = {size} elements; kernels index "
            f"with 32-bit ints, so a tensor must have fewer than 2**31 (split the batch or use smaller tiles)"
        )
