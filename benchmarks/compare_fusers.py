"""Compare normalization fusers on one corpus: ln_deploy, onnxruntime's transformers optimizer, and
onnxscript's fusion rules.

    python benchmarks/compare_fusers.py [--opset 20] [--markdown]

Corpus: every spelling and look-alike graph of tests/fuse/graphs.py (float32). For each fuser and
graph: normalization ops after fusion, and the max abs difference of the output from the original
model in ONNX Runtime (random normal input). "wrong" = output changed by more than 1e-4.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "fuse")]

NORM_OPS = {"LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
            "SkipSimplifiedLayerNormalization"}


def corpus(opset):
    import graphs as G

    out = {}
    for name, b in G.LAYER_NORM_SPELLINGS.items():
        out[f"LN {name}"] = (b(opset), 1)
    for name, b in G.RMS_NORM_SPELLINGS.items():
        out[f"RMS {name}"] = (b(opset), 1)
    for name, (b, _) in G.LOOKALIKES.items():
        out[f"look-alike {name}"] = (b(opset), 0)
    out["look-alike scale_over_other_axis"] = (G.scale_over_other_axis(opset), None)
    return out


def run_ort(model, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})[0]


def fuse_ln_deploy(model, tmp):
    from ln_deploy import progress
    from ln_deploy.fuse import fuse_model

    progress.set_quiet(True)
    return fuse_model(model, opset=23 if "RMS" in tmp.name else None, verify=False)[0]


def fuse_ort(model, tmp):
    from onnxruntime.transformers.optimizer import optimize_model

    src = tmp / "in.onnx"
    onnx.save(model, src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=0,
                             use_gpu=False, only_onnxruntime=False)
    return opt.model


def fuse_onnxscript(model, tmp):
    import onnx_ir as ir
    from onnxscript.rewriter import pattern
    from onnxscript.rewriter.rules.fusion import _layer_norm, _rms_normalization

    m = ir.from_proto(onnx.shape_inference.infer_shapes(model))
    # as onnxscript applies them (commute=True fails on its RMS rule's OrValue in 0.7.2)
    rules = pattern.RewriteRuleSet(_layer_norm.layer_normalization_rules + _rms_normalization.rms_normalization_rules)
    rules.apply_to_model(m)
    return ir.to_proto(m)


FUSERS = {"ln_deploy": fuse_ln_deploy, "onnxruntime": fuse_ort, "onnxscript": fuse_onnxscript}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--opset", type=int, default=20)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    rows, totals = [], {f: {"fused": 0, "wrong": 0, "crash": 0} for f in FUSERS}
    for name, (model, expected) in corpus(args.opset).items():
        feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
                 for i in model.graph.input}
        feeds = {k: (v[:1] * 0 + 1e-5 if k == "eps" else v) for k, v in feeds.items()}
        ref = run_ort(model, feeds)
        cells = []
        for fname, fuse in FUSERS.items():
            with tempfile.TemporaryDirectory() as d:
                tmp = Path(d) / name.replace(" ", "_")
                tmp.mkdir()
                try:
                    fused = fuse(model, tmp)
                    n = sum(node.op_type in NORM_OPS for node in fused.graph.node)
                    out = run_ort(fused, feeds).astype(np.float64)
                    diff = np.abs(out - ref)
                    diff[np.isnan(out) & np.isnan(ref)] = 0.0  # both NaN (e.g. sqrt of a negative)
                    err = float(np.max(np.where(np.isnan(diff), np.inf, diff)))
                    wrong = err > 1e-4
                    totals[fname]["fused"] += n if not wrong else 0
                    totals[fname]["wrong"] += wrong
                    cells.append(f"{n} ({err:.0e})" + (" **wrong**" if wrong else ""))
                except Exception as e:  # noqa: BLE001 - a crash is a result here
                    totals[fname]["crash"] += 1
                    cells.append(f"crash ({type(e).__name__})")
        rows.append((name, cells))
    print(f"Normalization ops after fusion (max abs output error), opset {args.opset}, float32\n")
    print("| graph | " + " | ".join(FUSERS) + " |")
    print("|---|" + "---|" * len(FUSERS))
    for name, cells in rows:
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| **total** | " + " | ".join(
        f"{t['fused']} correct, {t['wrong']} wrong, {t['crash']} crashed" for t in totals.values()) + " |")


if __name__ == "__main__":
    main()
