"""A cost model of one GPU train step, built without a GPU. Everything it prints is MODELLED.

    python -m benchmarks.gpu_model                 # the paper's network: 572 tile, base 64, depth 5
    python -m benchmarks.gpu_model --by-kernel     # one line per kernel name instead of per launch
    python -m benchmarks.gpu_model --json

How. cunet's op code computes every launch (kernel, grid, block, arguments) itself and
hands it to a runtime. Here the runtime is a recorder: its "device arrays" carry a shape
and a dtype and no data, and its launch() writes the launch down instead of running it.
One train step of the real model, through the real op code, on that runtime gives the
exact list of launches a GPU would run, in order. For each launch:

- FLOPs: the arithmetic of the kernel's loops (a multiply-add is 2 FLOPs);
- bytes: the minimum DRAM traffic, every array argument read or written once (read and
  written for in-place updates; only the part a kernel touches, e.g. the crop window);
- arithmetic intensity = FLOPs / bytes, against the GPU's ridge point peak FLOP/s / peak B/s;
- roofline time = max(FLOPs / peak FLOP/s, bytes / peak B/s): the least time the launch
  can take on that GPU. Real kernels take longer; the model says where the floor is;
- registers, shared memory and theoretical occupancy of the kernel from the NVRTC compile
  check (cunet.kernels.check.check_module) for sm_80 (A100) and sm_90 (H100), and the
  launch's waves = blocks / (SMs x blocks resident per SM): a launch under one wave
  leaves SMs idle, which the roofline does not see.

GPUs (benchmarks/harness.py GPU_SPECS, from NVIDIA's datasheets): A100 40GB SXM: FP32 19.5
TFLOP/s, TF32 tensor cores 156 TFLOP/s dense, 1,555 GB/s HBM2e, 108 SMs; H100 SXM: 67 and
495 TFLOP/s, 3.35 TB/s HBM3, 132 SMs; H200: as the H100 SXM with 4.8 TB/s HBM3e.

Math (``--math``, default tf32 as on a real sm_80+ GPU): a launch of a TF32 kernel module
(the GEMM ops' tensor-core main loop, MATH_TF32=1) is modelled at the TF32 tensor-core peak,
every other launch at the FP32 peak. The report also gives the same launches all at the FP32
peak, i.e. the step with ``--math fp32``, and the ratio of the two. Assumed: the tensor-core
kernels reach their peak as the FP32 ones reach theirs in the model (a roofline is a floor,
not a forecast); TF32 changes no byte counts.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field

import numpy as np

from . import harness

MODEL_GPUS = (("A100", "A100 40GB", "sm_80"), ("H100", "H100 SXM", "sm_90"), ("H200", "H200", "sm_90"))
LAUNCH_OVERHEAD_S = 4e-6  # a typical kernel launch latency, for the note under the table (not in the roofline)
# NVIDIA DeepLearningExamples, TensorFlow2/Segmentation/UNet_Medical, README "Training performance
# results": A100 80GB, TF32, batch 1 at 572x572 -> 46.9 images/s (also in the project's architecture notes).
PUBLISHED_A100_TF32_IMAGES_PER_S = 46.9
A100_TF32_TENSOR_TFLOPS = 156.0  # dense TF32 tensor-core peak, A100 datasheet


# --- the recording runtime ------------------------------------------------------------------------------


class _Flags:
    c_contiguous = True


class MetaArray:
    """A device array with a shape and a dtype and no data: all the op code looks at."""

    flags = _Flags()

    def __init__(self, shape, dtype=np.float32):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            shape = tuple(self.size // known if s == -1 else s for s in shape)
        return MetaArray(shape, self.dtype)

    def __repr__(self):
        return f"MetaArray({'x'.join(map(str, self.shape))}, {self.dtype})"


@dataclass
class Launch:
    """One recorded kernel launch."""

    module: object          # the KernelModule
    kernel: str
    grid: tuple
    block: tuple
    args: tuple
    flops: int = 0
    bytes: int = 0
    resources: dict = field(default_factory=dict)  # arch -> KernelResources

    @property
    def blocks(self) -> int:
        return math.prod(self.grid)

    @property
    def threads(self) -> int:
        return math.prod(self.block)


class RecordingRuntime:
    """A cunet runtime that records launches instead of running them (see the module docstring)."""

    name = "model"
    use_numba_kernels = False

    def __init__(self, math: str = "tf32"):
        self.launches: list[Launch] = []
        self.math = math  # which GEMM kernel modules the op code picks

    def owns(self, array) -> bool:
        return isinstance(array, MetaArray)

    def empty(self, shape, dtype=np.float32):
        return MetaArray(shape, dtype)

    zeros = empty

    def to_device(self, host_array):
        return MetaArray(np.shape(host_array), np.asarray(host_array).dtype)

    def to_host(self, array):
        return np.zeros(array.shape, array.dtype)  # a finite loss, valid labels and weights: the checks pass

    def synchronize(self):
        pass

    def describe(self) -> str:
        return "model (a recording runtime: no GPU, nothing executed)"

    def launch(self, module, kernel, grid, block, args):
        from cunet.device.runtime import Runtime

        Runtime.launch(self, module, kernel, grid, block, args)  # the real runtime's argument checks

    def _launch(self, module, kernel, grid, block, args):
        self.launches.append(Launch(module, kernel, tuple(grid), tuple(block), tuple(args)))


def record_train_step(tile: int, base: int, depth: int, batch: int = 1, math: str = "tf32") -> list[Launch]:
    """The launches of one train step (forward, loss, backward, SGD) of UNet(base, depth) on tile x tile."""
    import cunet.device as cunet_device
    from cunet.autograd import Tensor
    from cunet.device import Device
    from cunet.loss import weighted_cross_entropy
    from cunet.optim import SGD
    from cunet.unet import UNet, output_size

    runtime = RecordingRuntime(math)
    cunet_device._remember(runtime)  # so runtime_of() finds the owner of a MetaArray
    device = Device("model", runtime)
    model = UNet(1, 2, base, depth, dropout=0.5).to(device)
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.99)
    runtime.launches.clear()  # only the step, not the set-up
    out = output_size(tile, depth)
    x = device.to_device(np.zeros((batch, 1, tile, tile), np.float32))
    labels = np.zeros((batch, out, out), np.int32)
    weights = device.to_device(np.ones((batch, out, out), np.float32))
    loss = weighted_cross_entropy(model(Tensor(x)), labels, weights)
    loss.item()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    for launch in runtime.launches:
        launch.flops, launch.bytes = cost(launch)
    return runtime.launches


# --- what each kernel costs ---------------------------------------------------------------------------


def _ints(args):
    return [int(a) for a in args if isinstance(a, (np.integer, np.int32, np.uint32))]


def _arrays(args):
    return [a for a in args if isinstance(a, MetaArray)]


def cost(launch: Launch) -> tuple[int, int]:
    """(FLOPs, minimum DRAM bytes) of one launch, from its kernel name and arguments."""
    k, args = launch.kernel, launch.args
    arrays = _arrays(args)
    touched = sum(a.nbytes for a in arrays)  # default: every array read or written once
    ints = _ints(args)
    if k == "conv2d_forward":
        x, w, _, y = arrays
        return conv_flops(x.shape, w.shape), touched
    if k == "conv2d_backward_input":
        dy, w, _ = arrays
        N, C, H, W, K = ints[:5]
        R = w.shape[2]
        return conv_flops((N, C, H, W), (K, C, R, R)), touched
    if k == "conv2d_backward_params":
        x, dy, _ = arrays
        N, C, H, W, K = ints[:5]
        R = H - dy.shape[2] + 1
        # the GEMM includes the bias row: (C*R*R + 1) x K outputs, each a sum over N*OH*OW pixels
        return 2 * N * dy.shape[2] * dy.shape[3] * K * (C * R * R + 1), touched
    if k == "conv2d_sum_partials":
        partial = arrays[0]
        return partial.size, touched
    if k in ("upconv2x2_forward", "upconv2x2_backward_input", "upconv2x2_backward_params"):
        N, C, H, W, K = ints[:5]
        return 2 * N * C * H * W * 4 * K, touched
    if k == "upconv2x2_sum_splits":
        return arrays[0].size, touched
    if k == "upconv2x2_bias_grad":
        return arrays[0].size, touched
    if k == "relu_forward":
        return arrays[0].size, touched
    if k == "relu_backward":
        return arrays[0].size, touched
    if k == "add_inplace":
        y, x = arrays
        return y.size, touched + y.nbytes  # y is read and written
    if k == "sgd_momentum_update":
        p, v, g = arrays
        return 5 * p.size, touched + p.nbytes + v.nbytes  # p and v read and written, g read
    if k == "maxpool2x2_forward":
        return 3 * arrays[1].size, touched  # three comparisons per window
    if k == "maxpool2x2_backward":
        return 0, touched
    if k == "crop_concat_forward":
        skip, up, y = arrays
        return 0, 2 * y.nbytes  # reads the crop window of skip and all of up, writes y
    if k == "crop_concat_backward_skip":
        dy, dskip = arrays
        N, Cs = dskip.shape[:2]
        return 0, N * Cs * dy.shape[2] * dy.shape[3] * 4 + dskip.nbytes  # reads dy's skip channels
    if k == "crop_concat_backward_up":
        dy, dup = arrays
        return 0, 2 * dup.nbytes
    if k in ("dropout_apply", "dropout_mask"):
        return 0, touched  # Philox is integer work: ~10 rounds per 4 elements, no FLOPs counted
    if k == "softmax_ce_forward":
        pixels, classes = ints[0], ints[1]
        return pixels * (5 * classes + 4), touched  # max, exp, sum, divide per class; log per pixel
    if k == "softmax_ce_sum":
        return arrays[0].size, touched
    if k == "softmax_ce_backward":
        pixels, classes = ints[0], ints[1]
        return pixels * 2 * classes, touched
    raise KeyError(f"gpu_model: no cost formula for kernel {k!r}; add one to benchmarks/gpu_model.py:cost")


def conv_flops(x_shape, w_shape) -> int:
    """2 * N * K * OH * OW * C * R * R: one multiply-add per filter tap per output (valid convolution)."""
    N, C, H, W = x_shape
    K, _, R, S = w_shape
    return 2 * N * K * (H - R + 1) * (W - S + 1) * C * R * S


def compute_peak(launch: Launch, spec: dict) -> float:
    """GFLOP/s the launch can reach: the TF32 tensor-core peak for a TF32 GEMM module, else FP32."""
    return spec["tf32_gflops"] if dict(launch.module.defines).get("MATH_TF32") else spec["gflops"]


def roofline_seconds(flops: int, nbytes: int, gflops: float, gbps: float) -> float:
    """The least time on a GPU with these peaks: limited by arithmetic or by DRAM, whichever is slower."""
    return max(flops / (gflops * 1e9), nbytes / (gbps * 1e9))


def attach_resources(launches: list[Launch], archs) -> dict:
    """Compile each module used once per arch (NVRTC, no GPU) and attach its kernels' resources."""
    from cunet.kernels.check import check_module

    table = {}
    for module in dict.fromkeys(launch.module for launch in launches):
        for arch in archs:
            for row in check_module(module, arch):
                table[(module, row.kernel, arch)] = row
    for launch in launches:
        launch.resources = {arch: table[(launch.module, launch.kernel, arch)] for arch in archs}
    return table


