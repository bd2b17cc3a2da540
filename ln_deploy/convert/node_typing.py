"""Typing rules of the conversion: which float inputs of a node may take the low type, and what
types its outputs then get (ONNX schemas, type parameters, and the ONNX function bodies that tie
types a schema declares independent). The op-class constants the planner uses live here too."""

from __future__ import annotations

import logging

from .. import plugin_spec
from .graph import BFLOAT16, FLOAT, FLOAT16

log = logging.getLogger(__name__)

PRECISIONS = {"fp16": FLOAT16, "bf16": BFLOAT16}
TARGETS = ("ort-cpu", "tensorrt")
FP16_MAX = 65504.0
UNIT_ROUNDOFF = {FLOAT16: 2.0 ** -11, BFLOAT16: 2.0 ** -8}

# Ops kept in fp32 whatever the measurement says. Each overflows or loses everything in fp16 on
# ordinary inputs: a square passes 65504 once |x| > 255.9; exp() once x > 11.09; long running sums
# (CumSum, ReduceSumSquare/L2/LogSumExp) accumulate rounding and overflow; Log of small values loses
# the digits that matter. Plain ReduceMean/ReduceSum, Softmax (max-subtracted in every kernel),
# MatMul/Gemm/Conv (fp32 accumulation on TensorRT) are left to the measured check.
DEFAULT_FP32_OPS = ("Pow", "Exp", "Log", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceLogSum",
                    "ReduceProd", "CumSum", "Range")
SUBGRAPH_OPS = ("Scan", "Loop", "If")
# Ops that move or select values without arithmetic: exact in any type, never emulated when ORT has
# a kernel for the low type.
DATA_MOVEMENT_OPS = ("Reshape", "Transpose", "Slice", "Squeeze", "Unsqueeze", "Concat", "Split", "Gather",
                     "GatherElements", "GatherND", "Expand", "Identity", "Flatten", "Shape", "Size", "Cast",
                     "CastLike", "Where", "Tile", "Pad", "ScatterND", "ScatterElements", "Trilu", "Constant",
                     "ConstantOfShape", "DepthToSpace", "SpaceToDepth", "Compress", "Max", "Min", "Relu",
                     "Neg", "Abs", "Sign", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
                     "ReduceMax", "ReduceMin", "ArgMax", "ArgMin", "TopK", "MaxPool")
# Ops whose float output type comes from an attribute rather than an input.
_TYPE_FROM_ATTR = ("Cast", "Constant", "ConstantOfShape")
_DTYPE_ATTR_OPS = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike",
                   "Multinomial", "Bernoulli")


def schema_of(node, opsets: dict):
    import onnx

    domain = node.domain if node.domain not in ("ai.onnx",) else ""
    try:
        return onnx.defs.get_schema(node.op_type, opsets.get(domain, opsets.get("", 0)), domain)
    except Exception:  # unknown op (plugin or third-party domain)
        return None


def formal_param(params, i):
    if not params:
        return None
    return params[i] if i < len(params) else (params[-1] if params[-1].option.name == "Variadic" else None)


def type_params(schema):
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    return allowed


_TYPE_STR = {FLOAT16: "tensor(float16)", BFLOAT16: "tensor(bfloat16)", FLOAT: "tensor(float)"}
_BODY_TYPES: dict = {}


def function_body_types(schema, node, in_types, model_opset: int | None = None):
    """Output element types of ``node``'s ONNX function body for these input element types (0 =
    unknown), or None when the body does not type-check with them (or cannot be instantiated).
    An op without a function body gives ``()``. Cached per (op, attributes, types, opset).

    ``model_opset``: the model's default-domain opset. ONNX builds some bodies at an older opset than
    the schema they expand: Clip-13's body is Less + Where at opset 13, whose Where has no bfloat16
    (Where-16 has), although Clip-13 itself accepts bfloat16. A body that fails at its own opset is
    tried again at the model's, where its ops are the versions the model's own nodes would be."""
    import onnx
    from onnx import helper

    if not (schema.has_function or schema.has_context_dependent_function):
        return ()
    n = len(node.input)
    while n and not node.input[n - 1]:
        n -= 1
    in_types = tuple(in_types[:n])
    if any(not t for t, name in zip(in_types, node.input) if name):
        return None  # an input of unknown type: cannot tell
    attrs = tuple(sorted(a.SerializeToString() for a in node.attribute))
    key = (schema.domain, schema.name, schema.since_version, in_types, attrs, model_opset)
    if key in _BODY_TYPES:
        return _BODY_TYPES[key]
    tps = [helper.make_tensor_type_proto(t, None) if t else onnx.TypeProto() for t in in_types]
    result = None
    try:
        f = onnx.FunctionProto()
        if schema.has_context_dependent_function:
            probe = onnx.NodeProto()
            probe.CopyFrom(node)
            del probe.input[n:]
            f.ParseFromString(schema.get_context_dependent_function(
                probe.SerializeToString(), [t.SerializeToString() for t in tps]))
        else:
            f.CopyFrom(schema.function_body)
        try:
            outs = onnx.shape_inference.infer_function_output_types(f, tps, list(node.attribute))
        except Exception:  # noqa: BLE001 - retried at the model's opset, else the outer handler says why
            older = [o for o in f.opset_import if o.domain in ("", "ai.onnx") and model_opset and o.version < model_opset]
            if not older:
                raise
            for o in older:
                o.version = model_opset
            outs = onnx.shape_inference.infer_function_output_types(f, tps, list(node.attribute))
        result = tuple(o.tensor_type.elem_type if o.HasField("tensor_type") else 0 for o in outs)
    except Exception as e:  # the body rejects these types (a type error), or cannot be built
        log.debug("%s body with input types %s: %s", schema.name, in_types, str(e).splitlines()[0] if str(e) else e)
        result = None
    _BODY_TYPES[key] = result
    return result


