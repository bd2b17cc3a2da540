"""Typing of the converted graph: every node sees input types its definition (schema *and* ONNX function
body) accepts and ONNX Runtime has a kernel for, and an ill-typed result is refused, never written.

The root cause these reproduce: RMSNormalization (opset 23) declares X: T and scale: V independently,
so the conversion took X for type-agnostic and left it in the low type while an emulated node's scale
went to fp32; its function body computes ``Mul(Cast<to=T>(normalized), scale)`` and ONNX Runtime
refused the graph ("Type parameter (T) of Optype (Mul) bound to different types"). LLaMA's exported
graph feeds RMSNorm from a Gather that stays low: the same shape as the Reshape below.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ln_deploy.pipeline_steps import convert_model
from ln_deploy.convert import node_typing as P
from ln_deploy.onnx_graph import infer_types
from ln_deploy.convert.validate import check_function_bodies, validate_converted
from ln_deploy.errors import InternalError

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits=(), opset=23):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                          initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def rms_model(producer="Reshape"):
    """x → producer → RMSNormalization(·, scale) → MatMul → y. Reshape (data movement) stays low;
    Exp stays fp32 (policy), so a low RMSNormalization is fed an fp32 X."""
    inits = [numpy_helper.from_array(np.array([2, 4, 8], np.int64), "shape"),
             numpy_helper.from_array((1 + 0.1 * RNG.standard_normal(8)).astype(np.float32), "scale"),
             numpy_helper.from_array(RNG.standard_normal((8, 8)).astype(np.float32), "w")]
    pre = [helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape")]
    if producer == "Exp":
        pre = [helper.make_node("Reshape", ["x", "shape"], ["r0"], name="reshape"),
               helper.make_node("Exp", ["r0"], ["r"], name="exp")]
    nodes = pre + [
             helper.make_node("RMSNormalization", ["r", "scale"], ["n"], name="rms", axis=-1, epsilon=1e-6),
             helper.make_node("MatMul", ["n", "w"], ["y"], name="mm")]
    return _model(nodes, [("x", [8, 8])], [("y", [2, 4, 8])], inits)


def _run(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _old_agnostic(self, schema, i, node=None):
    """The rule before the fix: the schema's type parameters alone."""
    f = P.formal_param(schema.inputs, i)
    if f is None or f.type_str not in P.type_params(schema):
        return False
    others = [x.type_str for j, x in enumerate(schema.inputs) if j != i] + [o.type_str for o in schema.outputs]
    return f.type_str not in others


@pytest.mark.parametrize("producer", ["Reshape", "Exp"])
@pytest.mark.parametrize("measure", [True, False])
@pytest.mark.parametrize("target", ["ort-cpu", "tensorrt"])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_rms_norm_x_and_scale_get_one_type(precision, target, measure, producer):
    m = rms_model(producer)
    x = RNG.standard_normal((8, 8)).astype(np.float32)
    model, _ = convert_model(m, precision, target=target, measure=measure, calibration={"x": x})
    types = infer_types(model)
    rms = next(n for n in model.graph.node if n.op_type == "RMSNormalization")
    assert types[rms.input[0]] == types[rms.input[1]], [(i, types.get(i)) for i in rms.input]
    assert check_function_bodies(model) is None
    if target == "ort-cpu" or precision == "fp16":
        err = np.abs(_run(model, {"x": x}) - _run(m, {"x": x})).max()
        assert err < (5e-2 if precision == "fp16" else 2e-1), err


