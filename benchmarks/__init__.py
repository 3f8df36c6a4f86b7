"""cunet's benchmarks: measured kernel times, the train step against PyTorch, a GPU cost model.

    python -m benchmarks.kernels      --device cpu|opencl|cuda   op by op, forward and backward
    python -m benchmarks.train_step   --base 16|64               one SGD step, cunet vs PyTorch
    python -m benchmarks.gpu_model                               modelled (not measured) GPU step
    python -m benchmarks.threshold                               serial vs parallel CPU loops
    python -m benchmarks.conv2d_cpu   --base 16|64               every convolution, cunet vs PyTorch
    python -m benchmarks.gpu_check    --out DIR                  on a GPU: every GPU check in one report
    python -m benchmarks.ladder       conv2d                     the conv kernel from naive to tensor cores

benchmarks/README.md says what each one measures, how, and what it printed here.
"""

# Imported first, before any benchmark imports NumPy: cunet sets the cpu thread pools'
# environment (OpenBLAS reads its own when NumPy loads it; see cunet/__init__.py).
import cunet  # noqa: E402,F401
