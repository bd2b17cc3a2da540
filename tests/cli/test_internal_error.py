"""A bug in ln_deploy is exit 3 with one line asking for a report, not a failed check (exit 1)."""

import subprocess
import sys

# The stage's run() is replaced by one that raises what a bug raises; everything else is the real CLI.
_BUG = """
import sys
import ln_deploy.fuse.cli as stage
def run(args):
    raise {exc}
stage.run = run
from ln_deploy.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run(exc: str, *args: str):
    return subprocess.run([sys.executable, "-c", _BUG.format(exc=exc), "fuse", "in.onnx", "-o", "out.onnx", *args],
                          capture_output=True, text=True, timeout=120)


def test_bug_is_exit_3_one_line():
    r = _run("KeyError('shape')")
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "internal error: KeyError" in lines[0] and "please report this" in lines[0]
    assert "Traceback" not in r.stderr


def test_debug_shows_the_traceback():
    r = _run("ZeroDivisionError('x')", )
    assert r.returncode == 3
    r = subprocess.run([sys.executable, "-c", _BUG.format(exc="ZeroDivisionError('x')"), "--debug", "fuse",
                        "in.onnx", "-o", "out.onnx"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr and "ZeroDivisionError" in r.stderr


def test_failed_check_stays_exit_1():
    r = _run("__import__('ln_deploy.errors', fromlist=['x']).CheckFailedError('parity failed at blocks.0.norm1')")
    assert r.returncode == 1 and "parity failed" in r.stderr
