"""One U-Net training step, cunet against PyTorch: time and peak memory.

    python -m benchmarks.train_step --base 16            # cpu, 572 tile, depth 5 (about a minute)
    python -m benchmarks.train_step --base 64            # cpu, the paper's network (several minutes)
    python -m benchmarks.train_step --device cuda        # the paper's network on a GPU
    python -m benchmarks.train_step --quick --json       # seconds, machine-readable (the tests use it)

A step is what cunet.train.Run.train_step does: forward, weighted softmax cross-entropy,
backward, SGD with momentum 0.99, on one input tile. Both frameworks get the same network
(unpadded 3x3 convolutions with ReLU, 2x2 max-pool, drop-out p = 0.5 at the end of the
contracting path, 2x2 up-convolution, centre crop + concatenation with the skip channels
first, 1x1 head), the same initial weights (copied from the cunet model), the same input,
labels and weight map. PyTorch's side is the formulation tests/test_unet_model.py checks
cunet's loss and gradients against, plus the drop-out.

Time: both run in ONE process, alternating a cunet step and a PyTorch step, so a change
in the machine's load hits both alike; after one warm-up step each (Numba compiles,
oneDNN builds its primitives), the median of ``--steps`` steps each. Threads: both use
every core: torch.set_num_threads(cores), Numba's pool and OpenBLAS default to the core
count (the header prints all three). Malloc: on cpu the process first sets the policy
``python -m cunet.train`` sets (cunet.cpu.keep_freed_memory: a step reuses the memory the
last one freed instead of page-faulting fresh pages in), and PyTorch's step, in the same
process, gets it too: the two are compared on one allocator. ``--default-malloc`` times
both with glibc's defaults instead, where each large array is fresh pages every step
(measured 2026-12-07, 2-core AMD EPYC, base 64: cunet 3.4 s, PyTorch 3.8 s a step with
the defaults; 2.7 s and 2.4-2.6 s with the policy: PyTorch loses more to the faults).

Memory: each framework runs in a child process of its own (only its own imports; the two
children run side by side, each measuring only itself), with
glibc told to serve every allocation over 64 KiB by mmap and to give freed memory back at
once (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_), so the resident set follows the live
arrays rather than what the allocator keeps for later. After a warm-up step the child
notes its resident set (model, momentum, inputs, libraries, compiled code), resets the
kernel's high-water mark (writing 5 to /proc/self/clear_refs), runs the steps and reads
the high-water mark (VmHWM) back. "Step peak" = high-water mark minus the resident set
before the step: the activations, gradients and workspaces one step needs. A thread
sampling /proc/self/statm every millisecond cross-checks it. For cunet, tracemalloc's peak
of NumPy allocations during one step is printed too (NumPy reports its buffers to it;
PyTorch does not, which is why RSS is the common measure).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time

import numpy as np

from cunet.device import add_math_argument

from . import harness

QUICK = dict(tile=44, base=2, depth=3, steps=2)
DROPOUT = 0.5
LR, MOMENTUM = 0.01, 0.99


# --- the problem both frameworks solve --------------------------------------------------------------


def make_problem(tile: int, base: int, depth: int, batch: int, seed: int = 0):
    """(cunet UNet, x, labels, weights): random input of unit spread, random labels, a positive weight map."""
    from cunet.unet import UNet, output_size

    model = UNet(1, 2, base, depth, dropout=DROPOUT, seed=seed)
    out = output_size(tile, depth)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch, 1, tile, tile)).astype(np.float32)
    labels = rng.integers(0, 2, (batch, out, out)).astype(np.int32)
    weights = (1.0 + 9.0 * rng.random((batch, out, out)) ** 8).astype(np.float32)  # mostly ~1, a few up to 10
    return model, x, labels, weights


class CunetStep:
    """cunet's step, exactly as Run.train_step runs it (minus the data sampler)."""

    name = "cunet"

    def __init__(self, model, x, labels, weights, device):
        from cunet.optim import SGD

        self.device = device
        self.model = model.to(device)
        self.optimizer = SGD(self.model.parameters(), LR, MOMENTUM)
        self.x, self.labels, self.weights = x, labels, weights  # on the host, as the sampler hands them over

    def __call__(self) -> float:
        from cunet.autograd import Tensor
        from cunet.loss import weighted_cross_entropy

        # As in training: upload the input, pass host labels and weights (validated on the
        # host, uploaded once), and read the loss only after the update.
        logits = self.model(Tensor(self.device.to_device(self.x)))
        loss = weighted_cross_entropy(logits, self.labels, self.weights)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        value = loss.item()
        self.device.synchronize()
        return value


