"""Numba CUDA alternates for the memory-bound ops, selectable with ``--kernels numba``.

Each module mirrors one op family of ``cunet/ops`` and calls the same ``@njit``
per-element functions the CPU path uses (Numba compiles those for the GPU too).
Importing a module here imports ``numba.cuda`` (the numba-cuda package); the op code
does that only when a CUDA runtime asked for Numba kernels, so CPU users never need it.

Each module lists ``PTX_SIGNATURES``: the argument types its kernels are launched with,
so the tests can compile every kernel to PTX for real architectures without a GPU.
Under ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run in Numba's CUDA simulator.
"""
