"""Prediction of images larger than memory over a Dask cluster, equal bit for bit to ``cunet.predict``.

    from cunet.scale.dask_predict import predict_large
    predict_large("runs/isbi/checkpoint.npz", "big.tif", "big.prob.zarr", chunk=2112, workers=2)

    python -m cunet.predict --checkpoint ckpt.npz --input big.tif --output big.prob.zarr --workers 4

The image is read lazily (a TIFF through ``tifffile``, memory-mapped where it is stored
uncompressed and contiguous, else strip by strip or tile by tile through its zarr view; a
zarr array; or a NumPy/Dask array) and cut into square chunks of ``chunk`` pixels. Each
chunk is one Dask task: it reads the part of the image its tiles see, runs exactly the
tiles of the in-process plan that it owns, and writes its part of the class
probabilities into a zarr array [n_classes, H, W] float32 chunked (n_classes, chunk, chunk).

Why the result equals ``cunet.predict.predict_probabilities(model, image, tile)`` bit for bit
----------------------------------------------------------------------------------------
In process, the image is segmented by the plan ``plan_tiles(shape, tile, out, align)``
(``cunet.data.tiling``): tile k owns the output pixels [k*step, (k+1)*step), where ``step``
is the output size ``out`` rounded down to ``align = 2**(depth-1)`` (the shifts the
max-pools are equivariant to), and reads the input window ``margin`` pixels wider on each
side, mirrored beyond the border. Each tile is one forward pass of batch 1, a
deterministic function of its input window alone. So the distributed result is the same
if and only if every tile is computed once, on the same window, by the same code:

* ``chunk`` is a multiple of ``step``. Chunk boundaries then fall on tile boundaries, so
  every tile's owned region lies in exactly one chunk, and the chunk's task runs exactly
  the plan's tiles that start inside it (``chunk_tiles``), with the same windows (any
  other chunk size would cut tiles in two, or need tiles the plan does not have).
* A tile starting at s reads rows [s - margin, s + out + margin); the tiles of the chunk
  [a, a + chunk) read [a - margin, a + chunk + depth_px) with ``depth_px = margin + (out -
  step)``: the overlap each chunk needs from its neighbours (``depth`` in ``map_overlap``
  terms). Windows reaching past the image are mirrored in *global* coordinates
  (``mirror_index`` over the full image size), exactly as ``extract_tile`` mirrors the
  whole image, and the mirrored indices are then shifted into the chunk's block
  (``chunk_window`` computes the block as the span of those indices, so it always
  contains them; the task asserts it).
* Pixels are converted by ``image_to_float`` and ``model.normalise``, both element-wise
  (float32 results of the same operations on the same values), so converting a block
  gives the same numbers as converting the whole image.
* The one exception: a model trained with ``--input-shift`` registers the image first
  (``cunet.data.register``), a cubic spline whose prefilter is recursive over whole rows,
  so no block gives the whole image's bits. Each block is read ``SPLINE_HALO`` = 16 pixels
  wider (inside the image; at the image's edges the block's edge is the image's, mirrored
  alike), where the far pixels' influence has fallen below 1e-9: the registered pixels
  agree to that, i.e. to the last bit of float32 but for rare ties, and the probabilities
  to a few ulps (3e-8 largest, 99.999% of them equal bit for bit on a 600 x 300 image in
  3 x 2 chunks; without the halo 3e-3: tests/test_dask_predict.py).
* The tile loop is ``cunet.predict.predict_plan``, the very function
  ``predict_probabilities`` runs, with batch 1 (a batch of several tiles blocks the
  convolutions' sums differently, a few ulps apart). cunet's CPU kernels split their work
  over outputs, never over a sum, so the thread count of a worker does not change the bits.
  BLAS is the exception: the up-convolutions and the 1x1 head are OpenBLAS GEMMs, and on
  some CPUs (an AMD EPYC with AVX-512, 2026-12-07; not the Xeon of the other measurements)
  OpenBLAS rounds them differently on 1 thread and on 2. Worker processes start with one
  BLAS thread (their nannies set it), so there the result equals ``predict_probabilities``
  run with one BLAS thread bit for bit, and the default in-process run to a few ulps.

Why not ``dask.array.map_overlap``: it needs every chunk to be at least ``depth`` wide
and otherwise rechunks the input, which moves chunk boundaries off the step grid (an axis
of 1001 pixels in chunks of 500 with depth 40 becomes 500, 461, 40); and a thin last
chunk (a few pixels past a multiple of ``chunk``) needs, by mirroring, rows from *before*
the overlap (mirrored indices fold back by up to ``out + margin``). Each task therefore
reads exactly the span of its mirrored indices, which is the ``depth_px`` overlap
everywhere except at the image's far edges.

Memory per worker
-----------------
A task holds only its own block, never the whole image or output: for each task in flight
(``threads_per_worker`` of them), with ``B = chunk + 2 * (margin + out)`` the largest block
side (``chunk + 2 * depth_px`` away from the image's far edges) and ``C = n_classes``:

* the raw block, B^2 * itemsize, and its conversion: for integer pixels two float64
  temporaries in ``image_to_float`` (16 B^2), then two float32 copies (the [0, 1] image
  and the normalised one, 8 B^2); for a registered model B grows by 2 * SPLINE_HALO and the
  resampling holds a float64 copy, its spline coefficients and its result (28 B^2);
* the output chunk, C * chunk^2 * 4 bytes, and its encoded copy while zarr writes it;
* one tile's forward pass (batch 1): every layer's activation (``cunet.summary``) plus
  the convolutions' workspaces, bounded here by twice the activations' sum;

and, once per worker, up to 64 MiB of freed memory that malloc keeps for the next tile
(``_keep_freed_memory_for_the_next_tile`` says why). ``worker_memory_bound`` adds these
up; on top comes the worker process itself (Python, NumPy, Numba's compiled loops, Dask,
zarr: ~200 MiB here) and the model's weights. The image size does not appear: a
100k x 100k image needs the memory of a 2k x 2k one.

Fault tolerance: tasks are pure (the same chunk always writes the same bytes to the same
zarr chunk, which no other task touches), so a task lost with a killed worker is simply
run again by the scheduler, and the output is still complete and equal.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import math
import os
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cunet.data.loaders import image_to_float
from cunet.data.mirror import mirror_index
from cunet.data.register import SPLINE_HALO
from cunet.data.tiling import Tile

#: The default chunk is the multiple of the tile step nearest this many pixels.
DEFAULT_CHUNK_TARGET = 2048
#: Images up to this many pixels may also be written as the usual prob.tif/mask.png (``write_small_outputs``).
SMALL_IMAGE_PIXELS = 4096 * 4096
#: malloc settings of a worker (see ``_keep_freed_memory_for_the_next_tile``): blocks above
#: this size are mmapped, and free heap above that is handed back to the OS.
MALLOC_MMAP_THRESHOLD = 32 << 20
MALLOC_TRIM_THRESHOLD = 64 << 20
#: Input suffixes read lazily from disk.
TIFF_SUFFIXES = (".tif", ".tiff")


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class ChunkGeometry:
    """How an image of ``shape`` is cut into chunks for a network ``tile`` -> ``out``.

    ``step``: the plan's tile step (``out`` rounded down to ``align``); ``margin``: the
    input context on each side of a tile's output; ``chunk``: the chunk side, a multiple
    of ``step``; ``depth_px = margin + out - step``: the overlap a chunk needs from its
    neighbours on each side.
    """

    shape: tuple[int, int]
    tile: int
    out: int
    align: int
    chunk: int
    halo: int = 0  # pixels read beyond the tiles' windows, for a registered model (SPLINE_HALO)

    @property
    def step(self) -> int:
        return self.out // self.align * self.align

    @property
    def margin(self) -> int:
        return (self.tile - self.out) // 2

    @property
    def depth_px(self) -> int:
        return self.margin + self.out - self.step

    @property
    def grid(self) -> tuple[int, int]:
        """Chunks along rows and columns."""
        return tuple(math.ceil(n / self.chunk) for n in self.shape)

    def chunk_bounds(self, i: int, j: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The output region of chunk (i, j): ((r0, r1), (c0, c1)), cut at the image edge."""
        (h, w), c = self.shape, self.chunk
        return (i * c, min((i + 1) * c, h)), (j * c, min((j + 1) * c, w))


