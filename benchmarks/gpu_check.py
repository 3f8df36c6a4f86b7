"""``python -m benchmarks.gpu_check --out DIR``: everything a GPU day has to tell us, in one command.

    python -m benchmarks.gpu_check --out gpu-day                         # every section, at most 8 minutes
    python -m benchmarks.gpu_check --out gpu-day --sections kernels,train_step
    python -m benchmarks.gpu_check --out gpu-day --budget-s 300

Why. A GPU is lent to this project a few minutes at a time, on a machine without a network,
and everything cunet does on ``cuda`` was written and tested without one (PoCL, Oclgrind, the
Numba simulator, the cost model in gpu_model.py). So the command that runs on the day is
prepared in advance, runs from the source tree (no ``pip install``) with whichever CuPy the
machine has (cupy-cuda12x or cupy-cuda13x), and answers every question in one go:

1. ``device``: the GPU (name, compute capability, SMs, memory), the driver's and the CUDA
   runtime's versions, CuPy's, numba-cuda's and PyTorch's, and ``nvidia-smi`` where it is;
2. ``cuda_tests``: ``pytest -m cuda``, the kernel tests on the cuda and cuda-numba devices
   (tests/conftest.py), with HYPOTHESIS_PROFILE=ci; counts and failures from its JUnit XML;
3. ``sanitizer``: compute-sanitizer's memcheck, racecheck and synccheck over a tiny train
   run (tile 44, base 2, depth 2: the tests' configuration), where it is installed;
4. ``kernels``: ``python -m benchmarks.kernels --device cuda --json``, every op at the
   paper's shapes (CUDA events, % of peak, the Numba alternates, cuDNN as the peer);
5. ``train_step``: ``python -m benchmarks.train_step --device cuda --json``, the paper's
   step, cunet against PyTorch on the same network: images/s and step peak memory;
6. ``kernels_fp32``, ``train_step_fp32``: the GEMM ops and the step again with ``--math
   fp32`` (4 and 5 ran in the device's default: TF32 tensor cores on sm_80 and newer, with
   PyTorch's TF32 allowed too), so the report has both and their ratio;
7. ``ladder``: ``python -m benchmarks.ladder conv2d --device cuda --json``, the teaching
   ladder's rungs v1..v6 validated and timed at the paper's first-level layer.

It writes DIR/report.md (for people: pass/fail and the headline numbers at the top) and
DIR/report.json (for scripts), and each command's whole output under DIR/logs/. A section
that fails or runs out of time is recorded as such, with its error and the tail of its
output, and the others still run.

Budget. The whole run has ``--budget-s`` seconds (default 480). Each section is offered
what is left in proportion to its nominal share (SHARES: tests 180 s, sanitizer 90 s, the fp32 runs 50 s each,
kernels 120 s, train step 90 s), so time a quick section leaves over goes to the later
ones; a command still running at its section's limit is killed with everything it started
(its process group). A section offered less than it needs to start at all is recorded as
skipped for lack of time. Progress lines go to stderr.

Without a usable GPU it stops before anything else: ``error: <why>`` on stderr, exit code
2, nothing written. Exit code 2 too for bad input (``--out`` an existing file, or a folder
that already holds a report: a report is never overwritten). Otherwise 0 when every section
that ran passed (or its tool is not installed), 1 when any did not.

How it is built, so that tests/test_gpu_check.py exercises all of it without a GPU: the
probe (:func:`probe_gpu`) is separate from the sections; each section is a function of a
:class:`Context` that returns a plain dict; every command goes through ``Tools.run`` and
every reading of time through ``Tools.clock``, which the tests replace with a fake runner
and a fake clock; :func:`render_markdown` is a pure function of the JSON report.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import harness

ROOT = Path(__file__).resolve().parent.parent
REPORT_FILES = ("report.md", "report.json")
DEFAULT_BUDGET_S = 480.0

# Each section's nominal seconds, and the least it can do anything in (start Python, import
# CuPy and PyTorch, compile kernels). What is left of the budget is shared out in proportion
# to the nominal seconds of the sections still to run.
# The kernels and the train step run in the device's default math (TF32 tensor cores on sm_80
# and newer), then the GEMM ops and the step again with --math fp32, for the ratio.
SHARES = {"device": (10, 2), "cuda_tests": (180, 20), "sanitizer": (90, 20), "kernels": (120, 20),
          "train_step": (90, 20), "kernels_fp32": (50, 20), "train_step_fp32": (50, 20), "ladder": (40, 15)}
SECTIONS = tuple(SHARES)
TITLES = {"device": "device", "cuda_tests": "cuda tests", "sanitizer": "compute-sanitizer", "kernels": "kernels",
          "train_step": "train step", "kernels_fp32": "kernels, convolutions in fp32",
          "train_step_fp32": "train step, fp32", "ladder": "the conv ladder"}
RESERVE_S = 5.0  # kept back for writing the report after the last section
NVIDIA_SMI_TIMEOUT_S = 15.0
TAIL_CHARS = 3000  # of a failed command's output, in the report (the whole output is in logs/)

# Section statuses. The first three count as "nothing wrong".
PASS, NOT_INSTALLED, NOT_SELECTED = "pass", "not_installed", "not_selected"
FAIL, ERROR, TIMED_OUT, SKIPPED = "fail", "error", "timed_out", "skipped"
OK_STATUSES = (PASS, NOT_INSTALLED, NOT_SELECTED)

SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")
# The sanitizers' target: two steps of the tests' tiny U-Net through python -m cunet.train
# (samples drawn in line: no worker processes to follow), with its validation and checkpoints,
# with CuPy's memory pool switched off. With the pool, arrays are carved out of blocks the
# pool keeps, and memcheck only sees an access that leaves the whole block; without it every
# array is an allocation of its own, so a read one element past an array's end is reported.
TINY_TRAIN = ["--device", "cuda", "--tile", "44", "--base", "2", "--depth", "2", "--synthetic-images", "3",
              "--steps", "2", "--sync-every", "2", "--workers", "0", "--quiet"]
TRAIN_WITHOUT_POOL = ("import runpy, cupy; cupy.cuda.set_allocator(None); "
                      "runpy.run_module('cunet.train', run_name='__main__', alter_sys=True)")


# --- running commands -------------------------------------------------------------------------------------


@dataclass
class Completed:
    """What one command did."""

    returncode: int | None  # None: killed when its time ran out
    stdout: str
    stderr: str
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def tail(self, chars: int = TAIL_CHARS) -> str:
        """The end of its output, stdout then stderr."""
        text = "\n".join(part for part in (self.stdout.rstrip(), self.stderr.rstrip()) if part)
        return text[-chars:]


def run_command(cmd: list[str], timeout: float, env: dict) -> Completed:
    """Run ``cmd`` from the repository root, capturing its output; after ``timeout`` seconds
    kill it and everything it started (pytest's, train_step's children) and return what it
    printed until then, with returncode None."""
    start = time.monotonic()
    # A session of its own: one killpg reaches the grandchildren too.
    child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             errors="replace", start_new_session=True)
    try:
        out, err = child.communicate(timeout=timeout)
        code = child.returncode
    except subprocess.TimeoutExpired:
        _kill_group(child)
        out, err = _collect_after_kill(child)
        code = None
    except BaseException:  # Ctrl-C: the child is in its own session and did not get the signal
        _kill_group(child)
        raise
    return Completed(code, out or "", err or "", time.monotonic() - start)


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _collect_after_kill(child: subprocess.Popen) -> tuple[str, str]:
    """The output a killed child left in its pipes (a grandchild that escaped the group may
    keep them open: then give up after a few seconds with what there is)."""
    try:
        return child.communicate(timeout=5)
    except subprocess.TimeoutExpired as exc:
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        return text(exc.stdout), text(exc.stderr)


def command_env(**extra: str) -> dict:
    """This process's environment, unbuffered (so a killed command's last lines are in its
    output) and with the repository on the path (so ``import cunet`` works without pip)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def _log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Tools:
    """What the sections take from the outside world; the tests pass fakes."""

    run: Callable[[list[str], float, dict], Completed] = run_command
    clock: Callable[[], float] = time.monotonic
    which: Callable[[str], str | None] = shutil.which
    log: Callable[[str], None] = _log_to_stderr