def waves(launch: Launch, arch: str, sms: int) -> float | None:
    """Blocks / (SMs x blocks that fit on one SM at the kernel's occupancy)."""
    from cunet.kernels.check import SM_LIMITS

    r = launch.resources.get(arch)
    if r is None:
        return None
    warps_per_block = -(-launch.threads // 32)
    resident = max(1, round(r.occupancy * SM_LIMITS[arch].max_threads / 32 / warps_per_block))
    return launch.blocks / (sms * resident)


# --- the command line ------------------------------------------------------------------------------------


def _shape_text(launch: Launch) -> str:
    return " ".join("x".join(map(str, a.shape)) for a in _arrays(launch.args)[:2])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--tile", type=int, default=572)
    p.add_argument("--base", type=int, default=64)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--math", choices=("tf32", "fp32"), default="tf32",
                   help="the GEMM kernels' math (default tf32: what cunet runs on sm_80 and newer)")
    p.add_argument("--quick", action="store_true", help="tile 44, base 2, depth 3 and only sm_80: seconds, for the tests")
    p.add_argument("--no-compile", action="store_true", help="skip the NVRTC register/occupancy columns")
    p.add_argument("--by-kernel", action="store_true", help="one line per kernel name, not per launch")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.tile, args.base, args.depth = 44, 2, 3
    gpus = [(label, harness.GPU_SPECS[key], arch) for label, key, arch in MODEL_GPUS]
    if args.quick:
        gpus = gpus[:1]
    from cunet.unet import InvalidSizeError

    try:
        launches = record_train_step(args.tile, args.base, args.depth, args.batch, args.math)
    except InvalidSizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    compiled = False
    if not args.no_compile:
        try:
            attach_resources(launches, [arch for _, _, arch in gpus])
            compiled = True
        except ImportError as exc:  # cuda-bindings / NVRTC wheel missing
            print(f"note: no NVRTC here ({exc}); registers and occupancy left out", file=sys.stderr)
    rows = []
    for i, launch in enumerate(launches):
        row = dict(index=i, kernel=launch.kernel, module=launch.module.label(), grid=launch.grid, block=launch.block,
                   shapes=_shape_text(launch), flops=launch.flops, bytes=launch.bytes,
                   intensity=launch.flops / launch.bytes if launch.bytes else None)
        for label, spec, arch in gpus:
            peak = compute_peak(launch, spec)
            row[f"{label}_roofline_s"] = roofline_seconds(launch.flops, launch.bytes, peak, spec["gbps"])
            row[f"{label}_fp32_roofline_s"] = roofline_seconds(launch.flops, launch.bytes, spec["gflops"], spec["gbps"])
            row[f"{label}_bound"] = "compute" if launch.flops / peak > launch.bytes / spec["gbps"] else "memory"
            r = launch.resources.get(arch)
            if r is not None:
                row[f"{arch}_registers"] = r.registers
                row[f"{arch}_shared_bytes"] = r.shared_bytes
                row[f"{arch}_occupancy"] = r.occupancy
                row[f"{arch}_waves"] = waves(launch, arch, spec["sms"])
        rows.append(row)
    totals = {}
    for label, spec, arch in gpus:
        t = sum(r[f"{label}_roofline_s"] for r in rows)
        under = sum(r[f"{label}_roofline_s"] for r in rows if (r.get(f"{arch}_waves") or 1) < 1)
        fp32 = sum(r[f"{label}_fp32_roofline_s"] for r in rows)
        totals[label] = dict(gpu=spec["source"], peak_gflops=spec["gflops"], peak_tf32_gflops=spec["tf32_gflops"],
                             peak_gbps=spec["gbps"], step_roofline_s=t, images_per_s=args.batch / t,
                             fp32_step_roofline_s=fp32, fp32_images_per_s=args.batch / fp32, speedup_over_fp32=fp32 / t,
                             compute_bound_s=sum(r[f"{label}_roofline_s"] for r in rows if r[f"{label}_bound"] == "compute"),
                             memory_bound_s=sum(r[f"{label}_roofline_s"] for r in rows if r[f"{label}_bound"] == "memory"),
                             under_one_wave_s=under, launch_overhead_s=len(rows) * LAUNCH_OVERHEAD_S)
    report = dict(benchmark="gpu_model", kind="modelled", command=harness.command_line(),
                  config=dict(tile=args.tile, base=args.base, depth=args.depth, batch=args.batch, math=args.math),
                  launches=len(rows), flops=sum(r["flops"] for r in rows), bytes=sum(r["bytes"] for r in rows),
                  compiled=compiled, rows=rows, totals=totals,
                  published=dict(images_per_s=PUBLISHED_A100_TF32_IMAGES_PER_S, step_s=1 / PUBLISHED_A100_TF32_IMAGES_PER_S,
                                 source="NVIDIA DeepLearningExamples TensorFlow2 UNet_Medical, A100 80GB, TF32, "
                                        "batch 1, 572x572 (measured by NVIDIA, not here)"))
    print(harness.dump_json(report) if args.json else format_report(report, gpus, args.by_kernel))
    return 0


