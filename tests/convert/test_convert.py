"""convert_model: precision plans, Cast placement, the measured check, and the done-when parity of every
bundled model in fp16 and bf16 against the fp32 PyTorch reference (ln_deploy.check on ORT CPU)."""

import collections
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ln_deploy.pipeline_steps import convert_model
from models.catalog import BUNDLED, spec_path


PRECISIONS = ("fp16", "bf16")


def make_model(nodes, inputs, outputs, initializers=(), opset=20):
    """A one-graph ONNX model from helper-made parts (fp32 inputs/outputs given as (name, shape))."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                          initializer=list(initializers))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def _session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _strict_session(model):
    from ln_deploy import ort as ln_ort
    from ln_deploy.convert.emulation import strict_emulation

    return ln_ort.open_session(strict_emulation(model), ln_ort.UNOPTIMIZED)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_model_passes_check_profile(name, precision, exported_bundled, tmp_path):
    """Done-when 1: converted to fp16/bf16, every bundled model passes `ln-deploy check`'s profile."""
    from ln_deploy.check import check_model

    loaded, exported = exported_bundled[name]
    model, report = convert_model(exported.path, precision, spec=loaded.spec)
    path = tmp_path / f"{name}.{precision}.onnx"
    onnx.save(model, path)
    assert report.low_nodes > 0
    assert all(n["handling"] for n in report.normalizations)
    result = check_model(loaded, path, precision=precision, plots=False)
    assert result.passed, (name, precision, result.failures)
    # localisation runs in bf16 too (bf16 values reach Python through a Cast to fp32)
    norms = [n for loc in result.localisation.values() for n in loc["norms"]]
    assert norms or name in ("ln_gru", "ln_lstm", "stacked_ln_lstm"), result.localisation


def test_io_types_kept_and_fewest_casts(exported_bundled):
    _, exported = exported_bundled["pre_ln_encoder"]
    model, report = convert_model(exported.path, "fp16", target="tensorrt")
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    ops = collections.Counter(n.op_type for n in model.graph.node)
    # one Cast in, one Cast out: the whole graph (norms included) runs in fp16, nothing else needs one
    assert ops["Cast"] == 2, ops
    assert report.fp32_nodes == []
    for n in model.graph.node:
        if n.op_type == "LayerNormalization":
            assert {a.name: a.i for a in n.attribute}["stash_type"] == 1
    assert all(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer if t.data_type in (1, 10))


def test_no_keep_io_types_changes_the_interface(exported_bundled):
    _, exported = exported_bundled["pre_ln_encoder_block"]
    model, _ = convert_model(exported.path, "fp16", keep_io_types=False, target="tensorrt")
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert not any(n.op_type == "Cast" for n in model.graph.node)
    x = np.random.default_rng(0).standard_normal((2, 8, 64)).astype(np.float16)
    assert np.isfinite(_session(model).run(None, {"x": x})[0]).all()


def test_ort_cpu_target_emulates_what_ort_cpu_cannot_run(exported_bundled):
    """ORT's CPU provider has almost no bf16 compute kernels: the ort-cpu target runs those nodes in
    fp32 (ORT's CPU provider could not run them otherwise), with few Casts; the error is measured
    strictly anyway (every op rounded to bf16)."""
    _, exported = exported_bundled["pre_ln_encoder_block"]
    model, report = convert_model(exported.path, "bf16")
    no_kernel = [n for n in report.fp32_nodes if "no bf16 kernel" in n["reason"]]
    assert no_kernel and all(n["op_type"] not in ("Reshape", "Transpose") for n in no_kernel)
    assert sum(n.op_type == "Cast" for n in model.graph.node) <= 21
    x = np.random.default_rng(0).standard_normal((2, 8, 64)).astype(np.float32)
    assert np.isfinite(_session(model).run(None, {"x": x})[0]).all()


def test_measured_check_keeps_a_cancellation_in_fp32():
    """(x + 1000) - 1000 in fp16 loses x's digits (ulp 0.5 at 1000): the measured check must keep
    the Sub, then the Add whose rounding caused it, in fp32. The policy alone would not."""
    c = numpy_helper.from_array(np.array(1000.0, np.float32), "c")
    m = make_model([helper.make_node("Add", ["x", "c"], ["t"], name="add"),
                    helper.make_node("Sub", ["t", "c"], ["d"], name="sub"),
                    helper.make_node("Mul", ["d", "d"], ["y"], name="mul")],
                   [("x", [4, 16])], [("y", [4, 16])], [c])
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    naive, rep0 = convert_model(m, "fp16", measure=False, fp32_ops=())
    fixed, rep = convert_model(m, "fp16", calibration={"x": x}, fp32_ops=())
    ref = x * x
    # measured strictly (every op rounded to fp16, as a GPU engine computes): ORT's CPU provider
    # would run the Add/Sub chain of the plain fp16 graph in fp32 and hide the loss
    err_naive = np.abs(_strict_session(naive).run(None, {"x": x})[0] - ref).max()
    err_fixed = np.abs(_strict_session(fixed).run(None, {"x": x})[0] - ref).max()
    assert err_naive > 0.1 and err_fixed < 1e-2, (err_naive, err_fixed)
    kept = {n["node"] for n in rep.fp32_nodes}
    assert {"add", "sub"} <= kept and all(n["reason"].startswith("measured") for n in rep.fp32_nodes)