@dataclass
class Context:
    """What a section runs with: the tools, what the probe found, its time, a scratch folder."""

    tools: Tools
    gpu: dict
    timeout: float
    scratch: Path
    logs: dict = field(default_factory=dict)  # file name under DIR/logs/ -> text

    def run(self, log_name: str, cmd: list, timeout: float | None = None, **env: str) -> tuple[Completed, dict]:
        """Run ``cmd`` (killed after ``timeout``, default the section's); keep its whole output
        as logs/<log_name>.txt; return it and the record that goes into the report."""
        cmd = [str(c) for c in cmd]
        timeout = self.timeout if timeout is None else timeout
        done = self.tools.run(cmd, timeout, command_env(**env))
        status = f"killed after {timeout:.0f} s" if done.timed_out else f"exit code {done.returncode}"
        self.logs[f"{log_name}.txt"] = (f"$ {shlex.join(cmd)}\n# {status}, {done.seconds:.1f} s\n"
                                        f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}\n")
        record = dict(command=shlex.join(cmd), returncode=done.returncode, timed_out=done.timed_out,
                      seconds=round(done.seconds, 2), timeout_s=round(timeout, 1), log=f"logs/{log_name}.txt")
        return done, record


def _timed_out(done: Completed, record: dict, **more) -> dict:
    """The section dict of a command killed at its limit."""
    return dict(status=TIMED_OUT, headline=f"timed out after {record['timeout_s']:.0f} s", commands=[record],
                output_tail=done.tail(), **more)


def _error(message: str, done: Completed | None = None, records: list | None = None, **more) -> dict:
    """The section dict of a command that could not do its job (crashed, printed nothing usable)."""
    result = dict(status=ERROR, headline=message, error=message, commands=records or [], **more)
    if done is not None:
        result["output_tail"] = done.tail()
    return result


# --- the probe and the device section -----------------------------------------------------------------


def probe_gpu() -> dict:
    """The GPU as CuPy's runtime API describes it; raises cunet's DeviceUnavailableError, with
    its message naming the cause, where there is no CuPy or no GPU."""
    from cunet.device import get_device

    return describe_gpu(get_device("cuda").runtime.cupy)


