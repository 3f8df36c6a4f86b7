"""An installed (non-editable) cunet finds and compiles its kernels without the source tree.

The top-level kernels/ folder is the package cunet.kernels (pyproject.toml's package-dir),
so a wheel must carry the .cu sources, the prelude and the compile check inside cunet/.
"""
import os
import subprocess
import sys

import pytest

from helpers import ROOT, skip_without_pocl


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """cunet built as a wheel and installed into a folder of its own (no dependencies: the test venv has them)."""
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def run_installed(target, tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(target))
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_wheel_carries_the_kernel_sources(installed, tmp_path):
    proc = run_installed(installed, tmp_path, "-c", "import cunet.kernels as k; print(k.KERNEL_DIR); print(*k.source_files())")
    assert proc.returncode == 0, proc.stderr
    kernel_dir, files = proc.stdout.splitlines()
    assert kernel_dir == str(installed / "cunet" / "kernels")
    assert set(files.split()) == {str(p.relative_to(ROOT / "kernels")) for p in (ROOT / "kernels").rglob("*.cu")}
    assert (installed / "cunet" / "kernels" / "prelude.h").is_file()


@pytest.mark.slow
def test_the_installed_package_trains_a_step_on_its_kernels(installed, tmp_path):
    """opencl compiles kernels/*.cu at run time: this fails if the installed package lacks them."""
    skip_without_pocl()
    proc = run_installed(installed, tmp_path, "-m", "cunet.train", "--device", "opencl", "--tile", "44", "--base", "2",
                         "--depth", "2", "--synthetic-images", "3", "--steps", "1", "--quiet", "--out", "run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "run" / "checkpoint.npz").is_file()
    listing = run_installed(installed, tmp_path, "-m", "cunet.kernels", "list")
    assert listing.returncode == 0 and "conv2d_forward" in listing.stdout, listing.stderr
