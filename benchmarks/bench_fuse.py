"""How long `ln_deploy.fuse` takes on deep encoders with hand-written LayerNorm, and how it scales.

    python benchmarks/bench_fuse.py [--depths 12 48] [--repeat 3]

Exports pre-LN encoders (models/transformer.py, hand-written LayerNorm: 2 per layer + 1 final) at
each depth, then times ``fuse_model`` (best of --repeat): the fusion alone (``verify=False``) and
with the ONNX Runtime safety check. Prints a table and writes a JSON record with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "models")]


def export_encoder(layers: int, path: Path):
    import torch
    from transformer import D, _build

    torch.manual_seed(0)
    model = _build(layers=layers, pre_ln=True, handwritten=True).eval()
    x = torch.randn(2, 8, D)
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[12, 48])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)

    import onnx
    import onnxruntime
    import onnxscript

    from ln_deploy import progress
    from ln_deploy.fuse import fuse_model

    progress.set_quiet(True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for depth in args.depths:
            path = Path(tmp) / f"enc{depth}.onnx"
            export_encoder(depth, path)
            model = onnx.load(str(path))
            fuse_times, total_times = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                _, report = fuse_model(model, verify=False)
                fuse_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _, checked = fuse_model(model, verify=True)
                total_times.append(time.perf_counter() - t0)
            rows.append({"layers": depth, "nodes_before": report.nodes_before, "nodes_after": report.nodes_after,
                         "norms_fused": report.total_fused, "fuse_s": min(fuse_times),
                         "fuse_and_check_s": min(total_times), "max_relative_error": checked.max_error})
    base = rows[0]
    print(f"{'layers':>6} {'nodes':>11} {'norms':>5} {'fuse s':>7} {'+check s':>8} {'ratio':>6}")
    for r in rows:
        r["ratio_vs_first"] = r["fuse_s"] / base["fuse_s"]
        print(f"{r['layers']:>6} {r['nodes_before']:>5}->{r['nodes_after']:<5} {r['norms_fused']:>5} "
              f"{r['fuse_s']:>7.2f} {r['fuse_and_check_s']:>8.2f} {r['ratio_vs_first']:>6.2f}")
    record = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count(), "python": platform.python_version()},
              "versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                           "onnxscript": onnxscript.__version__},
              "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / f"bench_fuse-{time.strftime('%Y%m%d-%H%M%S')}.json"
    dest.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