def describe_gpu(cupy) -> dict:
    """Name, compute capability, SMs, memory, versions and the peaks the benchmarks use.

    Only properties and versions are asked for, nothing is allocated: the GPU's memory is
    left to the sections' own processes. A property a CUDA version no longer has (CUDA 13
    dropped clockRate and memoryClockRate from cudaDeviceProp) is left out, not an error.
    """
    runtime = cupy.cuda.runtime
    device_id = runtime.getDevice()
    props = runtime.getDeviceProperties(device_id)
    name = props.get("name", b"unknown")
    name = name.decode() if isinstance(name, bytes) else str(name)
    info = dict(name=name, device_id=device_id, devices=runtime.getDeviceCount(),
                compute_capability=f"{props.get('major')}.{props.get('minor')}", sms=props.get("multiProcessorCount"),
                memory_gib=round(props.get("totalGlobalMem", 0) / 2**30, 1),
                l2_mib=round(props.get("l2CacheSize", 0) / 2**20, 1),
                driver=_cuda_version(runtime.driverGetVersion()), runtime=_cuda_version(runtime.runtimeGetVersion()),
                cupy=cupy.__version__, cupy_package=_installed_package("cupy-cuda13x", "cupy-cuda12x", "cupy"),
                numba_cuda=_package_version("numba-cuda"), torch=_torch_info(),
                cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    try:
        info["nvrtc"] = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
    except Exception as exc:  # NVRTC missing is what the cuda tests will show; note it here too
        info["nvrtc"] = f"unavailable ({type(exc).__name__}: {exc})"
    try:
        peaks = harness.cuda_peaks(cupy)
        info["peak"] = dict(gflops=peaks.gflops, gbps=peaks.gbps, source=peaks.gflops_source)
    except Exception as exc:
        info["peak"] = dict(error=f"{type(exc).__name__}: {exc}")
    return info


def _cuda_version(number: int) -> str:
    """CUDA's integer version (13000) as people write it (13.0)."""
    return f"{number // 1000}.{number % 1000 // 10}"


def _package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _installed_package(*distributions: str) -> str | None:
    """The first of ``distributions`` that is installed, with its version ("cupy-cuda13x 14.0.0")."""
    for dist in distributions:
        version = _package_version(dist)
        if version is not None:
            return f"{dist} {version}"
    return None


def _torch_info() -> dict | None:
    """PyTorch's version and whether it can use the GPU: a CPU build makes the benchmarks
    leave out their PyTorch peer without a word, which this is where one reads why."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch

        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        return dict(version=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                    cudnn=cudnn)
    except Exception as exc:
        return dict(error=f"{type(exc).__name__}: {exc}")


def section_device(ctx: Context) -> dict:
    """What the probe found, plus ``nvidia-smi``'s page where it is on PATH."""
    gpu = ctx.gpu
    result = dict(status=PASS, gpu=gpu, commands=[])
    smi = ctx.tools.which("nvidia-smi")
    if smi is None:
        result["nvidia_smi"] = "not on PATH"
    else:
        done, record = ctx.run("nvidia-smi", [smi], timeout=min(NVIDIA_SMI_TIMEOUT_S, ctx.timeout))
        result["commands"].append(record)
        result["nvidia_smi"] = (done.stdout if done.returncode == 0 else
                                f"failed (exit code {record['returncode']}): {done.tail(500)}")
    torch = gpu.get("torch") or {}
    if not torch or "error" in torch:
        torch_note = "PyTorch " + ("failed to import" if torch else "not installed")
    else:
        torch_note = f"PyTorch {torch['version']}" + (
            "" if torch["cuda_available"] else " (no CUDA: the benchmarks' PyTorch peer will be missing)")
    result["headline"] = (f"{gpu.get('name')}, compute capability {gpu.get('compute_capability')}, "
                          f"{gpu.get('sms')} SMs, {gpu.get('memory_gib')} GiB; driver {gpu.get('driver')}, "
                          f"runtime {gpu.get('runtime')}; CuPy {gpu.get('cupy')}, numba-cuda {gpu.get('numba_cuda')}, "
                          f"{torch_note}")
    return result


# --- the cuda tests ---------------------------------------------------------------------------------------


def section_cuda_tests(ctx: Context) -> dict:
    """``pytest -m cuda``: the kernel tests on the cuda and cuda-numba devices."""
    junit = ctx.scratch / "cuda_tests.xml"
    # faulthandler_timeout: a test that hangs prints every thread's stack after 60 s, so the
    # output tail of a section killed at its limit says where it hung. A test module that
    # cannot be imported here (a missing test dependency) must not stop the others.
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
           "-o", "faulthandler_timeout=60", "--continue-on-collection-errors"]
    done, record = ctx.run("cuda_tests", cmd, HYPOTHESIS_PROFILE="ci")
    if done.timed_out:
        return _timed_out(done, record)
    if not junit.exists():
        return _error(f"pytest wrote no JUnit XML (exit code {done.returncode})", done, [record])
    text = junit.read_text()
    ctx.logs["cuda_tests.junit.xml"] = text
    result = dict(commands=[record], **parse_junit(text))
    counts = (f"{result['passed']} passed, {result['failed']} failed, {result['errors']} errors, "
              f"{result['skipped']} skipped")
    if done.returncode not in (0, 1):  # 2 interrupted, 3 internal error, 4 usage, 5 nothing collected
        return dict(result, status=ERROR, headline=f"pytest exit code {done.returncode}: {counts}",
                    output_tail=done.tail())
    if result["failed"] or result["errors"] or done.returncode:
        return dict(result, status=FAIL, headline=counts, output_tail=done.tail())
    if not result["passed"]:
        return dict(result, status=FAIL, headline=f"{counts}: no cuda test ran (see the skip reasons)")
    return dict(result, status=PASS, headline=counts)


def parse_junit(text: str) -> dict:
    """Counts, failures (name, kind, first line) and skip reasons from pytest's JUnit XML."""
    counts = dict(passed=0, failed=0, errors=0, skipped=0)
    failures, skip_reasons = [], {}
    for case in ET.fromstring(text).iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            counts["passed"] += 1
            continue
        first_line = _first_line(outcome.get("message") or outcome.text or "")
        if outcome.tag == "skipped":
            counts["skipped"] += 1
            skip_reasons[first_line] = skip_reasons.get(first_line, 0) + 1
        else:
            counts["failed" if outcome.tag == "failure" else "errors"] += 1
            failures.append(dict(name=name, kind=outcome.tag, message=first_line))
    return dict(counts, failures=failures, skip_reasons=skip_reasons)


def _first_line(text: str, limit: int = 300) -> str:
    lines = text.strip().splitlines()
    return lines[0][:limit] if lines else ""


# --- compute-sanitizer ---------------------------------------------------------------------------------------


