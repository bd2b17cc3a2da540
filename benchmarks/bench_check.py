"""Benchmark: the full ``ln-deploy check`` of a 12-layer d=256 pre-LN encoder (models/transformer.py:
encoder_12x256), localisation and invariance included, on 2 CPU threads; prints how the time splits
between runners and phases. Figures only: no timed asserts.

    python benchmarks/bench_check.py [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import onnxruntime
    import polygraphy
    import torch

    torch.set_num_threads(args.threads)
    from ln_deploy import progress
    from ln_deploy.check import check_model
    from ln_deploy.export import export_model
    from ln_deploy.spec import load_spec
    from models.catalog import spec_path

    progress.set_quiet(True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
          f"{args.threads} threads; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"polygraphy {polygraphy.__version__}")
    spec = spec_path("models/transformer.py:encoder_12x256")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        loaded = load_spec(spec)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        exp = export_model(loaded, Path(tmp) / "enc.onnx")
        t_export = time.perf_counter() - t0
        print(f"model: 12 layers, d=256, input {list(loaded.example_inputs[0].shape)}, "
              f"{exp.node_count} ONNX nodes, {exp.norm_count} norms; load {t_load:.1f} s, export {t_export:.1f} s "
              "(not part of the check)")
        totals = []
        for i in range(args.repeat):
            t0 = time.perf_counter()
            report = check_model(loaded, exp.path, threads=args.threads, report_dir=Path(tmp) / f"r{i}")
            total = time.perf_counter() - t0
            totals.append(total)
            assert report.passed, report.failures
        print(f"full check (2 feeds, localisation of {len(report.localisation['onnxrt-cpu']['norms'])} norms, "
              f"{len([r for r in report.invariance if r['status'] != 'skipped'])} invariance checks, report + plots): "
              f"best {min(totals):.2f} s, median {sorted(totals)[len(totals) // 2]:.2f} s over {args.repeat} runs")
        timed = sum(sum(p.values()) for p in report.timings_s.values())
        print(f"\nlast run, {report.total_s:.2f} s in check_model, split by runner and phase:")
        for runner, phases in report.timings_s.items():
            tot = sum(phases.values())
            detail = ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
            print(f"  {runner:14s} {tot:6.2f} s ({100 * tot / report.total_s:4.1f} %)  [{detail}]")
        print(f"  {'other':14s} {report.total_s - timed:6.2f} s  (spec/ONNX loading and validation, "
              "comparison statistics, report writing and plots)")
        ratio = report.timings_s["pytorch-fp32"]["compare"] / max(report.timings_s["onnxrt-cpu"]["compare"], 1e-9)
        print(f"\nPyTorch / ONNX Runtime time on the comparison feeds: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
