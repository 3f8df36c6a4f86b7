"""What every benchmark here shares: the machine, the load, timers, peaks, tables, JSON.

Rules the benchmarks follow (llm.c's dev/cuda harness is the model):

- validate, then benchmark: an op's output is checked against a reference once, and
  only an op that passed is timed;
- warm-up calls first (Numba compiles on the first call, BLAS and the OpenMP pools start
  their threads, CuPy compiles its RawModules), then the median of several repeats;
- every report starts with the exact command, the machine and the load average, because
  on a shared 2-core machine another job can double a time: a figure taken at a load
  above 1 is not one to quote.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

import cunet

# --- the machine ------------------------------------------------------------------------------


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (runnable threads, averaged; 2 = both cores busy here)."""
    return [round(v, 2) for v in os.getloadavg()]


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def blas_name() -> str:
    """The BLAS NumPy was built with (OpenBLAS for the PyPI wheels), and the CPU kernel it runs.

    The kernel matters: OpenBLAS picks it by CPU, unless OPENBLAS_CORETYPE names one. Some
    machines set OPENBLAS_CORETYPE=Haswell (older OpenBLAS builds misbehave on newer CPUs),
    and on the 2-core AMD EPYC that halves sgemm: 247 GFLOP/s with the AVX2 Haswell kernel,
    461 with the AVX-512 one OpenBLAS picks itself (2048^3, 2026-12-07).
    """
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        name = f"{blas['name']} {blas.get('version', '')}".strip()
    except Exception:
        name = "unknown"
    try:
        from threadpoolctl import threadpool_info
        kernels = {info.get("architecture") for info in threadpool_info() if info.get("internal_api") == "openblas"}
        kernels.discard(None)
        if kernels:
            name += f", {'/'.join(sorted(kernels))} kernel"
    except ImportError:
        pass
    if os.environ.get("OPENBLAS_CORETYPE"):
        name += f" (OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']})"
    return name


def blas_threads() -> int | None:
    """Threads NumPy's OpenBLAS uses (asked through ctypes; None where it cannot be asked)."""
    import ctypes
    import glob

    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "libscipy_openblas*.so"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads"):
            if hasattr(lib, name):
                return int(getattr(lib, name)())
    return None


def thread_settings() -> str:
    """The thread-pool variables cunet sets (cunet/__init__.py), as in effect in this process."""
    settings = " ".join(f"{name}={os.environ.get(name, '(unset)')}" for name in cunet.CPU_THREAD_SETTINGS)
    if cunet.NUMPY_LOADED_BEFORE_CUNET:
        settings += " (NumPy was loaded before cunet: OpenBLAS kept the timeout it found then)"
    return settings


def machine() -> dict:
    """A description of where the numbers were taken; goes into every report."""
    import numba

    info = dict(cpu=cpu_model(), cores=cores(), memory_gib=round(_memory_bytes() / 2**30, 1),
                python=platform.python_version(), numpy=np.__version__, blas=blas_name(),
                blas_threads=blas_threads(), numba=numba.__version__, numba_threads=numba.get_num_threads(),
                numba_threading_layer=_numba_layer(), thread_settings=thread_settings())
    torch = optional_torch()
    if torch is not None:
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return info


def _numba_layer() -> str:
    """Numba's threading layer ("omp", "tbb", "workqueue"); known once a parallel loop has run."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        return f"not chosen yet (config: {numba.config.THREADING_LAYER})"


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def torch_math(torch, math: str) -> None:
    """Let PyTorch's convolutions and matmuls use TF32 tensor cores exactly when cunet's do."""
    torch.backends.cudnn.allow_tf32 = math == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = math == "tf32"


def optional_torch():
    """PyTorch if it is installed, else None (it is a peer here, never a dependency)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def command_line() -> str:
    """The command that produced this output, as one could type it again."""
    module = sys.modules["__main__"].__spec__
    program = f"python -m {module.name}" if module is not None else f"python {sys.argv[0]}"
    return " ".join([program] + [shlex.quote(a) for a in sys.argv[1:]])


