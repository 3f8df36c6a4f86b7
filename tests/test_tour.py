"""The tour (kernels/README.md) runs: every command it shows, every Python snippet it prints.

Each command line of the tour's ```bash blocks must have an entry in TOUR_COMMANDS, which
maps it to the variant this test runs (the same command where it is quick, a small size
or a temporary folder where it is not). A command added to the tour without an entry, or
an entry whose command left the tour, fails ``test_every_tour_command_has_a_small_variant``,
so the tour cannot gain an untested command. Each variant then runs as a subprocess from
the repository root and must exit 0 and print what the tour says it prints. Commands that
need a GPU may appear in the tour's prose, never in its command blocks.

The ```python snippets run too, each matched to the output it must print (SNIPPET_CHECKS).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import ISBI_DIR, skip_without_pocl

ROOT = Path(__file__).resolve().parent.parent
TOUR = ROOT / "kernels" / "README.md"
# What the tour's ../shared/data/isbi2012 names ($CUNET_ISBI elsewhere).
ISBI = ISBI_DIR


# --- reading the tour ---------------------------------------------------------------------------


def code_blocks(text: str, language: str) -> list[str]:
    """The bodies of the fenced ```language blocks of a Markdown text."""
    return re.findall(rf"^```{language}[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S)


def normalise(command: str) -> str:
    """One command as its words joined by single spaces, comments dropped."""
    return " ".join(shlex.split(command, comments=True))


def bash_commands(text: str) -> list[str]:
    """Every command line of the ```bash blocks: continuations (a trailing \\) joined, comments dropped."""
    commands = []
    for block in code_blocks(text, "bash"):
        joined = re.sub(r"\\\n", " ", block)
        commands += [c for c in (normalise(line) for line in joined.splitlines()) if c]
    return commands


def test_the_parser_joins_continuations_and_drops_comments():
    text = ("```bash\n# a comment line\npython -m a --x 1 \\\n    --y 2   # trailing comment\n\n"
            "python -m b\n```\n```\nnot bash\n```\n```python\nprint(1)\n```\n")
    assert bash_commands(text) == ["python -m a --x 1 --y 2", "python -m b"]
    assert code_blocks(text, "python") == ["print(1)\n"]


