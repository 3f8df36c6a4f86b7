"""python -m cunet.trace: the launches of one train step, in order, with their modelled cost."""
from cunet import trace


def launch_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line[:4].strip().isdigit()]


def test_the_paper_step_lists_every_launch(capsys):
    assert trace.main([]) == 0
    out = capsys.readouterr().out
    lines = launch_lines(out)
    recorded = trace.record_train_step(572, 64, 5)
    assert len(lines) == len(recorded) and f"{len(recorded)} launches" in out
    assert [line.split()[1] for line in lines] == [launch.kernel for launch in recorded]
    assert sum(line.split()[1] == "conv2d_forward" for line in lines) == 19  # 18 3x3 convolutions and the head
    assert "0.903 TFLOP" in out and "MODELLED" in out


def test_compile_adds_registers_and_occupancy(capsys):
    assert trace.main(["--tile", "44", "--base", "2", "--depth", "3", "--gpu", "H200", "--math", "fp32", "--compile"]) == 0
    out = capsys.readouterr().out
    lines = launch_lines(out)
    assert lines and all(line.rstrip().endswith("%") for line in lines)
    assert "regs  occ" in out and "H200" in out


def test_bad_sizes_are_clear_errors(capsys):
    assert trace.main(["--tile", "45", "--depth", "3"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert trace.main(["--base", "0"]) == 2
    assert "--base and --batch must be at least 1" in capsys.readouterr().err
