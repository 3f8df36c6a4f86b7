"""A cost model of one GPU train step, built without a GPU. Everything it prints is MODELLED.

    python -m benchmarks.gpu_model                 # the paper's network: 572 tile, base 64, depth 5
    python -m benchmarks.gpu_model --by-kernel     # one line per kernel name instead of per launch
    python -m benchmarks.gpu_model --json

How. The launches of one train step come from cunet.trace (``python -m cunet.trace`` lists
them): the real model and op code run on a recording runtime that writes each launch down
instead of running it, so the list is exactly what a GPU would run, in order. For each launch:

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

GPUs (cunet/trace.py GPU_SPECS, from NVIDIA's datasheets): A100 40GB SXM: FP32 19.5
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
import sys

from cunet.trace import (Launch, MetaArray, RecordingRuntime, attach_resources, compute_peak, conv_flops,  # noqa: F401
                         cost, record_train_step, roofline_seconds, waves)

from . import harness

MODEL_GPUS = (("A100", "A100 40GB", "sm_80"), ("H100", "H100 SXM", "sm_90"), ("H200", "H200", "sm_90"))
LAUNCH_OVERHEAD_S = 4e-6  # a typical kernel launch latency, for the note under the table (not in the roofline)
# NVIDIA DeepLearningExamples, TensorFlow2/Segmentation/UNet_Medical, README "Training performance
# results": A100 80GB, TF32, batch 1 at 572x572 -> 46.9 images/s (also in the project's architecture notes).
PUBLISHED_A100_TF32_IMAGES_PER_S = 46.9
A100_TF32_TENSOR_TFLOPS = 156.0  # dense TF32 tensor-core peak, A100 datasheet


# --- the command line ------------------------------------------------------------------------------------


def _shape_text(launch: Launch) -> str:
    arrays = [a for a in launch.args if isinstance(a, MetaArray)]
    return " ".join("x".join(map(str, a.shape)) for a in arrays[:2])


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
