"""benchmarks.gpu_check: the one command for a GPU day, exercised here without a GPU.

The GPU, the commands and the clock are fakes: a probe that returns what describe_gpu makes
of a fake CuPy, a runner that answers each command with canned output (a JUnit XML written
where pytest was told to write it, compute-sanitizer's summaries, and the REAL JSON that
benchmarks.kernels and benchmarks.train_step print with --quick on cpu, plus the two keys
they add only on cuda), and a clock that each command moves on. What is checked: the
report is written whole with every section and its status, its headline numbers are the
ones the canned data give, a failure/time-out/missing tool in one section leaves the others
reporting, the budget skips what it cannot fit, and without a GPU (this machine) or with bad
input the command stops with `error:` and exit code 2, writing nothing.
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the benchmarks package lives beside cunet, not inside it

from benchmarks import gpu_check  # noqa: E402
from helpers import has_gpu, skip_without_pocl  # noqa: E402


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


# --- canned outputs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def benchmark_outputs() -> dict:
    """stdout of the real benchmarks with --quick --json on cpu (run side by side, ~10 s), with
    the keys their cuda paths add (test_cuda_only_keys_are_the_benchmarks_own checks the names)."""
    skip_without_pocl()
    commands = {"kernels": ["benchmarks.kernels", "--quick", "--json", "--ops", "conv2d,relu", "--layers", "down0"],
                "train_step": ["benchmarks.train_step", "--quick", "--json"],
                "ladder": ["benchmarks.ladder", "conv2d", "--shape", "1,2,6,7,3", "--repeats", "1", "--json"]}
    children = {name: subprocess.Popen([sys.executable, "-m", *cmd], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True) for name, cmd in commands.items()}
    reports = {}
    for name, child in children.items():
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        reports[name] = json.loads(out)
    for r in reports["kernels"]["results"]:
        if r["op"].startswith("relu"):  # the ops with Numba CUDA alternates: run_cases times them on cuda
            r["numba_median_s"] = 1.5 * r["median_s"]
    for name, memory in reports["train_step"]["memory"].items():  # child_main's device-side peak on cuda
        memory["gpu_step_peak"] = {"cunet": 300 << 20, "torch": 200 << 20}[name]
    for row in reports["ladder"]["rows"]:  # run_ladder's share of the peak, on cuda
        row["peak_fraction"] = row["gflops"] / 19_500
    return reports


def test_cuda_only_keys_are_the_benchmarks_own():
    """The two keys the fixture adds are the ones the benchmarks' cuda paths write."""
    from benchmarks import kernels, train_step

    assert 'numba_median_s=harness.median(t)' in inspect.getsource(kernels.time_numba_alternate)
    assert 'result["gpu_step_peak"]' in inspect.getsource(train_step.child_main)


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests"><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5" time="12.3">
<testcase classname="tests.test_conv2d" name="test_forward[cuda]" time="0.5" />
<testcase classname="tests.test_conv2d" name="test_forward[cuda-numba]" time="0.5" />
<testcase classname="tests.test_maxpool" name="test_backward_scatter[cuda]" time="0.1">
<failure message="AssertionError: maxpool backward differs at 3 of 1024 elements&#10;second line">long traceback</failure>
</testcase>
<testcase classname="tests.test_relu" name="test_relu_forward[cuda-numba]" time="0.1">
<error message="failed on setup with &quot;numba.cuda.cudadrv.error.CudaSupportError&quot;">traceback</error>
</testcase>
<testcase classname="tests.test_add" name="test_add[cuda]" time="0.0">
<skipped type="pytest.skip" message="float64 atomics need sm_60">skip</skipped>
</testcase>
</testsuite></testsuites>
"""

MEMCHECK_CLEAN = """device: cuda (NVIDIA H200, CUDA C kernels)
finished step 1 in 0.1 min
========= COMPUTE-SANITIZER
========= ERROR SUMMARY: 0 errors
"""
RACECHECK_CLEAN = """========= COMPUTE-SANITIZER
========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)
"""
SYNCCHECK_TWO_ERRORS = """========= COMPUTE-SANITIZER
========= Barrier error detected. Divergent thread(s) in warp
=========     at maxpool2x2_backward+0x90 in maxpool.cu:41
=========     by thread (3,0,0) in block (0,0,0)
=========
========= Barrier error detected. Divergent thread(s) in block
=========     at crop_concat_forward+0x40 in crop_concat.cu:12
=========
========= ERROR SUMMARY: 2 errors
"""
NVIDIA_SMI = "| NVIDIA-SMI 580.00   Driver Version: 580.00   CUDA Version: 13.0 |\n| 0  NVIDIA H200  On |\n"


@dataclass
class Canned:
    """A command's scripted answer: ``seconds`` it takes (more than its timeout: it is killed)."""

    seconds: float
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    write_junit: str | None = None  # pytest: this XML, where --junitxml= says


