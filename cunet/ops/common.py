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


# --- cpu loops: serial for small arrays, parallel for large ones ---------------------------
# A Numba ``parallel=True`` loop hands its iterations to a thread pool (the OpenMP layer
# here). That hand-off has a fixed cost: about 10-50 us on an idle 2-core machine, and
# milliseconds when the cores are busy, because the pool's threads then wait to be
# scheduled (measured: _sgd_cpu on 100 elements took 15 ms with 2 threads, 3 us with 1).
# (The pool's threads spinning after the loop, which cost more still, is switched off by
# OMP_WAIT_POLICY=PASSIVE in cunet/__init__.py.) A U-Net step runs ~100 such loops, half of them on small arrays
# (biases, 1x1 layers, the bottom level), where one core finishes before the pool wakes.
#
# So every CPU loop is compiled twice from one Python function, serially and in
# parallel, and the call picks the parallel one only when the loop has enough work to
# win. The unit of ``work`` is "elements streamed by the loop" (the size of its largest
# array); loops whose per-element cost is far from a copy's (Philox draws, exp/log) say
# so with their own threshold.
#
# PARALLEL_MIN_WORK: where the parallel loop starts to beat the serial one, measured with
# `python -m benchmarks.threshold` (float32, 2 idle cores, warm caches; benchmarks/README.md
# has the table). For the copy-like loops (relu, sgd, maxpool, the up-convolution's
# scatter) the parallel loop is 0.1x the serial speed at 1k elements (waking the pool
# costs ~20 us), 0.3-0.6x at 16k-64k, 0.8-1.35x at 128k (2**17) and 1.7-1.9x from 256k
# on. So 2**17, the crossover: a 2x error either way costs microseconds per call. Loops
# with much more arithmetic per element (Philox, exp/log) set their own, lower threshold.
PARALLEL_MIN_WORK = 1 << 17


class SerialOrParallel:
    """One Numba loop compiled serially and in parallel; ``f(*args, work=n)`` picks by ``n``.

    ``prange`` is ``range`` in the serial compile, so both variants run the same code;
    the tests check they agree bit for bit. ``.serial`` and ``.parallel`` are the two
    Numba dispatchers, for benchmarks and tests.
    """

    def __init__(self, py_func, min_work: int = PARALLEL_MIN_WORK, cache: bool = True):
        import functools
        import types

        from numba import njit

        # Numba's on-disk cache keys an entry by the function's name, line and bytecode,
        # not by the compile flags: two dispatchers of one function would load each
        # other's machine code. A copy of the function under another name gets its own
        # cache file.
        serial_func = types.FunctionType(py_func.__code__, py_func.__globals__, py_func.__name__ + "__serial",
                                         py_func.__defaults__, py_func.__closure__)
        serial_func.__qualname__ = py_func.__qualname__ + "__serial"
        self.serial = njit(cache=cache)(serial_func)
        self.parallel = njit(parallel=True, cache=cache)(py_func)
        self.min_work = int(min_work)
        self.py_func = py_func
        functools.update_wrapper(self, py_func)

    def choose(self, work: int):
        """The dispatcher a loop of ``work`` elements runs on."""
        return self.parallel if work >= self.min_work else self.serial

    def __call__(self, *args, work: int):
        return self.choose(work)(*args)

    def __repr__(self) -> str:
        return f"SerialOrParallel({self.py_func.__qualname__}, min_work={self.min_work})"


def njit_serial_or_parallel(min_work: int = PARALLEL_MIN_WORK, cache: bool = True):
    """Decorator: compile a loop with ``prange`` both ways (see :class:`SerialOrParallel`)."""
    def decorate(py_func):
        return SerialOrParallel(py_func, min_work, cache)
    return decorate
