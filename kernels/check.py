"""Compile every kernel with NVRTC 12 for real GPU architectures, without a GPU.

CuPy's own compile path asks the CUDA runtime for a device, so it cannot run on a
GPU-less machine; this module calls NVRTC directly (the ``nvidia-cuda-nvrtc-cu12`` and
``cuda-bindings`` wheels), with ``-arch=sm_XX -Xptxas=-v``. ptxas then reports, per
kernel, registers, static shared memory and spill bytes, which we turn into a table and
a theoretical occupancy. Any compile error or any spill is a failure.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from . import NVRTC_OPTIONS, KernelModule

ARCHS = ("sm_70", "sm_75", "sm_80", "sm_86", "sm_89", "sm_90")


@dataclass(frozen=True)
class SMLimits:
    """Per-SM resources that bound occupancy (CUDA C Programming Guide, compute capabilities table)."""

    max_threads: int
    max_blocks: int
    shared_bytes: int  # usable by blocks on one SM
    registers: int = 65536


SM_LIMITS = {
    "sm_70": SMLimits(2048, 32, 96 * 1024),
    "sm_75": SMLimits(1024, 16, 64 * 1024),
    "sm_80": SMLimits(2048, 32, 164 * 1024),
    "sm_86": SMLimits(1536, 16, 100 * 1024),
    "sm_89": SMLimits(1536, 24, 100 * 1024),
    "sm_90": SMLimits(2048, 32, 228 * 1024),
}
REGISTER_ALLOCATION_UNIT = 256  # registers are granted per warp in chunks of 256
SHARED_RESERVED_PER_BLOCK = 1024  # sm_80 and later keep 1 KiB per block for the system


class KernelCompileError(RuntimeError):
    """NVRTC rejected a kernel source; the message carries the compiler log."""


@dataclass
class KernelResources:
    """What ptxas reported for one kernel on one architecture."""

    module: str
    kernel: str
    arch: str
    threads: int
    registers: int
    shared_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int
    stack_bytes: int
    occupancy: float  # resident warps / maximum warps per SM

    def as_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def compile_module(module: KernelModule, arch: str) -> tuple[str, bytes]:
    """Compile ``module`` for ``arch`` with NVRTC; returns (ptxas log, cubin)."""
    from cuda.bindings import nvrtc

    options = [o.encode() for o in NVRTC_OPTIONS + module.define_options()]
    options += [f"-arch={arch}".encode(), b"-Xptxas=-v"]
    err, program = nvrtc.nvrtcCreateProgram(module.source().encode(), module.file.encode(), 0, [], [])
    _expect_success(nvrtc, err, "nvrtcCreateProgram", module)
    try:
        (compile_err,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
        log = _program_log(nvrtc, program)
        if compile_err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise KernelCompileError(f"{module.label()} failed to compile for {arch}:\n{log}")
        err, size = nvrtc.nvrtcGetCUBINSize(program)
        _expect_success(nvrtc, err, "nvrtcGetCUBINSize", module)
        cubin = b" " * size
        (err,) = nvrtc.nvrtcGetCUBIN(program, cubin)
        _expect_success(nvrtc, err, "nvrtcGetCUBIN", module)
        return log, cubin
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def _program_log(nvrtc, program) -> str:
    err, size = nvrtc.nvrtcGetProgramLogSize(program)
    buffer = b" " * size
    nvrtc.nvrtcGetProgramLog(program, buffer)
    return buffer.decode(errors="replace").rstrip("\x00 \n")


def _expect_success(nvrtc, err, call, module) -> None:
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise KernelCompileError(f"{call} failed for {module.label()}: {err}")


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USAGE = re.compile(r"Used (\d+) registers(?:.*?, (\d+) bytes smem)?")


def parse_ptxas_log(log: str) -> dict[str, dict[str, int]]:
    """Per kernel: registers, shared (smem) bytes, stack and spill bytes, from a ``-Xptxas=-v`` log."""
    kernels: dict[str, dict[str, int]] = {}
    current = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current = kernels.setdefault(m.group(1), dict(registers=0, shared=0, stack=0, spill_stores=0, spill_loads=0))
        elif current is not None and (m := _FRAME.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current is not None and (m := _USAGE.search(line)):
            current.update(registers=int(m.group(1)), shared=int(m.group(2) or 0))
    return kernels


def theoretical_occupancy(arch: str, threads: int, registers: int, shared_bytes: int) -> float:
    """Resident warps per SM over the maximum, limited by threads, blocks, registers and shared memory.

    The same arithmetic as NVIDIA's occupancy calculator, simplified: registers are
    granted per warp in units of 256, shared memory per block plus 1 KiB reserved.
    """
    limits = SM_LIMITS[arch]
    warps_per_block = -(-threads // 32)
    max_warps = limits.max_threads // 32
    by_threads = limits.max_threads // (warps_per_block * 32)
    regs_per_warp = -(-max(registers, 1) * 32 // REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    by_registers = (limits.registers // regs_per_warp) // warps_per_block
    reserved = SHARED_RESERVED_PER_BLOCK if arch >= "sm_80" else 0
    by_shared = limits.shared_bytes // (shared_bytes + reserved) if shared_bytes else limits.max_blocks
    blocks = min(limits.max_blocks, by_threads, by_registers, by_shared)
    return min(blocks * warps_per_block, max_warps) / max_warps


def check_module(module: KernelModule, arch: str) -> list[KernelResources]:
    """Compile one module for one arch and return a row per kernel it declares."""
    log, _ = compile_module(module, arch)
    found = parse_ptxas_log(log)
    rows = []
    for name in module.kernel_names():
        if name not in found:
            raise KernelCompileError(f"{module.label()}: ptxas reported nothing for kernel {name} on {arch}:\n{log}")
        r = found[name]
        rows.append(
            KernelResources(
                module=module.label(), kernel=name, arch=arch, threads=module.threads,
                registers=r["registers"], shared_bytes=r["shared"], spill_store_bytes=r["spill_stores"],
                spill_load_bytes=r["spill_loads"], stack_bytes=r["stack"],
                occupancy=theoretical_occupancy(arch, module.threads, r["registers"], r["shared"]),
            )
        )
    return rows


def format_table(rows: list[KernelResources]) -> str:
    """A table for people, its name columns as wide as their longest entry."""
    kw = max([len("kernel")] + [len(r.kernel) for r in rows])
    mw = max([len("module")] + [len(r.module) for r in rows])
    header = f"{'kernel':<{kw}} {'module':<{mw}} {'arch':<6} {'thr':>4} {'regs':>5} {'smem B':>7} {'spill B':>8} {'occ':>5}"
    lines = [header, "-" * len(header)]
    for r in rows:
        spill = r.spill_store_bytes + r.spill_load_bytes
        lines.append(
            f"{r.kernel:<{kw}} {r.module:<{mw}} {r.arch:<6} {r.threads:>4} {r.registers:>5} "
            f"{r.shared_bytes:>7} {spill:>8} {r.occupancy:>5.0%}"
        )
    return "\n".join(lines)