def command_key(cmd: list[str]) -> str:
    """Which of the canned answers a command gets."""
    if cmd[0].endswith("nvidia-smi"):
        return "nvidia-smi"
    if cmd[0].endswith("compute-sanitizer"):
        return cmd[cmd.index("--tool") + 1]
    for key in ("pytest", "benchmarks.kernels", "benchmarks.train_step", "benchmarks.ladder"):
        if key in cmd:
            return key.removeprefix("benchmarks.")
    raise AssertionError(f"unexpected command {cmd}")


class FakeLab:
    """A GPU machine made of canned answers and a clock that each command moves on."""

    def __init__(self, answers: dict, on_path=("nvidia-smi", "compute-sanitizer")):
        self.answers, self.on_path = answers, on_path
        self.now = 5000.0
        self.calls, self.lines = [], []

    def tools(self) -> gpu_check.Tools:
        return gpu_check.Tools(run=self.run, clock=lambda: self.now, which=self.which, log=self.lines.append)

    def which(self, name):
        return f"/usr/local/cuda/bin/{name}" if name in self.on_path else None

    def run(self, cmd, timeout, env):
        key = command_key(cmd)
        self.calls.append(dict(key=key, cmd=cmd, timeout=timeout, env=env))
        answer = self.answers[key]
        if answer.seconds > timeout:  # what run_command does at the limit: kill, keep the output so far
            self.now += timeout
            return gpu_check.Completed(None, answer.stdout[: len(answer.stdout) // 2], "", timeout)
        if answer.write_junit is not None:
            Path(next(a for a in cmd if a.startswith("--junitxml=")).split("=", 1)[1]).write_text(answer.write_junit)
        self.now += answer.seconds
        return gpu_check.Completed(answer.returncode, answer.stdout, answer.stderr, answer.seconds)


class FakeCupy:
    """What describe_gpu asks of CuPy, answered as CuPy 14 with CUDA 13 on an H200 would
    (no clockRate or memoryClockRate: CUDA 13 dropped them from cudaDeviceProp)."""

    __version__ = "14.0.0"

    def __init__(self):
        props = {"name": b"NVIDIA H200", "major": 9, "minor": 0, "multiProcessorCount": 132,
                 "totalGlobalMem": 150_000_000_000, "l2CacheSize": 62_914_560, "memoryBusWidth": 6144}
        runtime = SimpleNamespace(getDevice=lambda: 0, getDeviceCount=lambda: 1, getDeviceProperties=lambda i: props,
                                  driverGetVersion=lambda: 13000, runtimeGetVersion=lambda: 13000)
        self.cuda = SimpleNamespace(runtime=runtime, nvrtc=SimpleNamespace(getVersion=lambda: (13, 0)),
                                    Device=lambda: SimpleNamespace(id=0))


def fake_probe() -> dict:
    return gpu_check.describe_gpu(FakeCupy())


def default_answers(outputs: dict, **changes) -> dict:
    answers = {"nvidia-smi": Canned(0.5, stdout=NVIDIA_SMI),
               "pytest": Canned(60, returncode=1, stdout="..F.E.s\n1 failed, 3 passed", write_junit=JUNIT),
               "memcheck": Canned(20, stdout=MEMCHECK_CLEAN),
               "racecheck": Canned(20, stdout=RACECHECK_CLEAN),
               # exit code 0: the verdict must come from the summary, not only from --error-exitcode
               "synccheck": Canned(20, returncode=0, stdout=SYNCCHECK_TWO_ERRORS),
               "kernels": Canned(70, stdout=json.dumps(outputs["kernels"])),
               "train_step": Canned(40, stdout=json.dumps(outputs["train_step"])),
               "ladder": Canned(20, stdout=json.dumps(outputs["ladder"]))}
    answers.update(changes)
    return answers


def run_check(tmp_path, lab, *extra) -> tuple[int, dict, str]:
    out = tmp_path / "report"
    code = gpu_check.main(["--out", str(out), *extra], probe=fake_probe, tools=lab.tools())
    report = json.loads((out / "report.json").read_text())
    return code, report, (out / "report.md").read_text()


# --- the whole report ------------------------------------------------------------------------------------


def test_full_report_with_canned_outputs(tmp_path, benchmark_outputs):
    lab = FakeLab(default_answers(benchmark_outputs))
    code, report, md = run_check(tmp_path, lab)
    sections = report["sections"]
    assert code == 1 and report["status"] == "fail"  # a failing test and two synccheck errors
    assert list(sections) == list(gpu_check.SECTIONS)
    assert {name: s["status"] for name, s in sections.items()} == {
        "device": "pass", "cuda_tests": "fail", "sanitizer": "fail", "kernels": "pass", "train_step": "pass",
        "kernels_fp32": "pass", "train_step_fp32": "pass", "ladder": "pass"}
    assert sections["ladder"]["headline"].startswith("v1 ") and "## the conv ladder: pass" in md
    # the fp32 sections ran the same programs with --math fp32 (the GEMM ops only for the kernels)
    fp32_commands = [c["cmd"] for c in lab.calls if "--math" in c["cmd"]]
    assert len(fp32_commands) == 2 and all(cmd[cmd.index("--math") + 1] == "fp32" for cmd in fp32_commands)
    assert any("--ops" in cmd and "conv2d,upconv" in cmd for cmd in fp32_commands)
    assert report["summary"]["train_step"]["status"] == "pass"

    # device: from the probe (CUDA 13 properties without clock rates) and nvidia-smi
    assert sections["device"]["gpu"]["compute_capability"] == "9.0" and sections["device"]["gpu"]["driver"] == "13.0"
    assert sections["device"]["gpu"]["peak"]["gflops"] == 67_000  # the H200's datasheet entry
    assert "NVIDIA H200, compute capability 9.0, 132 SMs" in md and "Driver Version: 580.00" in md
    assert "- CUDA driver 13.0, runtime 13.0, NVRTC 13.0" in md
    assert f"numba-cuda {gpu_check._package_version('numba-cuda') or 'not installed'}, " in md

    # cuda tests: counts and failures from the JUnit XML; the command as documented
    tests = sections["cuda_tests"]
    assert (tests["passed"], tests["failed"], tests["errors"], tests["skipped"]) == (2, 1, 1, 1)
    assert "tests.test_maxpool::test_backward_scatter[cuda]" in md
    assert "maxpool backward differs at 3 of 1024 elements" in md and "second line" not in md
    assert tests["skip_reasons"] == {"float64 atomics need sm_60": 1}
    pytest_call = next(c for c in lab.calls if c["key"] == "pytest")
    assert pytest_call["cmd"][1:6] == ["-m", "pytest", "-m", "cuda", "-q"]
    assert pytest_call["env"]["HYPOTHESIS_PROFILE"] == "ci"
    assert all(c["env"]["PYTHONUNBUFFERED"] == "1" for c in lab.calls)

    # sanitizer: ERROR SUMMARY: 2 errors fails synccheck (and the section); its reports are shown
    tools = sections["sanitizer"]["tools"]
    assert {t: tools[t]["status"] for t in tools} == {"memcheck": "pass", "racecheck": "pass", "synccheck": "fail"}
    assert tools["synccheck"]["errors"] == 2 and tools["synccheck"]["note"] == "2 errors"
    assert len(tools["synccheck"]["first_errors"]) == 2
    assert "memcheck 0 errors, racecheck 0 errors, synccheck 2 errors" in md
    assert "at maxpool2x2_backward+0x90 in maxpool.cu:41" in md
    sanitizer_cmd = next(c["cmd"] for c in lab.calls if c["key"] == "memcheck")
    assert sanitizer_cmd[1:7] == ["--tool", "memcheck", "--error-exitcode", "1", "--target-processes", "application-only"]
    assert sanitizer_cmd[sanitizer_cmd.index("--tile") + 1] == "44" and "--steps" in sanitizer_cmd

    # kernels: every op of the real JSON, with its Numba time where given and PyTorch's ratio
    kernels_json = benchmark_outputs["kernels"]
    rows = sections["kernels"]["rows"]
    assert [r["op"] for r in rows] == [r["op"] for r in kernels_json["results"]]
    relu = next(r for r in rows if r["op"] == "relu_backward")
    assert relu["numba_median_s"] == pytest.approx(1.5 * relu["median_s"])
    conv = next(r for r in kernels_json["results"] if r["op"] == "conv2d_forward")
    if "torch_median_s" in conv:
        assert f"{conv['median_s'] / conv['torch_median_s']:.2f}" in md
    assert f"{100 * conv['peak_fraction']:.0f}% C" in md

    # train step: the headline numbers, computed here from the canned JSON
    ts = benchmark_outputs["train_step"]
    batch, cunet_s = ts["config"]["batch"], ts["time"]["cunet"]["median_s"]
    assert f"cunet {batch / cunet_s:.2f} img/s" in md
    if "torch" in ts["time"]:
        torch_s = ts["time"]["torch"]["median_s"]
        assert f"PyTorch {batch / torch_s:.2f} img/s: cunet/PyTorch {torch_s / cunet_s:.2f}" in md
        assert sections["train_step"]["speed_ratio"] == pytest.approx(torch_s / cunet_s)
    assert "step peak GPU memory cunet 300 MiB" in md

    # the summary comes first, and report.md is made from report.json alone
    assert md.index("## Summary") < md.index("## device") < md.index("## train step")
    assert gpu_check.render_markdown(report) == md
    assert (tmp_path / "report" / "logs" / "cuda_tests.junit.xml").read_text() == JUNIT
    assert "--- stdout" in (tmp_path / "report" / "logs" / "sanitizer-synccheck.txt").read_text()
    assert any("cuda_tests: started" in line for line in lab.lines)
    assert any(line.endswith("1 failed, 1 errors, 1 skipped") for line in lab.lines)


def test_a_timed_out_section_is_recorded_and_the_others_still_report(tmp_path, benchmark_outputs):
    printed = '{"benchmark": "kernels", "results": ['
    lab = FakeLab(default_answers(benchmark_outputs, kernels=Canned(10_000, stdout=printed)))
    code, report, md = run_check(tmp_path, lab)
    kernels = report["sections"]["kernels"]
    assert kernels["status"] == "timed_out" and kernels["headline"].startswith("timed out after ")
    assert kernels["output_tail"] == printed[: len(printed) // 2]  # what it printed before it was killed
    assert report["sections"]["train_step"]["status"] == "pass"  # still ran, with the time that was left
    assert "## kernels: TIMED OUT" in md and "## train step: pass" in md and " img/s" in md
    assert code == 1


def test_missing_sanitizer_is_not_installed_not_a_failure(tmp_path, benchmark_outputs):
    junit_all_pass = JUNIT.split("<testcase classname=\"tests.test_maxpool\"")[0] + "</testsuite></testsuites>"
    lab = FakeLab(default_answers(benchmark_outputs, pytest=Canned(30, stdout="..", write_junit=junit_all_pass)),
                  on_path=("nvidia-smi",))
    code, report, md = run_check(tmp_path, lab)
    assert report["sections"]["sanitizer"]["status"] == "not_installed"
    assert "not installed" in report["sections"]["sanitizer"]["headline"]
    assert not any(c["key"] in gpu_check.SANITIZER_TOOLS for c in lab.calls)
    assert code == 0 and report["status"] == "pass"
    assert "## compute-sanitizer: not installed" in md


def test_budget_spent_skips_the_remaining_sections(tmp_path, benchmark_outputs):
    """A command that overran (the clock jumped past the deadline): what is left is skipped, the report written."""
    lab = FakeLab(default_answers(benchmark_outputs))
    original_run = lab.run

    def run_then_jump(cmd, timeout, env):
        done = original_run(cmd, timeout, env)
        if command_key(cmd) == "pytest":
            lab.now += 1000.0
        return done
    lab.run = run_then_jump
    code, report, md = run_check(tmp_path, lab, "--budget-s", "300")
    statuses = {name: s["status"] for name, s in report["sections"].items()}
    assert statuses == {"device": "pass", "cuda_tests": "fail", "sanitizer": "skipped", "kernels": "skipped",
                        "train_step": "skipped", "kernels_fp32": "skipped", "train_step_fp32": "skipped",
                        "ladder": "skipped"}
    assert "not enough time left" in report["sections"]["kernels"]["headline"]
    assert [c["key"] for c in lab.calls] == ["nvidia-smi", "pytest"]
    assert code == 1 and "## kernels: SKIPPED" in md


def test_an_interrupted_run_still_writes_its_report(tmp_path, benchmark_outputs):
    """Ctrl-C (or SIGTERM, which main turns into the same) while the kernels run."""
    lab = FakeLab(default_answers(benchmark_outputs))
    original_run = lab.run

    def interrupt_kernels(cmd, timeout, env):
        if command_key(cmd) == "kernels":
            raise KeyboardInterrupt
        return original_run(cmd, timeout, env)
    lab.run = interrupt_kernels
    code, report, md = run_check(tmp_path, lab)
    sections = report["sections"]
    assert sections["kernels"]["status"] == "error" and "interrupted" in sections["kernels"]["headline"]
    assert sections["train_step"] == dict(status="skipped", seconds=0.0, headline="skipped: the run was interrupted")
    assert sections["cuda_tests"]["status"] == "fail" and code == 1


def test_time_left_over_goes_to_the_later_sections(tmp_path, benchmark_outputs):
    lab = FakeLab(default_answers(benchmark_outputs, pytest=Canned(1, returncode=1, write_junit=JUNIT)))
    _, report, _ = run_check(tmp_path, lab, "--sections", "cuda_tests,kernels")
    timeouts = {c["key"]: c["timeout"] for c in lab.calls}
    left = gpu_check.DEFAULT_BUDGET_S - gpu_check.RESERVE_S
    assert timeouts["pytest"] == pytest.approx(left * 180 / 300)
    assert timeouts["kernels"] == pytest.approx(left - 1)  # the last section gets everything left
    assert report["sections"]["sanitizer"]["status"] == "not_selected"
    assert report["selected"] == ["cuda_tests", "kernels"]


# --- the parsers ---------------------------------------------------------------------------------------------


def test_parse_junit_reads_what_pytest_writes(tmp_path):
    """A real pytest run (outside this project's configuration) of one pass, failure, error and skip."""
    (tmp_path / "test_four.py").write_text(
        "import pytest\n"
        "@pytest.fixture\n"
        "def broken():\n"
        "    raise RuntimeError('no context')\n"
        "def test_passes():\n"
        "    pass\n"
        "def test_fails():\n"
        "    assert 1 == 2, 'one is not two'\n"
        "def test_errors(broken):\n"
        "    pass\n"
        "def test_skips():\n"
        "    pytest.skip('no GPU here')\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    junit = tmp_path / "out.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                    str(tmp_path / "test_four.py")], cwd=tmp_path, capture_output=True, timeout=120)
    parsed = gpu_check.parse_junit(junit.read_text())
    assert (parsed["passed"], parsed["failed"], parsed["errors"], parsed["skipped"]) == (1, 1, 1, 1)
    assert parsed["skip_reasons"] == {"no GPU here": 1}
    failures = {f["name"]: (f["kind"], f["message"]) for f in parsed["failures"]}
    assert failures["test_four::test_fails"] == ("failure", "AssertionError: one is not two")
    assert failures["test_four::test_errors"][0] == "error" and "RuntimeError" in failures["test_four::test_errors"][1]


def test_racecheck_summary_counts_errors_and_first_reports():
    text = ("========= COMPUTE-SANITIZER\n"
            "========= Error: Race reported between Write access at conv2d_forward+0x1c0 in conv2d.cu:88\n"
            "=========     and Read access at conv2d_forward+0x2a0 in conv2d.cu:95 [4 hazards]\n"
            "=========\n"
            "========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 2 warnings)\n")
    parsed = gpu_check.parse_sanitizer_output(text)
    assert parsed["errors"] == 1 and parsed["warnings"] == 2
    assert parsed["first_errors"] == ["Error: Race reported between Write access at conv2d_forward+0x1c0 in "
                                      "conv2d.cu:88\nand Read access at conv2d_forward+0x2a0 in conv2d.cu:95 [4 hazards]"]
    assert gpu_check.parse_sanitizer_output("Traceback ...\nImportError: cupy")["errors"] is None


def test_sanitizer_verdict_fails_a_crashed_run_with_zero_errors():
    done = gpu_check.Completed(1, MEMCHECK_CLEAN, "Traceback ...\nRuntimeError: boom", 3.0)
    verdict = gpu_check.sanitizer_verdict(done, 30)
    assert verdict["status"] == "fail" and "exit code 1" in verdict["note"] and "boom" in verdict["output_tail"]


def test_run_command_kills_the_whole_group_at_the_timeout():
    """A grandchild holding the output pipe open would block communicate() if it survived."""
    t0 = time.monotonic()
    done = gpu_check.run_command(["sh", "-c", "echo started; sleep 30 & sleep 30"], 1.0, gpu_check.command_env())
    assert done.timed_out and done.returncode is None
    assert done.stdout.strip() == "started"
    assert time.monotonic() - t0 < 4  # killing only the child would leave the pipe open for 5 s more
    done = gpu_check.run_command([sys.executable, "-c", "import os; print(os.environ['PYTHONUNBUFFERED'])"], 30,
                                 gpu_check.command_env())
    assert (done.returncode, done.stdout.strip()) == (0, "1")


# --- refusing ----------------------------------------------------------------------------------------------


def test_without_a_gpu_it_writes_nothing(tmp_path):
    if has_gpu():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "x"
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: --device cuda") and ("CuPy" in done.stderr or "GPU" in done.stderr)
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not out.exists()


def test_refuses_to_overwrite_a_report(tmp_path, capsys):
    out = tmp_path / "day1"
    out.mkdir()
    (out / "report.json").write_text('{"old": true}')
    lab = FakeLab({})
    assert gpu_check.main(["--out", str(out)], probe=fake_probe, tools=lab.tools()) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "already holds a report (report.json)" in err and "day1-2" in err
    assert (out / "report.json").read_text() == '{"old": true}' and not (out / "report.md").exists()
    assert lab.calls == []


@pytest.mark.parametrize("args, message", [
    (["--out", "{file}"], "is a file"),
    (["--out", "{new}", "--sections", "kernels,gpu"], "unknown 'gpu'; choose from device,cuda_tests"),
    (["--out", "{new}", "--budget-s", "0"], "--budget-s must be a positive number"),
])
def test_bad_input_is_an_error_line(tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("not a folder")
    argv = [a.format(file=tmp_path / "file", new=tmp_path / "new") for a in args]
    assert gpu_check.main(argv, probe=fake_probe, tools=FakeLab({}).tools()) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()
