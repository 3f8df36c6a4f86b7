"""Prediction over a Dask cluster (cunet.scale.dask_predict): bit for bit what cunet.predict computes in memory."""
import logging
import os
import signal
import time

import numpy as np
import pytest
import tifffile

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from distributed import Client, LocalCluster  # noqa: E402
from test_predict import small_model, write_checkpoint  # noqa: E402  (the checkpoint pattern of test_predict.py)

from cunet import predict  # noqa: E402
from cunet.data.loaders import image_to_float  # noqa: E402
from cunet.data.tiling import plan_tiles  # noqa: E402
from cunet.device import get_device  # noqa: E402
from cunet.scale import dask_predict as dp  # noqa: E402

# The test network: depth 3 (align 4), base 2, tile 308 -> output 268 = the step; margin 20,
# depth_px 20. Big tiles keep a 4096 x 4096 image to ~240 tiles (a few seconds on 2 cores).
TILE, DEPTH, BASE = 308, 3, 2
STEP = 268


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = small_model(depth=DEPTH, base=BASE)
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt.npz", model, tile=TILE)


@pytest.fixture(scope="module")
def model(checkpoint):
    return predict.model_from_checkpoint(checkpoint, get_device("cpu"))[0]


def in_process(model, raw, tile=TILE, blas_threads=None):
    """What python -m cunet.predict computes for this image: the reference, batch 1.

    ``blas_threads=1`` for comparisons with worker processes, whose nannies start them with
    one BLAS thread: OpenBLAS's GEMMs (the up-convolutions, the 1x1 head) round differently
    with 1 and 2 threads on some CPUs (an AMD EPYC with AVX-512, 2026-12-07), and the bits
    compared here must come from the same arithmetic. (Threads of this process, the
    thread_client's workers, share its BLAS settings.)"""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=blas_threads, user_api="blas"):
        return predict.predict_probabilities(model, image_to_float(raw, "reference"), tile)


def read(path):
    return zarr.open_array(str(path), mode="r")[...]


def _process_cluster(n_workers):
    return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, memory_limit="2GiB",
                        dashboard_address=":0", silence_logs=logging.ERROR)


@pytest.fixture
def process_cluster():
    """Two worker processes under nannies (restarted when killed), as predict_large starts by default."""
    cluster = _process_cluster(2)
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def thread_client():
    """A cheap cluster of two threads in this process, for the tests that are not about processes."""
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


# --------------------------------------------------------------------------- geometry, without Dask


SHAPES = [(4096, 4096), (805, 1073), (537, 300), (268, 269), (1, 900), (30, 20)]


@pytest.mark.parametrize("shape", SHAPES)
def test_the_chunks_tiles_are_exactly_the_in_process_plan(shape):
    g = dp.chunk_geometry(shape, TILE, 268, DEPTH, chunk=2 * STEP)
    assert (g.step, g.margin, g.depth_px) == (STEP, 20, 20)
    per_chunk = [dp.chunk_tiles(g, i, j) for i in range(g.grid[0]) for j in range(g.grid[1])]
    plan = plan_tiles(shape, TILE, 268, align=4)
    def by_place(tiles):
        return sorted(tiles, key=lambda t: t.owned)

    assert by_place(t for c in per_chunk for t in c) == by_place(plan)  # each tile once, windows identical
    for (i, j), tiles in zip(np.ndindex(*g.grid), per_chunk):
        (r0, r1), (c0, c1) = g.chunk_bounds(i, j)
        (lo, hi), (clo, chi) = dp.chunk_window(g, i, j)
        assert tiles and all(r0 <= t.owned[0][0] and t.owned[0][1] <= r1 and c0 <= t.owned[1][0] and t.owned[1][1] <= c1
                             for t in tiles)
        assert 0 <= lo < hi <= shape[0] and 0 <= clo < chi <= shape[1]
        # The block is the chunk plus the overlap (margin before, depth_px after) inside the image, or
        # at worst chunk + 2 (margin + out), the side worker_memory_bound assumes.
        if 0 < r0 and r0 + g.chunk + g.depth_px <= shape[0]:
            assert (lo, hi) == (r0 - g.margin, r0 + g.chunk + g.depth_px)
        assert hi - lo <= g.chunk + 2 * (g.margin + g.out)