class TorchStep:
    """The same network and step in PyTorch (F.conv2d etc. on tensors holding cunet's initial weights)."""

    name = "torch"

    def __init__(self, torch, state: dict, depth: int, x, labels, weights, cuda: bool):
        self.torch, self.depth, self.cuda = torch, depth, cuda
        dev = "cuda" if cuda else "cpu"
        self.params = {n: torch.tensor(v, device=dev, requires_grad=True) for n, v in state.items()}
        self.optimizer = torch.optim.SGD(self.params.values(), lr=LR, momentum=MOMENTUM)
        self.x = torch.from_numpy(x).to(dev)
        self.labels = torch.from_numpy(labels).long().to(dev)
        self.weights = torch.from_numpy(weights).to(dev)

    def loss(self):
        """tests/test_unet_model.py::torch_unet_loss, with the drop-out at the end of the contracting path."""
        F, params = self.torch.nn.functional, self.params

        def conv(m, h, relu=True):
            h = F.conv2d(h, params[m + ".weight"], params[m + ".bias"])
            return F.relu(h) if relu else h

        h, skips = self.x, []
        for i in range(self.depth):
            h = conv(f"down.{i}.conv2", conv(f"down.{i}.conv1", h))
            if i < self.depth - 1:
                skips.append(h)
                h = F.max_pool2d(h, 2)
        h = F.dropout(h, DROPOUT, training=True)
        for j in range(self.depth - 1):
            h = F.conv_transpose2d(h, params[f"up.{j}.up.weight"], params[f"up.{j}.up.bias"], stride=2)
            skip = skips.pop()
            m = (skip.shape[-1] - h.shape[-1]) // 2
            h = self.torch.cat([skip[..., m:m + h.shape[-2], m:m + h.shape[-1]], h], dim=1)
            h = conv(f"up.{j}.conv2", conv(f"up.{j}.conv1", h))
        logits = conv("head", h, relu=False)
        per_pixel = F.cross_entropy(logits, self.labels, reduction="none")
        return (self.weights * per_pixel).mean()

    def __call__(self) -> float:
        loss = self.loss()
        value = loss.item()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.cuda:
            self.torch.cuda.synchronize()
        return value


def check_same_loss(cunet_step, torch_step) -> float:
    """Validate before timing: with drop-out off, the two losses on the same weights agree.

    Drop-out masks differ between the frameworks (Philox in cunet, PyTorch's own
    generator), so the check runs with p = 0 in both, before any step has changed a weight.
    Returns the relative difference; raises if it is above float32 rounding level.
    """
    from cunet.autograd import Tensor, no_grad
    from cunet.loss import weighted_cross_entropy

    torch = torch_step.torch
    model = cunet_step.model
    saved = model.dropout.p
    model.dropout.p = 0.0
    try:
        with no_grad():
            ours = weighted_cross_entropy(model(Tensor(cunet_step.device.to_device(cunet_step.x))), cunet_step.labels, cunet_step.weights).item()
    finally:
        model.dropout.p = saved
    F = torch.nn.functional
    original = F.dropout
    F.dropout = lambda h, p, training=True: h
    try:
        with torch.no_grad():
            theirs = float(torch_step.loss())
    finally:
        F.dropout = original
    rel = abs(ours - theirs) / max(abs(theirs), 1e-12)
    if rel > 1e-4:
        raise SystemExit(f"error: cunet's loss {ours:.7g} and PyTorch's {theirs:.7g} differ by {rel:.1e} on the same "
                         "weights: the two networks are not the same; not timing them")
    return rel


# --- time: both in this process, alternating -----------------------------------------------------