def section_sanitizer(ctx: Context) -> dict:
    """memcheck, racecheck and synccheck over one tiny train step; each tool gets an equal
    part of what is left of the section's time when it starts."""
    exe = ctx.tools.which("compute-sanitizer")
    if exe is None:
        return dict(status=NOT_INSTALLED, headline="not installed (compute-sanitizer is not on PATH)", tools={},
                    commands=[])
    start = ctx.tools.clock()
    tools, records = {}, []
    for i, tool in enumerate(SANITIZER_TOOLS):
        timeout = max(1.0, (ctx.timeout - (ctx.tools.clock() - start)) / (len(SANITIZER_TOOLS) - i))
        # application-only: the train process itself, not its sampler workers (CPU-only processes)
        cmd = [exe, "--tool", tool, "--error-exitcode", "1", "--target-processes", "application-only", sys.executable,
               "-c", TRAIN_WITHOUT_POOL, *TINY_TRAIN, "--out", ctx.scratch / f"train-{tool}"]
        done, record = ctx.run(f"sanitizer-{tool}", cmd, timeout=timeout)
        records.append(record)
        tools[tool] = sanitizer_verdict(done, timeout)
    statuses = [t["status"] for t in tools.values()]
    status = next((s for s in (TIMED_OUT, ERROR, FAIL) if s in statuses), PASS)
    headline = ", ".join(f"{tool} {t['errors']} errors" if t["errors"] is not None and t["status"] != TIMED_OUT
                         else f"{tool} {_status_word(t['status'])}" for tool, t in tools.items())
    return dict(status=status, headline=headline, tools=tools, commands=records)


def sanitizer_verdict(done: Completed, timeout: float) -> dict:
    """One tool's result: pass only if it reported 0 errors and the train run succeeded."""
    parsed = parse_sanitizer_output(done.stdout + "\n" + done.stderr)
    if done.timed_out:
        return dict(parsed, status=TIMED_OUT, note=f"timed out after {timeout:.0f} s", output_tail=done.tail())
    if parsed["errors"] is None:
        return dict(parsed, status=ERROR, note=f"no error summary in its output (exit code {done.returncode})",
                    output_tail=done.tail())
    if parsed["errors"]:
        api = (f" ({parsed['api_errors']} of the reports: a CUDA API call that returned an error)"
               if parsed["api_errors"] else "")
        return dict(parsed, status=FAIL, note=f"{parsed['errors']} errors{api}")
    if done.returncode != 0:
        return dict(parsed, status=FAIL, note=f"the train run failed under the sanitizer (exit code {done.returncode})",
                    output_tail=done.tail())
    warnings = f", {parsed['warnings']} warnings" if parsed["warnings"] else ""
    return dict(parsed, status=PASS, note="0 errors" + warnings)


SANITIZER_PREFIX = "========="
_ERROR_SUMMARY = re.compile(r"ERROR SUMMARY:\s*(\d+)\s+errors?")
_RACECHECK_SUMMARY = re.compile(r"RACECHECK SUMMARY:\s*\d+\s+hazards?\s+displayed\s*"
                                r"\((\d+)\s+errors?,\s*(\d+)\s+warnings?\)")
# Lines with the prefix that are not the start of a report.
_NOT_A_REPORT = ("COMPUTE-SANITIZER", "ERROR SUMMARY", "RACECHECK SUMMARY", "LEAK SUMMARY", "Process ID",
                 "Target application returned")


def parse_sanitizer_output(text: str, max_reports: int = 5, max_lines: int = 8) -> dict:
    """The error count, summed over the processes the tool followed (None where it printed no
    summary), racecheck's warnings, and the first reports, a few lines each.

    memcheck and synccheck end with "ERROR SUMMARY: N errors", racecheck with "RACECHECK
    SUMMARY: H hazards displayed (E errors, W warnings)". Every line of theirs starts with
    "=========": a report opens with an unindented line ("Invalid __global__ read of size 4
    bytes", "Error: Race reported between ...", "Program hit cudaErrorInvalidValue ... on CUDA
    API call to ...") and goes on indented ("    at conv2d_forward+0x1b0 in ...").
    """
    races = [(int(e), int(w)) for e, w in _RACECHECK_SUMMARY.findall(text)]
    summaries = [int(n) for n in _ERROR_SUMMARY.findall(text)]
    errors = sum(e for e, _ in races) if races else sum(summaries) if summaries else None
    reports: list[list[str]] = []
    current = None
    for line in text.splitlines():
        if not line.startswith(SANITIZER_PREFIX):
            continue
        rest = line[len(SANITIZER_PREFIX):]
        if not rest.strip() or rest.strip().startswith(_NOT_A_REPORT):
            current = None
        elif rest.startswith("  ") and current is not None:
            if len(current) < max_lines:
                current.append(rest.strip())
        elif not rest.startswith("  "):
            current = [rest.strip()]
            reports.append(current)
    return dict(errors=errors, warnings=sum(w for _, w in races), reports=len(reports),
                api_errors=sum(r[0].startswith("Program hit") for r in reports),
                first_errors=["\n".join(r) for r in reports[:max_reports]])


# --- the benchmarks ----------------------------------------------------------------------------------------


def parse_json_output(stdout: str) -> dict | None:
    """The JSON document a benchmark printed with --json (None if there is none): the whole
    stdout, or from the first line that opens an object (something printed a line first)."""
    try:
        return json.loads(stdout)
    except ValueError:
        pass
    start = re.search(r"^\{", stdout, re.MULTILINE)
    if start:
        try:
            return json.loads(stdout[start.start():])
        except ValueError:
            return None
    return None