def run_without_dask(checkpoint, raw, tmp_path, chunk):
    """Every chunk's task run here in turn, on NumPy blocks: the geometry and the task, no cluster."""
    g = dp.chunk_geometry(raw.shape, TILE, 268, DEPTH, chunk)
    dp.create_output(tmp_path / "out.zarr", g, 2)
    for job in dp.chunk_jobs(checkpoint, g, tmp_path / "out.zarr"):
        (lo, hi), (clo, chi) = job.window
        dp.predict_chunk(job, None, raw[lo:hi, clo:chi])
    return read(tmp_path / "out.zarr")


@pytest.mark.parametrize("shape, chunk", [
    ((269, 540), STEP),          # last chunks one pixel thin: mirroring reaches back past the overlap
    ((600, 300), STEP),          # a 64-pixel last chunk, chunk = one step
    ((1, 700), 2 * STEP),        # one row: the whole column axis mirrors onto it
    ((45, 31), 2 * STEP),        # smaller than one tile: one chunk, windows fold many times
])
def test_chunk_by_chunk_equals_in_process_at_awkward_shapes(checkpoint, model, tmp_path, rng, shape, chunk):
    raw = rng.integers(0, 65536, shape, dtype=np.uint16)
    assert np.array_equal(run_without_dask(checkpoint, raw, tmp_path, chunk), in_process(model, raw))


def test_chunk_must_be_a_multiple_of_the_step():
    assert dp.default_chunk(STEP) == 8 * STEP == 2144  # the multiple nearest 2048
    assert dp.default_chunk(384) == 1920 and dp.default_chunk(4000) == 4000
    with pytest.raises(ValueError, match=r"--chunk 1000 is not a multiple of the tile step 268.*use 804 or 1072"):
        dp.chunk_geometry((5000, 5000), TILE, 268, DEPTH, chunk=1000)
    with pytest.raises(ValueError, match=r"use 268$"):
        dp.chunk_geometry((5000, 5000), TILE, 268, DEPTH, chunk=100)


# --------------------------------------------------------------------------- (a) on two worker processes


# Peak RSS bound per worker, over the RSS it has once the model is loaded and one tile has run
# (so the interpreter, NumPy, Numba's compiled loops, Dask, zarr and the weights are in the
# baseline): worker_memory_bound's terms for one task in flight (threads_per_worker = 1):
#   block: side <= chunk + 2 (margin + out) = 804 + 576 = 1380 px: raw uint8 1.8 MiB, the
#          float64 temporaries of image_to_float and two float32 copies 43.6 MiB;
#   output chunk 2 x 804^2 float32 = 4.9 MiB, doubled for zarr's encoded copy: 9.9 MiB;
#   one tile's forward pass: twice the summed activations of the 308 tile at base 2: 15.3 MiB;
#   the free heap malloc may keep for the next tile: 64 MiB;
# total 134.5 MiB, plus 32 MiB for what no formula counts (fragmentation, zarr's codec
# buffers, Dask's per-task bookkeeping): 166.5 MiB. A worker holding the whole image as
# float32 (64 MiB) and the whole output (128 MiB) would need 192 MiB more: the bound tells
# the two apart. Measured here: 55 MiB over the baseline.
SLACK = 32 * 2**20


def _reset_peak_rss():
    """Start the kernel's high-water mark (VmHWM) afresh: what the worker's start-up touched
    (its imports, in a test process that has imported much) must not count as prediction."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss():
    """The high-water mark of the resident set since the last reset, in bytes."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib * 1024


