"""Gradient accumulation y += x against NumPy, on cpu and PoCL, and under Oclgrind."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cunet.ops import add_inplace
from helpers import assert_oclgrind_clean, run_under_oclgrind


@given(n=st.one_of(st.sampled_from([0, 1, 256, 257]), st.integers(0, 2000)), seed=st.integers(0, 2**32 - 1))
def test_add_inplace_matches_numpy(device, n, seed):
    rng = np.random.default_rng(seed)
    y, x = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    expected = y + x  # before the call: on cpu, to_device hands back y itself
    y_dev = device.to_device(y)
    add_inplace(y_dev, device.to_device(x))
    np.testing.assert_array_equal(device.to_host(y_dev), expected)  # one float32 add: exact


def test_add_inplace_shape_mismatch(device):
    with pytest.raises(ValueError, match="add_inplace: shapes must match"):
        add_inplace(device.to_device(np.zeros(3, np.float32)), device.to_device(np.zeros(4, np.float32)))


def oclgrind_case_add(device):
    y = device.to_device(np.ones(300, np.float32))
    add_inplace(y, device.to_device(np.ones(300, np.float32)))
    assert (device.to_host(y) == 2).all()


@pytest.mark.oclgrind
def test_add_under_oclgrind(tmp_path):
    assert_oclgrind_clean(run_under_oclgrind("test_add", "oclgrind_case_add", tmp_path))