def header(title: str, device: str, extra: list[str] | None = None, command: str | None = None,
           load: list[float] | None = None) -> str:
    """The lines every human-readable report starts with (``command`` and ``load``: the
    report's own, when it is printed later from JSON; else this process's, now)."""
    m = machine()
    load = load or load_average()
    lines = [f"# {title}", f"# command: {command or command_line()}", f"# device: {device}",
             f"# machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; python {m['python']}, "
             f"numpy {m['numpy']} ({m['blas']}, {m['blas_threads']} threads), numba {m['numba']} "
             f"({m['numba_threads']} threads)"
             + (f", torch {m['torch']} ({m['torch_threads']} threads)" if "torch" in m else ""),
             f"# thread pools: {m['thread_settings']}",
             f"# load average (1/5/15 min) at start: {' '.join(map(str, load))}"
             + ("   (above 1: see the others' share below for whether another job ran meanwhile)"
                if load[0] > 1 else "")]
    return "\n".join(lines + [f"# {line}" for line in extra or []])


# --- were we alone? -------------------------------------------------------------------------------


class OthersMeter:
    """The share of the machine's CPU time that OTHER processes used while we measured.

    The load average trails by a minute and counts our own threads too; this counts
    exactly the interval measured: (all CPUs' busy time - this process's CPU time) /
    all CPUs' time, from /proc/stat and /proc/self/stat (10 ms ticks, so meaningful for
    intervals of a few hundred ms and up). 0 = we had the machine to ourselves; 0.5 on
    two cores = another job kept one core busy. None where /proc is missing.
    """

    def __init__(self):
        self._start = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
        busy = total - fields[3] - fields[4]
        return total, busy, int(own[11]) + int(own[12])  # utime + stime of all our threads

    def share(self) -> float | None:
        """Others' share since construction (or the last call), then restart the interval."""
        end = self._read()
        start, self._start = self._start, end
        if start is None or end is None or end[0] == start[0]:
            return None
        total, busy, own = (e - s for e, s in zip(end, start))
        return max(0.0, busy - own) / total


# --- timing -------------------------------------------------------------------------------------


def median(values) -> float:
    """The median (robust to the odd slow repeat a busy machine produces)."""
    return float(statistics.median(values))