def run_benchmark(ctx: Context, program: str, math: str | None, extra: list[str] = ()) -> tuple:
    """``python -m benchmarks.<program> --device cuda --json`` (with ``--math`` when given, then
    ``extra``): (what it did, its record, its JSON report, None), or (..., None, the failed
    section's dict) when it timed out or printed no report."""
    options = (["--math", math] if math else []) + list(extra)
    done, record = ctx.run(program + (f"-{math}" if math else ""),
                           [sys.executable, "-m", f"benchmarks.{program}", "--device", "cuda", "--json", *options])
    if done.timed_out:
        return done, record, None, _timed_out(done, record)
    data = parse_json_output(done.stdout)
    if data is None:
        return done, record, None, _error(f"benchmarks.{program} printed no JSON report (exit code {done.returncode})",
                                          done, [record])
    return done, record, data, None


def section_kernels(ctx: Context, math: str | None = None) -> dict:
    """``benchmarks.kernels --device cuda --json``: per op time, rate, % of peak, Numba, PyTorch.

    ``math``: None for the device's default (every op); "fp32" for the GEMM ops again on CUDA cores.
    """
    done, record, data, failed = run_benchmark(ctx, "kernels", math, ["--ops", "conv2d,upconv"] if math else [])
    if failed:
        return failed
    rows = [kernel_row(r) for r in data["results"]]
    timed = [r for r in rows if r["median_s"]]
    with_torch = [r for r in timed if r["torch_median_s"]]
    totals = dict(cunet_s=sum(r["median_s"] * r["count"] for r in timed),
                  torch_s=sum(r["torch_median_s"] * r["count"] for r in with_torch) or None,
                  cunet_s_on_torch_ops=sum(r["median_s"] * r["count"] for r in with_torch) or None)
    compute = [100 * r["peak_fraction"] for r in timed if r["bound"] == "compute"]
    headline = (f"{len(rows)} op shapes, {data['failed']} failed validation; "
                f"a step's ops: cunet {harness.fmt_time(totals['cunet_s'])}")
    if totals["torch_s"]:
        headline += (f", PyTorch {harness.fmt_time(totals['torch_s'])} on the ops it has "
                     f"(cunet/PyTorch {totals['cunet_s_on_torch_ops'] / totals['torch_s']:.2f})")
    if compute:
        headline += f"; convolutions at {min(compute):.0f}-{max(compute):.0f}% of the compute peak"
    result = dict(status=PASS if done.returncode == 0 and not data["failed"] else FAIL, headline=headline,
                  commands=[record], device=data.get("device"), timer=data.get("timer"), config=data.get("config"),
                  peak=data.get("peak"), failed=data["failed"], totals=totals, rows=rows)
    if result["status"] != PASS:
        result["output_tail"] = done.tail()
    return result


def kernel_row(r: dict) -> dict:
    """One op of benchmarks.kernels' JSON, reduced to what the report shows."""
    t, torch_t = r.get("median_s"), r.get("torch_median_s")
    return dict(op=r["op"], shapes=r["shapes"], count=r["count"], bound=r["bound"], validated=r["validated"],
                error=r.get("error"), median_s=t, gflops=r.get("gflops"), gbps=r.get("gbps"),
                peak_fraction=r.get("peak_fraction"), numba_median_s=r.get("numba_median_s"), torch_median_s=torch_t,
                cunet_over_torch=t / torch_t if t and torch_t else None)


def section_train_step(ctx: Context, math: str | None = None) -> dict:
    """``benchmarks.train_step --device cuda --json``: images/s and step peak memory, cunet and PyTorch
    (PyTorch's convolutions allowed TF32 exactly when cunet's use it). ``math`` as for section_kernels."""
    done, record, data, failed = run_benchmark(ctx, "train_step", math)
    if failed:
        return failed
    batch = data["config"]["batch"]
    frameworks = {}
    for name, t in data["time"].items():
        memory = data["memory"].get(name, {})
        frameworks[name] = dict(median_s=t["median_s"], images_per_s=batch / t["median_s"],
                                gpu_step_peak=memory.get("gpu_step_peak"), host_step_peak=memory.get("step_peak"),
                                peak_rss=memory.get("peak_rss"), memory_error=memory.get("error"))
    cunet, torch = frameworks["cunet"], frameworks.get("torch")
    speed_ratio = cunet["images_per_s"] / torch["images_per_s"] if torch else None
    headline = f"cunet {cunet['images_per_s']:.2f} img/s"
    headline += (f", PyTorch {torch['images_per_s']:.2f} img/s: cunet/PyTorch {speed_ratio:.2f}" if torch
                 else " (no PyTorch peer: not installed or without CUDA)")
    if cunet["gpu_step_peak"] is not None:
        headline += f"; step peak GPU memory cunet {_mib(cunet['gpu_step_peak'])}"
        if torch and torch["gpu_step_peak"] is not None:
            headline += f", PyTorch {_mib(torch['gpu_step_peak'])}"
    memory_errors = {name: f["memory_error"] for name, f in frameworks.items() if f["memory_error"]}
    status = PASS if done.returncode == 0 and not memory_errors else FAIL
    result = dict(status=status, headline=headline, commands=[record], device=data.get("device"),
                  config=data["config"], frameworks=frameworks, speed_ratio=speed_ratio,
                  loss_check_rel_diff=data.get("loss_check_rel_diff"), disturbed=data.get("disturbed"),
                  rounds_counted=data.get("rounds_counted"), memory_errors=memory_errors)
    if status != PASS:
        result["output_tail"] = done.tail()
    return result