def default_chunk(step: int, target: int = DEFAULT_CHUNK_TARGET) -> int:
    """The multiple of ``step`` nearest ``target`` (at least one step)."""
    return max(1, round(target / step)) * step


def check_chunk(chunk: int, step: int) -> int:
    """``chunk`` if it is a positive multiple of ``step``; else ValueError naming the nearest valid sizes."""
    if chunk >= step and chunk % step == 0:
        return chunk
    below = max(step, chunk // step * step)
    above = below + step if below < chunk else below
    nearest = f"{below}" if below == above else f"{below} or {above}"
    raise ValueError(
        f"--chunk {chunk} is not a multiple of the tile step {step}: every tile's output must lie in one chunk "
        f"for the result to equal in-process prediction; use {nearest}"
    )


def chunk_geometry(shape, tile: int, out: int, depth: int, chunk: int | None = None, halo: int = 0) -> ChunkGeometry:
    """The ChunkGeometry for an image ``shape`` (H, W), a network of ``depth`` levels and ``tile`` -> ``out``.

    ``chunk`` None picks ``default_chunk``; otherwise it must be a multiple of the step.
    ``halo``: pixels each block reads beyond its tiles' windows (inside the image).
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"expected one 2-D image (H, W), got shape {shape}")
    align = 2 ** (depth - 1)
    step = out // align * align
    if step < 1:
        raise ValueError(f"output size {out} is smaller than the alignment {align}: choose a larger tile")
    chunk = default_chunk(step) if chunk is None else check_chunk(int(chunk), step)
    return ChunkGeometry(shape, tile, out, align, chunk, int(halo))


def _axis_starts(g: ChunkGeometry, lo: int, hi: int) -> range:
    """Starts of the plan's tiles owning pixels in [lo, hi) of one axis (lo a multiple of step)."""
    return range(lo, hi, g.step)


def chunk_tiles(g: ChunkGeometry, i: int, j: int) -> list[Tile]:
    """The tiles of ``plan_tiles(g.shape, g.tile, g.out, g.align)`` whose owned region lies in chunk (i, j).

    Built with the same formulas, in the same (row-major) order; the union over all
    chunks is the whole plan (tests/test_dask_predict.py checks it).
    """
    (r0, r1), (c0, c1) = g.chunk_bounds(i, j)
    (h, w), m, s = g.shape, g.margin, g.step
    return [Tile(input=((a - m, a - m + g.tile), (b - m, b - m + g.tile)),
                 output=((a, a + g.out), (b, b + g.out)),
                 owned=((a, min(a + s, h)), (b, min(b + s, w))))
            for a in _axis_starts(g, r0, r1) for b in _axis_starts(g, c0, c1)]


def _axis_window(g: ChunkGeometry, lo: int, hi: int, n: int) -> tuple[int, int]:
    """The span [first, last + 1) of the (mirrored) indices the tiles starting in [lo, hi) read on an axis of n,
    grown by the halo (within the image)."""
    starts = _axis_starts(g, lo, hi)
    wanted = mirror_index(np.arange(starts[0] - g.margin, starts[-1] - g.margin + g.tile), n)
    return max(int(wanted.min()) - g.halo, 0), min(int(wanted.max()) + 1 + g.halo, n)


def chunk_window(g: ChunkGeometry, i: int, j: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The block of the image chunk (i, j)'s tiles read: ((r0, r1), (c0, c1)) inside the image.

    Away from the far edges it is the chunk grown by ``margin`` before and ``depth_px``
    after (within ``depth_px`` on both sides); at the image edges mirroring folds the
    windows back inside, which for a thin last chunk reaches further back.
    """
    (r0, r1), (c0, c1) = g.chunk_bounds(i, j)
    return _axis_window(g, r0, r1, g.shape[0]), _axis_window(g, c0, c1, g.shape[1])


def worker_memory_bound(g: ChunkGeometry, *, n_classes: int, itemsize: int, base: int, depth: int,
                        integer_pixels: bool = True) -> dict[str, int]:
    """Bytes one task in flight may hold, by term, and their ``total`` (see the module's docstring).

    Excludes the worker process itself (interpreter, libraries, compiled loops, weights).
    For a worker running several tasks at once (``threads_per_worker``), multiply every
    term but ``malloc_kept`` (once per process).
    """
    from cunet.summary import layer_table

    side = min(g.chunk + 2 * (g.margin + g.out + g.halo), max(g.shape))
    block = side * side
    terms = {
        "block_raw": block * itemsize,
        "block_float": block * ((16 if integer_pixels else 0) + 8),
        # a registered model's resampling: the float64 block, its spline coefficients, the result
        "registration": block * (8 + 8 + 8 + 4) if g.halo else 0,
        "output_chunk": 2 * n_classes * g.chunk * g.chunk * 4,
        "tile_forward": 2 * sum(r.activation_bytes for r in layer_table(g.tile, base, depth, n_classes=n_classes)),
        "malloc_kept": MALLOC_TRIM_THRESHOLD,
    }
    terms["total"] = sum(terms.values())
    return terms


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class FileSource:
    """A 2-D image on disk, opened lazily in each process that reads it (a worker, or the client).

    ``kind`` is ``"tiff"`` or ``"zarr"``. Pickles as its path: the open file lives in a
    per-process cache, so a task sent to a worker carries a few hundred bytes.
    """

    kind: str
    path: str
    shape: tuple[int, int]
    dtype: str
    mtime_ns: int = field(compare=False)

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Pixels [r0:r1, c0:c1] in the file's dtype (only the strips/tiles/chunks covering them are read)."""
        array = _open_file_source(self.kind, self.path, self.mtime_ns)
        return np.asarray(array[rows[0]:rows[1], cols[0]:cols[1]])


_OPEN_SOURCES: dict = {}
_OPEN_LOCK = threading.Lock()


def _open_file_source(kind: str, path: str, mtime_ns: int):
    """An array-like over the file (cached per process; a changed file is an error, not a mix of two images)."""
    key = (kind, path, mtime_ns)
    with _OPEN_LOCK:
        if key not in _OPEN_SOURCES:
            now = os.stat(path).st_mtime_ns
            if now != mtime_ns:
                raise ValueError(f"{path} changed while predicting (modified after the run started)")
            _OPEN_SOURCES[key] = _open_tiff(path) if kind == "tiff" else _open_zarr(path)
        return _OPEN_SOURCES[key]


def _open_tiff(path: str):
    """The first series of a TIFF as a lazily read 2-D array: a memory map when it is stored
    uncompressed and contiguous, else its zarr view (``tifffile.imread(aszarr=True)``), which
    decodes only the strips or tiles a read touches. (``dask.array.from_zarr`` on that view would
    not travel to worker processes: the store holds an open file. Each process opens its own.)"""
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, axes, photometric = series.shape, series.axes, tif.pages[0].photometric
            offset, dtype = series.dataoffset, series.dtype
    except Exception as exc:  # any reader failure names the file (as cunet.data.loaders does)
        raise ValueError(f"{path}: cannot be read as a TIFF file ({type(exc).__name__}: {exc})") from exc
    squeezed = tuple(n for n in shape if n != 1)
    if len(squeezed) != 2 or photometric != tifffile.PHOTOMETRIC.MINISBLACK:
        raise ValueError(f"{path}: shape {shape} (axes {axes}, photometric "
                         f"{getattr(photometric, 'name', photometric)}): expected one 2-D greyscale image; "
                         "convert stacks or colour images first (python -m cunet.predict reads those in memory)")
    if offset is not None:
        return _ContiguousFile(path, offset, squeezed, dtype)
    store = tifffile.imread(path, aszarr=True)
    array = zarr.open_array(store, mode="r")
    return array if array.ndim == 2 else _Squeezed(array, squeezed)


class _ContiguousFile:
    """An uncompressed, contiguous image in a file, read window by window through a memory map
    made for each read and dropped after it. (A map kept open would keep every page a worker
    ever touched in its resident memory, which Dask's nanny counts against ``memory_limit``.)"""

    def __init__(self, path: str, offset: int, shape, dtype):
        self.path, self.offset, self.shape, self.dtype = path, offset, tuple(shape), np.dtype(dtype)

    def __getitem__(self, index):
        mapped = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)
        try:
            return np.array(mapped[index])
        finally:
            mapped._mmap.close()  # unmapped now, not whenever the garbage collector gets to it


class _Squeezed:
    """A read-only view of an array-like with length-1 axes dropped (e.g. a TIFF series [1, H, W])."""

    def __init__(self, array, shape):
        self.array, self.shape = array, shape
        self.keep = [i for i, n in enumerate(array.shape) if n != 1]

    def __getitem__(self, index):
        full = [0] * self.array.ndim
        for axis, part in zip(self.keep, index):
            full[axis] = part
        return np.asarray(self.array[tuple(full)])


def _open_zarr(path: str):
    import zarr

    try:
        array = zarr.open_array(path, mode="r")
    except Exception as exc:
        raise ValueError(f"{path}: cannot be opened as a zarr array ({type(exc).__name__}: {exc})") from exc
    if array.ndim != 2:
        raise ValueError(f"{path}: zarr array of shape {array.shape}: expected one 2-D image [H, W]")
    return array


def open_source(source):
    """A FileSource for a TIFF or ``.zarr`` path; a 2-D NumPy or Dask array is returned as it is.

    Raises FileNotFoundError for a missing path and ValueError for anything that is not one
    2-D single-channel image.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
        suffix = path.suffix.lower()
        if suffix in TIFF_SUFFIXES and path.is_file():
            kind, array = "tiff", _open_tiff(str(path))
        elif suffix == ".zarr" or (path / "zarr.json").exists() or (path / ".zarray").exists():
            kind, array = "zarr", _open_zarr(str(path))
        else:
            raise ValueError(f"input {path}: expected a TIFF file (.tif, .tiff) or a zarr array (.zarr)")
        dtype = np.dtype(array.dtype)
        _check_dtype(dtype, str(path))
        return FileSource(kind, str(path.resolve()), tuple(int(n) for n in array.shape), dtype.str,
                          os.stat(path).st_mtime_ns)
    import dask.array as da

    if not isinstance(source, (np.ndarray, da.Array)):
        raise ValueError("source must be a TIFF or zarr path, or a 2-D NumPy or Dask array; "
                         f"got {type(source).__name__}")
    if source.ndim != 2:
        raise ValueError(f"source array of shape {source.shape}: expected one 2-D image [H, W]")
    _check_dtype(np.dtype(source.dtype), "source array")
    return source


def _check_dtype(dtype: np.dtype, source: str) -> None:
    """Refuse, before any work, a dtype ``image_to_float`` would refuse in every task."""
    if not (dtype == bool or np.issubdtype(dtype, np.unsignedinteger) or np.issubdtype(dtype, np.floating)):
        raise ValueError(f"{source}: image dtype {dtype} has no known intensity range; "
                         "expected unsigned integers (uint8, uint16), bool, or floats in [0, 1]")


# --------------------------------------------------------------------------- the worker side


@dataclass(frozen=True)
class ChunkJob:
    """What one task needs besides its block: small, so it travels cheaply to a worker."""

    checkpoint: str
    checkpoint_mtime_ns: int
    device: tuple[str, str, str | None]  # (name, kernels, math)
    geometry: ChunkGeometry
    index: tuple[int, int]
    window: tuple[tuple[int, int], tuple[int, int]]
    output: str
    source_name: str


# One model per worker process: loading a checkpoint and warming the device costs far more
# than a chunk's bookkeeping, and a worker runs many chunks. Keyed by the checkpoint's path
# *and* modification time, so a checkpoint rewritten under the same name is loaded again.
_MODELS: dict = {}
_MODELS_LOCK = threading.Lock()


def worker_model(checkpoint: str, mtime_ns: int, device: tuple[str, str, str | None], tile: int):
    """The model for a checkpoint in this process, loaded once (module-level cache)."""
    key = (checkpoint, mtime_ns, device, tile)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from cunet.device import get_device
            from cunet.predict import model_from_checkpoint

            if os.stat(checkpoint).st_mtime_ns != mtime_ns:
                raise ValueError(f"checkpoint {checkpoint} changed while predicting (modified after the run started)")
            if not _MODELS:
                _keep_freed_memory_for_the_next_tile()
            name, kernels, math_mode = device
            model, _ = model_from_checkpoint(checkpoint, get_device(name, kernels=kernels, math=math_mode))
            model.output_size(tile)
            _MODELS[key] = model
        return _MODELS[key]


def _keep_freed_memory_for_the_next_tile() -> None:
    """Let glibc's malloc reuse freed memory in this worker instead of handing it back at once.

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, so that freed memory
    returns to the OS promptly (its memory monitor reads the resident set). Setting any
    malloc variable also switches off glibc's dynamic mmap threshold, and then every
    allocation over 128 KiB (each layer's activations, for every tile) is a fresh mmap
    whose pages the kernel zero-fills on first touch: a 2048 x 2048 image through the
    base-16 / depth-4 net took 8.1 s instead of 5.7 s on one core (measured in process
    with and without the variable). With mmap for blocks over 32 MiB only and trimming
    above 64 MiB of free heap, the next tile reuses the last one's memory; a worker keeps
    at most 64 MiB free between tasks, and its peak (live arrays) is unchanged.
    """
    from cunet.cpu import keep_freed_memory

    keep_freed_memory(MALLOC_MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD)


def _one_thread_per_task() -> None:
    """Numba's loops and the C++ kernels on one thread: Dask runs one task per worker thread (its
    nanny sets the BLAS pools to one thread likewise), so intra-op threads would only
    oversubscribe the cores. The kernels split work over outputs, never over sums, so this
    changes no bits. (Both settings are the calling thread's own: OpenMP's and Numba's.)"""
    try:
        import numba

        numba.set_num_threads(1)
    except (ImportError, ValueError):
        pass
    from cunet.cpu.conv2d import _host
    if _host is not None:
        _host.set_num_threads(1)


def predict_chunk(job: ChunkJob, source, block: np.ndarray | None = None) -> dict:
    """Predict chunk ``job.index`` and write it into the zarr array ``job.output``; returns a summary.

    ``block`` is the image's ``job.window`` (from a Dask array), or None to read it from
    ``source`` (a FileSource) here. Runs in a worker; pure: running it twice writes the
    same bytes.
    """
    import resource

    import zarr

    from cunet.predict import predict_plan

    _one_thread_per_task()
    g = job.geometry
    model = worker_model(job.checkpoint, job.checkpoint_mtime_ns, job.device, g.tile)
    (lo, hi), (clo, chi) = job.window
    if block is None:
        block = source.read((lo, hi), (clo, chi))
    if block.shape != (hi - lo, chi - clo):
        raise ValueError(f"chunk {job.index}: block of shape {block.shape}, expected {(hi - lo, chi - clo)}")
    # Element-wise, so converting the block equals converting the whole image (the float range
    # check of a float image runs per block and names the block). A registered model's blocks
    # carry SPLINE_HALO pixels more, so that registering the block equals registering the
    # whole image to ~1e-9 (see the module's docstring).
    block = model.prepare(image_to_float(block, f"{job.source_name}[{lo}:{hi}, {clo}:{chi}]"))
    (h, w) = g.shape

    def read_window(t: Tile) -> np.ndarray:
        # Mirrored in global coordinates, exactly as extract_tile mirrors the whole image, then
        # shifted into the block.
        rows = mirror_index(np.arange(*t.input[0]), h) - lo
        cols = mirror_index(np.arange(*t.input[1]), w) - clo
        if rows.min() < 0 or rows.max() >= block.shape[0] or cols.min() < 0 or cols.max() >= block.shape[1]:
            # Cannot happen (chunk_window is the span of these very indices); never let a
            # negative index wrap around silently.
            raise AssertionError(f"chunk {job.index}: tile {t.input} reads outside its block {job.window}")
        return block[rows][:, cols]

    (r0, r1), (c0, c1) = g.chunk_bounds(*job.index)
    tiles = chunk_tiles(g, *job.index)
    result = np.empty((model.config["n_classes"], r1 - r0, c1 - c0), np.float32)
    predict_plan(model, read_window, tiles, result, origin=(r0, c0), batch=1)
    del block
    zarr.open_array(job.output, mode="r+")[:, r0:r1, c0:c1] = result
    return dict(chunk=job.index, tiles=len(tiles), pid=os.getpid(),
                max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def warm_up(client, checkpoint, *, device: str = "cpu", kernels: str = "cuda", math: str | None = None,
            tile: int | None = None) -> dict:
    """Load the model on every worker and run one tile there (compiles or loads the kernels).

    For benchmarks and tests that want to time or measure the prediction alone; returns each
    worker's resident memory in bytes afterwards, by address.
    """
    checkpoint = str(Path(checkpoint).resolve())
    mtime = os.stat(checkpoint).st_mtime_ns
    if tile is None:
        from cunet.checkpoint import load_checkpoint

        tile = load_checkpoint(checkpoint).config["tile"]

    def warm():
        import psutil

        from cunet.autograd import Tensor, no_grad

        _one_thread_per_task()
        model = worker_model(checkpoint, mtime, (device, kernels, math), tile)
        with no_grad():
            model(Tensor(model.device.to_device(np.zeros((1, 1, tile, tile), np.float32))))
        return psutil.Process().memory_info().rss

    return client.run(warm)


# --------------------------------------------------------------------------- the client side


class WorkerLostError(RuntimeError):
    """The scheduler gave up on a chunk: the workers running it died again and again."""


class OutputAppearedError(ValueError):
    """Something took the output's name while predicting: the finished result keeps its partial name."""


def _rename_no_replace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, failing (ValueError) rather than replacing anything at ``dst``.

    Linux's renameat2(RENAME_NOREPLACE) makes the check and the rename one step; elsewhere
    a check just before os.rename (which never replaces a non-empty folder anyway).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, rename_noreplace = -100, 1
        if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise OutputAppearedError(f"{dst} appeared while predicting: not replaced; the result is left at {src}")
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        raise OutputAppearedError(f"{dst} appeared while predicting: not replaced; the result is left at {src}")
    os.rename(src, dst)


def check_output(output) -> Path:
    """``output`` as a Path, refused (ValueError) if anything exists there: results are never overwritten."""
    output = Path(output)
    if os.path.lexists(output):
        raise ValueError(f"--output {output} already exists: predict never overwrites; choose a new name "
                         "or move the old result away")
    parent = next((p for p in output.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise ValueError(f"--output {output}: {parent} is a file, so nothing can be made under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--output {output}: {parent} is not writable")
    return output


@contextlib.contextmanager
def _client(scheduler, workers: int, threads_per_worker: int, memory_limit):
    """A dask.distributed Client: on ``scheduler`` (an address or a Client), else on a new LocalCluster."""
    from distributed import Client, LocalCluster

    if scheduler is not None and not isinstance(scheduler, str):
        yield scheduler  # a Client the caller owns
        return
    if scheduler is not None:
        try:
            client = Client(scheduler)
        except (OSError, TimeoutError) as exc:
            raise ValueError(f"--scheduler {scheduler}: cannot connect ({type(exc).__name__}: {exc})") from None
        with client:
            yield client
        return
    import logging

    with LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                      memory_limit=memory_limit, dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        yield client


def predict_large(checkpoint, source, output, *, chunk: int | None = None, scheduler=None, workers: int = 2,
                  threads_per_worker: int = 1, memory_limit="2GiB", device: str = "cpu", kernels: str = "cuda",
                  math: str | None = None, tile: int | None = None, progress=True) -> Path:
    """Class probabilities of one 2-D image of any size, computed chunk by chunk on a Dask cluster.

    ``checkpoint``: a checkpoint written by ``python -m cunet.train``. ``source``: a TIFF
    file or ``.zarr`` array path (read lazily, only the parts each chunk needs), or a 2-D
    NumPy or Dask array. Pixels are scaled as ``cunet.data.loaders.image_to_float`` scales
    them (by the dtype's range; floats must lie in [0, 1]). ``output``: the zarr array to
    create, [n_classes, H, W] float32 chunked (n_classes, chunk, chunk); it must not
    exist (never overwritten). It is written whole: into ``<output>.partial-<pid>``, renamed
    to ``output`` only when every chunk is in (removed on failure).

    ``chunk``: the chunk side in pixels, a multiple of the tile step (default: the multiple
    nearest 2048); ``tile``: the network's input size (default: the checkpoint's training
    tile). The result equals ``cunet.predict.predict_probabilities(model, image, tile)`` bit
    for bit (the module's docstring says why).

    ``scheduler``: a scheduler address (``tcp://host:port``) or a ``distributed.Client``;
    None starts a ``LocalCluster`` of ``workers`` processes with ``threads_per_worker``
    threads and ``memory_limit`` each. Each worker loads the model once and holds, per
    task in flight, only that task's block, output chunk and one tile's activations
    (``worker_memory_bound``), whatever the image size. ``device``/``kernels``/``math``:
    as ``cunet.device.get_device`` takes them, on the workers.

    ``progress``: True draws a bar of finished chunks on stderr; a callable is instead
    called with each finished chunk's summary (chunk index, tiles, worker pid, worker's
    peak RSS); False is silent. Returns the output path.
    """
    from distributed import as_completed

    from cunet.checkpoint import load_checkpoint
    from cunet.unet import output_size

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    checkpoint = checkpoint.resolve()
    output = check_output(output)
    config = load_checkpoint(checkpoint).config
    halo = SPLINE_HALO if any(config.get("input_shift", (0.0, 0.0))) else 0  # a registered model's blocks
    n_classes = 2  # model_from_checkpoint builds UNet(1, 2, ...)
    tile = int(tile or config["tile"])
    out = output_size(tile, config["depth"])  # a clear error naming valid sizes, before any work
    src = open_source(source)
    g = chunk_geometry(src.shape, tile, out, config["depth"], chunk, halo)
    name = str(source) if isinstance(source, (str, os.PathLike)) else "source array"
    partial = output.with_name(f"{output.name}.partial-{os.getpid()}")
    if os.path.lexists(partial):
        raise ValueError(f"{partial} exists (left by an earlier run?): remove it first")
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        attrs = dict(checkpoint=str(checkpoint), tile=tile, output_size=out, step=g.step, chunk=g.chunk,
                     depth_px=g.depth_px, source=name, classes=["membrane", "cell"], layout="[class, row, column]")
        create_output(partial, g, n_classes, attrs)
        jobs = chunk_jobs(checkpoint, g, partial, (device, kernels, math), name)
        with _client(scheduler, workers, threads_per_worker, memory_limit) as client:
            run = f"cunet-chunk-{uuid.uuid4().hex[:8]}"
            futures = _submit(client, jobs, src, run)
            done = 0
            bar = _progress_bar(len(jobs), progress)
            try:
                # Each result is taken and its future dropped as soon as it is in: a finished
                # chunk is on disk, so a worker lost later does not make the scheduler redo it.
                for future, summary in as_completed(futures, with_results=True):
                    done += 1
                    future.release()
                    if callable(progress):
                        progress(summary)
                    elif bar is not None:
                        bar.update()
            except BaseException as exc:
                client.cancel(futures)  # an external cluster would otherwise go on with the rest
                _wait_until_stopped(client, run)  # a running task would write into the folder removed below
                if type(exc).__name__ == "KilledWorker":
                    raise WorkerLostError(
                        f"{exc}: a worker died each time it ran this chunk (out of memory? see worker_memory_bound): "
                        "lower --chunk or raise --memory-limit") from exc
                raise
            finally:
                if bar is not None:
                    bar.close()
                del futures
        if done != len(jobs):
            raise RuntimeError(f"{done} of {len(jobs)} chunks finished")
        _rename_no_replace(partial, output)
    except OutputAppearedError:
        raise  # the result is complete: kept under its partial name, which the message gives
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return output


def chunk_jobs(checkpoint, g: ChunkGeometry, output, device=("cpu", "cuda", None),
               source_name: str = "image") -> list[ChunkJob]:
    """One ChunkJob per chunk of ``g``, row-major: what ``predict_chunk`` runs (also without Dask, in tests)."""
    checkpoint = str(Path(checkpoint).resolve())
    mtime = os.stat(checkpoint).st_mtime_ns
    return [ChunkJob(checkpoint, mtime, tuple(device), g, (i, j), chunk_window(g, i, j), str(output), source_name)
            for i in range(g.grid[0]) for j in range(g.grid[1])]


def create_output(path, g: ChunkGeometry, n_classes: int, attrs: dict | None = None):
    """The zarr array [n_classes, H, W] float32 chunked (n_classes, chunk, chunk), NaN until written."""
    import zarr

    array = zarr.open_array(str(path), mode="w-", shape=(n_classes, *g.shape), chunks=(n_classes, g.chunk, g.chunk),
                            dtype="float32", fill_value=float("nan"))
    if attrs:
        array.attrs["cunet"] = attrs
    return array


def _submit(client, jobs: list[ChunkJob], src, run: str) -> list:
    """One future per chunk, keyed ``<run>-<i>-<j>``. A file source is read inside the task (no
    input data crosses the cluster); a NumPy array's block travels with its task; a Dask array's
    block is the slice of the chunk's window, whose pieces reach the task through the scheduler."""
    keys = [f"{run}-{j.index[0]}-{j.index[1]}" for j in jobs]
    if isinstance(src, FileSource):
        return [client.submit(predict_chunk, job, src, key=key, pure=False) for job, key in zip(jobs, keys)]
    if isinstance(src, np.ndarray):
        def block(job):
            (lo, hi), (clo, chi) = job.window
            return np.ascontiguousarray(src[lo:hi, clo:chi])

        return [client.submit(predict_chunk, job, None, block(job), key=key, pure=False)
                for job, key in zip(jobs, keys)]
    import dask

    tasks = [dask.delayed(predict_chunk, pure=True)(job, None, src[slice(*job.window[0]), slice(*job.window[1])],
                                                    dask_key_name=key)
             for job, key in zip(jobs, keys)]
    return client.compute(tasks)


def _running_keys(dask_worker, prefix: str) -> list[str]:
    # A cancelled task that had started stays in the worker's running set until it returns:
    # Dask cannot stop a Python function midway.
    return [ts.key for ts in dask_worker.state.all_running_tasks if str(ts.key).startswith(prefix)]


def _wait_until_stopped(client, run: str, timeout: float = 120.0) -> None:
    """Block until no worker still runs a task of ``run`` (after ``client.cancel``), or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # A worker that cannot answer (it died) runs nothing: its answer is the exception.
        running = client.run(_running_keys, prefix=run, on_error="return")
        if not any(isinstance(keys, list) and keys for keys in running.values()):
            return
        time.sleep(0.05)


def _progress_bar(total: int, progress):
    if progress is not True:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="chunk", desc="predict", file=sys.stderr)


def write_small_outputs(zarr_path, folder, name: str) -> None:
    """Also write the in-process outputs (``NAME.prob.tif``, ``NAME.mask.png``) for a result of at
    most ``SMALL_IMAGE_PIXELS`` pixels, with ``cunet.predict``'s writers (never overwriting)."""
    import zarr

    from cunet.predict import check_no_overwrite, write_outputs

    array = zarr.open_array(str(zarr_path), mode="r")
    if array.shape[1] * array.shape[2] > SMALL_IMAGE_PIXELS:
        raise ValueError(f"{zarr_path}: {array.shape[1]} x {array.shape[2]} pixels is too large for one TIFF here "
                         f"(at most {SMALL_IMAGE_PIXELS} pixels)")
    folder = Path(folder)
    check_no_overwrite(folder, [name], overlay=False)
    probs = np.asarray(array[...])
    write_outputs(folder, name, np.zeros(probs.shape[1:], np.float32), probs, overlay=False)
