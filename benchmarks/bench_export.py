"""Export time per bundled model, and PyTorch eager vs ONNX Runtime CPU latency, measured in one run.

    python benchmarks/bench_export.py [--repeats 50] [--threads 2] [--out docs/bench_export.md]

Latency is the median over ``--repeats`` runs at the model's example inputs, after warm-up, with both
runtimes on the same number of threads. The ratio is eager / ORT (> 1: ORT is faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_ms(fn, repeats):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="also write the Markdown table to this file")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from ln_deploy import progress
    from ln_deploy.export import export_model
    from ln_deploy.spec import load_spec
    from models.catalog import BUNDLED, spec_path

    progress.set_quiet(True)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for name, spec in BUNDLED.items():
            loaded = load_spec(spec_path(spec))
            t0 = time.perf_counter()
            res = export_model(loaded, Path(td) / f"{name}.onnx")
            t_export = time.perf_counter() - t0
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            sess = ort.InferenceSession(res.path, so, providers=["CPUExecutionProvider"])
            feeds = {n: t.numpy() for n, t in zip(res.input_names, loaded.example_inputs)}
            with torch.inference_mode():
                eager = _median_ms(lambda: loaded.module(*loaded.example_inputs), args.repeats)
            onnx_ms = _median_ms(lambda: sess.run(None, feeds), args.repeats)
            rows.append((name, res.rnn_mode or "-", res.node_count, t_export, eager, onnx_ms, eager / onnx_ms))
            print(f"{name:24s} export {t_export:6.2f} s  eager {eager:7.3f} ms  ORT {onnx_ms:7.3f} ms  "
                  f"eager/ORT {eager / onnx_ms:5.2f}x", flush=True)

    import onnx
    import onnxruntime

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}, torch {torch.__version__}, onnx {onnx.__version__}, "
               f"onnxruntime {onnxruntime.__version__}, {args.threads} threads, median of {args.repeats}")
    lines = [f"Machine: {machine}", "",
             "| model | rnn mode | nodes | export (s) | eager (ms) | ORT CPU (ms) | eager / ORT |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {n} | {m} | {k} | {te:.2f} | {e:.3f} | {o:.3f} | {r:.2f}x |" for n, m, k, te, e, o, r in rows]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
