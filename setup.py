"""Builds cunet's one compiled module, cunet._host: the CPU kernels in C++ (kernels/host/).

pyproject.toml holds everything else (metadata, packages, package data); this file only
adds the extension, which `pip install .` and `pip install -e .` build with the system's
C++ compiler (an editable install puts the module beside the sources, in cunet/; after
editing kernels/host/*, run `pip install -e .` again, or
`python setup.py build_ext --inplace`, to rebuild it).

Flags: -O3, C++17, OpenMP, -ffp-contract=fast (a*b + c as one fused multiply-add, one
rounding instead of two; GCC's ISO C++ mode turns that off by default, and the kernels'
inner loops are nothing else) and -fno-wrapv (see below). No -march=native: the kernels
carry their own AVX-512, AVX2 and baseline versions (GCC function multi-versioning,
kernels/host/conv2d.cpp "SIMD dispatch") and the loader binds one, so one build runs on
any x86-64 CPU; on ARM (or with another compiler) it builds the one generic version.

CUNET_HOST_SANITIZE=1 builds with AddressSanitizer and UndefinedBehaviorSanitizer instead
(-O1 -g, no recovery from a UBSan report) and the planted-error self-test
(`_sanitizer_selftest`): that is what tests/sanitize_host.sh runs the tests on.
"""
import os
import shutil
import shlex

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, PlatformError

try:
    from pybind11.setup_helpers import Pybind11Extension
except ImportError as exc:  # only without build isolation: pyproject's build requirements include it
    raise SystemExit(
        "cunet: building cunet._host needs pybind11 (>= 2.12). A plain `pip install -e .` fetches it "
        "itself; with --no-build-isolation install it first: pip install 'pybind11>=2.12'"
    ) from exc

HOST = "kernels/host"
SANITIZE = os.environ.get("CUNET_HOST_SANITIZE", "") == "1"

# -fno-wrapv: Python's own CFLAGS (which setuptools passes first) carry -fwrapv, which
# defines signed overflow as wrapping; that would switch off UBSan's signed-overflow check,
# and the kernels never rely on it.
compile_args = ["-fopenmp", "-ffp-contract=fast", "-fno-wrapv", "-Wall", "-Wextra", "-Wno-psabi"]
link_args = ["-fopenmp"]
if SANITIZE:
    sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    compile_args += sanitizers + ["-fno-omit-frame-pointer", "-O1", "-g", "-DCUNET_HOST_SANITIZE=1"]
    link_args += sanitizers
else:
    compile_args += ["-O3"]

NO_COMPILER = """
cunet: no C++ compiler was found ({compiler!r} is not on PATH), and cunet._host, the CPU
kernels in kernels/host/*.cpp, must be compiled when cunet is installed. Install one with
OpenMP, then run pip again:

    Debian/Ubuntu:  sudo apt install g++          (or: sudo apt install build-essential)
    Fedora/RHEL:    sudo dnf install gcc-c++
    conda:          conda install -c conda-forge cxx-compiler

(or point CXX at a compiler: CXX=g++-12 pip install -e .)"""

BUILD_FAILED = """
cunet: compiling cunet._host (kernels/host/*.cpp) with {compiler!r} failed; the compiler's
messages are above. It needs a C++17 compiler with OpenMP and GCC's target_clones
(GCC >= 9 on Linux; on Debian/Ubuntu: sudo apt install g++, or build-essential).
({error})"""


class BuildHost(build_ext):
    """build_ext that says what to install when the C++ compiler is missing or fails."""

    def build_extension(self, ext):
        compiler = getattr(self.compiler, "compiler_so_cxx", None) or getattr(self.compiler, "compiler_so", None)
        program = compiler[0] if compiler else os.environ.get("CXX", "c++")
        if isinstance(program, str) and " " in program:
            program = shlex.split(program)[0]
        if shutil.which(program) is None:
            raise PlatformError(NO_COMPILER.format(compiler=program))
        try:
            super().build_extension(ext)
        except (CCompilerError, ExecError, OSError) as exc:
            if shutil.which(program) is None or "No such file or directory" in str(exc) and program in str(exc):
                raise PlatformError(NO_COMPILER.format(compiler=program)) from exc
            raise CompileError(BUILD_FAILED.format(compiler=program, error=exc)) from exc


setup(
    ext_modules=[
        Pybind11Extension(
            "cunet._host",
            sources=[f"{HOST}/conv2d.cpp", f"{HOST}/bindings.cpp"],
            depends=[f"{HOST}/conv2d.hpp"],
            cxx_std=17,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ],
    cmdclass={"build_ext": BuildHost},
)
