"""Three normalization fusers on graphs other projects wrote: ln_deploy, ONNX Runtime's transformers
optimizer and onnxscript's fusion rules, on every model of ``../shared/peer_corpus`` (38 graphs from
the fusion tests of ONNX Runtime, onnxscript and TensorRT; 45 fusable patterns), in one run.

    python benchmarks/peer_corpus.py [--corpus ../shared/peer_corpus] [--markdown]

Per model and fuser: how many of its fusable patterns became one normalization op with the output
unchanged, "wrong" when the fused output differs from the original's by more than 1e-4 of the
output's scale (1e-2 for fp16 outputs) on random inputs in ONNX Runtime (the manifest's dims and
input ranges), "crash" when the fuser raises or its output does not run. Models whose RMS patterns
need opset 23 (manifest ``opset23``) are fused at opset 23 by ln_deploy (``--opset 23``) and by
onnxscript (its RMS rule writes ``RMSNormalization``); ONNX Runtime's optimizer writes its own
contrib ops at any opset and gets the model as it is. ln_deploy runs as ``ln-deploy fuse`` does
(``fuse_model`` with the safety check): a refusal of an invalid graph (exit 2) is a "refused".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

NORM_OPS = {"LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
            "SkipSimplifiedLayerNormalization"}
_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
       onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}


def feeds_for(model, entry, rng):
    dims, ranges = entry.get("dims", {}), entry.get("inputs", {})
    feeds = {}
    for i in model.graph.input:
        t = i.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else dims.get(d.dim_param, 2) for d in t.shape.dim]
        dtype = _NP[t.elem_type]
        r = ranges.get(i.name)
        if np.issubdtype(dtype, np.integer):
            feeds[i.name] = rng.integers(r["low"] if r else 0, r["high"] if r else 4, shape).astype(dtype)
        elif r:
            feeds[i.name] = rng.uniform(r["low"], r["high"], shape).astype(dtype)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def run(model, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})


def _count(model) -> int:
    return sum(n.op_type in NORM_OPS for n in model.graph.node)


def fuse_ln_deploy(model, entry, tmp):
    from ln_deploy import progress
    from ln_deploy.fuse import fuse_model

    progress.set_quiet(True)
    return fuse_model(model, "onnx", opset=23 if entry["opset23"] else None)[0]


def fuse_ort(model, entry, tmp):
    from compare_fusers import fuse_ort as f

    return f(model, tmp)


def fuse_onnxscript(model, entry, tmp):
    from onnx import version_converter

    from compare_fusers import fuse_onnxscript as f

    if entry["opset23"] and model.opset_import[0].version < 23:
        model = version_converter.convert_version(model, 23)
    return f(model, tmp)


FUSERS = {"ln_deploy": fuse_ln_deploy, "onnxruntime": fuse_ort, "onnxscript": fuse_onnxscript}


def _cell(fuser, model, entry, expected, tmp):
    from ln_deploy.errors import BadInputError

    try:
        fused = fuser(model, entry, tmp)
    except BadInputError as e:
        return {"status": "refused", "why": str(e)[:160]}
    except Exception as e:  # noqa: BLE001 - a crash is a result here
        return {"status": "crash", "why": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"}
    n = _count(fused) - _count(model)
    try:
        feeds = feeds_for(model, entry, np.random.default_rng(11))
        ref, new = run(model, feeds), run(fused, feeds)
    except Exception as e:  # noqa: BLE001 - the original itself fails (invalid graph) or the fused one does
        try:
            run(model, feeds_for(model, entry, np.random.default_rng(11)))
        except Exception:  # noqa: BLE001
            return {"status": "unrunnable", "fused": n, "why": "the original does not run in ONNX Runtime"}
        return {"status": "crash", "why": f"fused model fails in ORT: {type(e).__name__}"}
    err = 0.0
    for r, f in zip(ref, new):
        if r.shape != f.shape:
            return {"status": "wrong", "fused": n, "error": float("inf")}
        r64, f64 = r.astype(np.float64), f.astype(np.float64)
        scale = max(float(np.max(np.abs(r64))), 1e-6)
        tol = 1e-2 if r.dtype == np.float16 else 1e-4
        e = float(np.max(np.abs(r64 - f64))) / scale
        if e > tol:
            return {"status": "wrong", "fused": n, "error": e}
        err = max(err, e)
    return {"status": "ok", "fused": min(n, expected), "error": err}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=str(ROOT.parent / "shared" / "peer_corpus"))
    p.add_argument("--json", default=None, help="also write the per-model results here")
    args = p.parse_args(argv)
    corpus = Path(args.corpus)
    if not (corpus / "manifest.json").is_file():
        sys.exit(f"peer corpus not found at {corpus}")
    manifest = json.loads((corpus / "manifest.json").read_text())
    rows, totals = [], {f: {"fused": 0, "wrong": 0, "crash": 0, "refused": 0} for f in FUSERS}
    t0 = time.perf_counter()
    for entry in manifest:
        model = onnx.load(corpus / "models" / entry["file"])
        expected = sum(p["fusable"] for p in entry["patterns"])
        cells = {}
        for name, fuser in FUSERS.items():
            with tempfile.TemporaryDirectory() as d:
                c = _cell(fuser, model, entry, expected, Path(d))
            cells[name] = c
            t = totals[name]
            if c["status"] == "ok":
                t["fused"] += c["fused"]
            elif c["status"] in t:
                t[c["status"]] += 1
            elif c["status"] == "unrunnable" and entry["valid"]:
                t["crash"] += 1
        rows.append({"file": entry["file"], "expected": expected, "valid": entry["valid"], "cells": cells})
    total_expected = sum(r["expected"] for r in rows)

    def text(c, expected):
        s = c["status"]
        if s == "ok":
            return f"{c['fused']}/{expected}"
        if s == "wrong":
            return f"**wrong** ({c['fused']} ops, error {c['error']:.1e})"
        if s == "unrunnable":
            return f"{c['fused']} ops (original does not run)"
        return f"{s} ({c['why'].split(':')[0]})"

    print(f"Peer corpus ({len(rows)} models, {total_expected} fusable patterns), {time.perf_counter() - t0:.0f} s\n")
    print("| model | fusable | " + " | ".join(FUSERS) + " |")
    print("|---|---|" + "---|" * len(FUSERS))
    for r in rows:
        print(f"| `{r['file'][:-5]}` | {r['expected'] if r['valid'] else 'invalid'} | "
              + " | ".join(text(r["cells"][f], r["expected"]) for f in FUSERS) + " |")
    print(f"| **total** | {total_expected} | " + " | ".join(
        f"**{t['fused']}/{total_expected} fused**, {t['wrong']} wrong, {t['crash']} crashed, {t['refused']} refused"
        for t in totals.values()) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "totals": totals}, indent=2) + "\n")


if __name__ == "__main__":
    main()
