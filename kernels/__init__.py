"""The CUDA C kernel sources and how they are specialised: the package ``cunet.kernels``.

This folder sits at the top of the repository (every hand-written kernel in one place)
and is installed as ``cunet/kernels/`` (pyproject.toml's package-dir; from a source tree,
cunet/__init__.py loads it under that name). The ``*.cu`` files beside this module are
written in the portable dialect described at the top of ``prelude.h``: CUDA C that also
compiles as OpenCL C. They ship inside the package, so an installed cunet compiles them at
run time without the source tree.

A :class:`KernelModule` names one source file plus the ``-D`` defines it is compiled with
(tile sizes, block sizes). Op modules create theirs with :func:`kernel_module`, which also
records it in a registry: ``python -m cunet.kernels check`` compiles exactly the modules
the runtimes will compile, with exactly the same options.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
PRELUDE = "prelude.h"

# Options every NVRTC compile gets, in the CuPy runtime and in the compile check alike.
# -DCUNET_CUDA is set by the prelude itself; nothing here may differ between the two.
NVRTC_OPTIONS: tuple[str, ...] = ("--std=c++14",)

_KERNEL_DECL = re.compile(r"^\s*KERNEL\s+void\s+(?:LAUNCH_BOUNDS\([^)]*\)\s+)?(\w+)\s*\(", re.M)


@dataclass(frozen=True)
class KernelModule:
    """One kernel source file compiled with one set of ``-D`` defines."""

    file: str
    defines: tuple[tuple[str, int], ...] = ()
    #: Threads per block the op code launches this module's kernels with (also what the
    #: compile check uses to compute theoretical occupancy).
    threads: int = 256
    #: The oldest architecture it compiles for, as a number (80: sm_80), or None for all
    #: (tensor-core modules need sm_80).
    min_sm: int | None = None

    def builds_for(self, arch: str) -> bool:
        """Whether the module is meant for ``arch`` ("sm_75"): the compile check skips the others."""
        return self.min_sm is None or int(arch.removeprefix("sm_")) >= self.min_sm

    def define_options(self) -> tuple[str, ...]:
        """The defines as compiler options, ``("-DNAME=VALUE", ...)``; the same for NVRTC and OpenCL."""
        return tuple(f"-D{name}={value}" for name, value in self.defines)

    def define(self, name: str) -> int:
        """The value of one define (KeyError if the module has no such define)."""
        return dict(self.defines)[name]

    def source(self) -> str:
        """The full source text: the prelude, then the file."""
        return kernel_source(self.file)

    def kernel_names(self) -> list[str]:
        """Names of the kernels the file declares with ``KERNEL void name(``."""
        return _KERNEL_DECL.findall((KERNEL_DIR / self.file).read_text())

    def label(self) -> str:
        """A short human name: the file and its defines."""
        if not self.defines:
            return self.file
        return self.file + "[" + ",".join(f"{k}={v}" for k, v in self.defines) + "]"


_REGISTRY: dict[KernelModule, None] = {}  # insertion-ordered set


def kernel_module(file: str, threads: int = 256, min_sm: int | None = None, **defines: int) -> KernelModule:
    """Declare (and register for the compile check) a kernel file, its block size, oldest architecture and defines."""
    if not (KERNEL_DIR / file).is_file():
        raise FileNotFoundError(f"kernel source {file!r} not found in {KERNEL_DIR}")
    module = KernelModule(file, tuple(sorted(defines.items())), threads, min_sm)
    _REGISTRY[module] = None
    return module


def registered_modules() -> list[KernelModule]:
    """Every kernel module the op code and the teaching ladder declare (importing them declares them all)."""
    import cunet.kernels.ladder  # noqa: F401  (the ladder's rungs, so they are compiled and checked too)
    import cunet.ops  # noqa: F401  (importing the ops registers their modules)

    return list(_REGISTRY)


_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([\w.]+)"[ \t]*$', re.M)


def kernel_source(file: str) -> str:
    """The prelude followed by ``file``, with its ``#include "header.h"`` lines expanded.

    Headers beside the sources (gemm.h) are pasted in here rather than found by the
    compiler, so a module's source is one self-contained text: the same for NVRTC, PoCL,
    Oclgrind and the compile check, with no include path to set for any of them. ``#line``
    keeps compiler messages on each file's own lines.
    """
    prelude = (KERNEL_DIR / PRELUDE).read_text()
    return f'{prelude}\n{_with_includes(file, set())}'


def _with_includes(file: str, seen: set[str]) -> str:
    if file in seen:
        raise ValueError(f"kernel header {file!r} includes itself")
    text = (KERNEL_DIR / file).read_text()
    parts, start = [f'#line 1 "{file}"\n'], 0
    for match in _INCLUDE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        parts += [text[start:match.start()], _with_includes(match.group(1), seen | {file}),
                  f'\n#line {line + 1} "{file}"\n']
        start = match.end() + 1
    parts.append(text[start:])
    return "".join(parts)


def source_files() -> list[str]:
    """All kernel source files shipped with the package (not the headers), relative to KERNEL_DIR."""
    return sorted(str(p.relative_to(KERNEL_DIR)) for p in KERNEL_DIR.rglob("*.cu"))
