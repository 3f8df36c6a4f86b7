"""The NVRTC compile check: every kernel, every architecture, no spills; and it can fail."""
import json
import subprocess
import sys

import pytest

from cunet.kernels import KERNEL_DIR, KernelModule, registered_modules, source_files
from cunet.kernels.check import ARCHS, KernelCompileError, check_module, parse_ptxas_log, theoretical_occupancy

pytest.importorskip("cuda.bindings.nvrtc", reason="the NVRTC bindings come with the test extra")


def test_every_kernel_compiles_for_every_arch_without_spills():
    proc = subprocess.run([sys.executable, "-m", "cunet.kernels", "check", "--json"], capture_output=True, text=True, timeout=600)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert report["errors"] == []
    built = {(r["module"], r["kernel"], r["arch"]) for r in report["rows"]}
    expected = {(m.label(), k, a) for m in registered_modules() for k in m.kernel_names() for a in ARCHS
                if m.builds_for(a)}
    assert built == expected
    # the tensor-core (TF32) modules build for sm_80..sm_90 and only there
    tf32 = {(module, arch) for module, _, arch in built if "MATH_TF32=1" in module}
    assert tf32 and {arch for _, arch in tf32} == {"sm_80", "sm_86", "sm_89", "sm_90"}
    assert all(r["spill_store_bytes"] == 0 and r["spill_load_bytes"] == 0 for r in report["rows"])


def test_every_source_file_is_used_by_some_op():
    used = {m.file for m in registered_modules()}
    assert set(source_files()) == used, "a .cu file that no op or ladder rung declares is never compiled or tested"


def test_a_syntax_error_fails_the_check(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cu"
    broken.write_text("KERNEL void broken(GLOBAL float* x) { x[0] = undefined_name; }\n")
    monkeypatch.setattr("cunet.kernels.KERNEL_DIR", tmp_path)
    (tmp_path / "prelude.h").write_text((KERNEL_DIR / "prelude.h").read_text())
    with pytest.raises(KernelCompileError, match="undefined_name"):
        check_module(KernelModule("broken.cu"), "sm_80")


def test_parse_ptxas_log():
    log = """ptxas info    : Compiling entry function 'conv' for 'sm_80'
ptxas info    : Function properties for conv
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 96 registers, used 1 barriers, 8192 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function 'relu' for 'sm_80'
ptxas info    : Function properties for relu
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers, used 0 barriers, 380 bytes cmem[0]"""
    parsed = parse_ptxas_log(log)
    assert parsed["conv"] == dict(registers=96, shared=8192, stack=8, spill_stores=4, spill_loads=12)
    assert parsed["relu"] == dict(registers=10, shared=0, stack=0, spill_stores=0, spill_loads=0)


@pytest.mark.parametrize("arch,threads,regs,smem,expected", [
    ("sm_80", 256, 32, 0, 1.0),        # 8 blocks x 8 warps = 64 warps: full
    ("sm_80", 256, 64, 0, 0.5),        # 64 regs x 32 = 2048 per warp -> 32 warps
    ("sm_80", 256, 128, 0, 0.25),      # 4096 per warp -> 16 warps
    ("sm_80", 256, 32, 48 * 1024, 3 * 8 / 64),  # 164 KiB / (48+1) KiB = 3 blocks
    ("sm_75", 256, 32, 0, 1.0),        # Turing: 32 warps max
    ("sm_86", 1024, 16, 0, 32 / 48),   # one 1024-thread block fits in 1536 threads
])
def test_theoretical_occupancy(arch, threads, regs, smem, expected):
    assert theoretical_occupancy(arch, threads, regs, smem) == pytest.approx(expected)