def test_4096_tiff_on_two_worker_processes_equals_in_process_with_bounded_memory(checkpoint, model, process_cluster,
                                                                                 tmp_path, rng):
    client = process_cluster
    raw = rng.integers(0, 256, (4096, 4096), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", raw)  # contiguous: read through short-lived memory maps
    baseline = dp.warm_up(client, checkpoint, tile=TILE)
    client.run(_reset_peak_rss)
    summaries = []
    out = dp.predict_large(checkpoint, tmp_path / "big.tif", tmp_path / "big.zarr", chunk=3 * STEP,
                           scheduler=client, progress=summaries.append)
    assert out == tmp_path / "big.zarr" and sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "big.zarr"]
    result = zarr.open_array(str(out), mode="r")
    assert result.shape == (2, 4096, 4096) and result.chunks == (2, 804, 804) and result.dtype == np.float32
    assert len(summaries) == 36 and {s["pid"] for s in summaries} == set(client.run(os.getpid).values())
    assert np.array_equal(result[...], in_process(model, raw, blas_threads=1))

    g = dp.chunk_geometry(raw.shape, TILE, 268, DEPTH, 3 * STEP)
    bound = dp.worker_memory_bound(g, n_classes=2, itemsize=1, base=BASE, depth=DEPTH)["total"] + SLACK
    assert bound < 192 * 2**20
    peaks = client.run(_peak_rss)
    for address, peak in peaks.items():
        assert peak - baseline[address] < bound, (address, (peak - baseline[address]) / 2**20, bound / 2**20)


# --------------------------------------------------------------------------- (b) a worker killed mid-run


def test_a_worker_killed_mid_run_has_its_chunks_redone(checkpoint, model, process_cluster, tmp_path, rng):
    client = process_cluster
    raw = rng.integers(0, 256, (2048, 2048), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", raw, tile=(256, 256))  # tiled: read through tifffile's zarr view
    killed, lost = [], []

    def kill_a_busy_worker(summary):  # called as each chunk finishes: kill after the first
        if killed:
            return
        address, keys = next((a, k) for a, k in client.processing().items() if k)
        killed.append(client.run(os.getpid)[address])
        lost.extend(keys)
        os.kill(killed[0], signal.SIGKILL)  # no goodbye: the scheduler notices the lost connection

    dp.predict_large(checkpoint, tmp_path / "big.tif", tmp_path / "out.zarr", chunk=2 * STEP, scheduler=client,
                     progress=kill_a_busy_worker)
    assert killed and lost
    assert np.array_equal(read(tmp_path / "out.zarr"), in_process(model, raw, blas_threads=1))

    # The scheduler's log: a chunk the killed worker was running went back (processing -> released)
    # and was computed again (processing -> memory) on a live worker.
    def transitions(dask_scheduler, keys):
        return {key: [(t[1], t[2]) for t in dask_scheduler.story(key)] for key in keys}

    stories = client.run_on_scheduler(transitions, keys=lost)
    redone = [key for key, story in stories.items() if ("processing", "released") in story
              and ("processing", "memory") in story[story.index(("processing", "released")):]]
    assert redone, stories
    # The nanny started a new worker process in place of the killed one.
    deadline = time.monotonic() + 60
    while len(client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    pids = set(client.run(os.getpid).values())
    assert len(pids) == 2 and killed[0] not in pids


# --------------------------------------------------------------------------- (c) zarr input, array inputs


def test_zarr_input_equals_in_process(checkpoint, model, thread_client, tmp_path, rng):
    raw = rng.integers(0, 65536, (700, 1100), dtype=np.uint16)
    source = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=raw.shape, chunks=(300, 300), dtype="uint16")
    source[...] = raw  # chunked unlike the output: each task reads its window across the source's chunks
    dp.predict_large(checkpoint, tmp_path / "in.zarr", tmp_path / "out.zarr", chunk=STEP, scheduler=thread_client,
                     progress=False)
    result = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    assert result.chunks == (2, STEP, STEP) and result.attrs["cunet"]["step"] == STEP
    assert np.array_equal(result[...], in_process(model, raw))


def test_a_registered_model_reads_a_halo_and_agrees_with_in_process(thread_client, tmp_path, rng):
    """A model trained with --input-shift registers the image first (a spline over whole rows):
    each block is read SPLINE_HALO pixels wider and the result agrees with in-process
    prediction to a few ulps; without the halo, not near the blocks' cut edges."""
    from test_register import small_models

    shifted, _ = small_models((0.6, -0.35))
    assert (shifted.config["depth"], shifted.config["base"]) == (DEPTH, BASE)
    path = write_checkpoint(tmp_path / "ckpt.npz", shifted, tile=TILE)
    raw = rng.integers(0, 65536, (600, 300), dtype=np.uint16)
    expected = in_process(predict.model_from_checkpoint(path, get_device("cpu"))[0], raw)
    out = dp.predict_large(path, raw, tmp_path / "out.zarr", chunk=STEP, scheduler=thread_client, progress=False)
    np.testing.assert_allclose(read(out), expected, rtol=0, atol=1e-6)  # 3e-8 measured
    g = dp.chunk_geometry(raw.shape, TILE, 268, DEPTH, STEP)  # no halo
    dp.create_output(tmp_path / "no_halo.zarr", g, 2)
    for job in dp.chunk_jobs(path, g, tmp_path / "no_halo.zarr"):
        (lo, hi), (clo, chi) = job.window
        dp.predict_chunk(job, None, raw[lo:hi, clo:chi])
    assert np.abs(read(tmp_path / "no_halo.zarr") - expected).max() > 1e-5


def test_numpy_and_dask_array_inputs_equal_in_process(checkpoint, model, thread_client, tmp_path, rng):
    import dask.array as da

    raw = rng.random((500, 333)).astype(np.float32)
    expected = in_process(model, raw)
    for name, source in (("numpy", raw), ("dask", da.from_array(raw, chunks=(77, 200)))):
        out = dp.predict_large(checkpoint, source, tmp_path / f"{name}.zarr", chunk=STEP, scheduler=thread_client,
                               progress=False)
        assert np.array_equal(read(out), expected), name


def test_a_float_image_outside_0_1_is_an_error_and_leaves_nothing(checkpoint, thread_client, tmp_path):
    source = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=(600, 600), chunks=(600, 600), dtype="float32")
    source[...] = np.full((600, 600), 0.5, np.float32)
    source[590, 10] = 3.0
    with pytest.raises(ValueError, match=r"in\.zarr\[.*\]: floating-point image must hold values in \[0, 1\]"):
        dp.predict_large(checkpoint, tmp_path / "in.zarr", tmp_path / "out.zarr", chunk=STEP, scheduler=thread_client,
                         progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]  # no output, no partial folder


