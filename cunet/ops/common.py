"""Checks and launch arithmetic shared by every op.

Every public op validates its inputs here before touching a kernel, so bad input fails
the same way on every device: a TypeError or ValueError that names the op, the argument,
what it got and what it expected.
"""
from __future__ import annotations

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