def test_typer_reads_function_bodies():
    """Independent schema type parameters are not enough: the function body decides."""
    typer = P.Typer(TensorProto.FLOAT16, {"": 23}, {"a": 1, "b": 1, "c": 1, "d": 1, "y": 1})
    rms = helper.make_node("RMSNormalization", ["a", "b"], ["y"])
    assert not typer._agnostic(P.schema_of(rms, {"": 23}), 0, rms)  # body: Mul(Cast<to=T>(...), scale)
    att = helper.make_node("Attention", ["a", "b", "c", "d"], ["y"])
    assert typer._agnostic(P.schema_of(att, {"": 23}), 3, att)  # body: CastLike(attn_mask, ...)
    pw = helper.make_node("Pow", ["a", "b"], ["y"])
    assert typer._agnostic(P.schema_of(pw, {"": 23}), 1, pw)  # no body: the schema's word
    # a low RMSNormalization takes both inputs low; an fp32 one both fp32
    assert typer.io(rms, "low") == ([TensorProto.FLOAT16] * 2, [TensorProto.FLOAT16])
    assert typer.io(rms, "fp32") == ([TensorProto.FLOAT] * 2, [TensorProto.FLOAT])


def test_fp32_node_keeps_its_original_input_types():
    """T5's decomposed RMSNorm: Pow(x, Constant 2.0) stays fp32; its exponent, a Constant that went
    bf16, is type-agnostic to the schema but ORT's CPU provider has no Pow(float, bfloat16) kernel."""
    nodes = [helper.make_node("Constant", [], ["two"], name="two", value=numpy_helper.from_array(np.array(2.0, np.float32))),
             helper.make_node("Mul", ["x", "x"], ["h"], name="mul"),
             helper.make_node("Pow", ["h", "two"], ["p"], name="pow"),
             helper.make_node("Mul", ["p", "two"], ["y"], name="mul2")]
    m = _model(nodes, [("x", [4, 8])], [("y", [4, 8])])
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    model, rep = convert_model(m, "bf16", calibration={"x": x})
    assert "pow" in {n["node"] for n in rep.fp32_nodes}
    pow_ = next(n for n in model.graph.node if n.op_type == "Pow")
    types = infer_types(model)
    assert [types[i] for i in pow_.input] == [TensorProto.FLOAT, TensorProto.FLOAT]
    ref = _run(m, {"x": x})
    assert np.abs(_run(model, {"x": x}) - ref).max() / np.abs(ref).max() < 3e-2


def test_emulated_multi_output_node():
    """LayerNormalization with Mean/InvStdDev: one rounding Cast per low output, each named apart,
    and the statistics (the stash type) stay fp32, emulated or not."""
    inits = [numpy_helper.from_array(np.ones(8, np.float32), "g"), numpy_helper.from_array(np.zeros(8, np.float32), "b")]
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["n", "mean", "istd"], name="ln", axis=-1),
             helper.make_node("Mul", ["n", "mean"], ["y0"], name="m0"),
             helper.make_node("Add", ["y0", "istd"], ["y"], name="a0")]
    m = _model(nodes, [("x", [4, 8])], [("y", [4, 8])], inits, opset=20)
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    for precision in ("fp16", "bf16"):
        model, _ = convert_model(m, precision, calibration={"x": x})
        names = [n.name for n in model.graph.node]
        assert len(names) == len(set(names)), names
        types = infer_types(model)
        ln = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
        assert [types[o] for o in ln.output[1:]] == [TensorProto.FLOAT] * 2
        _run(model, {"x": x})


def test_emulated_plugin_skip_norm_runs_in_ort_bf16():
    """A tensorrt-fused model (LnDeploySkipNorm, two outputs) converted for ort-cpu in bf16: plugin
    nodes are emulated, so their reference expansion runs on ORT's CPU provider (no bf16 Mul there)."""
    from ln_deploy.fuse import fuse_model
    from ln_deploy.plugin_reference import expand_plugin_nodes

    inits = [numpy_helper.from_array((1 + 0.1 * RNG.standard_normal(8)).astype(np.float32), "g"),
             numpy_helper.from_array(RNG.standard_normal(8).astype(np.float32), "b"),
             numpy_helper.from_array(RNG.standard_normal((8, 8)).astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["x", "h"], ["s"], name="res"),
             helper.make_node("LayerNormalization", ["s", "g", "b"], ["n"], name="ln", axis=-1),
             helper.make_node("MatMul", ["n", "w"], ["m2"], name="mm2"),
             helper.make_node("Add", ["s", "m2"], ["y"], name="res2")]
    m = _model(nodes, [("x", [4, 8])], [("y", [4, 8])], inits, opset=20)
    fused, _ = fuse_model(m, target="tensorrt")
    assert any(n.op_type == "LnDeploySkipNorm" for n in fused.graph.node)
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    model, rep = convert_model(fused, "bf16")
    names = [n.name for n in model.graph.node]
    assert len(names) == len(set(names)), names
    assert "LnDeploySkipNorm" in {n["op_type"] for n in rep.emulated_nodes}
    ref = _run(m, {"x": x})
    got = _run(expand_plugin_nodes(model)[0], {"x": x})
    assert np.abs(got - ref).max() / np.abs(ref).max() < 3e-2


