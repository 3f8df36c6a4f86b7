"""``python -m cunet.trace``: every kernel launch of one training step, in order, with its cost.

    python -m cunet.trace                              # the paper's step: 572 tile, base 64, depth 5
    python -m cunet.trace --tile 188 --base 8 --gpu H200 --math fp32
    python -m cunet.trace --compile                    # + registers and occupancy (NVRTC, no GPU needed)

cunet's op code computes every launch (kernel, grid, block, arguments) itself and hands it
to a runtime. Here the runtime is a recorder (:class:`RecordingRuntime`): its "device arrays"
(:class:`MetaArray`) carry a shape and a dtype and no data, and its launch() writes the launch
down instead of running it. One train step of the real model, through the real op code, on
that runtime gives the exact list of launches a GPU would run, in order; :func:`cost` gives
each one's FLOPs (a multiply-add is 2) and minimum DRAM bytes (every array read or written
once, only the part a kernel touches), and the table a MODELLED roofline time on a GPU of
the datasheets (``GPU_SPECS``): max(FLOPs / peak, bytes / bandwidth), the TF32 tensor-core
peak for a TF32 GEMM module. benchmarks/gpu_model.py builds its step model on the same
recorder.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field

import numpy as np

# tf32_gflops: the dense TF32 tensor-core peak (the datasheets' figures "with sparsity" are twice these).
GPU_SPECS = {
    "A100 40GB": dict(gflops=19_500, tf32_gflops=156_000, gbps=1_555, sms=108,
                      source="NVIDIA A100 datasheet: FP32 19.5 TFLOP/s, TF32 156 TFLOP/s dense, HBM2e 1,555 GB/s"),
    "A100 80GB": dict(gflops=19_500, tf32_gflops=156_000, gbps=2_039, sms=108,
                      source="NVIDIA A100 datasheet: FP32 19.5 TFLOP/s, TF32 156 TFLOP/s dense, HBM2e 2,039 GB/s (SXM)"),
    "H100 SXM": dict(gflops=67_000, tf32_gflops=494_700, gbps=3_350, sms=132,
                     source="NVIDIA H100 datasheet: SXM FP32 67 TFLOP/s, TF32 495 TFLOP/s dense, HBM3 3.35 TB/s"),
    "H100 PCIe": dict(gflops=51_000, tf32_gflops=378_000, gbps=2_000, sms=114,
                      source="NVIDIA H100 datasheet: PCIe FP32 51 TFLOP/s, TF32 378 TFLOP/s dense, HBM2e 2.0 TB/s"),
    "H200": dict(gflops=67_000, tf32_gflops=494_700, gbps=4_800, sms=132,
                 source="NVIDIA H200 datasheet: FP32 67 TFLOP/s, TF32 495 TFLOP/s dense, HBM3e 4.8 TB/s"),
}


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
    if k == "weight_average_update":
        a, p = arrays
        return 3 * a.size, touched + a.nbytes  # a read and written, p read
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
    raise KeyError(f"cunet.trace: no cost formula for kernel {k!r}; add one to cunet/trace.py:cost")


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


# --- the command line ---------------------------------------------------------------------------------------
GPU_NAMES = {"A100": ("A100 40GB", "sm_80"), "H100": ("H100 SXM", "sm_90"), "H200": ("H200", "sm_90")}


def main(argv=None) -> int:
    """Entry point; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m cunet.trace", description=__doc__.split("\n\n")[0])
    p.add_argument("--tile", type=int, default=572)
    p.add_argument("--base", type=int, default=64)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--gpu", choices=sorted(GPU_NAMES), default="A100", help="whose datasheet peaks model the times")
    p.add_argument("--math", choices=("tf32", "fp32"), default="tf32", help="the GEMM kernels' math (default tf32)")
    p.add_argument("--compile", action="store_true", help="add registers and occupancy from the NVRTC compile check")
    args = p.parse_args(argv)
    from cunet.unet import InvalidSizeError

    if min(args.base, args.batch) < 1:
        print(f"error: --base and --batch must be at least 1, got {args.base} and {args.batch}", file=sys.stderr)
        return 2
    try:
        launches = record_train_step(args.tile, args.base, args.depth, args.batch, args.math)
    except (InvalidSizeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    spec_name, arch = GPU_NAMES[args.gpu]
    spec = GPU_SPECS[spec_name]
    if args.compile:
        attach_resources(launches, [arch])
    print(f"# one train step of U-Net {args.tile} / base {args.base} / depth {args.depth}, batch {args.batch}, "
          f"--math {args.math}: {len(launches)} launches; times MODELLED on {spec_name} ({spec['source']})")
    header = f"{'#':>4} {'kernel':<28} {'grid':>16} {'block':>6} {'GFLOP':>9} {'MB':>9} {'modelled':>10}"
    print(header + ("  regs  occ" if args.compile else ""))
    total = 0.0
    for i, launch in enumerate(launches):
        seconds = roofline_seconds(launch.flops, launch.bytes, compute_peak(launch, spec), spec["gbps"])
        total += seconds
        line = (f"{i:>4} {launch.kernel:<28} {'x'.join(map(str, launch.grid)):>16} {launch.threads:>6} "
                f"{launch.flops / 1e9:>9.3f} {launch.bytes / 1e6:>9.2f} {seconds * 1e6:>8.1f}us")
        if args.compile:
            r = launch.resources[arch]
            line += f"  {r.registers:>4} {r.occupancy:>4.0%}"
        print(line)
    print(f"# total: {sum(x.flops for x in launches) / 1e12:.3f} TFLOP, {sum(x.bytes for x in launches) / 1e9:.2f} GB, "
          f"MODELLED {total * 1e3:.2f} ms on {spec_name} (a floor, not a forecast)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