def format_report(r: dict, gpus, by_kernel: bool) -> str:
    c = r["config"]
    lines = ["# MODELLED, not measured: roofline cost of one cunet train step on GPUs (no GPU was used)",
             f"# command: {r['command']}",
             f"# U-Net {c['tile']} / base {c['base']} / depth {c['depth']}, batch {c['batch']}, --math {c['math']}: "
             f"{r['launches']} kernel launches, "
             f"{r['flops'] / 1e12:.3f} TFLOP, {r['bytes'] / 1e9:.2f} GB minimum DRAM traffic"]
    for label, spec, arch in gpus:
        lines.append(f"# {label}: {spec['source']}; ridge point {spec['gflops'] / spec['gbps']:.1f} FLOP/byte; "
                     f"registers/occupancy: NVRTC {arch}")
    rows = r["rows"]
    if by_kernel:
        groups: dict[str, dict] = {}
        for row in rows:
            g = groups.setdefault(row["kernel"], dict(kernel=row["kernel"], n=0, flops=0, bytes=0,
                                                      **{f"{lab}_s": 0.0 for lab, _, _ in gpus}))
            g["n"] += 1
            g["flops"] += row["flops"]
            g["bytes"] += row["bytes"]
            for lab, _, arch in gpus:
                g[f"{lab}_s"] += row[f"{lab}_roofline_s"]
                g.setdefault("regs", row.get(f"{arch}_registers"))
                g.setdefault("occ", row.get(f"{arch}_occupancy"))
        table = [dict(kernel=g["kernel"], n=g["n"], gflop=f"{g['flops'] / 1e9:,.1f}", gb=f"{g['bytes'] / 1e9:.3f}",
                      ai=f"{g['flops'] / g['bytes']:.1f}" if g["bytes"] else "-",
                      **{lab: harness.fmt_time(g[f"{lab}_s"]) for lab, _, _ in gpus})
                 for g in sorted(groups.values(), key=lambda g: -g[f"{gpus[0][0]}_s"])]
        cols = [("kernel", "kernel"), ("n", "launches"), ("gflop", "GFLOP"), ("gb", "GB"), ("ai", "FLOP/B")]
        cols += [(lab, f"{lab} roofline") for lab, _, _ in gpus]
    else:
        table = []
        for row in rows:
            t = dict(i=row["index"], kernel=row["kernel"], shapes=row["shapes"], grid="x".join(map(str, row["grid"])),
                     gflop=f"{row['flops'] / 1e9:.2f}", mb=f"{row['bytes'] / 1e6:.1f}",
                     ai=f"{row['intensity']:.1f}" if row["intensity"] is not None else "-")
            for lab, _, arch in gpus:
                t[lab] = harness.fmt_time(row[f"{lab}_roofline_s"]) + (" C" if row[f"{lab}_bound"] == "compute" else " M")
                if f"{arch}_registers" in row:
                    t[f"{arch}_ro"] = f"{row[f'{arch}_registers']}/{100 * row[f'{arch}_occupancy']:.0f}%"
                    t[f"{arch}_w"] = f"{row[f'{arch}_waves']:.2f}"
            table.append(t)
        cols = [("i", "#"), ("kernel", "kernel"), ("shapes", "first two arrays"), ("grid", "grid"), ("gflop", "GFLOP"),
                ("mb", "MB"), ("ai", "FLOP/B")]
        for lab, _, arch in gpus:
            cols.append((lab, f"{lab} roofline"))
            if any(f"{arch}_ro" in t for t in table):
                cols += [(f"{arch}_ro", f"{arch} regs/occ"), (f"{arch}_w", f"{arch} waves")]
    lines.append(harness.format_table(cols, table, left=3 if not by_kernel else 1))
    lines.append("")
    lines.append("C/M: compute- or memory-bound on that GPU; waves < 1: the grid cannot fill every SM once")
    pub = r["published"]
    for label, spec, arch in gpus:
        t = r["totals"][label]
        lines.append(f"MODELLED {label} step (sum of roofline times): {t['step_roofline_s'] * 1e3:.1f} ms = "
                     f"{t['images_per_s']:.1f} images/s at best ({t['compute_bound_s'] * 1e3:.1f} ms in compute-bound "
                     f"launches, {t['memory_bound_s'] * 1e3:.1f} ms memory-bound; {t['under_one_wave_s'] * 1e3:.1f} ms in "
                     f"launches under one wave; plus ~{t['launch_overhead_s'] * 1e3:.1f} ms of launch latency at "
                     f"{LAUNCH_OVERHEAD_S * 1e6:.0f} us each, not in the roofline)")
        if c["math"] == "tf32":
            lines.append(f"MODELLED {label} with --math fp32 (every launch at the FP32 peak): {t['fp32_step_roofline_s'] * 1e3:.1f} ms "
                         f"= {t['fp32_images_per_s']:.1f} images/s; TF32 / FP32 speed-up {t['speedup_over_fp32']:.2f}x")
    a100 = r["totals"].get("A100")
    paper = (c["tile"], c["base"], c["depth"], c["batch"]) == (572, 64, 5, 1)
    if a100 is not None and not paper:
        lines.append("(the published 46.9 images/s is for 572 / 64 / 5, batch 1: run without options to compare)")
    if a100 is not None and paper:
        lines.append(
            f"published (NVIDIA, measured on their A100 80GB, not here): {pub['images_per_s']} images/s = "
            f"{pub['step_s'] * 1e3:.1f} ms/step with TF32 tensor cores. The MODELLED floor of cunet's step on an A100: "
            f"{a100['images_per_s']:.1f} images/s with --math {c['math']}"
            + (f", {a100['fp32_images_per_s']:.1f} with FP32 on CUDA cores (19.5 TFLOP/s), which no FP32 kernel could "
               f"lift to the published figure" if c["math"] == "tf32" else "")
            + ". A floor is not a forecast: real kernels reach a fraction of peak (benchmarks.gpu_check measures it).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
