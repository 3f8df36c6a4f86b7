"""Data-parallel training (cunet.scale.data_parallel): ``mpiexec -n 2 python -m cunet.train``
against one process, exact resume, refusals, a dying rank; the allreduce plumbing with fakes.

The mpiexec runs use MPICH from the ``dist`` extra (part of ``test``), on the cpu device,
with the tiny network of tests/test_train.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cunet.checkpoint import load_checkpoint
from cunet.data import BatchStream, TrainingSampler
from cunet.device import get_device
from cunet.nn import Parameter
from cunet.scale import data_parallel as dp

pytest.importorskip("mpi4py", reason="the dist extra (mpi4py, mpich) is not installed")
MPIEXEC = Path(sys.executable).with_name("mpiexec")
TINY = ["--tile", "44", "--base", "2", "--depth", "2", "--synthetic-images", "3", "--quiet", "--lr", "0.01",
        "--device", "cpu"]
# One thread per rank: two ranks on the CI's two cores, and sums that do not depend on threads.
ENV = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def train(*args, ranks: int = 1, timeout: int = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cunet.train", *TINY, *args]
    if ranks > 1:
        command = [str(MPIEXEC), "-n", str(ranks), *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)


def params(out: Path) -> dict:
    return load_checkpoint(out / "checkpoint.npz").params


def test_two_ranks_train_like_one_process_with_twice_the_batch(tmp_path):
    # Drop-out off: a rank draws its masks from its own seed, not from slot r of a batch of 2.
    two = train("--dropout", "0", "--steps", "5", "--out", str(tmp_path / "two"), ranks=2)
    assert two.returncode == 0, two.stderr
    assert "data-parallel: 2 ranks" in two.stdout and two.stdout.count("validation after") == 1  # rank 0 speaks
    one = train("--dropout", "0", "--steps", "5", "--batch", "2", "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    a, b = params(tmp_path / "two"), params(tmp_path / "one")
    for name in a:
        # The same samples and the same mean gradient; only the order of float32 sums differs
        # (two half-batch reductions added by MPI, against one reduction over the batch).
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert load_checkpoint(tmp_path / "two" / "checkpoint.npz").meta["ranks"] == 2


def test_resume_with_the_same_ranks_is_exact(tmp_path):
    assert train("--steps", "4", "--out", str(tmp_path / "straight"), ranks=2).returncode == 0
    assert train("--steps", "2", "--out", str(tmp_path / "split"), ranks=2).returncode == 0
    resumed = train("--resume", str(tmp_path / "split" / "checkpoint.npz"), "--steps", "4", ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    a, b = params(tmp_path / "straight"), params(tmp_path / "split")
    assert all(np.array_equal(a[name], b[name]) for name in a)


def test_resume_with_another_rank_count_is_refused(tmp_path):
    assert train("--steps", "2", "--out", str(tmp_path / "two"), ranks=2).returncode == 0
    alone = train("--resume", str(tmp_path / "two" / "checkpoint.npz"), "--steps", "4")
    assert alone.returncode == 2 and "written by a run of 2 rank(s) and this is 1" in alone.stderr
    assert "Traceback" not in alone.stderr


def _rank_pids(out: Path) -> dict[int, int]:
    """The pids of the python ranks training into ``out``, by rank (from their PMI_RANK)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"cunet.train" in cmdline and str(out).encode() in cmdline and b"mpiexec" not in cmdline[0]:
                env = dict(item.split(b"=", 1) for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item)
                found[int(env[b"PMI_RANK"])] = int(proc.name)
        except (OSError, KeyError, ValueError):
            continue
    return found


def _start_long_run(out: Path) -> subprocess.Popen:
    command = [str(MPIEXEC), "-n", "2", sys.executable, "-m", "cunet.train", *TINY, "--steps", "100000",
               "--checkpoint-every", "3", "--out", str(out)]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while not (out / "checkpoint.npz").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (out / "checkpoint.npz").exists(), "no checkpoint within 120 s"
    return job


def test_a_killed_rank_fails_the_job_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    job = _start_long_run(out)
    pids = _rank_pids(out)
    assert set(pids) == {0, 1}
    os.kill(pids[1], signal.SIGKILL)
    out_text, err = job.communicate(timeout=60)  # Hydra notices and ends rank 0, which waits in an allreduce
    assert job.returncode != 0
    report = out_text + err  # Hydra reports on stdout
    assert "BAD TERMINATION" in report and "Killed (signal 9)" in report, report[-2000:]
    checkpoint = load_checkpoint(out / "checkpoint.npz")  # whole, never half-written
    assert checkpoint.step % 3 == 0 and checkpoint.step > 0


def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    out = tmp_path / "run"
    job = _start_long_run(out)
    os.kill(_rank_pids(out)[1], signal.SIGTERM)  # only rank 1 is asked; the stop flag travels in the allreduce
    _, err = job.communicate(timeout=60)
    assert job.returncode == 130, err[-2000:]
    checkpoint = load_checkpoint(out / "checkpoint.npz")
    steps = [line for line in open(out / "log.jsonl") if '"loss"' in line]
    assert checkpoint.step == len(steps)  # rank 0 saved the last step both ranks took


# --- the plumbing, without mpiexec --------------------------------------------------------------

class FakeWorld(dp.World):
    def __init__(self, rank=0, size=2):
        super().__init__(rank=rank, size=size, local_rank=rank, comm=None)


