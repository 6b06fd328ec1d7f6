"""benchmarks/selftrain.py's command line: bad input is one line and exit code 2, as in eseg's commands."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_fewer_labelled_images_than_a_batch_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "selftrain.py"), "--part", "selftrain",
                          "--seeds", "1", "--steps", "2", "--labelled", "2", "--unlabelled", "2", "--val", "2",
                          "--size", "64x128", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "fewer than one batch" in last and "batch_size" in last
