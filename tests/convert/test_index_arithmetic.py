"""Index arithmetic stays fp32: float math on integers (positions) whose result is cast back to an
integer or fed to Cos/Sin.

Found comparing T5's conversion node by node with ModelOpt AutoCast: T5's relative-position bucket
``max_exact + floor(log(n / max_exact) / log(max_distance / max_exact) * (num_buckets - max_exact))``
is computed in float between an int → float and a float → int Cast. In fp16 a value within one
rounding of an integer floors to the neighbouring bucket (and the constant log(32) itself rounds), so
the attention bias reads the wrong row: an O(1) error, not a rounding. T5's default configuration
(32 buckets, max distance 128) happens to flip none; the configuration below (64 buckets, max
distance 1024) flips 10 of the positions 32..2047 when Div/Mul are fp16. The same holds for rotary
angles ``position · inv_freq`` (LLaMA): in fp16 cos(angle) is off by 0.04 at 256 positions and 0.35
at 2048 (measured on the benchmark's LLaMA export). The reference is fp64 NumPy.
"""

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from ln_deploy.convert.planning import index_arithmetic
from ln_deploy.lowp_emulation import strict_emulation
from ln_deploy.onnx_graph import infer_types
from ln_deploy.pipeline_steps import convert_model

NUM_BUCKETS, MAX_EXACT, MAX_DISTANCE, H = 64, 32, 1024, 4
POSITIONS = np.arange(MAX_EXACT, 2048, dtype=np.int64)  # every integer here is exact in fp16
RNG = np.random.default_rng(0)
W = (0.1 * RNG.standard_normal((H, H))).astype(np.float32)
# row k of the bias table is k: a wrong bucket shows as an error of at least 1
TABLE = np.repeat(np.arange(NUM_BUCKETS, dtype=np.float32)[:, None], H, axis=1)


