"""Small normalization graphs built directly with onnx.helper: one builder per spelling.

Each builder writes the normalization of ``x`` (shape ``SHAPE``, normalized over the last axis
unless it says otherwise) in one spelling, for a given opset (ReduceMean axes as attribute below
18, as input from 18) and precision: ``float32``, or ``float16`` with the upcast mixed-precision
code does (Cast to float32 inside the norm, Cast back, then scale and bias in float16).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper as h

SHAPE = (2, 3, 8)  # batch, sequence, hidden: small, distinct sizes so axis mix-ups show
EPS = 1e-5
_rng = np.random.default_rng(1234)
SCALE = (1 + 0.2 * _rng.standard_normal(8)).astype(np.float32)
BIAS = (0.1 * _rng.standard_normal(8)).astype(np.float32)


class G:
    """A tiny graph builder: ops return output names; constants become initializers."""

    def __init__(self, opset: int, dtype: str = "float32"):
        self.opset, self.dtype = opset, dtype
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.n = 0

    def name(self, base):
        self.n += 1
        return f"{base}{self.n}"

    def op(self, op_type, *inputs, outputs=1, **attrs):
        outs = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(h.make_node(op_type, list(inputs), outs, name=self.name(op_type), **attrs))
        return outs[0] if outputs == 1 else outs

    def const(self, value, dtype=np.float32):
        name = self.name("c")
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def input(self, name, shape, elem=TP.FLOAT):
        self.inputs.append(h.make_tensor_value_info(name, elem, list(shape)))
        return name

    def output(self, name, elem=TP.FLOAT, shape=None):
        if shape is None:  # same shape as the first input (every graph here is shape-preserving)
            shape = [d.dim_value for d in self.inputs[0].type.tensor_type.shape.dim]
        self.outputs.append(h.make_tensor_value_info(name, elem, list(shape)))

    def reduce(self, op_type, x, axes, keepdims=1):
        if self.opset >= 18 or op_type == "ReduceSum":
            return self.op(op_type, x, self.const(axes, np.int64), keepdims=keepdims)
        return self.op(op_type, x, axes=list(axes), keepdims=keepdims)

    def model(self):
        g = h.make_graph(self.nodes, "g", self.inputs, self.outputs, self.inits)
        return h.make_model(g, opset_imports=[h.make_opsetid("", self.opset)],
                            ir_version=11 if self.opset >= 23 else 10)


def _finish(g: G, y: str) -> onnx.ModelProto:
    g.nodes[-1].output[0] = "y"
    g.output("y", TP.FLOAT16 if g.dtype == "float16" else TP.FLOAT)
    return g.model()


def build(body, opset: int, dtype: str = "float32", shape=SHAPE, scale=True, bias=True, affine_inside=False):
    """``body(g, x) -> normalized`` written in float32; this adds the input, the precision
    wrapping, and scale/bias after the normalization (in the model's precision)."""
    g = G(opset, dtype)
    elem = TP.FLOAT16 if dtype == "float16" else TP.FLOAT
    np_t = np.float16 if dtype == "float16" else np.float32
    x = g.input("x", shape, elem)
    xc = g.op("Cast", x, to=TP.FLOAT) if dtype == "float16" else x
    y = body(g, xc)
    if affine_inside:  # scale/bias in float32 before the cast back
        y = g.op("Mul", y, g.const(SCALE)) if scale else y
        y = g.op("Add", y, g.const(BIAS)) if bias else y
    if dtype == "float16":
        y = g.op("Cast", y, to=TP.FLOAT16)
    if not affine_inside:
        y = g.op("Mul", y, g.const(SCALE, np_t)) if scale else y
        y = g.op("Add", y, g.const(BIAS, np_t)) if bias else y
    if y == xc or y == x:
        y = g.op("Identity", y)
    return _finish(g, y)


# ------------------------------------------------------------- LayerNorm spellings (bodies)

def _ln(square="pow", var="mean", inv="div_sqrt", axes=(-1,), eps_first=False, n=None):
    def body(g: G, x):
        m = g.reduce("ReduceMean", x, axes)
        d = g.op("Sub", x, m)
        sq = g.op("Pow", d, g.const(2.0)) if square == "pow" else g.op("Mul", d, d)
        if var == "mean":
            v = g.reduce("ReduceMean", sq, axes)
        else:
            count = n if n is not None else int(np.prod([SHAPE[a] for a in axes]))
            s = g.reduce("ReduceSum", sq, axes)
            v = g.op("Div", s, g.const(float(count))) if var == "sum_div" else g.op("Mul", s, g.const(1.0 / count))
        e = g.const(EPS)
        ve = g.op("Add", e, v) if eps_first else g.op("Add", v, e)
        return _invert(g, d, ve, inv)
    return body


def _invert(g: G, num, ve, inv):
    if inv == "div_sqrt":
        return g.op("Div", num, g.op("Sqrt", ve))
    if inv == "reciprocal":
        return g.op("Mul", num, g.op("Reciprocal", g.op("Sqrt", ve)))
    if inv == "rsqrt_pow":
        return g.op("Mul", g.op("Pow", ve, g.const(-0.5)), num)
    if inv == "div_pow_half":
        return g.op("Div", num, g.op("Pow", ve, g.const(0.5)))
    if inv == "one_div":
        return g.op("Mul", num, g.op("Div", g.const(1.0), g.op("Sqrt", ve)))
    raise ValueError(inv)


def _rms(square="pow", var="mean", inv="div_sqrt"):
    def body(g: G, x):
        sq = g.op("Pow", x, g.const(2.0)) if square == "pow" else g.op("Mul", x, x)
        if var == "mean":
            v = g.reduce("ReduceMean", sq, (-1,))
        else:
            s = g.reduce("ReduceSum", sq, (-1,))
            v = g.op("Div", s, g.const(float(SHAPE[-1])))
        return _invert(g, x, g.op("Add", v, g.const(EPS)), inv)
    return body


def scale_before_division(opset, dtype="float32"):
    """(d * scale) / sqrt(var + eps) + bias, all in float32."""
    def body(g: G, x):
        m = g.reduce("ReduceMean", x, (-1,))
        d = g.op("Sub", x, m)
        v = g.reduce("ReduceMean", g.op("Mul", d, d), (-1,))
        y = g.op("Div", g.op("Mul", g.const(SCALE), d), g.op("Sqrt", g.op("Add", v, g.const(EPS))))
        return g.op("Add", y, g.const(BIAS))
    return build(body, opset, dtype, scale=False, bias=False, affine_inside=True)


def channels_first(opset, dtype="float32"):
    """ConvNeXt's LayerNorm2d: normalization over axis 1 of NCHW, scale/bias shaped [C, 1, 1]."""
    c = SHAPE[-1]
    g = G(opset, dtype)
    elem = TP.FLOAT16 if dtype == "float16" else TP.FLOAT
    np_t = np.float16 if dtype == "float16" else np.float32
    x = g.input("x", (2, c, 3, 5), elem)
    xc = g.op("Cast", x, to=TP.FLOAT) if dtype == "float16" else x
    m = g.reduce("ReduceMean", xc, (1,))
    d = g.op("Sub", xc, m)
    v = g.reduce("ReduceMean", g.op("Pow", d, g.const(2.0)), (1,))
    y = g.op("Div", d, g.op("Sqrt", g.op("Add", v, g.const(EPS))))
    if dtype == "float16":
        y = g.op("Cast", y, to=TP.FLOAT16)
    y = g.op("Mul", g.const(SCALE.reshape(c, 1, 1), np_t), y)
    y = g.op("Add", y, g.const(BIAS.reshape(c, 1, 1), np_t))
    return _finish(g, y)


def two_trailing_axes(opset, dtype="float32"):
    """Normalization over the last two axes, scale/bias of shape [3, 8]."""
    s2 = (1 + 0.2 * np.random.default_rng(5).standard_normal((3, 8))).astype(np.float32)
    g = G(opset, dtype)
    elem = TP.FLOAT16 if dtype == "float16" else TP.FLOAT
    np_t = np.float16 if dtype == "float16" else np.float32
    x = g.input("x", SHAPE, elem)
    xc = g.op("Cast", x, to=TP.FLOAT) if dtype == "float16" else x
    y = _ln(axes=(-2, -1))(g, xc)
    if dtype == "float16":
        y = g.op("Cast", y, to=TP.FLOAT16)
    y = g.op("Add", g.op("Mul", y, g.const(s2, np_t)), g.const(s2[::-1].copy(), np_t))
    return _finish(g, y)


def intermediate_used(opset, dtype="float32"):
    """The mean is also a graph output: the rewrite must keep computing it."""
    m = build(_ln(), opset, dtype)
    mean = next(n for n in m.graph.node if n.op_type == "ReduceMean").output[0]
    m.graph.output.append(h.make_tensor_value_info(mean, TP.FLOAT, [*SHAPE[:-1], 1]))
    return m


def _b(body, **kw):
    return lambda opset, dtype="float32": build(body, opset, dtype, **kw)


# name -> (builder, expected fused kind)
LAYER_NORM_SPELLINGS = {
    "pow_div_sqrt": _b(_ln()),
    "mul_square": _b(_ln(square="mul")),
    "reciprocal_sqrt": _b(_ln(inv="reciprocal")),
    "rsqrt_as_pow": _b(_ln(inv="rsqrt_pow")),
    "div_pow_half": _b(_ln(inv="div_pow_half")),
    "one_over_sqrt": _b(_ln(inv="one_div")),
    "eps_first_add": _b(_ln(eps_first=True)),
    "var_reducesum_div_n": _b(_ln(var="sum_div")),
    "var_reducesum_mul_inv_n": _b(_ln(var="sum_mul")),
    "no_scale_no_bias": _b(_ln(), scale=False, bias=False),
    "scale_only": _b(_ln(), bias=False),
    "bias_only": _b(_ln(), scale=False),
    "scale_before_division": scale_before_division,
    "two_trailing_axes": two_trailing_axes,
    "channels_first": channels_first,
    "intermediate_used": intermediate_used,
}

RMS_NORM_SPELLINGS = {
    "t5_reciprocal_sqrt": _b(_rms(inv="reciprocal"), bias=False),
    "llama_rsqrt_as_pow": _b(_rms(inv="rsqrt_pow"), bias=False),
    "div_sqrt": _b(_rms(), bias=False),
    "mul_square": _b(_rms(square="mul"), bias=False),
    "reducesum_div_n": _b(_rms(var="sum_div"), bias=False),
    "no_scale": _b(_rms(), scale=False, bias=False),
}


# ------------------------------------------------------------- look-alikes (never fused as LN)

def unbiased_variance(opset, dtype="float32"):
    return build(_ln(var="sum_div", n=SHAPE[-1] - 1), opset, dtype)


def eps_outside_sqrt(opset, dtype="float32"):
    def body(g, x):
        m = g.reduce("ReduceMean", x, (-1,))
        d = g.op("Sub", x, m)
        v = g.reduce("ReduceMean", g.op("Mul", d, d), (-1,))
        return g.op("Div", d, g.op("Add", g.op("Sqrt", v), g.const(EPS)))
    return build(body, opset, dtype)


def mean_over_other_axis(opset, dtype="float32"):
    """Mean over axis 1, variance over the last axis (onnxruntime fuses this as LayerNorm)."""
    def body(g, x):
        m = g.reduce("ReduceMean", x, (1,))
        d = g.op("Sub", x, m)
        v = g.reduce("ReduceMean", g.op("Mul", d, d), (-1,))
        return g.op("Div", d, g.op("Sqrt", g.op("Add", v, g.const(EPS))))
    return build(body, opset, dtype)


def nonconstant_epsilon(opset, dtype="float32"):
    def body(g, x):
        e = g.input("eps", [1])
        m = g.reduce("ReduceMean", x, (-1,))
        d = g.op("Sub", x, m)
        v = g.reduce("ReduceMean", g.op("Mul", d, d), (-1,))
        return g.op("Div", d, g.op("Sqrt", g.op("Add", v, e)))
    return build(body, opset, dtype)


def scale_over_other_axis(opset, dtype="float32"):
    """Scale of shape [3, 1]: it multiplies along the sequence axis, which is not normalized."""
    def body(g, x):
        y = _ln()(g, x)
        return g.op("Mul", y, g.const(np.linspace(0.5, 1.5, 3).reshape(3, 1)))
    return build(body, opset, dtype, scale=False)


def rescaled_variance(opset, dtype="float32"):
    """torch.var(unbiased=True) style: mean of squares times N/(N-1)."""
    def body(g, x):
        m = g.reduce("ReduceMean", x, (-1,))
        d = g.op("Sub", x, m)
        v = g.op("Mul", g.reduce("ReduceMean", g.op("Mul", d, d), (-1,)), g.const(8 / 7))
        return g.op("Div", d, g.op("Sqrt", g.op("Add", v, g.const(EPS))))
    return build(body, opset, dtype)


def cubed(opset, dtype="float32"):
    def body(g, x):
        m = g.reduce("ReduceMean", x, (-1,))
        d = g.op("Sub", x, m)
        v = g.reduce("ReduceMean", g.op("Pow", d, g.const(3.0)), (-1,))
        return g.op("Div", d, g.op("Sqrt", g.op("Add", v, g.const(EPS))))
    return build(body, opset, dtype)


# name -> (builder, substring of the reported reason)
LOOKALIKES = {
    "unbiased_variance": (unbiased_variance, "unbiased"),
    "eps_outside_sqrt": (eps_outside_sqrt, "outside the square root"),
    "mean_over_other_axis": (mean_over_other_axis, "the mean is taken over axes [1]"),
    "nonconstant_epsilon": (nonconstant_epsilon, "epsilon is not a constant"),
    "rescaled_variance": (rescaled_variance, "multiplied by"),
    "cubed_deviation": (cubed, "not Pow(d, 2)"),
}


def residual(opset, dtype="float32", sum_used=False):
    """y = LN(a + b) (pre-LN transformer residual stream); optionally the sum is an output too."""
    g = G(opset, dtype)
    elem = TP.FLOAT16 if dtype == "float16" else TP.FLOAT
    np_t = np.float16 if dtype == "float16" else np.float32
    a, b = g.input("a", SHAPE, elem), g.input("b", SHAPE, elem)
    s = g.op("Add", a, b)
    xc = g.op("Cast", s, to=TP.FLOAT) if dtype == "float16" else s
    y = _ln()(g, xc)
    if dtype == "float16":
        y = g.op("Cast", y, to=TP.FLOAT16)
    y = g.op("Add", g.op("Mul", y, g.const(SCALE, np_t)), g.const(BIAS, np_t))
    g.nodes[-1].output[0] = "y"
    g.output("y", elem)
    if sum_used:
        g.nodes.append(h.make_node("Mul", [s, s], ["s2"], name="uses_sum"))
        g.output("s2", elem)
    return g.model()
