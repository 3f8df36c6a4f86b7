"""Philox4x32-10: Random123's known answers, and the same bits on the CPU and in the kernel."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cunet.ops.random import philox4x32_10, philox_bits, split_seed, unit_float
from helpers import assert_oclgrind_clean, run_under_oclgrind

M32 = 0xFFFFFFFF

# (counter, key) -> output, from Random123's kat_vectors for philox4x32_10.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32, M32, M32, M32), (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def philox_reference(counter, key):
    """Philox4x32-10 with Python's unbounded ints, straight from Salmon et al. (2011)."""
    c, (k0, k1) = list(counter), key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & M32, (p0 >> 32) ^ c[3] ^ k1, p0 & M32]
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return tuple(c)


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_known_answers(counter, key, expected):
    assert philox_reference(counter, key) == expected
    assert tuple(philox4x32_10(*counter, *key)) == expected


@given(seed=st.integers(0, 2**64 - 1), stream=st.integers(0, 2**32 - 1), n=st.integers(0, 600))
def test_kernel_bits_equal_cpu_bits(gpu_device, seed, stream, n):
    cpu = philox_bits(n, seed, stream)
    gpu = gpu_device.to_host(philox_bits(n, seed, stream, gpu_device.runtime))
    np.testing.assert_array_equal(gpu, cpu)
    if n:
        i = n - 1
        assert tuple(cpu[i]) == philox_reference((i, stream, 0, 0), split_seed(seed))


def test_unit_float_range_and_exactness():
    assert unit_float(np.uint32(0)) == 0.0
    assert unit_float(np.uint32(M32)) == np.float32(1 - 2**-24)
    bits = philox_bits(20000, seed=3)
    u = np.array([unit_float(np.uint32(b)) for b in bits.ravel()[:4000]])
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.02  # 4000 uniforms: standard error 0.0046


def test_bad_seed():
    with pytest.raises(ValueError, match="seed must be in"):
        philox_bits(4, seed=-1)


def test_integer_scalars_of_any_width_that_fit_work():
    """NumPy integers and Python ints above 2**32 are valid seeds; the bits are the reference's."""
    expected = philox_bits(3, 2**33 + 1, 5)
    np.testing.assert_array_equal(philox_bits(np.int64(3), np.uint64(2**33 + 1), np.uint32(5)), expected)
    assert tuple(expected[2]) == philox_reference((2, 5, 0, 0), split_seed(2**33 + 1))


@pytest.mark.parametrize("name,value,error,message", [
    ("n_counters", 2.0, TypeError, r"n_counters must be an integer in \[0, 2\*\*31\), got 2.0 \(float\)"),
    ("n_counters", True, TypeError, "n_counters must be an integer .*got True"),
    ("n_counters", -1, ValueError, "n_counters must be in"),
    ("n_counters", 2**40, ValueError, "n_counters must be in"),          # was a 32 TiB MemoryError
    ("n_counters", 2**30, ValueError, r"out would have shape \(1073741824, 4\)"),  # 4 words each: over int32
    ("seed", 1.5, TypeError, r"seed must be an integer in \[0, 2\*\*64\), got 1.5"),  # was a bare TypeError
    ("seed", -1, ValueError, r"seed must be in \[0, 2\*\*64\), got -1"),
    ("seed", 2**64, ValueError, "seed must be in"),
    ("stream", 2**32, ValueError, r"stream must be in \[0, 2\*\*32\)"),
    ("stream", "1", TypeError, "stream must be an integer"),
])
def test_bad_scalars_name_the_argument(name, value, error, message):
    args = dict(n_counters=4, seed=1, stream=0) | {name: value}
    with pytest.raises(error, match=f"philox_bits: {message}"):
        philox_bits(**args)


def test_split_seed_names_its_caller():
    with pytest.raises(ValueError, match="dropout_forward: seed must be in"):
        split_seed(-1, "dropout_forward")


def oclgrind_case_philox(device):
    device.to_host(philox_bits(300, 99, 1, device.runtime))


@pytest.mark.oclgrind
def test_philox_under_oclgrind(tmp_path):
    assert_oclgrind_clean(run_under_oclgrind("test_random", "oclgrind_case_philox", tmp_path))
