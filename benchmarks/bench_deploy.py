"""A deploy run from scratch against a second, unchanged run of the same command (every stage reused).

    python benchmarks/bench_deploy.py [--spec SPEC] [--precision fp16]

Prints both wall times (each ``ln-deploy deploy`` in its own process, as a user runs it) and their
ratio; the second run hashes the inputs and artifacts and skips every stage.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(spec: str, work: Path, precision: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ln_deploy", "-q", "deploy", spec, "-o", str(work), "--precision",
                        precision], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"deploy failed: {r.stderr.strip()}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="models/transformer.py:pre_ln_encoder")
    ap.add_argument("--precision", default="fp16")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        first = _run(args.spec, work, args.precision)
        second = _run(args.spec, work, args.precision)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{args.spec} ({args.precision})")
    print(f"first run   {first:7.2f} s")
    print(f"second run  {second:7.2f} s (every stage reused)")
    print(f"ratio       {second / first:7.3f}")


if __name__ == "__main__":
    main()