def section_ladder(ctx: Context) -> dict:
    """``benchmarks.ladder conv2d --device cuda --json``: each rung's time, GFLOP/s and share of peak."""
    done, record = ctx.run("ladder", [sys.executable, "-m", "benchmarks.ladder", "conv2d", "--device", "cuda", "--json"])
    if done.timed_out:
        return _timed_out(done, record)
    data = parse_json_output(done.stdout)
    if data is None:
        return _error(f"benchmarks.ladder printed no JSON report (exit code {done.returncode})", done, [record])
    rows = data["rows"]
    failed = [r["rung"] for r in rows if r["status"].startswith("FAILED")]
    timed = ", ".join(f"{r['rung']} {harness.fmt_time(r['median_s'])}" + (
        f" ({100 * r['peak_fraction']:.0f}%)" if r.get("peak_fraction") is not None else "")
        for r in rows if r.get("median_s"))
    headline = (f"FAILED validation: {', '.join(failed)}; " if failed else "") + (timed or "no rung timed")
    result = dict(status=FAIL if failed or done.returncode else PASS, headline=headline, commands=[record],
                  device=data.get("device"), shape=data.get("shape"), rows=rows)
    if result["status"] != PASS:
        result["output_tail"] = done.tail()
    return result


def _mib(nbytes: float | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:,.0f} MiB"


# --- the run: sections within the budget --------------------------------------------------------------------

RUNNERS = {"device": section_device, "cuda_tests": section_cuda_tests, "sanitizer": section_sanitizer,
           "kernels_fp32": lambda ctx: section_kernels(ctx, "fp32"),
           "train_step_fp32": lambda ctx: section_train_step(ctx, "fp32"), "ladder": section_ladder,
           "kernels": section_kernels, "train_step": section_train_step}


def section_timeout(name: str, pending: list[str], left: float) -> float:
    """``name``'s part of the ``left`` seconds: in proportion to its nominal share among the
    sections still to run (``pending``, ``name`` first)."""
    return left * SHARES[name][0] / sum(SHARES[s][0] for s in pending)