def test_averager_divides_the_sum_and_reads_the_stop_flag():
    device = get_device("cpu")
    p, q = Parameter(np.zeros((2, 3), np.float32)), Parameter(np.zeros(4, np.float32))
    p.grad, q.grad = np.full((2, 3), 3.0, np.float32), np.arange(4, dtype=np.float32)
    sent = []

    def other_rank_sends_the_same_but_stop(buffer):  # a 2-rank sum where rank 1 asked to stop
        sent.append(buffer.copy())
        buffer[:-1] *= 2
        buffer[-1] += 1.0

    averager = dp.GradientAverager(FakeWorld(), [p, q], device, total_sum=other_rank_sends_the_same_but_stop)
    loss, stop = averager.average(np.array([0.5], np.float32), stop=False)
    assert loss == pytest.approx(0.5) and stop
    assert np.array_equal(p.grad, np.full((2, 3), 3.0)) and np.array_equal(q.grad, np.arange(4))
    assert sent[0].shape == (6 + 4 + 2,) and sent[0][-2:].tolist() == [0.5, 0.0]  # gradients, loss, stop


def test_nccl_sum_shares_rank_zeros_id_and_reduces_in_place(monkeypatch):
    calls = {}

    class FakeNccl:
        NCCL_FLOAT32, NCCL_SUM = "f32", "sum"

        @staticmethod
        def get_unique_id():
            return "uid-from-rank-0"

        class NcclCommunicator:
            def __init__(self, size, uid, rank):
                calls["init"] = (size, uid, rank)

            def allReduce(self, send, recv, count, dtype, op, stream):
                calls["allreduce"] = (send, recv, count, dtype, op, stream)

    class Comm:
        @staticmethod
        def bcast(value, root):
            calls["bcast"] = (value, root)
            return "uid-from-rank-0"

    class Buffer:
        size = 12

        class data:
            ptr = 0xBEEF

    fake_cupy = type(sys)("cupy")
    fake_cupy.cuda = type(sys)("cupy.cuda")
    fake_cupy.cuda.get_current_stream = lambda: type("Stream", (), {"ptr": 7})()
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    world = dp.World(rank=1, size=2, local_rank=1, comm=Comm())
    dp.NcclSum(world, nccl=FakeNccl)(Buffer())
    assert calls["bcast"] == (None, 0) and calls["init"] == (2, "uid-from-rank-0", 1)
    assert calls["allreduce"] == (0xBEEF, 0xBEEF, 12, "f32", "sum", 7)


def test_launcher_detection_and_rank_seeds(monkeypatch):
    for name in dp.LAUNCHER_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not dp.launched_with_more_than_one_rank() and dp.mpi_world() is None
    monkeypatch.setenv("PMI_SIZE", "1")
    assert not dp.launched_with_more_than_one_rank()  # mpiexec -n 1 is a plain run
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert dp.launched_with_more_than_one_rank()
    assert dp.rank_seed(5, 0) == 5 and len({dp.rank_seed(5, r) for r in range(8)}) == 8
    assert all(0 <= dp.rank_seed(2**64 - 1, r) < 2**64 for r in range(4))


def test_shards_interleave_into_the_single_process_batches():
    rng = np.random.default_rng(0)
    images, labels = rng.random((2, 64, 64)).astype(np.float32), (rng.random((2, 64, 64)) > 0.5).astype(np.uint8)
    sampler = TrainingSampler(images, labels, in_size=44, out_size=28, seed=3)
    with BatchStream(sampler, 2, first_step=1) as whole:
        reference = [whole.next()[0] for _ in range(3)]
    shards = [BatchStream(sampler, 1, first_step=1, shard=(r, 2)) for r in range(2)]
    for step in range(3):
        x = np.concatenate([shards[r].next()[0] for r in range(2)])
        assert np.array_equal(x, reference[step])
    with pytest.raises(ValueError, match="shard"):
        BatchStream(sampler, 1, shard=(2, 2))


def test_benchmark_measures_both_rank_counts_and_labels_the_model(capsys):
    from benchmarks import data_parallel as bench

    assert bench.main(["--tile", "44", "--base", "2", "--depth", "2", "--steps", "6", "--warmup", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    one, two = report["measured"]
    assert (one["ranks"], two["ranks"]) == (1, 2) and one["step_s"] > 0 and two["step_s"] > 0
    assert report["weak_scaling_efficiency"] == pytest.approx(two["images_per_s"] / (2 * one["images_per_s"]))
    model = report["modelled_nccl"]
    # By hand: 31,030,658 float32 gradients = 124.1 MB; ring: 2 * 7/8 * 124.1 MB / 400 GB/s + 14 * 5 us.
    assert model["gradient_mb"] == pytest.approx(124.122632)
    assert model["allreduce_ms"] == pytest.approx(2 * 7 / 8 * 124.122632e6 / 400e9 * 1e3 + 14 * 5e-3)
    assert bench.main(["--steps", "3", "--warmup", "5"]) == 2
    assert "must exceed --warmup" in capsys.readouterr().err


@pytest.mark.cuda
def test_averager_over_nccl_on_a_real_gpu(request):
    """The NCCL path on a GPU day (pytest -m cuda, part of benchmarks.gpu_check): a world of one
    rank, so NCCL's allreduce runs for real on one GPU and the mean is the rank's own gradient."""
    device = request.getfixturevalue("cuda_device")  # skips with the reason where there is no GPU

    class OneRank:
        @staticmethod
        def bcast(value, root):
            return value

    p = Parameter(device.to_device(np.arange(6, dtype=np.float32).reshape(2, 3)))
    p.grad = device.to_device(np.full((2, 3), 2.5, np.float32))
    averager = dp.GradientAverager(dp.World(rank=0, size=1, local_rank=0, comm=OneRank()), [p], device)
    assert isinstance(averager.total_sum, dp.NcclSum)
    loss, stop = averager.average(device.to_device(np.array([0.75], np.float32)), stop=True)
    assert loss == pytest.approx(0.75) and stop
    assert np.array_equal(device.to_host(p.grad), np.full((2, 3), 2.5, np.float32))