# --- the commands and the variants this test runs -------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """What runs for a tour command: ``command`` ({tmp}: a fresh folder; {data}: ``--data`` and the
    ISBI 2012 folder, or nothing where that is absent: the project's synthetic data), the strings
    its output must contain and the files it must write under {tmp}."""

    command: str
    expect: tuple[str, ...]
    files: tuple[str, ...] = ()
    timeout: float = 120
    quoted: str | None = None  # a regex for the lines of the tour's excerpt that must be in the output verbatim
    needs_pocl: bool = False  # runs kernels on PoCL (skipped where it cannot compile: helpers.pocl_unavailable)


TOUR_COMMANDS = {
    # Quick enough to run as the tour shows them; the expectations are the numbers it quotes.
    "python -m cunet.summary --size 572 --base 64 --depth 5": Variant(
        "python -m cunet.summary --size 572 --base 64 --depth 5",
        ("31.03 M parameters, 150.4 GMAC = 300.9 GFLOP forward", "0.73 GB of float32 activations"),
        quoted=r"^(?:(?:down|up)\d\.\w+|head) .*$|^total: .*$"),
    "python -m cunet.summary --valid --depth 5": Variant(
        "python -m cunet.summary --valid --depth 5", ("188 204 220 236", "556 572",)),
    "python -m cunet.trace": Variant(
        "python -m cunet.trace",
        ("188 launches", "0.903 TFLOP, 8.37 GB, MODELLED 8.92 ms on A100 40GB"),
        quoted=r"^ *\d+ \w+ +\d+x\d+x\d+ .*$|^# total: .*$"),
    # --compile costs the same at any size (NVRTC compiles each module once): a small network.
    "python -m cunet.trace --compile": Variant(
        "python -m cunet.trace --tile 92 --base 4 --depth 3 --compile", ("regs  occ", "conv2d_forward", "%")),
    # PoCL: tiny shapes, one timed repeat. The driver exits 1 if any rung fails its validation.
    "python -m benchmarks.ladder conv2d": Variant(
        "python -m benchmarks.ladder conv2d --shape 1,8,18,18,16 --repeats 1",
        ("v1 ", "v2 ", "v3 ", "v4 ", "v5 ", "v6 ", "TF32 tensor cores", "say nothing about GPUs", "MODELLED A100"),
        needs_pocl=True),
    "python -m benchmarks.ladder softmax_ce": Variant(
        "python -m benchmarks.ladder softmax_ce --shape 1,2,9,11 --repeats 1",
        ("v1 ", "v2 ", "v3 ", "one online pass (production)", "say nothing about GPUs"), needs_pocl=True),
    # Two of the six figures, small, into a temporary folder; from the ISBI data where it is here,
    # else from the synthetic data (what cunet.figures draws without --data).
    "python -m cunet.figures --out kernels/figures --data ../shared/data/isbi2012": Variant(
        "python -m cunet.figures --out {tmp} {data} --only unet,implicit_gemm --dpi 40",
        ("unet.png", "implicit_gemm.png"), files=("unet.png", "implicit_gemm.png")),
    # One architecture (sm_80: FP32 and TF32 modules) instead of six: 12 s instead of a minute.
    "python -m cunet.kernels check": Variant(
        "python -m cunet.kernels check --arch sm_80", ("0 compile errors, 0 with spills", "sm_80"), timeout=300),
    "python -m cunet.kernels list": Variant(
        "python -m cunet.kernels list",
        ("conv2d.cu[BK=8,BM=128,BN=64,FILTER=3,MATH_TF32=1,TM=8,TN=8,WARPS_M=2]", "ladder/conv2d_v1.cu",
         "sgd_momentum_update")),
    "python -m pytest -q -p no:cacheprovider tests/test_oclgrind_harness.py": Variant(
        "python -m pytest -q -p no:cacheprovider tests/test_oclgrind_harness.py", ("2 passed",)),
}

# What a command needs a GPU for: none of these may appear in the tour's command blocks.
GPU_WORDS = ("--device cuda", "--device auto", "-m cuda", "gpu_check", "--kernels numba")


def test_every_tour_command_has_a_small_variant():
    commands = bash_commands(TOUR.read_text())
    assert commands, "no ```bash block found in kernels/README.md"
    missing = [c for c in commands if c not in TOUR_COMMANDS]
    assert not missing, ("the tour shows commands this test does not run; add each to TOUR_COMMANDS with the "
                         f"small variant to run: {missing}")
    stale = [c for c in TOUR_COMMANDS if c not in commands]
    assert not stale, f"TOUR_COMMANDS has entries for commands no longer in the tour: {stale}"


def test_no_tour_command_needs_a_gpu():
    gpu = [c for c in bash_commands(TOUR.read_text()) if any(word in c for word in GPU_WORDS)]
    assert not gpu, f"GPU commands belong in the tour's prose, not its command blocks: {gpu}"


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", list(TOUR_COMMANDS))
def test_tour_command_runs(command, tmp_path):
    variant = TOUR_COMMANDS[command]
    if variant.needs_pocl:
        skip_without_pocl()
    out = tmp_path / "out"
    data = f"--data {shlex.quote(str(ISBI))}" if ISBI.is_dir() else ""
    words = shlex.split(variant.command.format(tmp=shlex.quote(str(out)), data=data))
    assert words[0] == "python", variant.command
    proc = _run([sys.executable, *words[1:]], variant.timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{variant.command} exited {proc.returncode}:\n{output[-4000:]}"
    absent = [e for e in variant.expect if e not in output]
    assert not absent, f"{variant.command} did not print {absent}:\n{output[-4000:]}"
    if variant.quoted:
        lines = re.findall(variant.quoted, TOUR.read_text(), re.M)
        assert lines, f"no line of the tour matches {variant.quoted!r}"
        unreal = [line for line in lines if line.rstrip() not in output]
        assert not unreal, f"the tour quotes lines {variant.command} does not print: {unreal}"
    for name in variant.files:
        written = (out / name).read_bytes()
        assert written.startswith(b"\x89PNG\r\n\x1a\n") and len(written) > 1000, f"{name} is not a PNG"


def test_the_figures_the_tour_shows_are_the_ones_cunet_figures_draws():
    from cunet.figures import FIGURES

    shown = set(re.findall(r"\]\(figures/(\w+)\.png\)", TOUR.read_text()))
    assert shown == set(FIGURES), f"the tour shows {sorted(shown)}; python -m cunet.figures draws {list(FIGURES)}"


# --- the Python snippets ---------------------------------------------------------------------------

# Each snippet is recognised by a string in its text and must print every one of the strings listed.
SNIPPET_CHECKS = {
    "record_train_step(572, 64, 5)[1]": (
        "conv2d_forward (2521, 1, 1) (128, 1, 1) "
        "conv2d.cu[BK=8,BM=128,BN=64,FILTER=3,MATH_TF32=1,TM=8,TN=8,WARPS_M=2]",),
    "check_backward(": ("conv2d's backward matches finite differences", "caught: input 1: the backward gives"),
    'get_device("opencl"': ("fp32 max error", "tf32 max error"),
}


def python_snippets() -> list[str]:
    return code_blocks(TOUR.read_text(), "python")


def test_every_snippet_has_a_check():
    snippets = python_snippets()
    for snippet in snippets:
        keys = [k for k in SNIPPET_CHECKS if k in snippet]
        assert len(keys) == 1, f"a ```python snippet of the tour matches {keys} of SNIPPET_CHECKS:\n{snippet}"
    assert len(snippets) == len(SNIPPET_CHECKS)


@pytest.mark.parametrize("key", list(SNIPPET_CHECKS))
def test_tour_snippet_runs(key):
    if "opencl" in key:
        skip_without_pocl()
    snippet = next(s for s in python_snippets() if key in s)
    proc = _run([sys.executable, "-c", snippet], 120)
    assert proc.returncode == 0, f"snippet failed:\n{snippet}\n{proc.stdout}\n{proc.stderr}"
    absent = [e for e in SNIPPET_CHECKS[key] if e not in proc.stdout]
    assert not absent, f"the snippet did not print {absent}:\n{proc.stdout}"
    if key == 'get_device("opencl"':  # the errors the tour quotes (~3e-6): both kernels agree with the reference
        errors = [float(line.split()[-1]) for line in proc.stdout.splitlines() if "max error" in line]
        assert errors and max(errors) < 1e-4, proc.stdout
    comment = re.search(r"^# (conv2d_forward .*)$", snippet, re.M)
    if comment:  # the output the snippet shows in its comment is what it prints
        assert comment.group(1) in proc.stdout


def test_the_readme_tour_links_here():
    tour_section = (ROOT / "README.md").read_text().split("## A tour", 1)[1]
    assert "(kernels/README.md)" in tour_section.split("```", 1)[0]
