"""python -m cunet.summary: the paper's totals, and a clear error for a bad size."""
import subprocess
import sys

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