# ----------------------------------------------------------------------------- refusing ill-typed output

def test_validator_names_the_node_whose_body_rejects_its_types():
    m = rms_model()
    rms = m.graph.node[1]
    m.graph.node.insert(1, helper.make_node("Cast", ["r"], ["r16"], to=TensorProto.FLOAT16, name="c"))
    rms.input[0] = "r16"
    rms.output[0] = "n16"
    m.graph.node.insert(3, helper.make_node("Cast", ["n16"], ["n"], to=TensorProto.FLOAT, name="c2"))
    assert check_function_bodies(m) == ("rms", "node 'rms' (RMSNormalization) gets inputs (fp16, fp32) "
                                               "its ONNX function body rejects")
    with pytest.raises(InternalError, match="RMSNormalization") as e:
        validate_converted(m, source=rms_model())
    assert len(str(e.value).splitlines()) == 1 and "--fp32-node rms" in str(e.value)
    validate_converted(rms_model())  # the fp32 model is fine


@pytest.mark.parametrize("opset, accepted", [(13, False), (18, True), (23, True)])
def test_a_body_built_at_an_older_opset_is_judged_at_the_models(opset, accepted):
    """Clip-13 accepts bfloat16, but ONNX builds its body (Less + Where) at opset 13, whose Where has
    no bfloat16: at the model's opset 18 (Where-16) the body type-checks, at opset 13 it truly does not.
    Found converting torchvision's Swin V2 to bf16 (its logit-scale clamp), refused as ill-typed."""
    names = ["x", "lo", "hi"]
    g = helper.make_graph([helper.make_node("Clip", names, ["y"], name="clip")], "g",
                          [helper.make_tensor_value_info(n, TensorProto.BFLOAT16, [3] if n == "x" else [])
                           for n in names],
                          [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    found = check_function_bodies(m)
    assert (found is None) == accepted, found


def test_validator_refuses_duplicate_node_names():
    m = rms_model()
    m.graph.node[2].name = "rms"
    with pytest.raises(InternalError, match="two nodes with same node name"):
        validate_converted(m)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("measure", [True, False])
def test_ill_typed_conversion_is_refused(monkeypatch, measure, precision):
    """With the old typing rule back (X left fp32 from the Exp, scale low), the conversion must raise
    a one-line InternalError (ln_deploy's bug: exit 3) rather than return (or let ORT throw on) an
    ill-typed graph."""
    monkeypatch.setattr(P.Typer, "_agnostic", _old_agnostic)
    with pytest.raises(InternalError) as e:
        convert_model(rms_model("Exp"), precision, target="tensorrt", measure=measure,
                      calibration={"x": np.ones((8, 8), np.float32)})
    assert len(str(e.value).splitlines()) == 1 and "not written" in str(e.value)


def test_cli_refuses_ill_typed_conversion_and_writes_nothing(monkeypatch, tmp_path, capsys):
    from ln_deploy.cli import main

    monkeypatch.setattr(P.Typer, "_agnostic", _old_agnostic)
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(rms_model("Exp"), src)
    rc = main(["-q", "convert", str(src), "-o", str(out), "--precision", "bf16", "--target", "tensorrt"])
    err = capsys.readouterr().err
    assert rc == 3 and len(err.strip().splitlines()) == 1 and "failed validation" in err, err
    assert "please report this" in err, err
    assert not out.exists()
