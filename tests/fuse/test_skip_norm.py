"""Residual Add + normalization: one LnDeploySkipNorm for the tensorrt target (with the sum as a
second output when it is used elsewhere); the onnx target keeps the Add. Plugin nodes carry exactly
the fields of ``plugin_spec`` with TensorRT's attribute types, and mean what the numpy reference says."""

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from _helpers import DTYPES, OPSETS, fuse_checked, ops
from graphs import LAYER_NORM_SPELLINGS, residual
from ln_deploy import plugin_spec
from ln_deploy.plugin_reference import expand_plugins, norm_reference, skip_norm_reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("sum_used", (False, True))
def test_residual_add_fuses_to_skip_norm(sum_used, opset, dtype):
    fused, report = fuse_checked(residual(opset, dtype, sum_used), "tensorrt")
    assert ops(fused) == ["LnDeploySkipNorm"] + (["Mul"] if sum_used else [])
    node = fused.graph.node[0]
    assert list(node.input[:2]) == ["a", "b"]
    assert len(node.output) == (2 if sum_used else 1)
    assert {a.name: a.i for a in node.attribute if a.type == a.INT}["output_sum"] == int(sum_used)
    if sum_used:
        assert fused.graph.node[1].input == [node.output[1]] * 2
    assert report.fused["SkipLayerNormalization"] == 1 and report.fused["LayerNormalization"] == 1


def test_onnx_target_keeps_the_residual_add():
    fused, report = fuse_checked(residual(20))
    assert ops(fused) == ["Add", "LayerNormalization"]
    assert report.fused["SkipLayerNormalization"] == 0


def test_plugin_node_attributes_follow_plugin_spec():
    fused, _ = fuse_checked(LAYER_NORM_SPELLINGS["pow_div_sqrt"](20), "tensorrt")
    (node,) = fused.graph.node
    attrs = {a.name: a for a in node.attribute}
    assert node.op_type == plugin_spec.NORM.name and node.domain == plugin_spec.DOMAIN
    assert onnx.helper.get_attribute_value(attrs["plugin_version"]).decode() == plugin_spec.VERSION
    assert onnx.helper.get_attribute_value(attrs["plugin_namespace"]).decode() == plugin_spec.NAMESPACE
    for f in plugin_spec.NORM.fields:
        want = onnx.AttributeProto.FLOAT if f.type == "float32" else onnx.AttributeProto.INT
        assert attrs[f.name].type == want, f.name
    assert set(attrs) == {"plugin_version", "plugin_namespace"} | {f.name for f in plugin_spec.NORM.fields}
    assert attrs["epsilon"].f == pytest.approx(1e-5) and attrs["num_normalized_dims"].i == 1


@pytest.mark.parametrize("dtype", (np.float32, np.float16))
@pytest.mark.parametrize("kind", (0, 1))
@pytest.mark.parametrize("skip", (False, True))
def test_plugin_expansion_matches_numpy_reference(kind, skip, dtype):
    """The expansion the safety check runs in ORT computes what the reference says."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    shape = (2, 3, 4, 6)  # two normalized dims (4, 6)
    x, res = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype)
    scale = (1 + rng.standard_normal((4, 6)) * 0.2).astype(dtype)
    bias = (rng.standard_normal((4, 6)) * 0.1).astype(dtype)
    t = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    fields = {"kind": kind, "epsilon": 1e-3, "num_normalized_dims": 2}
    spec = plugin_spec.SKIP_NORM if skip else plugin_spec.NORM
    from ln_deploy.fuse.lower import plugin_node

    g = ir.Graph([], [], nodes=[], opset_imports={"": 20})
    ins = [ir.Value(name=n, type=ir.TensorType(ir.DataType(t)), shape=ir.Shape(shape)) for n in (["x", "r"] if skip else ["x"])]
    g.inputs.extend(ins)
    consts = []
    for name, arr in (("scale", scale), ("bias", bias)):
        v = ir.Value(name=name, const_value=ir.tensor(arr, name=name))
        v.dtype, v.shape = ir.DataType(t), ir.Shape(arr.shape)
        g.register_initializer(v)
        consts.append(v)
    node = plugin_node(spec, ins + consts, dict(fields, output_sum=1) if skip else fields, name="p",
                       num_outputs=2 if skip else 1)
    g.append(node)
    for i, o in enumerate(node.outputs):
        o.name = f"y{i}"
        g.outputs.append(o)
    model = ir.Model(g, ir_version=10)
    assert expand_plugins(model) == 1
    sess = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x, "r": res} if skip else {"x": x})
    if skip:
        want_y, want_s = skip_norm_reference(x, res, scale, bias, **fields)
        np.testing.assert_array_equal(got[1], want_s)
    else:
        want_y = norm_reference(x, scale, bias, **fields)
    tol = 2e-3 if dtype == np.float16 else 1e-6
    np.testing.assert_allclose(got[0].astype(np.float32), want_y.astype(np.float32), atol=tol, rtol=tol)