class CpuTimer:
    """Wall-clock time of one call with ``perf_counter``; ``synchronize`` waits for the device.

    Between repeats :meth:`flush` writes a buffer larger than the last-level cache, so every
    repeat starts cold, as the same op does inside a train step whose other layers have
    long evicted its operands (a U-Net layer's activations are tens to hundreds of MB).
    """

    name = "wall clock (time.perf_counter)"

    def __init__(self, synchronize=lambda: None, flush_bytes: int = 256 << 20):
        self.synchronize = synchronize
        self._flush = np.zeros(flush_bytes // 4, np.float32) if flush_bytes else None

    def flush(self) -> None:
        """Evict the caches: write every line of a buffer bigger than the L3 (105 MB here)."""
        if self._flush is not None:
            self._flush += 1.0

    def time(self, fn) -> float:
        """Seconds for one call of ``fn``."""
        self.synchronize()
        t0 = time.perf_counter()
        fn()
        self.synchronize()
        return time.perf_counter() - t0


class CudaTimer:
    """GPU time of one call between two CUDA events on the current stream.

    Events measure the kernels themselves, not Python's launch overhead or the host
    waiting; the L2 is flushed before every repeat by writing a buffer twice its size, so
    no repeat finds its operands left in L2 by the one before (an H100's L2 is 50 MB, a
    U-Net layer's operands at the small levels fit in it).
    """

    name = "CUDA events on the current stream"

    def __init__(self, cupy):
        self.cupy = cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        l2 = int(props.get("l2CacheSize", 0)) or (50 << 20)
        self._flush = cupy.zeros(2 * l2 // 4, cupy.float32)

    def flush(self) -> None:
        """Write a buffer of twice the L2's size."""
        self._flush += 1.0

    def time(self, fn) -> float:
        cupy = self.cupy
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3


def repeat(timer, fn, warmup: int, repeats: int) -> list[float]:
    """``warmup`` untimed calls, then ``repeats`` timed ones, each after a cache flush."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        timer.flush()
        times.append(timer.time(fn))
    return times


# --- peaks ----------------------------------------------------------------------------------------


@dataclass
class Peaks:
    """The device's ceilings: FP32 GFLOP/s and memory GB/s, and how each was obtained; the TF32
    tensor-core GFLOP/s where the GPU is known to have them."""

    gflops: float
    gbps: float
    gflops_source: str
    gbps_source: str
    measured: bool = True
    extra: dict = field(default_factory=dict)
    tf32_gflops: float | None = None


def measure_sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """NumPy's float32 matmul (BLAS sgemm on all cores) of two n x n matrices: 2 n^3 FLOPs over
    the best of ``repeats`` after a warm-up (a peak is the best the machine did), in GFLOP/s."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    c = np.empty_like(a)
    t_gemm = min(repeat(CpuTimer(flush_bytes=0), lambda: np.matmul(a, b, out=c), 1, repeats))
    return 2 * n**3 / t_gemm / 1e9


def measure_cpu_peaks(gemm_n: int = 2048, copy_bytes: int = 512 << 20, repeats: int = 5) -> Peaks:
    """Measure this CPU's practical peaks.

    Compute: NumPy's float32 matmul (BLAS sgemm on all cores) of two n x n matrices,
    2 n^3 FLOPs, the best of ``repeats`` after a warm-up (a peak is the best the machine
    did, so the fastest repeat, not the median). That is what this machine's BLAS does
    at a friendly shape, the practical ceiling for GEMM-shaped ops; the hardware's own
    peak is higher (cores x 2 AVX-512 FMA units x 16 lanes x 2 FLOPs x clock), and an
    op that blocks better than sgemm at 2048 can beat it (> 100% in the tables).
    Memory: a streaming copy of ``copy_bytes`` (far beyond the L3) with a Numba parallel
    loop on every core, and with NumPy's single-threaded copy; the faster one counts,
    best of ``repeats``. Bytes counted: read + write (STREAM's convention; the hardware
    also reads each destination line before writing it, which this does not count).
    """
    gflops = measure_sgemm_gflops(gemm_n, repeats)
    timer = CpuTimer(flush_bytes=0)
    src = np.ones(copy_bytes // 4, np.float32)
    dst = np.empty_like(src)
    t_numpy = min(repeat(timer, lambda: np.copyto(dst, src), 1, repeats))
    t_numba = min(repeat(timer, lambda: _parallel_copy(src, dst), 1, repeats))
    moved = 2 * src.nbytes
    gbps = moved / min(t_numpy, t_numba) / 1e9
    return Peaks(
        gflops=gflops, gbps=gbps,
        gflops_source=f"measured: NumPy float32 matmul {gemm_n}x{gemm_n}x{gemm_n} ({blas_name()}), best of {repeats}",
        gbps_source=(f"measured: streaming copy of {copy_bytes >> 20} MiB, read+write bytes, best of {repeats}; Numba parallel "
                     f"{moved / t_numba / 1e9:.1f} GB/s, NumPy copyto {moved / t_numpy / 1e9:.1f} GB/s; the faster counts"),
        extra=dict(sgemm_n=gemm_n, copy_mib=copy_bytes >> 20, copy_numba_gbps=moved / t_numba / 1e9,
                   copy_numpy_gbps=moved / t_numpy / 1e9),
    )


_copy_kernel = None


def _parallel_copy(src, dst):
    global _copy_kernel
    if _copy_kernel is None:
        from numba import njit, prange

        @njit(parallel=True, cache=False)
        def copy(src, dst):
            for i in prange(src.size):
                dst[i] = src[i]

        _copy_kernel = copy
    _copy_kernel(src, dst)


# Published FP32 (non-tensor-core) peaks and memory bandwidths, for the cuda device and the
# GPU model. Sources: NVIDIA A100 Tensor Core GPU datasheet (2021): FP32 19.5 TFLOP/s,
# HBM2e 1,555 GB/s (40 GB) / 2,039 GB/s (80 GB SXM); NVIDIA H100 Tensor Core GPU datasheet
# (2023): SXM FP32 67 TFLOP/s, HBM3 3.35 TB/s; PCIe 51 TFLOP/s, 2.0 TB/s; H200 datasheet
# (2024): FP32 67 TFLOP/s (SXM), HBM3e 4.8 TB/s.
from cunet.trace import GPU_SPECS  # noqa: E402,F401  (the datasheets' peaks, shared with the package's trace)
# FP32 lanes per SM by compute capability (CUDA C Programming Guide, "Arithmetic Instructions").
FP32_LANES_PER_SM = {7: 64, 8: 64, 9: 128}
FP32_LANES_PER_SM_86_89 = 128
# cudaDeviceAttr values (CUDA runtime API): kHz clocks, still there in CUDA 13.
CUDA_ATTR_CLOCK_RATE, CUDA_ATTR_MEMORY_CLOCK_RATE = 13, 36


def gpu_spec_for(name: str) -> dict | None:
    """The GPU_SPECS entry for a CUDA device name ("NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3", ...)."""
    n = name.upper()
    if "A100" in n:
        return GPU_SPECS["A100 80GB" if "80GB" in n else "A100 40GB"]
    if "H200" in n and "NVL" not in n:  # the NVL card runs at a lower power: computed from its properties
        return GPU_SPECS["H200"]
    if "H100" in n:
        return GPU_SPECS["H100 PCIe" if "PCIE" in n else "H100 SXM"]
    return None


def cuda_peaks(cupy) -> Peaks:
    """The current GPU's peaks: the datasheet figure where the name is known, else computed
    from the device properties (SMs x FP32 lanes x 2 x clock; bus width x 2 x memory clock)."""
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    spec = gpu_spec_for(name)
    if spec is not None:
        return Peaks(spec["gflops"], spec["gbps"], spec["source"], spec["source"], measured=False, extra=dict(gpu=name),
                     tf32_gflops=spec["tf32_gflops"])
    major, minor = props["major"], props["minor"]
    lanes = FP32_LANES_PER_SM_86_89 if (major, minor) in ((8, 6), (8, 9)) else FP32_LANES_PER_SM.get(major, 64)
    # CUDA 13 dropped clockRate and memoryClockRate from the properties; the attributes remain.
    device = cupy.cuda.Device().id
    clock_khz = props.get("clockRate") or cupy.cuda.runtime.deviceGetAttribute(CUDA_ATTR_CLOCK_RATE, device)
    memory_khz = props.get("memoryClockRate") or cupy.cuda.runtime.deviceGetAttribute(CUDA_ATTR_MEMORY_CLOCK_RATE, device)
    gflops = props["multiProcessorCount"] * lanes * 2 * clock_khz * 1e3 / 1e9
    gbps = 2 * memory_khz * 1e3 * props["memoryBusWidth"] / 8 / 1e9
    source = f"computed from device properties of {name} (SMs x {lanes} FP32 lanes x 2 x boost clock; bus x 2 x memory clock)"
    return Peaks(gflops, gbps, source, source, measured=False, extra=dict(gpu=name))


# --- output ---------------------------------------------------------------------------------------


def format_table(columns: list[tuple[str, str]], rows: list[dict], left: int = 1) -> str:
    """A fixed-width table: ``columns`` are (key, heading), values pre-formatted; the first
    ``left`` columns are left-aligned (names), the rest right-aligned (numbers)."""
    cells = [[str(row.get(key, "")) for key, _ in columns] for row in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h) in enumerate(columns)]
    def line(values):
        return "  ".join(v.ljust(w) if i < left else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))
    out = [line([h for _, h in columns]), "  ".join("-" * w for w in widths)]
    out += [line(c) for c in cells]
    return "\n".join(out)


def dump_json(report: dict) -> str:
    """The report as JSON (NumPy numbers converted)."""
    def default(o):
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating,)):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")
    return json.dumps(report, indent=1, default=default)


def fmt_time(seconds: float | None) -> str:
    """Seconds as ms or us, three significant figures."""
    if seconds is None:
        return "-"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds * 1e3:,.0f} ms"
    return f"{seconds * 1e6:.3g} us"
