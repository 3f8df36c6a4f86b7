"""The host side of kernels/gemm.h: tile shapes, the math mode, and the split-K policy.

conv2d and up-conv run one GEMM main loop (kernels/gemm.h). Here, once for both, is how
their launches are shaped:

* :data:`TILE_CONFIGS` and :func:`tile_config`: the block tile, picked by the GEMM's
  column count so a narrow GEMM (K = 16 or 2 channels) does not leave most of a tile idle;
* :func:`gemm_module`: FP32 on CUDA cores, or TF32 on tensor cores (``runtime.math``), for
  every tile shape;
* :func:`split_k`: how a long reduction into a small result (a weight gradient: all the
  pixels of a 572 tile into a [C*9, K] matrix) is cut into chunks, one block per chunk,
  summed afterwards in a fixed order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cunet.device import MATHS
from cunet.kernels import KernelModule, kernel_module

from .common import ceil_div

# MATHS: fp32, FMAs on CUDA cores, every GPU; tf32, mma.sync on tensor cores, sm_80 and newer
# (operands rounded to 10 mantissa bits, FP32 accumulation), emulated bit for bit on OpenCL.
TENSOR_CORE_MIN_SM = 80


@dataclass(frozen=True)
class TileConfig:
    """A block tile of BM x BN outputs, reduced BK at a time; TM x TN outputs per thread in FP32,
    and in TF32 the block's warps laid out ``warps_m`` along the rows (16 x 8 mma tiles)."""

    name: str
    BM: int
    BN: int
    BK: int
    TM: int
    TN: int
    warps_m: int

    @property
    def threads(self) -> int:
        """Threads per block: one per TM x TN sub-tile (in TF32 the same threads form warps)."""
        return (self.BM // self.TM) * (self.BN // self.TN)

    def defines(self, math: str) -> dict[str, int]:
        """The -D defines of gemm.h for this tile in ``math``."""
        defines = dict(BM=self.BM, BN=self.BN, BK=self.BK, TM=self.TM, TN=self.TN, MATH_TF32=int(math == "tf32"))
        if math == "tf32":
            defines["WARPS_M"] = self.warps_m
        return defines


# Widest first. 128x64 with 8x8 per thread is the classic register-blocked SGEMM shape:
# 64 accumulators + 16 operands per thread (~120 registers, no spills), 128 threads, 6.4 KB
# of shared tiles, 16 shared loads per 64 FMAs. It suits the U-Net's 64..1024 channels. In
# TF32 its 4 warps split it 2 x 2: 64 x 32 per warp, 4 x 4 mma tiles of 16 x 8, the same 64
# accumulators per thread. With 16 columns (first levels at base 16) a 64-wide tile would
# leave 3/4 idle, and with 2 (the last 1x1 layer) or 1 (backward input of the first
# layer) 97%; the narrower shapes keep the tile fuller there. Those layers are cheap and
# bandwidth-bound, so their smaller per-thread tiles cost little. 8 columns is the
# narrowest a tensor-core tile (16 x 8) allows.
TILE_CONFIGS = (
    TileConfig("128x64", BM=128, BN=64, BK=8, TM=8, TN=8, warps_m=2),
    TileConfig("64x16", BM=64, BN=16, BK=8, TM=4, TN=4, warps_m=2),
    TileConfig("64x8", BM=64, BN=8, BK=16, TM=4, TN=2, warps_m=2),
)


def tile_config(n_columns: int) -> TileConfig:
    """The narrowest tile that is at least ``n_columns`` wide, else the widest."""
    fitting = [cfg for cfg in TILE_CONFIGS if cfg.BN >= n_columns]
    return min(fitting, key=lambda cfg: cfg.BN) if fitting else TILE_CONFIGS[0]


_MODULES: dict[tuple, KernelModule] = {}


def gemm_module(file: str, cfg: TileConfig, math: str, **defines: int) -> KernelModule:
    """The kernel module of ``file`` for tile ``cfg`` in ``math`` (created and registered once).

    A TF32 module compiles only for sm_80 and newer (the compile check knows it).
    """
    if math not in MATHS:
        raise ValueError(f"math must be one of {', '.join(MATHS)}, got {math!r}")
    key = (file, cfg.name, math, tuple(sorted(defines.items())))
    if key not in _MODULES:
        min_sm = TENSOR_CORE_MIN_SM if math == "tf32" else None
        _MODULES[key] = kernel_module(file, threads=cfg.threads, min_sm=min_sm, **cfg.defines(math), **defines)
    return _MODULES[key]


def declare_modules(file: str, **defines: int) -> None:
    """Create every (tile, math) module of ``file``, so the compile check sees them all."""
    for cfg in TILE_CONFIGS:
        for math in MATHS:
            gemm_module(file, cfg, math, **defines)


# --- split-K ---------------------------------------------------------------------------------
# A weight gradient reduces over every pixel (325k at 572x572) into a small matrix, so one
# block per output tile would leave the GPU nearly idle. The reduction is split into chunks,
# one block per (tile, chunk), aiming at about SPLIT_TARGET_BLOCKS blocks (several waves on
# a 132-SM H100) but never chunks shorter than SPLIT_MIN_CHUNK (a block should read far more
# than the BM*BN partial sums it writes). The partial buffer is then at most
# ~SPLIT_TARGET_BLOCKS * BM * BN floats (32 MB). The split depends on the shapes alone, so
# every device sums in the same order: results do not depend on the GPU.
SPLIT_TARGET_BLOCKS = 1024
SPLIT_MIN_CHUNK = 256


def split_k(reduction: int, rows: int, cols: int, cfg: TileConfig) -> tuple[int, int]:
    """(splits, chunk) for a GEMM of ``rows`` x ``cols`` outputs reducing over ``reduction``.

    ``chunk`` is a multiple of BK; the last chunk may be short.
    """
    tiles = ceil_div(rows, cfg.BM) * ceil_div(cols, cfg.BN)
    splits = max(1, min(ceil_div(reduction, SPLIT_MIN_CHUNK), ceil_div(SPLIT_TARGET_BLOCKS, tiles)))
    chunk = ceil_div(ceil_div(reduction, splits), cfg.BK) * cfg.BK
    return ceil_div(reduction, chunk), chunk


# --- the NumPy reference of TF32 -------------------------------------------------------------
def round_to_tf32(a) -> np.ndarray:
    """float32 values rounded to TF32 as cvt.rna.tf32.f32 does: 10 mantissa bits, to nearest,
    ties away from zero; inf and NaN unchanged.

    The oracle the tests and benchmarks compare the tensor-core kernels with (a reference
    rounds its GEMM operands with this, then sums exactly): written on the bits with NumPy,
    independently of the kernels' tf32_round (kernels/gemm.h).
    """
    a = np.ascontiguousarray(a, np.float32)
    bits = a.view(np.uint32)
    finite = (bits & 0x7F800000) != 0x7F800000
    rounded = np.where(finite, (bits.astype(np.uint64) + 0x1000) & 0xFFFFE000, bits).astype(np.uint32)
    return rounded.view(np.float32)
