"""cunet: the original U-Net (Ronneberger, Fischer, Brox 2015) on hand-written GPU kernels."""
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

# The cpu thread pools' settings must be in the environment before NumPy (OpenBLAS) and
# Numba (libgomp) load: cunet/cpu/__init__.py says why.
# (CPU_THREAD_SETTINGS and NUMPY_LOADED_BEFORE_CUNET are re-exported for the benchmarks' reports.)
from .cpu import CPU_THREAD_SETTINGS, NUMPY_LOADED_BEFORE_CUNET, apply_thread_settings  # noqa: E402, F401

apply_thread_settings()


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