def is_plugin(node) -> bool:
    return plugin_spec.is_plugin_node(node)


class Typer:
    """Decides, per node and precision, the wanted type of each input and the type of each output."""

    def __init__(self, low: int, opsets: dict, orig_types: dict):
        self.low, self.opsets, self.orig = low, opsets, orig_types

    def can_go_low(self, node) -> bool:
        if is_plugin(node) or node.op_type in _TYPE_FROM_ATTR:
            return True
        schema = schema_of(node, self.opsets)
        if schema is None or node.op_type in SUBGRAPH_OPS or node.op_type in _DTYPE_ATTR_OPS:
            return False
        return any(self._convertible(schema, i) for i, n in enumerate(node.input) if n and self.orig.get(n) == FLOAT)

    def _convertible(self, schema, i) -> bool:
        f = formal_param(schema.inputs, i)
        if f is None:
            return False
        allowed = type_params(schema).get(f.type_str, {f.type_str})
        return _TYPE_STR[self.low] in allowed

    def _agnostic(self, schema, i, node=None) -> bool:
        """An input whose type parameter nothing else shares (Cast's, Shape's): any type will do.

        The schema's type parameters are not the whole story for an op defined by an ONNX function
        body, which is what ONNX Runtime runs when it has no kernel: RMSNormalization (opset 23)
        declares X: T and scale: V independently, but its body computes ``Mul(Cast<to=T>(...),
        scale)``, so T and V must be equal. For such ops the input only counts as agnostic when the
        body type-checks with it in fp32 and the other float inputs in the low type, and vice versa.
        """
        f = formal_param(schema.inputs, i)
        if f is None or f.type_str not in type_params(schema):
            return False
        others = [x.type_str for j, x in enumerate(schema.inputs) if j != i] + [o.type_str for o in schema.outputs]
        if f.type_str in others:
            return False
        if node is None or not (schema.has_function or schema.has_context_dependent_function):
            return True
        base = [self.orig.get(n, 0) if n else 0 for n in node.input]
        for mine, rest in ((FLOAT, self.low), (self.low, FLOAT)):
            types = [mine if j == i else (rest if t == FLOAT else t) for j, t in enumerate(base)]
            if function_body_types(schema, node, types, self.opsets.get("")) is None:
                return False
        return True

    def io(self, node, decision: str):
        """(wanted input types, output types); None = leave as is."""
        ins: list = []
        outs: list = []
        schema = None if is_plugin(node) else schema_of(node, self.opsets)
        low_params = set()
        for i, name in enumerate(node.input):
            if not name or self.orig.get(name) != FLOAT:
                ins.append(None)
                continue
            if node.op_type in _TYPE_FROM_ATTR:
                ins.append(None)
            elif schema is not None and self._agnostic(schema, i, node):
                # A low node takes whatever it is given. An fp32 (or emulated) node gets exactly the
                # types it had in the fp32 model, for which the runtime has a kernel: Pow(fp32 x,
                # bf16 exponent) is valid ONNX, but ORT's CPU provider has no such kernel.
                ins.append(None if decision == "low" else FLOAT)
            elif decision == "low" and (is_plugin(node) or (schema is not None and self._convertible(schema, i))):
                ins.append(self.low)
                if schema is not None:
                    low_params.add(formal_param(schema.inputs, i).type_str)
            else:
                ins.append(FLOAT)
        for j, name in enumerate(node.output):
            if not name or self.orig.get(name) != FLOAT:
                outs.append(self.orig.get(name) if name else None)
                continue
            if decision != "low":
                outs.append(FLOAT)
            elif is_plugin(node) or node.op_type in _TYPE_FROM_ATTR:
                outs.append(self.low)
            else:
                f = formal_param(schema.outputs, j) if schema is not None else None
                outs.append(self.low if f is not None and f.type_str in low_params else FLOAT)
        return ins, outs