def time_steps(steps: dict, n: int, warmup: int, max_rounds: int, clean: float) -> dict:
    """``warmup`` untimed steps of each, then rounds of one step of each, alternating.

    A round counts when, during each of its steps, other processes used less than
    ``clean`` of the machine (harness.OthersMeter): another engineer's job starting halfway
    makes both frameworks 2-6x slower here, and a median of such steps says nothing. Rounds
    go on until ``n`` rounds counted or ``max_rounds`` ran; if fewer than ``n`` counted,
    all rounds are used and the result says so ("disturbed").
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    rounds = []
    meter = harness.OthersMeter()
    while len(rounds) < max_rounds and sum(r["clean"] for r in rounds) < n:
        r = {}
        for name, step in steps.items():
            meter.share()
            t0 = time.perf_counter()
            loss = step()
            r[name] = time.perf_counter() - t0
            r[name + "_others"] = meter.share()
            if not math.isfinite(loss):
                raise SystemExit(f"error: {name}'s loss became {loss}")
        r["clean"] = all((r[name + "_others"] or 0.0) < clean for name in steps)
        rounds.append(r)
    counted = [r for r in rounds if r["clean"]]
    disturbed = len(counted) < n
    use = rounds if disturbed else counted
    return dict(rounds=rounds, disturbed=disturbed, counted=len(counted),
                **{name: [r[name] for r in use] for name in steps})


def op_breakdown(step, synchronize=lambda: None) -> list[tuple[str, float, int]]:
    """One extra cunet step with a timer around every cunet.ops call: (op, seconds, calls), slowest first.

    On a GPU ``synchronize`` (the device's) runs after every op, so each timer sees its
    kernels finish rather than just their launch (this serialises the step: compare ops,
    not the total, with the timed steps).

    functions.py, autograd.py and optim.py call the ops through the ``cunet.ops`` module or
    their own imported names; both are wrapped for the step and restored after.
    """
    import cunet.autograd
    import cunet.ops
    import cunet.optim

    totals: dict[str, list] = {}
    originals = {}

    def wrap(name, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            synchronize()
            entry = totals.setdefault(name, [0.0, 0])
            entry[0] += time.perf_counter() - t0
            entry[1] += 1
            return out
        return timed

    for name in cunet.ops.__all__:
        originals[(cunet.ops, name)] = getattr(cunet.ops, name)
        setattr(cunet.ops, name, wrap(name, originals[(cunet.ops, name)]))
    for module, name in ((cunet.autograd, "add_inplace"), (cunet.optim, "sgd_momentum_update")):
        originals[(module, name)] = getattr(module, name)
        setattr(module, name, getattr(cunet.ops, name))
    try:
        t0 = time.perf_counter()
        step()
        total = time.perf_counter() - t0
    finally:
        for (module, name), fn in originals.items():
            setattr(module, name, fn)
    rows = sorted(((name, t, c) for name, (t, c) in totals.items()), key=lambda r: -r[1])
    rows.append(("(outside the ops: autograd, Python, checks)", total - sum(t for _, t, _ in rows), 0))
    return rows


# --- memory: one child process per framework ---------------------------------------------------------

CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class RssSampler(threading.Thread):
    """Reads the resident set from /proc/self/statm every ``interval`` seconds; keeps the maximum."""

    def __init__(self, interval: float = 0.001):
        super().__init__(daemon=True)
        self.interval, self.peak, self._done = interval, 0, threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def run(self):
        with open("/proc/self/statm") as f:
            while not self._done.is_set():
                f.seek(0)
                self.peak = max(self.peak, int(f.read().split()[1]) * self.page)
                time.sleep(self.interval)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def child_main(framework: str, tile: int, base: int, depth: int, batch: int, steps: int, device_name: str,
               math: str | None = None) -> dict:
    """Runs in the child: build, warm up, then measure the step's peak memory. Returns a JSON-able dict."""
    import gc

    model, x, labels, weights = make_problem(tile, base, depth, batch)
    cuda = device_name == "cuda"
    if framework == "cunet":
        from cunet.device import get_device

        step = CunetStep(model, x, labels, weights, get_device(device_name, math=math))
    else:
        import torch

        torch.set_num_threads(harness.cores())
        if cuda:
            harness.torch_math(torch, math or "tf32")
        state = model.state_dict()
        del model
        step = TorchStep(torch, state, depth, x, labels, weights, cuda)
    step()  # warm-up: compiled code, primitives, momentum buffers exist from here on
    gc.collect()
    baseline = _status_kib("VmRSS") * 1024
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
        hwm_reset = True
    except OSError:
        hwm_reset = False
    sampler = RssSampler()
    sampler.start()
    gpu_peak = _gpu_peak_start(framework, cuda)
    for _ in range(steps):
        step()
    sampled = sampler.stop()
    hwm = _status_kib("VmHWM") * 1024
    result = dict(framework=framework, baseline_rss=baseline, peak_rss=hwm if hwm_reset else sampled,
                  sampled_peak_rss=sampled, hwm_reset=hwm_reset,
                  step_peak=(hwm if hwm_reset else sampled) - baseline)
    if gpu_peak is not None:
        result["gpu_step_peak"] = gpu_peak()
    if framework == "cunet" and not cuda:
        import tracemalloc

        tracemalloc.start()
        step()
        result["tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result


def _gpu_peak_start(framework: str, cuda: bool):
    """On cuda: start counting device memory; returns a function giving the peak bytes since."""
    if not cuda:
        return None
    if framework == "torch":
        import torch

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        return lambda: torch.cuda.max_memory_allocated() - base
    import cupy

    class PeakHook(cupy.cuda.MemoryHook):
        """Follows the bytes CuPy's pool hands out and takes back; keeps the maximum."""

        name = "PeakHook"

        def __init__(self):
            self.live = self.peak = 0

        def malloc_postprocess(self, device_id, size, mem_size, mem_ptr=None, pmem_id=None):
            self.live += mem_size
            self.peak = max(self.peak, self.live)

        def free_postprocess(self, device_id, mem_size, mem_ptr=None, pmem_id=None):
            self.live -= mem_size

    hook = PeakHook()
    hook.__enter__()
    return lambda: (hook.__exit__(None, None, None), hook.peak)[1]


def measure_memory(frameworks, args) -> dict:
    """Run child_main for each framework, each in a fresh interpreter, side by side (each
    measures only its own resident set, so they do not disturb each other's figures);
    returns {framework: its dict, or an 'error' entry}."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, **CHILD_ENV)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    children = {}
    for framework in frameworks:
        command = [sys.executable, "-m", "benchmarks.train_step", "--child", framework, "--tile", str(args.tile),
                   "--base", str(args.base), "--depth", str(args.depth), "--batch", str(args.batch),
                   "--steps", str(args.memory_steps), "--device", args.device]
        command += ["--math", args.math] if args.math else []
        children[framework] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                               env=env, cwd=root)
    results = {}
    for framework, child in children.items():
        out, err = child.communicate()
        if child.returncode != 0:
            results[framework] = dict(framework=framework, error=err.strip().splitlines()[-1] if err.strip() else
                                      f"exit code {child.returncode}")
        else:
            results[framework] = json.loads(out.strip().splitlines()[-1])
    return results


# --- the command line ------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    add_math_argument(p)
    p.add_argument("--tile", type=int, help="input tile (default 572)")
    p.add_argument("--base", type=int, help="channels of the first level (cpu default 16; cuda default 64)")
    p.add_argument("--depth", type=int, help="levels (default 5)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, help="timed steps per framework (default 5; --quick 2)")
    p.add_argument("--memory-steps", type=int, default=1, help="steps each memory child measures (default 1)")
    p.add_argument("--max-rounds", type=int, help="give up waiting for undisturbed rounds after this many (default 4 x steps)")
    p.add_argument("--clean", type=float, default=0.05,
                   help="a round counts if other processes used less than this share of the CPUs (default 0.05)")
    p.add_argument("--quick", action="store_true", help="tile 44, base 2, depth 3, 2 steps: seconds")
    p.add_argument("--no-torch", action="store_true", help="cunet only")
    p.add_argument("--no-memory", action="store_true", help="skip the memory children")
    p.add_argument("--breakdown", action="store_true", help="one more cunet step with a timer per op")
    p.add_argument("--default-malloc", action="store_true",
                   help="time with glibc's default malloc settings instead of cunet.train's (see the report's malloc line)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", choices=("cunet", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    preset = QUICK if args.quick else dict(tile=572, base=64 if args.device == "cuda" else 16, depth=5, steps=5)
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child_main(args.child, args.tile, args.base, args.depth, args.batch, args.steps, args.device,
                                    args.math)))
        return 0
    from cunet.device import DeviceUnavailableError, get_device
    from cunet.unet import InvalidSizeError, check_input_size

    try:
        check_input_size(args.tile, args.depth)
        device = get_device(args.device, math=args.math)
    except (DeviceUnavailableError, InvalidSizeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch = None if args.no_torch else harness.optional_torch()
    cuda = args.device == "cuda"
    if torch is not None:
        torch.set_num_threads(harness.cores())
        if cuda and not torch.cuda.is_available():
            torch = None
        elif cuda:
            harness.torch_math(torch, device.runtime.math)
    malloc = "glibc's defaults (--default-malloc)"
    if not args.default_malloc and args.device == "cpu":
        from cunet.cpu import TRAINING_MALLOC, keep_freed_memory
        if keep_freed_memory(**TRAINING_MALLOC):
            malloc = ("cunet.train's policy for both frameworks (cunet.cpu.keep_freed_memory: heap blocks up to "
                      f"{TRAINING_MALLOC['mmap_threshold'] >> 20} MiB, freed memory kept for the next step)")
    load_before = harness.load_average()
    model, x, labels, weights = make_problem(args.tile, args.base, args.depth, args.batch)
    state = model.state_dict()
    steps = {"cunet": CunetStep(model, x, labels, weights, device)}
    loss_check = None
    if torch is not None:
        steps["torch"] = TorchStep(torch, state, args.depth, x, labels, weights, cuda)
        loss_check = check_same_loss(steps["cunet"], steps["torch"])
    max_rounds = args.max_rounds or (args.steps if args.quick else 4 * args.steps)  # --quick: no waiting for quiet
    timing = time_steps(steps, args.steps, warmup=1, max_rounds=max_rounds, clean=args.clean)
    times = {name: timing[name] for name in steps}
    breakdown = op_breakdown(steps["cunet"], device.synchronize) if args.breakdown else None
    load_after_time = harness.load_average()
    memory = {}
    if not args.no_memory and sys.platform.startswith("linux"):
        memory = measure_memory(list(steps), args)
    from cunet.summary import layer_table

    rows = layer_table(args.tile, args.base, args.depth, batch=args.batch)
    report = dict(benchmark="train_step", command=harness.command_line(), device=device.describe(),
                  machine=harness.machine(),
                  config=dict(tile=args.tile, base=args.base, depth=args.depth, batch=args.batch, steps=args.steps,
                              warmup=1, dropout=DROPOUT, lr=LR, momentum=MOMENTUM),
                  model=dict(params=sum(r.params for r in rows), forward_gflop=2 * sum(r.macs for r in rows) / 1e9),
                  load_average_before=load_before, load_average_after_timing=load_after_time,
                  load_average_after=harness.load_average(), loss_check_rel_diff=loss_check,
                  time={name: dict(median_s=harness.median(t), times_s=t) for name, t in times.items()},
                  rounds=timing["rounds"], rounds_counted=timing["counted"], disturbed=timing["disturbed"],
                  clean_threshold=args.clean, malloc=malloc,
                  memory=memory, memory_method="child process per framework; VmHWM after clear_refs minus VmRSS "
                                               "before the step; glibc mmap threshold 64 KiB, trim threshold 0")
    if "torch" in times:
        report["ratio"] = dict(time=report["time"]["cunet"]["median_s"] / report["time"]["torch"]["median_s"])
        if "step_peak" in memory.get("cunet", {}) and "step_peak" in memory.get("torch", {}):
            report["ratio"]["step_peak_memory"] = memory["cunet"]["step_peak"] / memory["torch"]["step_peak"]
            report["ratio"]["peak_rss"] = memory["cunet"]["peak_rss"] / memory["torch"]["peak_rss"]
    if breakdown is not None:
        report["breakdown"] = [dict(op=n, seconds=t, calls=c) for n, t, c in breakdown]
    print(harness.dump_json(report) if args.json else format_report(report))
    return 0


def format_report(r: dict) -> str:
    c = r["config"]
    mib = lambda b: f"{b / 2**20:,.0f} MiB"  # noqa: E731
    lines = [harness.header(f"U-Net train step: tile {c['tile']}, base {c['base']}, depth {c['depth']}, batch {c['batch']} "
                            f"({r['model']['params'] / 1e6:.2f} M parameters, {r['model']['forward_gflop']:.1f} GFLOP forward)",
                            r["device"], [
        f"time: one process, cunet and PyTorch steps alternating; median of {len(r['time']['cunet']['times_s'])} rounds "
        f"after {c['warmup']} warm-up; " + (f"DISTURBED: only {r['rounds_counted']} of {len(r['rounds'])} rounds ran with "
                                             f"the rest of the machine idle, all are used" if r["disturbed"] else
                                             f"{r['rounds_counted']} of {len(r['rounds'])} rounds counted (other processes "
                                             f"< {100 * r['clean_threshold']:.0f}% of the CPUs during each step)"),
        "malloc while timing: " + r["malloc"],
        "memory: " + r["memory_method"],
    ] + ([f"validated: losses on the same weights (drop-out off) agree to {r['loss_check_rel_diff']:.1e}"]
         if r["loss_check_rel_diff"] is not None else []), command=r["command"], load=r["load_average_before"])]
    table = []
    for name, t in r["time"].items():
        m = r["memory"].get(name, {})
        row = dict(fw=name, median=harness.fmt_time(t["median_s"]),
                   all=" ".join(f"{v:.3f}" for v in t["times_s"]))
        if "step_peak" in m:
            row.update(step=mib(m["step_peak"]), peak=mib(m["peak_rss"]), base=mib(m["baseline_rss"]),
                       sampled=mib(m["sampled_peak_rss"] - m["baseline_rss"]))
            if "tracemalloc_peak" in m:
                row["tm"] = mib(m["tracemalloc_peak"])
            if "gpu_step_peak" in m:
                row["gpu"] = mib(m["gpu_step_peak"])
        elif "error" in m:
            row["step"] = f"error: {m['error']}"
        table.append(row)
    if "ratio" in r:
        ratio = r["ratio"]
        table.append(dict(fw="cunet / PyTorch", median=f"{ratio['time']:.2f}x",
                          step=f"{ratio['step_peak_memory']:.2f}x" if "step_peak_memory" in ratio else "",
                          peak=f"{ratio['peak_rss']:.2f}x" if "peak_rss" in ratio else ""))
    cols = [("fw", "framework"), ("median", "step time"), ("all", "each step (s)"), ("step", "step peak"),
            ("sampled", "(sampled)"), ("peak", "process peak RSS"), ("base", "RSS before step")]
    if any("tm" in t for t in table):
        cols.append(("tm", "tracemalloc peak"))
    if any("gpu" in t for t in table):
        cols.append(("gpu", "GPU step peak"))
    lines.append(harness.format_table(cols, table))
    used = [rd for rd in r["rounds"] if rd["clean"] or r["disturbed"]]
    shares = [rd.get(name + "_others") or 0.0 for rd in used for name in r["time"]]
    if shares and min(t["median_s"] for t in r["time"].values()) >= 0.2:
        lines.append(f"other processes' share of the CPUs during the steps used: at most {100 * max(shares):.1f}%")
    elif shares:
        lines.append("(steps too short for /proc's 10 ms ticks to tell whether other processes ran meanwhile)")
    if r.get("breakdown"):
        lines.append("\ncunet step by op (one extra step, a timer around each op call):")
        lines.append(harness.format_table([("op", "op"), ("t", "time"), ("n", "calls")],
                                          [dict(op=b["op"], t=harness.fmt_time(b["seconds"]), n=b["calls"] or "")
                                           for b in r["breakdown"]]))
    lines.append(f"# load average after timing: {' '.join(map(str, r['load_average_after_timing']))}; "
                 f"at end: {' '.join(map(str, r['load_average_after']))}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
