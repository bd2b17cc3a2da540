"""``ln-deploy fuse`` on graphs other projects wrote: the 38 models of ``../shared/peer_corpus``
(generated from the fusion tests of ONNX Runtime, onnxscript and TensorRT; its README.md and
manifest.json list each model's source and patterns). Read in place, never copied here.

Every fusable pattern fuses (RMS ones with ``--opset 23`` for the onnx target; all of them on the
tensorrt target), the output stays within 1e-4 of the original relative to the output's scale
(1e-2 for fp16 outputs) on random inputs in ONNX Runtime, the two invalid graphs are refused with
exit 2 and one line, and the look-alike is left with its true reason.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from ln_deploy.cli import main as cli_main
from ln_deploy.plugin_reference import expand_plugin_nodes

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "peer_corpus"
pytestmark = pytest.mark.skipif(not (CORPUS / "manifest.json").is_file(),
                                reason=f"peer corpus not found at {CORPUS} (../shared is not beside the checkout)")
MANIFEST = json.loads((CORPUS / "manifest.json").read_text()) if (CORPUS / "manifest.json").is_file() else []
VALID = [e for e in MANIFEST if e["valid"]]
INVALID = [e for e in MANIFEST if not e["valid"]]
FUSED_OPS = {"onnx": {"LayerNormalization", "RMSNormalization"}, "tensorrt": {"LnDeployNorm", "LnDeploySkipNorm"}}
_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
       onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}


def _args(entry, target, tmp_path):
    out, rep = tmp_path / "out.onnx", tmp_path / "report.json"
    args = ["--quiet", "fuse", str(CORPUS / "models" / entry["file"]), "-o", str(out), "--report", str(rep),
            "--target", target]
    if target == "onnx" and entry["opset23"]:
        args += ["--opset", "23"]
    return args, out, rep


def _feeds(model, entry, rng):
    dims, ranges = entry.get("dims", {}), entry.get("inputs", {})
    feeds = {}
    for i in model.graph.input:
        t = i.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else dims.get(d.dim_param, 2) for d in t.shape.dim]
        dtype = _NP[t.elem_type]
        r = ranges.get(i.name)
        if np.issubdtype(dtype, np.integer):
            lo, hi = (r["low"], r["high"]) if r else (0, 4)
            feeds[i.name] = rng.integers(lo, hi, shape).astype(dtype)
        elif r:
            feeds[i.name] = rng.uniform(r["low"], r["high"], shape).astype(dtype)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _run(model, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})


@pytest.mark.parametrize("target", ["onnx", "tensorrt"])
@pytest.mark.parametrize("entry", VALID, ids=[e["file"][:-5] for e in VALID])
def test_every_fusable_pattern_fuses_and_the_output_holds(entry, target, tmp_path, capsys):
    args, out, rep = _args(entry, target, tmp_path)
    rc = cli_main(args)
    err = capsys.readouterr().err
    assert rc == 0, err
    report = json.loads(rep.read_text())
    expected = sum(p["fusable"] for p in entry["patterns"])
    assert report["fused"]["LayerNormalization"] + report["fused"]["RMSNormalization"] == expected, report
    fused = onnx.load(out)
    assert sum(n.op_type in FUSED_OPS[target] for n in fused.graph.node) == expected
    if expected == 0:  # the look-alike: epsilon is a graph input
        assert any("epsilon is not a constant: it is a graph input" in r["reason"] for r in report["rejected"]), report
    original = onnx.load(CORPUS / "models" / entry["file"])
    runnable = expand_plugin_nodes(fused)[0] if target == "tensorrt" else fused
    feeds = _feeds(original, entry, np.random.default_rng(11))
    for ref, new in zip(_run(original, feeds), _run(runnable, feeds)):
        assert ref.shape == new.shape and ref.dtype == new.dtype
        ref64, new64 = ref.astype(np.float64), new.astype(np.float64)
        scale = max(float(np.max(np.abs(ref64))), 1e-6)
        tol = 1e-2 if ref.dtype == np.float16 else 1e-4
        assert float(np.max(np.abs(ref64 - new64))) <= tol * scale


def test_corpus_totals():
    """45 fusable patterns and one look-alike, as the corpus README says (guards the parametrisation)."""
    assert len(MANIFEST) == 38 and len(INVALID) == 2
    assert sum(p["fusable"] for e in VALID for p in e["patterns"]) == 45


@pytest.mark.parametrize("entry", INVALID, ids=[e["file"][:-5] for e in INVALID])
def test_invalid_graph_is_refused_in_one_line(entry, tmp_path):
    # the real executable: exit 2, one stderr line naming the type error, no traceback, nothing written
    for target in ("onnx", "tensorrt"):
        args, out, _ = _args(entry, target, tmp_path)
        r = subprocess.run([sys.executable, "-m", "ln_deploy", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "cannot load the input model" in lines[0] and "Type Error" in lines[0], lines[0]
        assert not out.exists()
