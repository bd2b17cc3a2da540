"""How long `ln_deploy.fuse` takes on deep encoders with hand-written LayerNorm, how it scales, and
how it compares with onnxscript's own LayerNorm rule on the same graph (side by side, one run).

    python benchmarks/bench_fuse.py [--depths 12 24 48] [--repeat 3] [--profile]

Exports pre-LN encoders (models/transformer.py, hand-written LayerNorm: 2 per layer + 1 final) at
each depth, then times (best of --repeat):
  * ``fuse_model(verify=False)``: ModelProto in, fused ModelProto out (shape inference, canonical
    forms, every rule family, lowering, serialisation);
  * ``fuse_model(verify=True)``: the same plus the ONNX Runtime safety check;
  * onnxscript's ``_layer_norm`` rules (``RewriteRuleSet(layer_normalization_rules)``) applied to the
    same graph: ``apply_to_model`` alone on an already-built onnx_ir model (its cheapest reading),
    and ModelProto to ModelProto (``ir.from_proto`` + apply + ``ir.to_proto``, as fuse_model does).
``--profile`` adds a cProfile of fuse_model(verify=False) at the deepest depth (top functions by
cumulative time). Prints a table and writes a JSON record with the machine.
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


def _onnxscript_ln(model):
    """(apply-only seconds, proto-to-proto seconds, rewrites) of onnxscript's LayerNorm rules."""
    import onnx_ir as ir
    from onnxscript.rewriter import pattern
    from onnxscript.rewriter.rules.fusion import _layer_norm

    rules = pattern.RewriteRuleSet(_layer_norm.layer_normalization_rules)
    m = ir.from_proto(model)
    t0 = time.perf_counter()
    n = rules.apply_to_model(m)
    apply_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = ir.from_proto(model)
    rules.apply_to_model(m)
    ir.to_proto(m)
    return apply_s, time.perf_counter() - t0, n


def _profile(model, top=18):
    import cProfile
    import io
    import pstats

    from ln_deploy.fuse import fuse_model

    prof = cProfile.Profile()
    prof.enable()
    fuse_model(model, verify=False)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="+", default=[12, 24, 48])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="cProfile fuse_model at the deepest depth")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)

    import onnx
    import onnxruntime
    import onnxscript

    from ln_deploy import progress
    from ln_deploy.fuse import fuse_model

    progress.set_quiet(True)
    rows, profile = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for depth in args.depths:
            path = Path(tmp) / f"enc{depth}.onnx"
            export_encoder(depth, path)
            model = onnx.load(str(path))
            fuse_model(model, verify=False)  # first call builds the rule sets (cached per process)
            fuse_times, total_times, os_apply, os_proto = [], [], [], []
            for _ in range(args.repeat):  # interleaved, so machine load hits all alike
                t0 = time.perf_counter()
                _, report = fuse_model(model, verify=False)
                fuse_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _, checked = fuse_model(model, verify=True)
                total_times.append(time.perf_counter() - t0)
                a, b, os_n = _onnxscript_ln(model)
                os_apply.append(a)
                os_proto.append(b)
            rows.append({"layers": depth, "nodes_before": report.nodes_before, "nodes_after": report.nodes_after,
                         "norms_fused": report.total_fused, "fuse_s": min(fuse_times),
                         "fuse_and_check_s": min(total_times), "max_relative_error": checked.max_relative_error,
                         "onnxscript_ln_apply_s": min(os_apply), "onnxscript_ln_proto_s": min(os_proto),
                         "onnxscript_ln_rewrites": os_n})
            if args.profile and depth == max(args.depths):
                profile = _profile(model)
    base = rows[0]
    print(f"{'layers':>6} {'nodes':>11} {'norms':>5} {'fuse s':>7} {'+check s':>8} {'os apply s':>10} "
          f"{'os proto s':>10} {'x apply':>7} {'x proto':>7} {'s/layer':>8}")
    for r in rows:
        r["ratio_vs_first"] = r["fuse_s"] / base["fuse_s"]
        r["vs_onnxscript_apply"] = r["fuse_s"] / r["onnxscript_ln_apply_s"]
        r["vs_onnxscript_proto"] = r["fuse_s"] / r["onnxscript_ln_proto_s"]
        r["fuse_s_per_layer"] = r["fuse_s"] / r["layers"]
        print(f"{r['layers']:>6} {r['nodes_before']:>5}->{r['nodes_after']:<5} {r['norms_fused']:>5} "
              f"{r['fuse_s']:>7.3f} {r['fuse_and_check_s']:>8.3f} {r['onnxscript_ln_apply_s']:>10.3f} "
              f"{r['onnxscript_ln_proto_s']:>10.3f} {r['vs_onnxscript_apply']:>7.1f} {r['vs_onnxscript_proto']:>7.1f} "
              f"{r['fuse_s_per_layer'] * 1000:>6.1f}ms")
    if profile:
        print(profile)
    record = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average": os.getloadavg()},
              "versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                           "onnxscript": onnxscript.__version__},
              "rows": rows, "profile": profile}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / f"bench_fuse-{time.strftime('%Y%m%d-%H%M%S')}.json"
    dest.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
