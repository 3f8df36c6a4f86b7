"""Training batches, prepared ahead by worker processes so that a GPU never waits for them.

A GPU step of the paper's network takes 10-20 ms; drawing one augmented 572 tile (elastic
deformation, cubic resampling) takes ~50 ms on one CPU core. Drawn on the training loop's
thread, the sampler alone would cap training at ~20 img/s whatever the kernels do.

Because sample k of a run is a pure function of (seed, k) (`TrainingSampler.sample_at`),
batches can be drawn by any process, in any order, ahead of time: step s takes samples
s*B .. s*B+B-1. `BatchStream` keeps ``2 * workers`` batches in flight in a pool of worker
processes and hands them out in step order. The batches are the same with 0, 1 or 8
workers, so a resumed run continues exactly, whatever the worker count of either part.

Workers are started with ``spawn`` (a fresh interpreter: safe beside CUDA and thread pools
in the parent, where ``fork`` is not), receive the sampler once, and ignore Ctrl-C: the
training loop decides what an interrupt means (finish the step, save, exit).
"""
from __future__ import annotations

import collections
import multiprocessing
import signal
import time
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

from .sampler import TrainingSampler

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]

_worker_sampler: TrainingSampler | None = None  # each worker process's copy


def _start_worker(sampler: TrainingSampler) -> None:
    global _worker_sampler
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    _worker_sampler = sampler


def _draw(first: int, size: int) -> Batch:
    return _worker_sampler.batch_at(first, size)


class BatchStream:
    """The batches for steps ``first_step``, ``first_step + 1``, ..., drawn ahead by ``workers`` processes.

    ``shard=(rank, R)``: this process is one of R data-parallel ranks and takes every R-th
    batch of the stream (``first_sample``), so the R ranks together draw what one process
    with batch R * B would.

    ``workers=0`` draws each batch on the calling thread when it is asked for (no
    processes; what a CPU device wants, since its cores are busy with the step itself).
    Use as a context manager, or call `close`, so the worker processes end.
    """

    def __init__(self, sampler: TrainingSampler, batch_size: int, first_step: int = 0, workers: int = 0,
                 shard: tuple[int, int] = (0, 1)):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        rank, ranks = shard
        if not 0 <= rank < ranks:
            raise ValueError(f"shard must be (rank, ranks) with 0 <= rank < ranks, got {shard}")
        self.sampler, self.batch_size, self.workers = sampler, batch_size, workers
        self.rank, self.ranks = rank, ranks
        self.next_step = first_step  # the step whose batch next() returns
        self.waited_s = 0.0  # seconds the last next() waited for its batch
        self._queued_step = first_step  # the next step to hand to a worker
        self._in_flight: collections.deque[Future] = collections.deque()
        self._pool = None
        if workers:
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker, initargs=(sampler,))
            self._fill()

    def first_sample(self, step: int) -> int:
        """The first sample of ``step``'s batch: ``step * B`` alone; ``(step * R + rank) * B`` as one of R ranks."""
        return (step * self.ranks + self.rank) * self.batch_size

    def _fill(self) -> None:
        """Keep two batches per worker in flight: one being drawn, one waiting to be taken."""
        while len(self._in_flight) < 2 * self.workers:
            self._in_flight.append(self._pool.submit(_draw, self.first_sample(self._queued_step), self.batch_size))
            self._queued_step += 1

    def next(self) -> Batch:
        """The batch of step ``next_step`` (x, labels, weights as TrainingSampler.batch_at returns them)."""
        start = time.perf_counter()
        if self._pool is None:
            batch = self.sampler.batch_at(self.first_sample(self.next_step), self.batch_size)
        else:
            batch = self._in_flight.popleft().result()  # a worker's exception is raised here
            self._fill()
        self.waited_s = time.perf_counter() - start
        self.next_step += 1
        return batch

    def close(self) -> None:
        """Stop the workers, dropping the batches drawn ahead."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "BatchStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
