"""The teaching ladders: numbered versions of a kernel from naive to fast.

The convolution's forward pass:

Almost all of a U-Net step's FLOPs are in the 3x3 convolutions (benchmarks/README.md: 870
of 903 GFLOP at the paper's size), so this is where a GPU kernel earns its keep. Each rung
changes one thing and says, in its header, what and why:

    v1  one thread per output                       ladder/conv2d_v1.cu
    v2  shared-memory tiles (implicit GEMM)          ladder/conv2d_v2.cu
    v3  1-D register blocking                        ladder/conv2d_v3.cu
    v4  2-D block tiling: the production kernel      conv2d.cu + gemm.h, FP32 (the same source)
    v5  + a double-buffered, cp.async pipeline      conv2d.cu + gemm.h, FP32, -DGEMM_STAGES=2
    v6  TF32 tensor cores                           conv2d.cu + gemm.h, -DMATH_TF32=1 (production)

The loss, a reduction (kernels/softmax_ce.cu built three ways, each rung a define, so the
three versions sit side by side in the production source):

    v1  softmax in two passes (max, then the sum of exponentials)   -DSOFTMAX_CE_TWO_PASS=1
    v2  one online pass (the production kernel)                      the default
    v3  the block sum with warp shuffles on CUDA                     -DSOFTMAX_CE_WARP_SUM=1

Every rung has its production kernel's signature (conv2d_forward(x, w, b, y, N, C, H, W, K,
relu); softmax_ce_forward + softmax_ce_sum), so one driver validates and times them all:
``python -m benchmarks.ladder conv2d`` (or ``softmax_ce``).
Every rung is in the compile check's table (importing this module registers them) and
runs under Oclgrind in the tests. ``bytes_per_fma`` is the global-memory traffic per
multiply-add that the rung's tiling implies (caches aside): what its place on a roofline is.

Why no 128-bit vector loads (siboehm's step after 2-D tiling): every operand here is a
gather, a 3x3 window of x or a strided filter row; four consecutive elements of a tile row
are rarely four consecutive, 16-byte-aligned floats in memory.
"""
from __future__ import annotations

from dataclasses import dataclass

from cunet.kernels import KernelModule, kernel_module

FILTER = 3  # the ladder is the 3x3 convolution: the U-Net's FLOPs


