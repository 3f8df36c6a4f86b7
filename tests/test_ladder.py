"""The teaching ladders (kernels/ladder, benchmarks/ladder.py): the convolution's and the loss's;
every rung correct on PoCL and clean under Oclgrind, in the compile check, and the driver catches a wrong rung."""
import sys

import numpy as np
import pytest

import cunet.kernels
from helpers import ROOT

sys.path.insert(0, str(ROOT))  # the benchmarks package lives beside cunet, not inside it
from benchmarks import ladder as driver  # noqa: E402
from cunet.device import get_device  # noqa: E402
from cunet.kernels import registered_modules  # noqa: E402
from cunet.kernels.ladder import CONV2D_RUNGS, SOFTMAX_CE_RUNGS, run_rung  # noqa: E402
from helpers import assert_oclgrind_clean, run_under_oclgrind, skip_without_pocl  # noqa: E402
from test_gemm import planted_kernel_dir  # noqa: E402


def test_the_rungs_are_numbered_and_all_in_the_compile_check():
    assert [r.name for r in CONV2D_RUNGS] == ["v1", "v2", "v3", "v4", "v5", "v6"]
    assert [r.name for r in SOFTMAX_CE_RUNGS] == ["v1", "v2", "v3"]
    registered = set(registered_modules())
    assert all(r.module in registered for r in CONV2D_RUNGS + SOFTMAX_CE_RUNGS)
    # the tiling's traffic per FMA falls rung by rung until the production tile
    traffic = [r.bytes_per_fma for r in CONV2D_RUNGS]
    assert traffic[:4] == sorted(traffic[:4], reverse=True) and len(set(traffic[:4])) == 4


# C = 1 (the first layer), K = 2 (the head's size), odd sizes, channels past every tile edge
@pytest.mark.parametrize("shape", [(1, 1, 5, 7, 2), (2, 3, 9, 6, 17), (1, 5, 4, 4, 65)],
                         ids=lambda s: "x".join(map(str, s)))
def test_every_rung_matches_the_reference_on_pocl(opencl_device, shape):
    rows = driver.run_ladder(CONV2D_RUNGS, opencl_device, shape, repeats=1, log=lambda line: None)
    assert [r["status"] for r in rows] == ["ok"] * len(CONV2D_RUNGS), rows


# K = 2 (the U-Net's classes) and 5; pixels over several blocks of 256 with a ragged last one
@pytest.mark.parametrize("shape", [(1, 2, 7, 9), (2, 5, 30, 11)], ids=lambda s: "x".join(map(str, s)))
def test_every_softmax_ce_rung_matches_the_reference_on_pocl(opencl_device, shape):
    rows = driver.run_ladder(SOFTMAX_CE_RUNGS, opencl_device, shape, repeats=1, log=lambda line: None)
    assert [r["status"] for r in rows] == ["ok"] * len(SOFTMAX_CE_RUNGS), rows


def test_a_wrong_rung_is_reported_failed_and_not_timed(tmp_path, monkeypatch):
    """Plant a bug in v2 (the B tile read transposed): the driver must say FAILED for v2 alone."""
    skip_without_pocl()
    planted = planted_kernel_dir(tmp_path, "ladder/conv2d_v2.cu", "sum += As[j][tx] * Bs[j][ty];",
                                 "sum += As[j][tx] * Bs[ty][j];")
    monkeypatch.setattr(cunet.kernels, "KERNEL_DIR", planted)
    rows = driver.run_ladder(CONV2D_RUNGS, get_device("opencl"), (1, 3, 8, 9, 20), repeats=1, log=lambda line: None)
    statuses = {r["rung"]: r["status"] for r in rows}
    assert statuses.pop("v2").startswith("FAILED") and set(statuses.values()) == {"ok"}
    assert "median_s" not in rows[1]


def test_the_driver_prints_its_table(capsys):
    skip_without_pocl()
    assert driver.main(["conv2d", "--shape", "1,2,6,7,3", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert all(f"\nv{i} " in out for i in range(1, 7)) and "MODELLED A100" in out and "say nothing about GPUs" in out
    assert driver.main(["conv2d", "--shape", "1,2,2"]) == 2
    assert "--shape for conv2d must be positive integers N,C,H,W,K" in capsys.readouterr().err
    assert driver.main(["softmax_ce", "--shape", "1,2,5,6", "--repeats", "1"]) == 0
    assert "softmax cross-entropy" in capsys.readouterr().out


def oclgrind_case_ladder(device):
    """Every rung once on a tiny shape with ragged tiles, against the reference."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 5, 6)).astype(np.float32)
    w, b = rng.standard_normal((9, 2, 3, 3)).astype(np.float32), np.zeros(9, np.float32)
    for rung in CONV2D_RUNGS:
        y = device.to_host(run_rung(rung, device.runtime, device.to_device(x), device.to_device(w), device.to_device(b)))
        np.testing.assert_allclose(y, driver.PROBLEMS["conv2d"].reference(rung, x, w, b), rtol=1e-4, atol=1e-4,
                                   err_msg=rung.name)
    logits, labels, weights = driver.PROBLEMS["softmax_ce"].inputs(rng, (1, 2, 9, 31))  # two blocks, one ragged
    for rung in SOFTMAX_CE_RUNGS:
        loss = device.to_host(run_rung(rung, device.runtime, *(device.to_device(a) for a in (logits, labels, weights))))
        np.testing.assert_allclose(loss, driver.PROBLEMS["softmax_ce"].reference(rung, logits, labels, weights),
                                   rtol=1e-5, err_msg=rung.name)


@pytest.mark.oclgrind
def test_every_rung_is_clean_under_oclgrind(tmp_path):
    assert_oclgrind_clean(run_under_oclgrind("test_ladder", "oclgrind_case_ladder", tmp_path))