def test_range_rule_keeps_large_values_fp32():
    w = numpy_helper.from_array(np.full((16, 16), 300.0, np.float32), "w")
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                    helper.make_node("Relu", ["h"], ["y"], name="relu")],
                   [("x", [4, 16])], [("y", [4, 16])], [w])
    x = np.abs(np.random.default_rng(2).standard_normal((4, 16))).astype(np.float32) * 10
    model, rep = convert_model(m, "fp16", calibration={"x": x})
    assert {"mm", "relu"} <= {n["node"] for n in rep.fp32_nodes}
    assert np.isfinite(_session(model).run(None, {"x": x})[0]).all()


def test_lossless_cast_round_trip_is_removed():
    """A model that already casts to fp32 and back (LLaMA's RMSNorm does) keeps no useless Cast."""
    m = make_model([helper.make_node("Cast", ["x"], ["a"], to=TensorProto.FLOAT, name="up"),
                    helper.make_node("Relu", ["a"], ["b"], name="relu"),
                    helper.make_node("Cast", ["b"], ["c"], to=TensorProto.FLOAT, name="again"),
                    helper.make_node("Tanh", ["c"], ["y"], name="tanh")],
                   [("x", [2, 4])], [("y", [2, 4])])
    model, rep = convert_model(m, "fp16", target="tensorrt", measure=False)
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    # what is left: the Cast into fp16 at the input and the one back to fp32 at the output
    assert len(casts) == 2 and rep.casts_removed >= 1, [(n.name, n.input, n.output) for n in model.graph.node]
    assert [n.op_type for n in model.graph.node] == ["Cast", "Relu", "Tanh", "Cast"]


def test_decomposed_norms_stay_fp32_without_fusion(tmp_path):
    from ln_deploy.export import export_model
    from models.catalog import HANDWRITTEN

    path = tmp_path / "hw.onnx"
    export_model(spec_path(HANDWRITTEN["pre_ln_encoder_block"]), path)
    model, rep = convert_model(path, "fp16", fuse=False)
    assert [n["form"] for n in rep.normalizations] == ["decomposed"] * 3
    kept = {n["op_type"] for n in rep.fp32_nodes}
    assert {"ReduceMean", "Sub", "Pow", "Sqrt", "Div"} <= kept
    x = np.random.default_rng(3).standard_normal((2, 8, 64)).astype(np.float32)
    ref = _session(onnx.load(path)).run(None, {"x": x})[0]
    assert np.abs(_session(model).run(None, {"x": x})[0] - ref).max() < 2e-2
    fused, rep2 = convert_model(path, "fp16")  # default: fused first by ln_deploy.fuse
    assert [n["form"] for n in rep2.normalizations] == ["fused"] * 3


def test_scan_body_is_converted(exported_bundled):
    _, exported = exported_bundled["ln_gru"]
    model, rep = convert_model(exported.path, "fp16")
    scan = next(n for n in model.graph.node if n.op_type == "Scan")
    body = scan.attribute[[a.name for a in scan.attribute].index("body")].g
    assert any(t.data_type == TensorProto.FLOAT16 for t in body.initializer)
    x = np.random.default_rng(4).standard_normal((2, 8, 16)).astype(np.float32)
    ref = _session(onnx.load(exported.path)).run(None, {"x": x})[0]
    assert np.abs(_session(model).run(None, {"x": x})[0] - ref).max() < 2e-2


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ln_deploy", "-q", *args], capture_output=True, text=True, timeout=300)


def test_cli_writes_model_and_report(exported_bundled, tmp_path):
    _, exported = exported_bundled["pre_ln_encoder_block"]
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    r = _cli("convert", str(exported.path), "-o", str(out), "--precision", "bf16", "--report", str(rep))
    assert r.returncode == 0, r.stderr
    data = json.loads(rep.read_text())
    assert data["precision"] == "bf16" and len(data["normalizations"]) == 3
    assert onnx.load(out).graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--precision", "fp16", "--inputs", "missing.npz"], "no such calibration file"),
])
def test_cli_bad_input_is_one_line_exit_2(exported_bundled, tmp_path, args, message):
    _, exported = exported_bundled["pre_ln_encoder_block"]
    out = tmp_path / "o.onnx"
    r = _cli("convert", str(exported.path), "-o", str(out), *args)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_cli_calibration_with_wrong_inputs(exported_bundled, tmp_path):
    _, exported = exported_bundled["pre_ln_encoder_block"]
    np.savez(tmp_path / "c.npz", y=np.zeros((2, 8, 64), np.float32))
    r = _cli("convert", str(exported.path), "-o", str(tmp_path / "o.onnx"), "--precision", "fp16",
             "--calibration", str(tmp_path / "c.npz"))
    assert r.returncode == 2 and "missing: x" in r.stderr and "unknown: y" in r.stderr