def run_sections(selected: list[str], gpu: dict, tools: Tools, budget_s: float, scratch: Path) -> tuple[dict, dict]:
    """Run the selected sections in order within the budget; returns ({section: dict}, logs)."""
    start = tools.clock()
    deadline = start + budget_s
    results, logs = {}, {}
    interrupted = False
    for index, name in enumerate(SECTIONS):
        if name not in selected:
            results[name] = dict(status=NOT_SELECTED, headline="not in --sections")
            continue
        if interrupted:
            results[name] = dict(status=SKIPPED, seconds=0.0, headline="skipped: the run was interrupted")
            continue
        elapsed = tools.clock() - start
        left = deadline - tools.clock() - RESERVE_S
        timeout = section_timeout(name, [s for s in SECTIONS[index:] if s in selected], left)
        if timeout < SHARES[name][1]:
            results[name] = dict(status=SKIPPED, seconds=0.0,
                                 headline=f"skipped: not enough time left ({max(left, 0):.0f} s of the "
                                          f"{budget_s:.0f} s budget; it needs at least {SHARES[name][1]} s)")
            tools.log(f"gpu_check [{elapsed:6.1f} s] {name}: {results[name]['headline']}")
            continue
        tools.log(f"gpu_check [{elapsed:6.1f} s] {name}: started, up to {timeout:.0f} s")
        section_start = tools.clock()
        folder = scratch / name
        folder.mkdir()
        ctx = Context(tools, gpu, timeout, folder, logs)
        try:
            result = RUNNERS[name](ctx)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the running command is killed; report what there is
            interrupted = True
            result = _error("interrupted (Ctrl-C or SIGTERM) while it ran")
        except Exception as exc:  # a bug here must not cost the other sections or the report
            result = _error(f"gpu_check itself failed: {type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        result.update(seconds=round(tools.clock() - section_start, 2), timeout_s=round(timeout, 1))
        results[name] = result
        tools.log(f"gpu_check [{tools.clock() - start:6.1f} s] {name}: {result['status']} in {result['seconds']:.1f} s: "
                  f"{result['headline']}")
    return results, logs


# --- the report ------------------------------------------------------------------------------------------------


def build_report(command: str, started: str, budget_s: float, elapsed_s: float, selected: list[str], gpu: dict,
                 sections: dict, header: str, machine: dict, load_before: list[float]) -> dict:
    """The JSON report: how it ran, the machine, every section's dict, and the headlines."""
    status = PASS if all(s["status"] in OK_STATUSES for s in sections.values()) else FAIL
    return dict(benchmark="gpu_check", command=command, started=started, budget_s=budget_s,
                elapsed_s=round(elapsed_s, 1), status=status, selected=selected, gpu=gpu, header=header,
                machine=machine, load_average_before=load_before, sections=sections,
                summary={name: dict(status=s["status"], headline=s["headline"]) for name, s in sections.items()})


def render_markdown(report: dict) -> str:
    """report.md, from the JSON report alone (so it can be made again from report.json)."""
    sections = report["sections"]
    lines = [f"# cunet GPU check: {report['gpu'].get('name', 'unknown GPU')}", "",
             f"Started {report['started']}; took {report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget; "
             f"`{report['command']}`. Overall: **{_status_word(report['status'])}**.", "", "## Summary", "", "```",
             harness.format_table([("section", "section"), ("status", "status"), ("time", "time"), ("limit", "limit")],
                                  [dict(section=TITLES[name], status=_status_word(s["status"]),
                                        time=f"{s['seconds']:.1f} s" if "seconds" in s else "",
                                        limit=f"{s['timeout_s']:.0f} s" if "timeout_s" in s else "")
                                   for name, s in sections.items()], left=2),
             "```", ""]
    lines += [f"- **{TITLES[name]}**: {s['headline']}" for name, s in sections.items() if s["status"] != NOT_SELECTED]
    for name, s in sections.items():
        if s["status"] == NOT_SELECTED:
            continue
        lines += ["", f"## {TITLES[name]}: {_status_word(s['status'])}", ""]
        details = SECTION_MARKDOWN[name](s) if s["status"] not in (SKIPPED, TIMED_OUT) or name == "sanitizer" else []
        lines += details or [s["headline"]]
        if s.get("error") and s["error"] != s["headline"]:
            lines += ["", f"error: {s['error']}"]
        if s.get("output_tail"):
            lines += ["", "Output (end):", "", _code(s["output_tail"])]
        if s.get("traceback"):
            lines += ["", _code(s["traceback"])]
        if s.get("commands"):
            lines += ["", "Commands (whole output under the report's folder):", ""]
            lines += [f"- `{c['command']}`: " + (f"killed after {c['timeout_s']:.0f} s" if c["timed_out"] else
                                                 f"exit code {c['returncode']}") + f", {c['seconds']:.1f} s, {c['log']}"
                      for c in s["commands"]]
    lines += ["", "## Machine", "", _code(report["header"]), ""]
    return "\n".join(lines)


def _status_word(status: str) -> str:
    return {PASS: "pass", FAIL: "FAIL", ERROR: "ERROR", TIMED_OUT: "TIMED OUT", SKIPPED: "SKIPPED",
            NOT_INSTALLED: "not installed", NOT_SELECTED: "not selected"}[status]


def _code(text: str) -> str:
    return "```\n" + text.rstrip() + "\n```"


def _md_device(s: dict) -> list[str]:
    gpu = s.get("gpu", {})
    peak, torch = gpu.get("peak", {}), gpu.get("torch")
    visible = f" (CUDA_VISIBLE_DEVICES={gpu['cuda_visible_devices']})" if gpu.get("cuda_visible_devices") else ""
    cupy = f"CuPy {gpu.get('cupy')}" + (f" ({gpu['cupy_package']})" if gpu.get("cupy_package") else "")
    if not torch:
        torch_text = "PyTorch not installed"
    elif "error" in torch:
        torch_text = f"PyTorch failed to import: {torch['error']}"
    else:
        torch_text = (f"PyTorch {torch['version']} (CUDA {torch['cuda']}, GPU usable: {torch['cuda_available']}, "
                      f"cuDNN {torch['cudnn']})")
    peaks = (f"{peak['gflops']:,.0f} GFLOP/s FP32, {peak['gbps']:,.0f} GB/s ({peak['source']})" if "gflops" in peak
             else str(peak.get("error")))
    lines = [f"- GPU {gpu.get('device_id')} of {gpu.get('devices')}: **{gpu.get('name')}**, compute capability "
             f"{gpu.get('compute_capability')}, {gpu.get('sms')} SMs, {gpu.get('memory_gib')} GiB, "
             f"L2 {gpu.get('l2_mib')} MiB{visible}",
             f"- CUDA driver {gpu.get('driver')}, runtime {gpu.get('runtime')}, NVRTC {gpu.get('nvrtc')}",
             f"- {cupy}, numba-cuda {gpu.get('numba_cuda') or 'not installed'}, {torch_text}",
             f"- peaks the benchmarks use: {peaks}"]
    smi = s.get("nvidia_smi")
    if smi and "\n" in smi:
        lines += ["", "nvidia-smi:", "", _code(smi)]
    elif smi:
        lines.append(f"- nvidia-smi: {smi}")
    return lines


def _md_cuda_tests(s: dict) -> list[str]:
    if "passed" not in s:
        return []
    lines = [f"{s['passed']} passed, {s['failed']} failed, {s['errors']} errors, {s['skipped']} skipped."]
    if s["failures"]:
        lines += ["", "Failures (first line each; the whole text is in logs/cuda_tests.junit.xml):", ""]
        lines += [f"- `{f['name']}` ({f['kind']}): {f['message']}" for f in s["failures"][:40]]
        if len(s["failures"]) > 40:
            lines.append(f"- ... and {len(s['failures']) - 40} more")
    if s["skip_reasons"]:
        lines += ["", "Skip reasons:", ""] + [f"- {n} x {reason}" for reason, n in s["skip_reasons"].items()]
    return lines


def _md_sanitizer(s: dict) -> list[str]:
    if not s.get("tools"):
        return []
    lines = ["Each tool over `python -m cunet.train " + " ".join(TINY_TRAIN) + "` (CuPy's memory pool off)."]
    for tool, t in s["tools"].items():
        lines += ["", f"- **{tool}**: {_status_word(t['status'])}, {t['note']}"]
        if t["first_errors"]:
            lines += ["", _code("\n\n".join(t["first_errors"]))]
        if t.get("output_tail") and not t["first_errors"]:
            lines += ["", _code(t["output_tail"][-1500:])]
    return lines


def _md_kernels(s: dict) -> list[str]:
    if "rows" not in s:
        return []
    peak = s["peak"] or {}
    rows = []
    for r in s["rows"]:
        row = dict(op=r["op"], shapes=r["shapes"], count=r["count"],
                   time="FAILED" if not r["validated"] else harness.fmt_time(r["median_s"]),
                   numba=harness.fmt_time(r["numba_median_s"]) if r["numba_median_s"] else "",
                   torch=harness.fmt_time(r["torch_median_s"]) if r["torch_median_s"] else "",
                   ratio=f"{r['cunet_over_torch']:.2f}" if r["cunet_over_torch"] else "")
        if r["median_s"]:
            row.update(gflops=f"{r['gflops']:,.0f}", gbps=f"{r['gbps']:,.0f}",
                       peak=f"{100 * r['peak_fraction']:.0f}% {'C' if r['bound'] == 'compute' else 'M'}")
        rows.append(row)
    columns = [("op", "op"), ("shapes", "shapes"), ("count", "n"), ("time", "cunet"), ("gflops", "GFLOP/s"),
               ("gbps", "GB/s"), ("peak", "% peak"), ("numba", "Numba"), ("torch", "PyTorch"),
               ("ratio", "cunet/PyTorch")]
    lines = [f"{s['device']}; {s['timer']}; peak {peak.get('gflops', 0):,.0f} GFLOP/s, {peak.get('gbps', 0):,.0f} GB/s "
             f"({peak.get('gflops_source')}).", "", _code(harness.format_table(columns, rows, left=2)), "",
             "% peak: C = of the compute peak (TF32 tensor cores for the convolutions when they ran in TF32, else FP32), "
             "M = of the memory bandwidth; n = times a step runs this shape; "
             "Numba = the Numba CUDA alternate of the same op."]
    failed = [r for r in s["rows"] if not r["validated"]]
    lines += [f"- FAILED validation: `{r['op']}` {r['shapes']}: {r['error']}" for r in failed]
    return lines


def _md_ladder(s: dict) -> list[str]:
    if "rows" not in s:
        return []
    from .ladder import format_rows

    return [f"{s['device']}; shape {s['shape']}.", "", _code(format_rows(s["rows"], "cuda"))]


def _md_train_step(s: dict) -> list[str]:
    if "frameworks" not in s:
        return []
    c = s["config"]
    rows = [dict(fw=name, time=harness.fmt_time(f["median_s"]), ips=f"{f['images_per_s']:.2f}",
                 gpu=_mib(f["gpu_step_peak"]), host=_mib(f["host_step_peak"]), error=f["memory_error"] or "")
            for name, f in s["frameworks"].items()]
    lines = [f"{s['device']}; tile {c['tile']}, base {c['base']}, depth {c['depth']}, batch {c['batch']}, "
             f"median of {c['steps']} steps.", "",
             _code(harness.format_table([("fw", "framework"), ("time", "step time"), ("ips", "img/s"),
                                         ("gpu", "GPU step peak"), ("host", "host step peak"), ("error", "memory error")],
                                        rows))]
    if s["speed_ratio"] is not None:
        lines += ["", f"cunet/PyTorch images/s: **{s['speed_ratio']:.2f}**."]
    if s.get("loss_check_rel_diff") is not None:
        lines.append(f"Losses on the same weights (drop-out off) agreed to {s['loss_check_rel_diff']:.1e} before timing.")
    if s.get("disturbed"):
        lines.append(f"DISTURBED: only {s['rounds_counted']} rounds ran with the CPUs otherwise idle.")
    return lines


SECTION_MARKDOWN = {"device": _md_device, "cuda_tests": _md_cuda_tests, "sanitizer": _md_sanitizer,
                    "kernels_fp32": _md_kernels, "train_step_fp32": _md_train_step, "ladder": _md_ladder,
                    "kernels": _md_kernels, "train_step": _md_train_step}


def write_report(out: Path, report: dict, logs: dict) -> None:
    """DIR/report.json, DIR/report.md and DIR/logs/*, each file written whole."""
    for name, text in logs.items():
        _write_whole(out / "logs" / name, text)
    _write_whole(out / "report.json", harness.dump_json(report) + "\n")
    _write_whole(out / "report.md", render_markdown(report))


def _write_whole(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename it: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; the report is for everyone
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


# --- the command line ----------------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0],
                                epilog=f"Sections, in order: {', '.join(SECTIONS)}.")
    p.add_argument("--out", required=True, help="folder for report.md, report.json and logs/ (new, or without a report)")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                   help=f"seconds for everything (default {DEFAULT_BUDGET_S:.0f})")
    p.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS)} (default all)")
    return p.parse_args(argv)


