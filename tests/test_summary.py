"""python -m cunet.summary: the paper's totals, and a clear error for a bad size."""
import json
import re
import subprocess
import sys

import pytest

from cunet.summary import layer_table


def test_paper_totals():
    rows = layer_table(572, base=64, depth=5)
    assert sum(r.params for r in rows) == 31_030_658  # counted by hand in test_unet_sizes
    assert 149e9 < sum(r.macs for r in rows) < 152e9  # "about 150 GMAC" (Ronneberger et al.)
    assert rows[-1].output_shape == (1, 2, 388, 388)


def test_conv_macs_by_hand():
    first = layer_table(572, base=64, depth=5)[0]
    assert first.macs == 64 * 570 * 570 * 1 * 9


def test_cli_prints_table_and_refuses_bad_size():
    ok = subprocess.run([sys.executable, "-m", "cunet.summary", "--size", "188", "--base", "4", "--depth", "5"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "total:" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "cunet.summary", "--size", "570"], capture_output=True, text=True)
    assert bad.returncode == 2 and "use 556 or 572" in bad.stderr


def run_main(argv, capsys):
    """(exit status, stdout, stderr) of the summary command run in-process (argparse's errors exit)."""
    from cunet.summary import main

    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("argv,option,valid", [
    (["--base", "0"], "--base", ">= 1"),                  # was a ValueError traceback from UNet
    (["--classes", "1"], "--classes", ">= 2"),
    (["--in-channels", "0"], "--in-channels", ">= 1"),
    (["--batch", "0"], "--batch", ">= 1"),                # was a table of zeros
    (["--depth", "0"], "--depth", r"in \[2, 32\)"),
    (["--depth", "1"], "--depth", r"in \[2, 32\)"),       # was a traceback: the size functions took it, UNet did not
    (["--depth", "99"], "--depth", r"in \[2, 32\)"),
    (["--size", "-3"], "--size", ">= 1"),
    (["--size", "abc"], "--size", "an integer"),
    (["--valid", "--size", "0"], "--size", ">= 1"),
    (["--valid", "--depth", "0"], "--depth", r"in \[2, 32\)"),  # was every size from 5 to 572
])
def test_cli_bad_options_exit_2_naming_the_option(capsys, argv, option, valid):
    status, out, err = run_main(argv, capsys)
    assert status == 2 and out == ""
    assert re.search(rf"error: argument {option}: must be {valid}", err), err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["--size", "100", "--depth", "7"], r"error: --size: input size 100 does not fit a depth-7 U-Net.*use 764 \(the smallest"),
    (["--size", "571"], "error: --size: input size 571 does not fit a depth-5 U-Net.*use 556 or 572"),
    (["--valid", "--depth", "9", "--size", "100"],           # printed nothing at all
     r"error: no valid input size up to --size 100 at --depth 9; the smallest is 3068 \(pass --size 3068 or more\)"),
    (["--valid", "--json", "--size", "187"], "the smallest is 188"),
])
def test_cli_impossible_sizes_exit_2_and_say_what_works(capsys, argv, message):
    status, out, err = run_main(argv, capsys)
    assert status == 2 and out == ""
    assert re.search(message, err), err


def test_cli_valid_lists_sizes(capsys):
    status, out, _ = run_main(["--valid", "--depth", "9", "--size", "3400"], capsys)
    assert status == 0 and out.split() == ["3068", "3324"]
    status, out, _ = run_main(["--valid", "--json", "--size", "220"], capsys)
    assert status == 0 and json.loads(out) == [188, 204, 220]