def test_a_chunk_still_running_when_another_fails_does_not_recreate_the_partial_folder(
        checkpoint, thread_client, tmp_path, monkeypatch):
    # Dask cannot stop a task midway: cancelling leaves chunk (0, 0) running, and its write
    # would recreate the removed partial folder unless predict_large waits for it to stop
    # (seen on CI: a task had opened the output just before another chunk failed).
    source = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=(600, 300), chunks=(600, 300),
                             dtype="float32")
    source[...] = np.full((600, 300), 0.5, np.float32)
    source[590, 10] = 3.0  # only the last chunk row reads this pixel
    real = dp.predict_chunk

    def slow_first_chunk(job, *args):
        if job.index != (0, 0):
            return real(job, *args)
        output = zarr.open_array(job.output, mode="r+")  # opened while the folder exists ...
        time.sleep(1.0)  # ... still running after chunk (2, 0) has failed and the folder is gone ...
        output[:, :STEP, :STEP] = 0.0  # ... and written
        return {}

    monkeypatch.setattr(dp, "predict_chunk", slow_first_chunk)
    with pytest.raises(ValueError, match="must hold values in"):
        dp.predict_large(checkpoint, tmp_path / "in.zarr", tmp_path / "out.zarr", chunk=STEP, scheduler=thread_client,
                         progress=False)
    time.sleep(1.5)  # had the slow chunk not been waited for, it has written by now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr"]


# --------------------------------------------------------------------------- (d) the command line's errors


def run_cli(checkpoint, source, out, *extra):
    return predict.main(["--checkpoint", str(checkpoint), "--input", str(source), "--output", str(out),
                         "--device", "cpu", "--quiet", *extra])


