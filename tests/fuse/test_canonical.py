"""The exact canonical forms before matching (``fuse/canonical.py``) and the mixed-precision
LayerNorm: each spelling fuses, the output stays within rounding of the original in ONNX Runtime,
and what canonicalisation must not do (fold an inexact op, fold a graph input) it does not do."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP

from _helpers import TARGETS, fuse_checked, ops
from graphs import EPS, SCALE, G, _finish
from ln_deploy.cli import main as cli_main
from ln_deploy.fuse import fuse_model

NORM = {"onnx": "LayerNormalization", "tensorrt": "LnDeployNorm"}


def _ln_graph(opset=20, dtype="float32", exponent=None, eps=None, between_var_and_add=None,
              duplicate_mean=False, shape=(2, 3, 8)):
    """A LayerNorm over the last axis written with hooks for each canonicalisation."""
    g = G(opset, dtype)
    elem = TP.FLOAT16 if dtype == "float16" else TP.FLOAT
    np_t = np.float16 if dtype == "float16" else np.float32
    x = g.input("x", shape, elem)
    m = g.reduce("ReduceMean", x, (-1,))
    d = g.op("Sub", x, m)
    two = exponent(g) if exponent else g.const(2.0, np_t)
    v = g.reduce("ReduceMean", g.op("Pow", d, two), (-1,))
    if duplicate_mean:  # the numerator's deviation from a second, identical mean
        d = g.op("Sub", x, g.reduce("ReduceMean", x, (-1,)))
    if between_var_and_add:
        v = between_var_and_add(g, v)
    e = eps(g) if eps else g.const(EPS, np_t)
    y = g.op("Div", d, g.op("Sqrt", g.op("Add", v, e)))
    y = g.op("Mul", y, g.const(SCALE, np_t))
    return _finish(g, y)


def _constant_node(g, value, dtype=np.float32):
    out = g.name("k")
    g.nodes.append(onnx.helper.make_node("Constant", [], [out], value=onnx.numpy_helper.from_array(
        np.asarray(value, dtype=dtype))))
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_exponent_through_cast_of_a_constant(target):
    # ORT's layer_norm_with_cast_2: an fp16 LN whose exponent is Cast(fp32 2.0 -> fp16)
    model = _ln_graph(dtype="float16", exponent=lambda g: g.op("Cast", g.const(2.0), to=TP.FLOAT16))
    fused, report = fuse_checked(model, target)
    assert ops(fused) == [NORM[target]] and report.rejected == []
    assert report.canonicalised["constants folded"] >= 1


@pytest.mark.parametrize("target", TARGETS)
def test_epsilon_through_identity_and_constant_node(target):
    model = _ln_graph(eps=lambda g: g.op("Identity", _constant_node(g, EPS)))
    fused, report = fuse_checked(model, target)
    assert ops(fused) == [NORM[target]]


def test_inexact_constant_arithmetic_is_not_folded():
    # Pow(4, 0.5) = 2 in exact arithmetic, but Pow is not correctly rounded everywhere: never folded,
    # so the exponent is not a constant for the rule, and the reason says so
    model = _ln_graph(exponent=lambda g: g.op("Pow", g.const(4.0), g.const(0.5)))
    fused, report = fuse_checked(model)
    assert "LayerNormalization" not in ops(fused)
    assert report.rejected[0]["reason"] == "the square's exponent is not a constant", report.rejected


def test_graph_input_with_a_default_is_no_constant():
    # an initializer that is also a graph input can be overridden at run time: not folded, not fused
    model = _ln_graph()
    eps_name = next(n for n in model.graph.node if n.op_type == "Add").input[1]
    init = next(i for i in model.graph.initializer if i.name == eps_name)
    model.graph.input.append(onnx.helper.make_tensor_value_info(eps_name, init.data_type, list(init.dims)))
    fused, report = fuse_checked(model)
    assert "LayerNormalization" not in ops(fused)
    assert "epsilon is not a constant: it is a graph input" in report.rejected[0]["reason"]


@pytest.mark.parametrize("target", TARGETS)
def test_duplicated_mean_is_merged(target):
    model = _ln_graph(duplicate_mean=True)
    assert [n.op_type for n in model.graph.node].count("ReduceMean") == 3
    fused, report = fuse_checked(model, target)
    assert ops(fused) == [NORM[target]]
    assert report.canonicalised["duplicate nodes merged"] >= 2  # the mean and the Sub


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("noop", ["Reshape", "Unsqueeze+Squeeze", "Expand", "Identity"])
def test_shape_noop_between_variance_and_add(noop, target):
    def between(g, v):  # v: [2, 3, 1]
        if noop == "Reshape":
            return g.op("Reshape", v, g.const([2, 3, 1], np.int64))
        if noop == "Expand":
            return g.op("Expand", v, g.const([2, 3, 1], np.int64))
        if noop == "Identity":
            return g.op("Identity", v)
        return g.op("Squeeze", g.op("Unsqueeze", v, g.const([0], np.int64)), g.const([0], np.int64))

    fused, report = fuse_checked(_ln_graph(between_var_and_add=between), target)
    assert ops(fused) == [NORM[target]], ops(fused)


def test_reshape_that_changes_the_shape_is_kept():
    # var [2, 3, 1] -> Unsqueeze -> [1, 2, 3, 1]: the division then broadcasts to [1, 2, 3, 8];
    # bypassing the Unsqueeze would change the output's shape, so it stays (and nothing fuses)
    m = _ln_graph(between_var_and_add=lambda g, v: g.op("Unsqueeze", v, g.const([0], np.int64)))
    m.graph.output[0].type.tensor_type.shape.Clear()
    for d in (1, 2, 3, 8):
        m.graph.output[0].type.tensor_type.shape.dim.add().dim_value = d
    fused, report = fuse_checked(m)
    assert "Unsqueeze" in ops(fused) and "LayerNormalization" not in ops(fused)
    assert "shape no-ops removed" not in report.canonicalised


def _unsorted(model):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))
    return m


def test_unsorted_graph_is_sorted_with_a_note(tmp_path, capsys):
    model = _unsorted(_ln_graph())
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    before = model.SerializeToString()
    fused, report = fuse_model(model)
    assert ops(fused) == ["LayerNormalization"]
    assert any("not in topological order" in n for n in report.notes), report.notes
    assert model.SerializeToString() == before  # the caller's model is not modified
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    assert cli_main(["--quiet", "fuse", str(src), "-o", str(out)]) == 0
    assert "not in topological order" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(out))


@pytest.mark.parametrize("target", TARGETS)
def test_symbolic_normalized_dim_without_scale(target):
    # no scale to fold and no static size for a ones scale: it is built at run time
    g = G(20)
    x = g.input("x", ["B", "N"])
    m = g.reduce("ReduceMean", x, (-1,))
    d = g.op("Sub", x, m)
    v = g.reduce("ReduceMean", g.op("Mul", d, d), (-1,))
    y = g.op("Div", d, g.op("Sqrt", g.op("Add", v, g.const(EPS))))
    model = _finish(g, y)
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "B"
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "N"
    fused, report = fuse_checked(model, target)
    assert NORM[target] in ops(fused) and "ConstantOfShape" in ops(fused)


@pytest.mark.parametrize("target", TARGETS)
def test_symbolic_normalized_dim_with_graph_input_scale(target):
    # ORT's layer_norm_fp16: X [M, N], Scale [N] and B [N] graph inputs fold into the fused op
    g = G(20, "float16")
    x = g.input("x", ["M", "N"], TP.FLOAT16)
    s, b = g.input("s", ["N"], TP.FLOAT16), g.input("b", ["N"], TP.FLOAT16)
    m = g.reduce("ReduceMean", x, (-1,))
    d = g.op("Sub", x, m)
    v = g.reduce("ReduceMean", g.op("Pow", d, g.const(2.0, np.float16)), (-1,))
    y = g.op("Div", d, g.op("Sqrt", g.op("Add", v, g.const(EPS, np.float16))))
    y = g.op("Add", g.op("Mul", s, y), b)
    g.nodes[-1].output[0] = "y"
    g.outputs.append(onnx.helper.make_tensor_value_info("y", TP.FLOAT16, ["M", "N"]))
    fused, _ = fuse_checked(g.model(), target)
    assert ops(fused) == [NORM[target]]
    assert list(fused.graph.node[0].input) == ["x", "s", "b"]


# ------------------------------------------------------------- mixed-precision LayerNorm

def _mixed(dev_type=TP.FLOAT, in_type=TP.FLOAT16, opset=17):
    """Mean and x - mean in the input type, the deviation cast to ``dev_type`` for the variance and
    the division, cast back, then scale and bias in the input type (ORT's
    layer_norm_fusion_scale_bias, CLIP's line-by-line LayerNorm)."""
    np_in = {TP.FLOAT16: np.float16, TP.FLOAT: np.float32}[in_type]
    np_dev = {TP.FLOAT: np.float32, TP.DOUBLE: np.float64, TP.FLOAT16: np.float16}[dev_type]
    g = G(opset)
    x = g.input("x", (2, 3, 8), in_type)
    d = g.op("Sub", x, g.reduce("ReduceMean", x, (-1,)))
    dc = g.op("Cast", d, to=dev_type)
    v = g.reduce("ReduceMean", g.op("Pow", dc, g.const(2.0, np_dev)), (-1,))
    y = g.op("Div", dc, g.op("Sqrt", g.op("Add", v, g.const(EPS, np_dev))))
    y = g.op("Cast", y, to=in_type)
    y = g.op("Add", g.op("Mul", y, g.const(SCALE, np_in)), g.const(np.full(8, 0.1), np_in))
    g.nodes[-1].output[0] = "y"
    g.output("y", in_type)
    return g.model()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dev_type", [TP.FLOAT, TP.DOUBLE], ids=["fp32_variance", "fp64_variance"])
def test_mixed_precision_layer_norm_is_one_fused_op(dev_type, target):
    fused, report = fuse_checked(_mixed(dev_type), target)
    assert ops(fused) == [NORM[target]]
    assert report.fused["LayerNormalization"] == 1 and report.fused["RMSNormalization"] == 0
    if target == "onnx":
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in fused.graph.node[0].attribute}
        assert attrs["stash_type"] == 1
    assert any("mixed-precision LayerNorm" in n and "float16 rounding" in n for n in report.notes), report.notes


def test_mixed_precision_fp32_input_with_fp64_variance():
    fused, report = fuse_checked(_mixed(TP.DOUBLE, TP.FLOAT))
    assert ops(fused) == ["LayerNormalization"]
    assert any("float32 rounding" in n for n in report.notes)


def test_narrowing_deviation_cast_is_left_with_the_reason():
    # fp32 mean and deviation, then the deviation cast *down* to fp16: rounding beyond the input's
    fused, report = fuse_checked(_mixed(TP.FLOAT16, TP.FLOAT))
    assert "LayerNormalization" not in ops(fused)
    assert any("cast from float32 to float16" in r["reason"] for r in report.rejected), report.rejected
