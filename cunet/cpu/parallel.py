"""cpu loops that run serially for small arrays and on Numba's threads for large ones.

Every cpu op's Numba loop (cunet/ops/*.py) is declared with :func:`njit_serial_or_parallel`.
"""
from __future__ import annotations

# A Numba ``parallel=True`` loop hands its iterations to a thread pool (the OpenMP layer
# here). That hand-off has a fixed cost: about 10-50 us on an idle 2-core machine, and
# milliseconds when the cores are busy, because the pool's threads then wait to be
# scheduled (measured: _sgd_cpu on 100 elements took 15 ms with 2 threads, 3 us with 1).
# (The pool's threads spinning after the loop, which cost more still, is switched off by
# OMP_WAIT_POLICY=PASSIVE in cunet/cpu/__init__.py.) A U-Net step runs ~100 such loops, half of them on small arrays
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