@dataclass(frozen=True)
class Rung:
    """One version of the convolution's forward kernel."""

    op: str                 # "conv2d" or "softmax_ce": which ladder, which launch
    number: int
    summary: str            # what changed, in one line
    module: KernelModule
    tile: tuple[int, int]   # (pixels, channels) of output per block: the launch grid
    threads: int
    bytes_per_fma: float | None  # conv2d: global-memory traffic per multiply-add the tiling implies
    math: str = "fp32"

    @property
    def name(self) -> str:
        """v1 ... v6."""
        return f"v{self.number}"

    def grid(self, pixels: int, channels: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(grid, block) for an output of ``pixels`` x ``channels``."""
        bm, bn = self.tile
        return (-(-pixels // bm), -(-channels // bn), 1), (self.threads, 1, 1)


def _conv2d_rungs() -> tuple[Rung, ...]:
    from cunet.ops.gemm import TILE_CONFIGS, gemm_module

    wide = TILE_CONFIGS[0]  # the 128x64 tile, 8x8 per thread in FP32
    gemm_bytes = 4 * (wide.BM + wide.BN) / (wide.BM * wide.BN)
    double_buffered = kernel_module("conv2d.cu", threads=wide.threads, FILTER=FILTER, GEMM_STAGES=2,
                                    **wide.defines("fp32"))
    return (
        Rung("conv2d", 1, "one thread per output", kernel_module("ladder/conv2d_v1.cu", threads=256, FILTER=FILTER),
             (256, 1), 256, 8.0),
        Rung("conv2d", 2, "shared-memory tiles: each loaded float feeds 16 FMAs",
             kernel_module("ladder/conv2d_v2.cu", threads=256, FILTER=FILTER), (16, 16), 256, 8.0 / 16),
        Rung("conv2d", 3, "1-D register blocking: 8 outputs per thread",
             kernel_module("ladder/conv2d_v3.cu", threads=256, FILTER=FILTER), (64, 32), 256, 4 * (64 + 32) / (64 * 32)),
        Rung("conv2d", 4, "2-D block tiling, 8x8 per thread (production FP32)", gemm_module("conv2d.cu", wide, "fp32", FILTER=FILTER),
             (wide.BM, wide.BN), wide.threads, gemm_bytes),
        Rung("conv2d", 5, "double-buffered tiles, cp.async on sm_80+", double_buffered, (wide.BM, wide.BN), wide.threads, gemm_bytes),
        Rung("conv2d", 6, "TF32 tensor cores, mma.sync m16n8k8 (production on sm_80+)",
             gemm_module("conv2d.cu", wide, "tf32", FILTER=FILTER), (wide.BM, wide.BN), wide.threads, gemm_bytes, "tf32"),
    )


def _softmax_ce_rungs() -> tuple[Rung, ...]:
    from cunet.ops.softmax_ce import BLOCK, SOFTMAX_CE_CU

    def variant(**defines):
        return kernel_module("softmax_ce.cu", threads=BLOCK, SOFTMAX_CE_BLOCK=BLOCK, **defines)

    return (
        Rung("softmax_ce", 1, "softmax in two passes: the max, then the sum", variant(SOFTMAX_CE_TWO_PASS=1),
             (BLOCK, 1), BLOCK, None),
        Rung("softmax_ce", 2, "one online pass (production)", SOFTMAX_CE_CU, (BLOCK, 1), BLOCK, None),
        Rung("softmax_ce", 3, "block sum with warp shuffles on CUDA (the tree elsewhere)", variant(SOFTMAX_CE_WARP_SUM=1),
             (BLOCK, 1), BLOCK, None),
    )


CONV2D_RUNGS = _conv2d_rungs()
SOFTMAX_CE_RUNGS = _softmax_ce_rungs()
LADDERS = {"conv2d": CONV2D_RUNGS, "softmax_ce": SOFTMAX_CE_RUNGS}


def run_rung(rung: Rung, runtime, *inputs):
    """Run ``rung`` on device arrays: conv2d (x, w, b) -> y; softmax_ce (logits, labels, weights) -> loss [1]."""
    return _run_conv2d(rung, runtime, *inputs) if rung.op == "conv2d" else _run_softmax_ce(rung, runtime, *inputs)


def _run_softmax_ce(rung: Rung, runtime, logits, labels, weights):
    import numpy as np

    n, classes, h, w = logits.shape
    pixels = n * h * w
    probs, loss = runtime.empty(logits.shape), runtime.empty((1,))
    grid, block = rung.grid(pixels, 1)
    partial = runtime.empty((grid[0],))
    sizes = tuple(np.int32(v) for v in (pixels, classes, h * w))
    runtime.launch(rung.module, "softmax_ce_forward", grid, block, (logits, labels, weights, probs, partial) + sizes)
    runtime.launch(rung.module, "softmax_ce_sum", (1, 1, 1), block,
                   (partial, loss, np.int32(grid[0]), np.int32(pixels)))
    return loss


def _run_conv2d(rung: Rung, runtime, x, w, b, relu: bool = False):
    """conv2d_forward with ``rung``'s kernel on device arrays x [N,C,H,W], w [K,C,3,3], b [K]; returns y."""
    import numpy as np

    N, C, H, W = x.shape
    K = w.shape[0]
    OH, OW = H - FILTER + 1, W - FILTER + 1
    y = runtime.empty((N, K, OH, OW))
    grid, block = rung.grid(N * OH * OW, K)
    args = (x, w, b, y) + tuple(np.int32(v) for v in (N, C, H, W, K, relu))
    runtime.launch(rung.module, "conv2d_forward", grid, block, args)
    return y