def bucket_model():
    """y = x @ W + table[bucket(pos)], the bucket written as T5's exported graph computes it."""
    c = lambda name, v: helper.make_node("Constant", [], [name], name=f"const_{name}",  # noqa: E731
                                         value=numpy_helper.from_array(np.array(v, np.float32), name))
    nodes = [
        helper.make_node("Cast", ["pos"], ["pos_f"], name="to_float", to=TensorProto.FLOAT),
        c("max_exact", float(MAX_EXACT)),
        helper.make_node("Div", ["pos_f", "max_exact"], ["ratio"], name="div"),
        helper.make_node("Log", ["ratio"], ["log"], name="log"),
        c("log_span", math.log(MAX_DISTANCE / MAX_EXACT)),
        helper.make_node("Div", ["log", "log_span"], ["frac"], name="div_1"),
        c("span", float(NUM_BUCKETS - MAX_EXACT)),
        helper.make_node("Mul", ["frac", "span"], ["scaled"], name="mul_1"),
        helper.make_node("Cast", ["scaled"], ["offset"], name="to_int", to=TensorProto.INT64),
        helper.make_node("Add", ["offset", "me_i"], ["bucket0"], name="add_exact"),
        helper.make_node("Min", ["bucket0", "last"], ["bucket"], name="clip"),
        helper.make_node("Gather", ["table", "bucket"], ["bias"], name="gather_bias", axis=0),
        helper.make_node("MatMul", ["x", "w"], ["xw"], name="matmul"),
        helper.make_node("Add", ["xw", "bias"], ["y"], name="add_bias"),
    ]
    inits = [numpy_helper.from_array(np.array(MAX_EXACT, np.int64), "me_i"),
             numpy_helper.from_array(np.array(NUM_BUCKETS - 1, np.int64), "last"),
             numpy_helper.from_array(TABLE, "table"), numpy_helper.from_array(W, "w")]
    g = helper.make_graph(nodes, "t5_buckets",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", H]),
                           helper.make_tensor_value_info("pos", TensorProto.INT64, ["n"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", H])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 10
    return m


def reference(x, pos):
    """fp64, as HF's T5Attention._relative_position_bucket computes it in fp32 (its float steps are
    far from integers at fp32 resolution for these positions)."""
    b = MAX_EXACT + np.floor(np.log(pos / MAX_EXACT) / math.log(MAX_DISTANCE / MAX_EXACT)
                             * (NUM_BUCKETS - MAX_EXACT)).astype(np.int64)
    b = np.minimum(b, NUM_BUCKETS - 1)
    return x.astype(np.float64) @ W.astype(np.float64) + TABLE[b].astype(np.float64)


def _strict_run(model, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(strict_emulation(model).SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _feeds(pos):
    return {"x": (0.01 * np.random.default_rng(1).standard_normal((len(pos), H))).astype(np.float32), "pos": pos}


def test_naive_fp16_buckets_flip():
    """The failure the rule prevents: the same graph with its float steps in fp16 floors to wrong buckets."""
    x = _feeds(POSITIONS)["x"]
    h = np.float16
    ratio = (POSITIONS.astype(h) / h(MAX_EXACT)).astype(h)
    frac = (np.log(ratio.astype(np.float32)).astype(h) / h(math.log(MAX_DISTANCE / MAX_EXACT))).astype(h)
    b16 = np.minimum(MAX_EXACT + (frac * h(NUM_BUCKETS - MAX_EXACT)).astype(h).astype(np.int64), NUM_BUCKETS - 1)
    err = np.abs(x @ W + TABLE[b16] - reference(x, POSITIONS)).max(axis=1)
    assert (err >= 0.99).sum() >= 5  # 10 wrong buckets at the time of writing


def test_planner_finds_the_chain():
    m = bucket_model()
    marked = set(index_arithmetic(m.graph, infer_types(m)))
    assert marked == {"to_float", "const_max_exact", "div", "log", "const_log_span", "div_1", "const_span", "mul_1"}


@pytest.mark.parametrize("target", ["ort-cpu", "tensorrt"])
@pytest.mark.parametrize("measure", [False, True])
def test_buckets_exact_after_fp16_conversion(target, measure):
    """Every bucket right against the fp64 reference, whatever the measured check saw: calibration
    covers only positions 32..99, where fp16 flips none."""
    calib = _feeds(np.arange(MAX_EXACT, 100, dtype=np.int64))
    conv, rep = convert_model(bucket_model(), "fp16", target=target, measure=measure,
                              calibration=calib if measure else None)
    types = infer_types(conv)
    for t in ("pos_f", "ratio", "log", "frac", "scaled"):
        assert types[t] == TensorProto.FLOAT, t
    assert types["xw"] == TensorProto.FLOAT16  # the activation path still runs in fp16
    feeds = _feeds(POSITIONS)
    err = np.abs(_strict_run(conv, feeds) - reference(feeds["x"], POSITIONS))
    assert err.max() < 0.02  # fp16 roundings of x @ W and of the bias rows, no wrong bucket
    # no Cast between the chain's own nodes: the int → float Cast feeds fp32 math directly
    assert sum(n.op_type == "Cast" for n in conv.graph.node) <= 4


def test_activation_cast_to_int_is_not_pulled_into_fp32():
    """A float graph input (an activation) breaks the chain: Cast(to=int64)(x * 4) is not index arithmetic."""
    nodes = [helper.make_node("Constant", [], ["four"], name="const_four",
                              value=numpy_helper.from_array(np.array(4.0, np.float32), "four")),
             helper.make_node("Mul", ["x", "four"], ["s"], name="scale"),
             helper.make_node("Cast", ["s"], ["i"], name="to_int", to=TensorProto.INT64)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
                          [helper.make_tensor_value_info("i", TensorProto.INT64, [8])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    assert index_arithmetic(m.graph, infer_types(m)) == []


F = 8  # rotary frequencies: head_dim 16
INV_FREQ = (1.0 / 10000 ** (np.arange(F) / F)).astype(np.float32)


def rotary_model():
    """y = x · cos(emb) + x · sin(emb), emb = concat(p · inv_freq, p · inv_freq): LLaMA's rotary angles as exported."""
    nodes = [helper.make_node("Cast", ["pos"], ["pos_f"], name="to_float", to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["pos_f", "ax1"], ["pos_col"], name="unsqueeze"),
             helper.make_node("Mul", ["pos_col", "inv_freq"], ["freqs"], name="mul_freq"),
             helper.make_node("Concat", ["freqs", "freqs"], ["emb"], name="cat", axis=-1),
             helper.make_node("Cos", ["emb"], ["cos"], name="cos"),
             helper.make_node("Sin", ["emb"], ["sin"], name="sin"),
             helper.make_node("Mul", ["x", "cos"], ["xc"], name="mul_cos"),
             helper.make_node("Mul", ["x", "sin"], ["xs"], name="mul_sin"),
             helper.make_node("Add", ["xc", "xs"], ["y"], name="add")]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "ax1"), numpy_helper.from_array(INV_FREQ, "inv_freq")]
    g = helper.make_graph(nodes, "rotary",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2 * F]),
                           helper.make_tensor_value_info("pos", TensorProto.INT64, ["n"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2 * F])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 10
    return m


@pytest.mark.parametrize("target", ["ort-cpu", "tensorrt"])
def test_rotary_angles_stay_fp32(target):
    pos = np.arange(2048, dtype=np.int64)
    x = np.random.default_rng(2).uniform(-1, 1, (len(pos), 2 * F)).astype(np.float32)
    m = rotary_model()
    assert set(index_arithmetic(m.graph, infer_types(m))) == {"to_float", "unsqueeze", "mul_freq", "cat", "cos", "sin"}
    conv, _ = convert_model(m, "fp16", target=target, calibration={"x": x[:64], "pos": pos[:64]})
    types = infer_types(conv)
    assert types["emb"] == TensorProto.FLOAT and types["xc"] == TensorProto.FLOAT16
    emb = pos[:, None].astype(np.float64) * INV_FREQ.astype(np.float64)[None, :]
    emb = np.concatenate([emb, emb], axis=1)
    ref = x * np.cos(emb) + x * np.sin(emb)
    err = np.abs(_strict_run(conv, {"x": x, "pos": pos}) - ref).max()
    assert err < 5e-3  # fp16 roundings of cos/sin, the products and the sum; fp16 angles give ~0.5