def test_cli_errors_exit_2_before_any_cluster_starts(checkpoint, tmp_path, capsys, monkeypatch):
    def no_cluster(*args, **kwargs):
        raise AssertionError("started a cluster for bad input")

    monkeypatch.setattr(dp, "_client", no_cluster)
    image = tmp_path / "a.tif"
    tifffile.imwrite(image, np.zeros((300, 300), np.uint8))
    (tmp_path / "taken.zarr").mkdir()
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((2, 30, 30), np.uint8))
    cases = [
        ((tmp_path / "missing.tif", tmp_path / "o.zarr"), "error: input ", "missing.tif does not exist"),
        ((image, tmp_path / "o.zarr", "--chunk", "1000"), "error: --chunk 1000 is not a multiple of the tile step 268",
         "use 804 or 1072"),
        ((image, tmp_path / "taken.zarr"), "error: --output ", "taken.zarr already exists: predict never overwrites"),
        ((image, tmp_path / "o.zarr", "--tta"), "error: --tta: not with a .zarr --output", "bit for bit"),
        ((image, tmp_path / "o.zarr", "--memory-limit", "lots"), "error: --memory-limit 'lots'", "2GiB"),
        ((image, tmp_path / "o.zarr", "--workers", "0"), "error: --workers must be at least 1", ""),
        ((image, tmp_path / "folder", "--chunk", "804"), "error: --chunk: only with an --output ending in .zarr", ""),
        ((stack, tmp_path / "o.zarr"), f"error: {stack}: shape (2, 30, 30)", "expected one 2-D greyscale image"),
        ((image, tmp_path / "o.zarr", "--tile", "299"), "error: ", "use 296 or 300"),
    ]
    for args, start, words in cases:
        assert run_cli(checkpoint, *args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith(start) and words in err and "Traceback" not in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "stack.tif", "taken.zarr"]


def test_output_is_never_replaced_at_the_final_rename(tmp_path):
    (tmp_path / "done.partial-1").mkdir()
    (tmp_path / "out.zarr").mkdir()  # appeared while predicting, even empty
    with pytest.raises(dp.OutputAppearedError, match="appeared while predicting"):
        dp._rename_no_replace(tmp_path / "done.partial-1", tmp_path / "out.zarr")
    assert (tmp_path / "done.partial-1").is_dir()


# --------------------------------------------------------------------------- (e) a small image: one chunk


def test_cli_small_image_is_one_chunk_on_a_local_cluster(checkpoint, model, tmp_path, rng, capsys):
    raw = rng.integers(0, 256, (150, 230), dtype=np.uint8)  # smaller than one tile
    tifffile.imwrite(tmp_path / "small.tif", raw)
    assert run_cli(checkpoint, tmp_path / "small.tif", tmp_path / "small.zarr", "--workers", "1") == 0
    assert "wrote " in capsys.readouterr().out
    result = zarr.open_array(str(tmp_path / "small.zarr"), mode="r")
    assert result.chunks == (2, 2144, 2144) and result.nchunks_initialized == 1  # the whole image, one task
    assert np.array_equal(result[...], in_process(model, raw, blas_threads=1))
    dp.write_small_outputs(tmp_path / "small.zarr", tmp_path / "tiffs", "small.tif")
    assert np.array_equal(tifffile.imread(tmp_path / "tiffs" / "small.tif.prob.tif"), result[...])


# --------------------------------------------------------------------------- the benchmark


def test_benchmark_runs_and_compares_the_worker_counts_outputs():
    import json
    import subprocess
    import sys

    from helpers import ROOT

    def bench(*args):
        return subprocess.run([sys.executable, "-m", "benchmarks.dask_predict", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)

    done = bench("--size", "400", "--chunk", "192", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["size"], report["chunk"], report["chunks"], report["tile"]) == (400, 192, 9, 284)
    assert report["outputs_equal"] and [r["workers"] for r in report["rows"]] == [1, 2]
    assert all(r["megapixels_per_s"] > 0 and r["peak_worker_rss_mib"] > 0 for r in report["rows"])
    done = bench("--size", "400", "--chunk", "200")
    assert done.returncode == 2 and done.stderr.startswith("error: --chunk 200 is not a multiple of the tile step 192")


def test_a_task_thread_runs_the_kernels_on_one_thread_and_leaves_the_others_alone():
    """Dask runs one task per worker thread: that thread's Numba loops and C++ kernels get one
    OpenMP thread each (no oversubscription); the setting is per thread, so the caller's stays."""
    import threading

    import numba

    from cunet import _host

    before = _host.max_threads(), numba.get_num_threads()
    seen = {}

    def task():
        dp._one_thread_per_task()
        seen["host"], seen["numba"] = _host.max_threads(), numba.get_num_threads()

    thread = threading.Thread(target=task)
    thread.start()
    thread.join()
    assert seen == {"host": 1, "numba": 1}
    assert (_host.max_threads(), numba.get_num_threads()) == before
