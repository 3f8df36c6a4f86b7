"""Data-parallel training: ``mpiexec -n R python -m cunet.train ...``.

Every rank holds the whole model (same seed, so the same initial weights) and runs the
whole step on its own samples; after the backward pass the ranks average their gradients,
so every rank applies the same SGD update and the weights stay identical without ever
being sent. Three rules make the run exact and resumable:

* **Samples.** Step s of rank r takes samples (s R + r) B .. (s R + r + 1) B - 1 of the
  run's counter-based stream (``TrainingSampler.sample_at``): with B = 1, rank r draws
  samples r, r + R, r + 2R, ... Over the ranks a step covers exactly the samples a single
  process with batch R B would draw, and the loss is a pixel *mean*, so the averaged
  gradient is that process's gradient (up to float32 rounding: the sums run in another
  order).
* **One allreduce per step**, over one flat buffer: every gradient, then the loss, then a
  stop flag (Ctrl-C or SIGTERM on any rank stops all ranks after the same step, instead
  of leaving the others waiting in an allreduce). On cpu it is MPI (mpi4py, MPICH's wheel);
  on cuda, NCCL through CuPy, GPU to GPU, with NCCL's unique id broadcast over MPI.
* **Rank 0 writes** the log, the checkpoints and the plots; a checkpoint records R, and a
  resumed run must use the same R (the sample shards depend on it).

Drop-out draws its masks from the rank's own seed (``rank_seed``), so ranks do not share
masks; rank 0 keeps the run's seed, so one rank is exactly a single-process run.

A rank that dies takes the job down: ``mpiexec`` (Hydra) sees it exit, reports "BAD
TERMINATION ... EXIT CODE" and kills the other ranks, which would otherwise wait in the
allreduce forever. Checkpoints are written whole (temp + rename), so the last one is intact.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

# Environment variables that MPI launchers set in every rank: MPICH/Hydra (PMI), Open MPI, PMIx.
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")
# Added to the seed once per rank, so ranks draw different drop-out masks (2^64 / golden ratio).
RANK_SEED_STRIDE = 0x9E3779B97F4A7C15


def launched_with_more_than_one_rank() -> bool:
    """Whether an MPI launcher started this process as one of several ranks (no MPI import needed)."""
    return any(int(os.environ.get(name, "1")) > 1 for name in LAUNCHER_SIZE_VARIABLES)


def rank_seed(seed: int, rank: int) -> int:
    """The drop-out seed of ``rank``: the run's seed on rank 0, a far-away one elsewhere."""
    return (seed + rank * RANK_SEED_STRIDE) % 2**64


@dataclass
class World:
    """This process's place among the ranks: ``rank`` of ``size``, ``local_rank`` on its machine."""

    rank: int
    size: int
    local_rank: int
    comm: object  # mpi4py's COMM_WORLD

    def describe(self) -> str:
        """E.g. '2 ranks (MPI), this is rank 0'."""
        return f"{self.size} ranks (MPI), this is rank {self.rank}"

    def abort(self, code: int) -> None:
        """End every rank now (an error on one rank must not leave the others in an allreduce)."""
        self.comm.Abort(code)


def mpi_world() -> World | None:
    """The MPI world when launched by ``mpiexec -n R`` with R > 1; None for a plain process.

    Raises ImportError with the fix when mpi4py is missing.
    """
    if not launched_with_more_than_one_rank():
        return None
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError("this process was started by an MPI launcher, but mpi4py is missing: "
                          "pip install -e '.[dist]' (mpi4py and MPICH)") from exc
    comm = MPI.COMM_WORLD
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this machine: one GPU each
    return World(rank=comm.Get_rank(), size=comm.Get_size(), local_rank=local.Get_rank(), comm=comm)


class MpiSum:
    """Sum a flat float32 host buffer over the ranks, in place (MPI Allreduce)."""

    def __init__(self, world: World):
        from mpi4py import MPI

        self.world, self.op = world, MPI.SUM
        self.in_place = MPI.IN_PLACE

    def __call__(self, buffer) -> None:
        self.world.comm.Allreduce(self.in_place, buffer, op=self.op)


class NcclSum:
    """Sum a flat float32 CuPy buffer over the GPUs of the ranks, in place (NCCL allreduce).

    NCCL needs one id shared by all ranks: rank 0 makes it and MPI broadcasts it.
    """

    def __init__(self, world: World, nccl=None):
        if nccl is None:
            from cupy.cuda import nccl
        self.nccl = nccl
        uid = nccl.get_unique_id() if world.rank == 0 else None
        uid = world.comm.bcast(uid, root=0)
        self.communicator = nccl.NcclCommunicator(world.size, uid, world.rank)

    def __call__(self, buffer) -> None:
        import cupy

        self.communicator.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, self.nccl.NCCL_FLOAT32,
                                    self.nccl.NCCL_SUM, cupy.cuda.get_current_stream().ptr)


class GradientAverager:
    """Average every parameter's gradient, the loss and a stop flag over the ranks, in one allreduce.

    The buffer is allocated once, on the parameters' device (host for cpu and opencl,
    where MPI sends host memory; the GPU for cuda with NCCL). Layout: the gradients in
    parameter order, flattened, then [loss, stop].
    """

    def __init__(self, world: World, parameters, device, total_sum=None):
        self.world, self.parameters, self.device = world, list(parameters), device
        self.sizes = [int(np.prod(p.shape)) for p in self.parameters]
        length = sum(self.sizes) + 2
        on_gpu = device.name == "cuda"
        self.buffer = device.zeros((length,), np.float32) if on_gpu else np.zeros(length, np.float32)
        self.total_sum = total_sum or (NcclSum(world) if on_gpu else MpiSum(world))
        self.to_buffer = (lambda a: a) if on_gpu else device.to_host  # noqa: E731
        self.from_buffer = (lambda a: a) if on_gpu else device.to_device  # noqa: E731

    def average(self, loss, stop: bool) -> tuple[float, bool]:
        """Replace each gradient by the ranks' mean; return (the mean loss, whether any rank asked to stop).

        ``loss`` is this rank's loss, a one-element array on the device. Reads the loss
        back to the host: with the allreduce each step already waits for the device.
        """
        offset = 0
        for p, n in zip(self.parameters, self.sizes):
            self.buffer[offset:offset + n] = self.to_buffer(p.grad).reshape(-1)
            offset += n
        self.buffer[offset] = self.to_buffer(loss).reshape(-1)[0]
        self.buffer[offset + 1] = 1.0 if stop else 0.0
        self.total_sum(self.buffer)
        scale = np.float32(1.0 / self.world.size)
        offset = 0
        for p, n in zip(self.parameters, self.sizes):
            p.grad = self.from_buffer(self.buffer[offset:offset + n].reshape(p.shape) * scale)
            offset += n
        tail = self.device.to_host(self.buffer[offset:offset + 2]) if self.device.name == "cuda" else self.buffer[offset:]
        return float(tail[0]) * float(scale), bool(tail[1] > 0)