def input_problem(args) -> str | None:
    """What is wrong with the arguments, said so that the fix is clear; None if nothing."""
    if args.sections is not None:
        unknown = [s for s in args.sections.split(",") if s.strip() not in SECTIONS]
        if unknown:
            return f"--sections: unknown {', '.join(map(repr, unknown))}; choose from {','.join(SECTIONS)}"
    if not args.budget_s > 0:
        return f"--budget-s must be a positive number of seconds (default {DEFAULT_BUDGET_S:.0f}), got {args.budget_s}"
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file; give a folder for the report (a new one, or one without report.md/report.json)"
    existing = [name for name in REPORT_FILES if (out / name).exists()]
    if existing:
        return (f"--out {out} already holds a report ({', '.join(existing)}), which is kept; give a new folder, "
                f"e.g. --out {out.with_name(out.name + '-2')}")
    parent = out.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"--out {out}: cannot create or write in {parent}; give a folder you can write to"
    return None


def _refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv=None, probe: Callable[[], dict] = probe_gpu, tools: Tools | None = None) -> int:
    args = parse_args(argv)
    from cunet.device import DeviceUnavailableError

    try:
        gpu = probe()
    except DeviceUnavailableError as exc:
        return _refuse(str(exc))
    problem = input_problem(args)
    if problem:
        return _refuse(problem)
    tools = tools or Tools()
    selected = [s for s in SECTIONS if args.sections is None or s in {x.strip() for x in args.sections.split(",")}]
    started = datetime.datetime.now().isoformat(timespec="seconds")
    load_before = harness.load_average()
    command = harness.command_line()
    t0 = tools.clock()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as scratch:
        sections, logs = run_sections(selected, gpu, tools, args.budget_s, Path(scratch))
    header = harness.header("cunet GPU check", f"cuda ({gpu.get('name')})", command=command, load=load_before)
    report = build_report(command, started, args.budget_s, tools.clock() - t0, selected, gpu, sections, header,
                          harness.machine(), load_before)
    out = Path(args.out)
    write_report(out, report, logs)
    print(f"{_status_word(report['status'])}: {out / 'report.md'}, {out / 'report.json'}")
    for name, s in report["summary"].items():
        if s["status"] != NOT_SELECTED:
            print(f"  {TITLES[name]:<30} {_status_word(s['status']):<13} {s['headline']}")
    return 0 if report["status"] == PASS else 1


def _interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP (an outer timeout, a closed terminal) stop the run as Ctrl-C does: the
    running command's process group is killed (it is in a session of its own, so no signal
    reaches it otherwise) and the report of what ran is still written."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


if __name__ == "__main__":
    _interrupt_on_termination()
    sys.exit(main())
