"""The strict low-precision emulation (convert/emulation.py) against onnx.reference.ReferenceEvaluator, which
computes every op in numpy in its declared type; and ORT's CPU provider, which hides fp16 overflow."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from ln_deploy import ort as ln_ort
from ln_deploy.convert.emulation import needs_emulation, strict_emulation

D = 16


class _LayerNormalizationStash(OpRun):
    """ReferenceEvaluator's LayerNormalization computes in X's type, ignoring stash_type: honour
    stash_type=1 (fp32 statistics), rounding the output to X's type, as the ONNX spec says."""

    op_domain = ""

    def _run(self, x, scale, bias=None, axis=-1, epsilon=1e-5, stash_type=1):
        xf = x.astype(np.float32)
        axes = tuple(range(axis % x.ndim, x.ndim))
        d = xf - xf.mean(axis=axes, keepdims=True)
        y = d / np.sqrt((d * d).mean(axis=axes, keepdims=True) + np.float32(epsilon))
        y = y.astype(x.dtype).astype(np.float32) * scale.astype(np.float32)
        y = y.astype(x.dtype)
        if bias is not None:
            y = (y.astype(np.float32) + bias.astype(np.float32)).astype(x.dtype)
        return (y,)


def _model(nodes, inits, low=TensorProto.FLOAT16, opset=20):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", low, [2, D])],
                          [helper.make_tensor_value_info("y", low, [2, D])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def decomposed_rms_block(scale_w=0.3):
    """MatMul + residual, then a hand-written RMSNorm: its squares overflow fp16 once |x| > 255.9."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((D, D)) * scale_w).astype(np.float16), "w"),
             numpy_helper.from_array(np.ones(D, np.float16), "s"),
             numpy_helper.from_array(np.array([-1], np.int64), "ax"),
             numpy_helper.from_array(np.array(1e-5, np.float16), "eps")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "x"], ["r"]),
             helper.make_node("Mul", ["r", "r"], ["sq"]), helper.make_node("ReduceMean", ["sq", "ax"], ["ms"]),
             helper.make_node("Add", ["ms", "eps"], ["mse"]), helper.make_node("Sqrt", ["mse"], ["rms"]),
             helper.make_node("Div", ["r", "rms"], ["n"]), helper.make_node("Mul", ["n", "s"], ["y"])]
    return _model(nodes, inits)


def attention_like_block():
    """MatMul, Softmax, Transpose, Gelu-free math and a fused LayerNorm with stash_type=1."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array((rng.standard_normal((D, D)) * 0.2).astype(np.float16), "wq"),
             numpy_helper.from_array((rng.standard_normal(D) * 0.5 + 1).astype(np.float16), "g"),
             numpy_helper.from_array((rng.standard_normal(D) * 0.1).astype(np.float16), "b")]
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("Softmax", ["q"], ["p"], axis=-1),
             helper.make_node("Mul", ["p", "x"], ["px"]), helper.make_node("Tanh", ["px"], ["t"]),
             helper.make_node("Add", ["t", "x"], ["r"]),
             helper.make_node("LayerNormalization", ["r", "g", "b"], ["y"], axis=-1, epsilon=1e-5, stash_type=1)]
    return _model(nodes, inits)


def _run_reference(m, x):
    return ReferenceEvaluator(m, new_ops=[_LayerNormalizationStash]).run(None, {"x": x})[0]


def _run_strict(m, x):
    return ln_ort.open_session(strict_emulation(m), ln_ort.UNOPTIMIZED).run(None, {"x": x})[0]


@pytest.mark.parametrize("build", [decomposed_rms_block, attention_like_block])
# scale 8: squares up to ~4000, their fp16 sum still finite. (Past that, numpy's fp16 ReduceMean
# overflows in its running sum, while the emulation accumulates in fp32 and rounds the mean, as
# cuBLAS/TensorRT reductions do: the one intended difference.)
@pytest.mark.parametrize("scale", [1.0, 8.0])
def test_strict_emulation_matches_the_reference_evaluator(build, scale):
    m = build()
    x = (np.random.default_rng(2).standard_normal((2, D)) * scale).astype(np.float16)
    ref, got = _run_reference(m, x), _run_strict(m, x)
    assert got.dtype == np.float16
    # the same roundings in the same places; accumulation order inside MatMul/ReduceMean may differ by an ulp
    np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), rtol=4e-3, atol=4e-3)


def test_overflow_shows_in_strict_emulation_and_the_reference_but_not_on_ort_cpu():
    m = decomposed_rms_block()
    x = (np.random.default_rng(3).standard_normal((2, D)) * 400).astype(np.float16)
    with np.errstate(over="ignore"):
        ref = _run_reference(m, x)
    got = _run_strict(m, x)
    plain = ln_ort.open_session(m, ln_ort.DEFAULT, probe=False).run(None, {"x": x})[0]
    assert np.all(ref == 0) and np.all(got == 0)  # squares -> inf, mean -> inf, x / inf -> 0
    assert np.abs(plain).max() > 0.5  # ORT CPU computed the squares in fp32: the overflow is hidden


def test_bf16_runs_strictly_on_the_cpu():
    import ml_dtypes

    m = decomposed_rms_block()
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT16:
            arr = numpy_helper.to_array(t).astype(np.float32)
            t.CopyFrom(helper.make_tensor(t.name, TensorProto.BFLOAT16, arr.shape,
                                          arr.astype(ml_dtypes.bfloat16).view(np.uint16).tobytes(), raw=True))
    # fp32 at the edges (ORT's Python API cannot take bf16 NumPy arrays), bf16 inside
    g = m.graph
    g.node[-1].output[0] = "y_low"
    g.node.insert(0, helper.make_node("Cast", ["x32"], ["x"], to=TensorProto.BFLOAT16))
    g.node.append(helper.make_node("Cast", ["y_low"], ["y"], to=TensorProto.FLOAT))
    g.input[0].name = "x32"
    g.input[0].type.tensor_type.elem_type = TensorProto.FLOAT
    g.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    x = np.random.default_rng(4).standard_normal((2, D)).astype(np.float32)
    with pytest.raises(Exception):  # ORT's CPU provider has no bf16 MatMul/Mul kernels
        ln_ort.open_session(m, ln_ort.UNOPTIMIZED)
    got = ln_ort.open_session(strict_emulation(m), ln_ort.UNOPTIMIZED).run(None, {"x32": x})[0]
    assert np.isfinite(got).all()
    # every value is a bf16 value, and RMS-normalised rows have an RMS of 1 (bf16 keeps 8 bits)
    assert np.array_equal(got, got.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert np.allclose(np.sqrt((got ** 2).mean(-1)), 1.0, atol=0.05)


def test_names_and_interface_are_kept():
    m = attention_like_block()
    e = strict_emulation(m)
    assert [i.name for i in e.graph.input] == ["x"] and [o.name for o in e.graph.output] == ["y"]
    produced = {o for n in e.graph.node for o in n.output}
    assert {"q", "p", "r", "y"} <= produced  # intermediate values keep their names (localisation)
    assert needs_emulation(m) and not needs_emulation(e)
    onnx.checker.check_model(e)
