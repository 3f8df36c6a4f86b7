"""Device choice and the runtimes' contracts, including the CuPy path's failure without a GPU."""
import sys
import types

import numpy as np
import pytest

import cunet.device.cuda as cuda_runtime
from cunet.device import DeviceUnavailableError, get_device, runtime_of
from cunet.ops.relu import RELU_CU


def test_cuda_runtime_module_imports_without_cupy():
    assert cuda_runtime.CudaRuntime.name == "cuda"  # importing needs neither CuPy nor a GPU


def test_cuda_without_cupy_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(DeviceUnavailableError, match=r"needs CuPy.*--device cpu"):
        get_device("cuda")


def fake_cupy(get_device_count):
    module = types.ModuleType("cupy")
    module.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    return module


def test_cuda_with_cupy_but_no_gpu_is_a_clear_error(monkeypatch):
    def no_driver():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(no_driver))
    with pytest.raises(DeviceUnavailableError, match=r"no usable NVIDIA GPU.*cudaErrorNoDevice.*--device cpu"):
        get_device("cuda")
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(lambda: 0))
    with pytest.raises(DeviceUnavailableError, match=r"0 NVIDIA GPUs.*--device cpu"):
        get_device("cuda")


def test_auto_falls_back_to_cpu_and_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    device = get_device("auto")
    assert device.name == "cpu" and device.runtime is None
    assert "no GPU" in device.describe()


def test_unknown_device_and_kernels():
    with pytest.raises(ValueError, match="choose one of auto, cpu, cuda, opencl"):
        get_device("tpu")
    with pytest.raises(ValueError, match="kernels must be 'cuda'"):
        cuda_runtime.CudaRuntime(kernels="triton")


def test_launch_refuses_64_bit_scalars(opencl_device):
    x = opencl_device.to_device(np.zeros(4, np.float32))
    runtime = opencl_device.runtime
    for bad in (4, 4.0, np.int64(4)):
        with pytest.raises(TypeError, match="numpy.int32, numpy.uint32 or numpy.float32"):
            runtime.launch(RELU_CU, "relu_forward", (1,), (256,), (x, x, bad))
    with pytest.raises(TypeError, match="not a opencl device array"):
        runtime.launch(RELU_CU, "relu_forward", (1,), (256,), (np.zeros(4, np.float32), x, np.int32(4)))


def test_empty_grid_launches_nothing(opencl_device):
    x = opencl_device.to_device(np.zeros(0, np.float32))
    opencl_device.runtime.launch(RELU_CU, "relu_forward", (0,), (256,), (x, x, np.int32(0)))


def test_round_trip_and_runtime_of(opencl_device, rng):
    a = rng.standard_normal((3, 5)).astype(np.float32)
    d = opencl_device.to_device(a)
    assert runtime_of(d) is opencl_device.runtime and runtime_of(a) is None
    np.testing.assert_array_equal(opencl_device.to_host(d), a)
    with pytest.raises(TypeError, match="expected a NumPy array or a device array"):
        runtime_of([1, 2, 3])


def test_views_with_offsets_are_refused(opencl_device):
    d = opencl_device.to_device(np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="whole contiguous arrays"):
        opencl_device.runtime.launch(RELU_CU, "relu_forward", (1,), (256,), (d[2:], d[2:], np.int32(6)))


def test_missing_opencl_platform_is_a_clear_error():
    with pytest.raises(ValueError, match="platform must be one of"):
        get_device("opencl", opencl_platform="nvidia")
