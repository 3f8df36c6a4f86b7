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


def kernel_module(file: str, threads: int = 256, **defines: int) -> KernelModule:
    """Declare (and register for the compile check) a kernel file, its block size and defines."""
    if not (KERNEL_DIR / file).is_file():
        raise FileNotFoundError(f"kernel source {file!r} not found in {KERNEL_DIR}")
    module = KernelModule(file, tuple(sorted(defines.items())), threads)
    _REGISTRY[module] = None
    return module


def registered_modules() -> list[KernelModule]:
    """Every kernel module the op code declares (importing cunet.ops declares them all)."""
    import cunet.ops  # noqa: F401  (importing the ops registers their modules)

    return list(_REGISTRY)


def kernel_source(file: str) -> str:
    """The prelude followed by ``file``; ``#line`` keeps compiler messages on the file's own lines."""
    prelude = (KERNEL_DIR / PRELUDE).read_text()
    body = (KERNEL_DIR / file).read_text()
    return f'{prelude}\n#line 1 "{file}"\n{body}'


def source_files() -> list[str]:
    """All kernel source files shipped with the package (not the prelude)."""
    return sorted(p.name for p in KERNEL_DIR.glob("*.cu"))
