"""cunet: the original U-Net (Ronneberger, Fischer, Brox 2015) on hand-written GPU kernels."""
import importlib.util
import os
import sys
from pathlib import Path

__version__ = "0.1.0"

# --- cpu thread pools -------------------------------------------------------------------------
# On the cpu device a training step alternates between two thread pools: OpenBLAS's (the
# GEMMs in conv2d and upconv) and Numba's OpenMP pool (every other loop). Both pools, by
# default, keep their idle threads spinning after a call so the next call starts sooner;
# on a machine with as many cores as threads, the spinning threads of one pool then take
# the cores from the pool that runs next. Each pool is told to sleep at once instead:
#
#   OMP_WAIT_POLICY=PASSIVE     libgomp (Numba's pool). Base 16 / 572 step, 2 cores:
#                               1.16-1.21 s -> 0.90-0.95 s (benchmarks/README.md).
#   OPENBLAS_THREAD_TIMEOUT=4   OpenBLAS's threads sleep after 2^4 cycles instead of
#                               2^28 (~0.1 s at 2 GHz). Same step: 0.80-0.85 s -> 0.60-0.63 s
#                               (the Numba loops that follow a GEMM no longer run on
#                               half a core), PyTorch's step unchanged.
#
# Both libraries read the variable once, when they are loaded (OpenBLAS: when NumPy is
# first imported), so it is set here, the first code `import cunet` runs, and only where
# the user has not chosen a value. A program that imports NumPy before cunet keeps
# OpenBLAS's default: export OPENBLAS_THREAD_TIMEOUT=4 there (the README says so).
# NUMPY_LOADED_BEFORE_CUNET records that case for the benchmarks' reports.
NUMPY_LOADED_BEFORE_CUNET = "numpy" in sys.modules
CPU_THREAD_SETTINGS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}
for _name, _value in CPU_THREAD_SETTINGS.items():
    os.environ.setdefault(_name, _value)
del _name, _value


# --- the kernel sources -------------------------------------------------------------------------
# The top-level kernels/ folder of the repository *is* the package cunet.kernels: the CUDA C
# sources, the prelude and the compile check live there, beside the host kernels, as the
# design card lays out. pyproject.toml maps it into the package (package-dir), so an
# installed cunet has them at cunet/kernels/. Run from a source tree without installing
# (the GPU check does), that folder is loaded here under its package name.
def _load_kernels_from_source_tree() -> None:
    if importlib.util.find_spec(__name__ + ".kernels") is not None:
        return  # installed (or an editable install's finder maps it)
    source = Path(__file__).resolve().parent.parent / "kernels"
    if not (source / "__init__.py").is_file():
        raise ImportError(f"cunet's kernel sources are missing: neither cunet/kernels nor {source} exists")
    spec = importlib.util.spec_from_file_location(
        __name__ + ".kernels", source / "__init__.py", submodule_search_locations=[str(source)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)


_load_kernels_from_source_tree()
