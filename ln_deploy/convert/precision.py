"""fp32 → fp16/bf16 conversion that keeps normalization statistics in fp32.

The plan gives every node one of three precisions:

* ``low``: its float inputs and outputs are fp16/bf16 (weights converted once, offline);
* ``fp32``: policy or measurement says it needs fp32 (decomposed norms, squares, exponentials,
  values beyond fp16's range, nodes whose error blows up against the fp32 reference);
* ``emulate``: (``target="ort-cpu"`` only) a low-precision compute node made explicit for ONNX
  Runtime's CPU provider: fp32 math between a Cast from and a Cast back to the low type, so every
  tensor is stored (rounded) in the low type as on a GPU engine. ORT's CPU provider has few real
  fp16 and almost no bf16 kernels, and where it lacks one it computes in fp32 and drops the
  rounding between nodes, which would hide overflow.

Casts are inserted per tensor and per type, not per consumer; a Cast is never put around a node
whose neighbours share its precision, and lossless round trips (low → fp32 → low) are removed.
Fused ``LayerNormalization``/``RMSNormalization`` get ``stash_type=1`` (fp32 statistics);
ln_deploy's plugin ops accumulate in fp32 by construction and simply take low-precision tensors.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import plugin_spec
from ..errors import BadInputError, CheckFailedError
from . import norms as norms_mod
from .graph import (BFLOAT16, DOUBLE, FLOAT, FLOAT16, TYPE_NAMES, ensure_node_names, get_attr, infer_types,
                    all_nodes, module_path, outer_references, subgraphs)

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


@dataclass
class ConversionReport:
    precision: str
    keep_io_types: bool
    target: str
    force_norm_fp16: bool
    nodes: int = 0
    low_nodes: int = 0
    fp32_nodes: list[dict] = field(default_factory=list)  # {node, op_type, module, reason}
    emulated_nodes: list[dict] = field(default_factory=list)  # {node, op_type, module}
    casts_inserted: int = 0
    casts_removed: int = 0
    normalizations: list[dict] = field(default_factory=list)  # {name, module, kind, form, handling}
    measured: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"precision {self.precision}: {self.low_nodes}/{self.nodes} nodes in {self.precision}, "
                 f"{len(self.fp32_nodes)} in fp32, {len(self.emulated_nodes)} emulated "
                 f"for ORT CPU, {self.casts_inserted} Casts inserted, {self.casts_removed} removed"]
        for n in self.normalizations:
            lines.append(f"  norm {n['module'] or n['name']} ({n['form']} {n['kind']}): {n['handling']}")
        for n in self.fp32_nodes:
            if n["reason"].startswith("measured"):
                lines.append(f"  fp32 {n['node']} ({n['op_type']}): {n['reason']}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- node typing rules

def _schema(node, opsets: dict):
    import onnx

    domain = node.domain if node.domain not in ("ai.onnx",) else ""
    try:
        return onnx.defs.get_schema(node.op_type, opsets.get(domain, opsets.get("", 0)), domain)
    except Exception:  # unknown op (plugin or third-party domain)
        return None


def _formal(params, i):
    if not params:
        return None
    return params[i] if i < len(params) else (params[-1] if params[-1].option.name == "Variadic" else None)


def _type_param_info(schema):
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    return allowed


_TYPE_STR = {FLOAT16: "tensor(float16)", BFLOAT16: "tensor(bfloat16)", FLOAT: "tensor(float)"}
_BODY_TYPES: dict = {}


def function_body_types(schema, node, in_types):
    """Output element types of ``node``'s ONNX function body for these input element types (0 =
    unknown), or None when the body does not type-check with them (or cannot be instantiated).
    An op without a function body gives ``()``. Cached per (op, attributes, types)."""
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
    key = (schema.domain, schema.name, schema.since_version, in_types, attrs)
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
        outs = onnx.shape_inference.infer_function_output_types(f, tps, list(node.attribute))
        result = tuple(o.tensor_type.elem_type if o.HasField("tensor_type") else 0 for o in outs)
    except Exception as e:  # the body rejects these types (a type error), or cannot be built
        log.debug("%s body with input types %s: %s", schema.name, in_types, str(e).splitlines()[0] if str(e) else e)
        result = None
    _BODY_TYPES[key] = result
    return result


def is_plugin(node) -> bool:
    return plugin_spec.is_plugin_node(node)


class _Typer:
    """Decides, per node and precision, the wanted type of each input and the type of each output."""

    def __init__(self, low: int, opsets: dict, orig_types: dict):
        self.low, self.opsets, self.orig = low, opsets, orig_types

    def can_go_low(self, node) -> bool:
        if is_plugin(node) or node.op_type in _TYPE_FROM_ATTR:
            return True
        schema = _schema(node, self.opsets)
        if schema is None or node.op_type in SUBGRAPH_OPS or node.op_type in _DTYPE_ATTR_OPS:
            return False
        return any(self._convertible(schema, i) for i, n in enumerate(node.input) if n and self.orig.get(n) == FLOAT)

    def _convertible(self, schema, i) -> bool:
        f = _formal(schema.inputs, i)
        if f is None:
            return False
        allowed = _type_param_info(schema).get(f.type_str, {f.type_str})
        return _TYPE_STR[self.low] in allowed

    def _agnostic(self, schema, i, node=None) -> bool:
        """An input whose type parameter nothing else shares (Cast's, Shape's): any type will do.

        The schema's type parameters are not the whole story for an op defined by an ONNX function
        body, which is what ONNX Runtime runs when it has no kernel: RMSNormalization (opset 23)
        declares X: T and scale: V independently, but its body computes ``Mul(Cast<to=T>(...),
        scale)``, so T and V must be equal. For such ops the input only counts as agnostic when the
        body type-checks with it in fp32 and the other float inputs in the low type, and vice versa.
        """
        f = _formal(schema.inputs, i)
        if f is None or f.type_str not in _type_param_info(schema):
            return False
        others = [x.type_str for j, x in enumerate(schema.inputs) if j != i] + [o.type_str for o in schema.outputs]
        if f.type_str in others:
            return False
        if node is None or not (schema.has_function or schema.has_context_dependent_function):
            return True
        base = [self.orig.get(n, 0) if n else 0 for n in node.input]
        for mine, rest in ((FLOAT, self.low), (self.low, FLOAT)):
            types = [mine if j == i else (rest if t == FLOAT else t) for j, t in enumerate(base)]
            if function_body_types(schema, node, types) is None:
                return False
        return True

    def io(self, node, decision: str):
        """(wanted input types, output types); None = leave as is."""
        ins: list = []
        outs: list = []
        schema = None if is_plugin(node) else _schema(node, self.opsets)
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
                    low_params.add(_formal(schema.inputs, i).type_str)
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
                f = _formal(schema.outputs, j) if schema is not None else None
                outs.append(self.low if f is not None and f.type_str in low_params else FLOAT)
        return ins, outs


# --------------------------------------------------------------------------- the rewrite

class _Rewriter:
    def __init__(self, typer: _Typer, plan: dict, report: ConversionReport, target: str):
        self.typer, self.plan, self.report, self.target = typer, plan, report, target
        self.low = typer.low
        self.short = TYPE_NAMES[self.low]

    def rewrite(self, graph, scope: str, keep_io: bool) -> None:
        import onnx
        from onnx import helper, numpy_helper

        low, orig = self.low, self.typer.orig
        inits = {t.name: t for t in graph.initializer}
        cur: dict[str, int] = {}  # current element type of each value
        for vi in graph.input:
            t = vi.type.tensor_type.elem_type
            if t == FLOAT and not keep_io:
                vi.type.tensor_type.elem_type = low
                t = low
            cur[vi.name] = t
        for t in graph.initializer:
            cur[t.name] = t.data_type
        # outer-scope values keep their type: converted graphs are only ever entered with fp32 captures
        casts: dict[tuple[str, int], str] = {}
        new_nodes = []
        new_inits = []

        def cast_to(name: str, want: int) -> str:
            key = (name, want)
            if key in casts:
                return casts[key]
            if name in inits and inits[name].data_type == FLOAT and want in (FLOAT16, BFLOAT16):
                arr = numpy_helper.to_array(inits[name])
                new_name = f"{name}__{TYPE_NAMES[want]}"
                new_inits.append(_make_tensor(arr, want, new_name))
            else:
                new_name = f"{name}__to_{TYPE_NAMES[want]}"
                new_nodes.append(helper.make_node("Cast", [name], [new_name], to=want,
                                                  name=f"{scope}cast_{len(casts)}_{TYPE_NAMES[want]}"))
                self.report.casts_inserted += 1
            casts[key] = new_name
            cur[new_name] = want
            return new_name

        for node in graph.node:
            decision = self.plan.get(scope + node.name, "low")
            for g_attr in node.attribute:
                if g_attr.type == onnx.AttributeProto.GRAPH:
                    self.rewrite(g_attr.g, f"{scope}{node.name}/", keep_io=True)
            want_in, outs = self.typer.io(node, "low" if decision == "low" else "fp32")
            low_in, low_out = self.typer.io(node, "low") if decision == "emulate" else (want_in, outs)
            for i, name in enumerate(node.input):
                w = want_in[i]
                if w is None or not name:
                    continue
                have = cur.get(name, orig.get(name))
                if decision == "emulate" and low_in[i] == low and have != low:
                    # emulation reads what the engine would: weights rounded to the low type too
                    name = cast_to(name, low)
                    have = low
                if have != w:
                    node.input[i] = cast_to(name, w)
            if decision == "low":
                self._retype_attrs(node)
            elif node.op_type == "Cast" and get_attr(node, "to") == FLOAT:
                pass
            post = []
            for j, name in enumerate(node.output):
                t = outs[j] if j < len(outs) else None
                if not name:
                    continue
                if decision == "emulate" and t == FLOAT and j < len(low_out) and low_out[j] == low:
                    # rounded as the engine stores it; an output that stays fp32 in the low form
                    # (LayerNormalization's Mean/InvStdDev: the stash type) is not
                    raw = f"{name}__fp32"
                    node.output[j] = raw
                    suffix = "" if j == 0 else f"_{j}"  # one rounding Cast per output, each named apart
                    post.append(helper.make_node("Cast", [raw], [name], to=low,
                                                 name=f"{scope}{node.name}/round{suffix}"))
                    self.report.casts_inserted += 1
                    cur[raw] = FLOAT
                    t = low
                cur[name] = t if t is not None else orig.get(name, 0)
            new_nodes.append(node)
            new_nodes.extend(post)

        # Graph outputs: keep the declared type (keep_io) or take the low one.
        out_names = {o.name for o in graph.output}
        for o in graph.output:
            if o.type.tensor_type.elem_type != FLOAT:
                continue
            t = cur.get(o.name, FLOAT)
            if t == FLOAT:
                continue
            if not keep_io:
                o.type.tensor_type.elem_type = t
                continue
            inner = f"{o.name}__{TYPE_NAMES[t]}"
            for n in new_nodes:
                for k, x in enumerate(n.output):
                    if x == o.name:
                        n.output[k] = inner
                for k, x in enumerate(n.input):
                    if x == o.name:
                        n.input[k] = inner
            new_nodes.append(helper.make_node("Cast", [inner], [o.name], to=FLOAT, name=f"{scope}{o.name}/to_fp32"))
            self.report.casts_inserted += 1
            cur[inner] = t
            cur[o.name] = FLOAT

        del graph.node[:]
        graph.node.extend(new_nodes)
        graph.initializer.extend(new_inits)
        self.report.casts_removed += _cancel_casts(graph, cur, out_names)
        _drop_unused_initializers(graph)
        # value_info: keep shapes, fix types; values we created get theirs from inference later
        for vi in graph.value_info:
            if vi.name in cur and cur[vi.name] and vi.type.HasField("tensor_type"):
                vi.type.tensor_type.elem_type = cur[vi.name]

    def _retype_attrs(self, node) -> None:
        """A low node producing floats from an attribute: Cast's `to`, Constant's value."""
        import onnx
        from onnx import numpy_helper

        low = self.low
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == FLOAT:
                    a.i = low
        elif node.op_type in ("Constant", "ConstantOfShape"):
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR and a.t.data_type == FLOAT:
                    a.t.CopyFrom(_make_tensor(numpy_helper.to_array(a.t), low, a.t.name))
                elif a.name in ("value_float", "value_floats"):
                    import numpy as np

                    arr = np.array(onnx.helper.get_attribute_value(a), dtype=np.float32)
                    node.ClearField("attribute")
                    node.attribute.append(onnx.helper.make_attribute("value", _make_tensor(arr, low, "")))
                    break


def _make_tensor(arr, elem_type: int, name: str):
    import numpy as np
    from onnx import helper, numpy_helper

    if elem_type == FLOAT16:
        return numpy_helper.from_array(np.asarray(arr, dtype=np.float32).astype(np.float16), name)
    if elem_type == BFLOAT16:
        import ml_dtypes

        bits = np.asarray(arr, dtype=np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
        t = helper.make_tensor(name, BFLOAT16, list(np.shape(arr)), bits.tobytes(), raw=True)
        return t
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


_WIDER = {(FLOAT16, FLOAT), (BFLOAT16, FLOAT), (FLOAT16, DOUBLE), (BFLOAT16, DOUBLE), (FLOAT, DOUBLE)}


def _cancel_casts(graph, types: dict, keep: set) -> int:
    """Remove Casts that change nothing (to == input type) and lossless round trips (a→wider→a)."""
    removed = 0
    changed = True
    while changed:
        changed = False
        prod = {o: n for n in graph.node for o in n.output}
        replace: dict[str, str] = {}
        for n in graph.node:
            if n.op_type != "Cast" or n.output[0] in keep:
                continue
            to = get_attr(n, "to")
            src = n.input[0]
            if types.get(src) == to:
                replace[n.output[0]] = src
                continue
            p = prod.get(src)
            if p is not None and p.op_type == "Cast":
                t0 = types.get(p.input[0])
                if t0 == to and (t0, get_attr(p, "to")) in _WIDER:
                    replace[n.output[0]] = p.input[0]
        if replace:
            changed = True
            for n in graph.node:
                for k, x in enumerate(n.input):
                    while x in replace:
                        x = replace[x]
                    n.input[k] = x
            for g in (sg for n in graph.node for sg in subgraphs(n)):
                _rename_refs(g, replace)
            removed += _drop_dead_casts(graph, keep)
    return removed


def _rename_refs(graph, mapping) -> None:
    for n in graph.node:
        for k, x in enumerate(n.input):
            if x in mapping:
                n.input[k] = mapping[x]
        for g in subgraphs(n):
            _rename_refs(g, mapping)


def _drop_dead_casts(graph, keep: set) -> int:
    removed = 0
    while True:
        used = {i for n in graph.node for i in n.input} | keep | outer_refs_of_children(graph)
        dead = [n for n in graph.node if n.op_type == "Cast" and n.output[0] not in used]
        if not dead:
            return removed
        for n in dead:
            graph.node.remove(n)
            removed += 1


def outer_refs_of_children(graph) -> set:
    refs = set()
    for n in graph.node:
        for g in subgraphs(n):
            refs |= outer_references(g)
    return refs


def _drop_unused_initializers(graph) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output} | outer_refs_of_children(graph)
    graph_inputs = {i.name for i in graph.input}
    keep = [t for t in graph.initializer if t.name in used or t.name in graph_inputs]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


# --------------------------------------------------------------------------- forced-fp16 norms

def decompose_fused_norms(graph, opset: int) -> list[str]:
    """Replace fused LayerNormalization/RMSNormalization by primitive ops (for ``force_norm_fp16``).

    This is the graph a naive fp16 conversion of hand-written normalization produces: the square
    and the mean of squares run in fp16 and overflow once |x - mean| > 255.9. Node names start with
    the fused node's name and keep its exporter metadata so a parity check can still localize them.
    Returns the names of the new nodes.
    """
    from onnx import helper, numpy_helper
    import numpy as np

    new_nodes, created = [], []
    counter = 0
    for node in graph.node:
        if node.op_type not in ("LayerNormalization", "RMSNormalization") or node.domain not in ("", "ai.onnx"):
            new_nodes.append(node)
            continue
        counter += 1
        axis = int(get_attr(node, "axis", -1))
        if axis >= 0:
            raise BadInputError(f"{node.name}: force_norm_fp16 needs a negative normalization axis, got {axis}")
        axes = list(range(axis, 0))
        eps = float(get_attr(node, "epsilon", 1e-5))
        p = f"{node.name}/fp16"
        x = node.input[0]
        nodes = []

        def mk(op, ins, attrs=None, _p=p, _nodes=nodes):
            out = f"{_p}/{op.lower()}_{len(_nodes)}"
            n = helper.make_node(op, ins, [out], name=out, **(attrs or {}))
            _nodes.append(n)
            return out

        axes_name = f"{p}/axes"
        eps_name = f"{p}/eps"
        inits = [numpy_helper.from_array(np.array(axes, dtype=np.int64), axes_name),
                 numpy_helper.from_array(np.array(eps, dtype=np.float32), eps_name)]

        def reduce_mean(t):
            if opset >= 18:
                return mk("ReduceMean", [t, axes_name], {"keepdims": 1})
            return mk("ReduceMean", [t], {"axes": axes, "keepdims": 1})

        if node.op_type == "LayerNormalization":
            d = mk("Sub", [x, reduce_mean(x)])
        else:
            d = x
        var = reduce_mean(mk("Mul", [d, d]))
        y = mk("Div", [d, mk("Sqrt", [mk("Add", [var, eps_name])])])
        y = mk("Mul", [y, node.input[1]])
        if node.op_type == "LayerNormalization" and len(node.input) > 2 and node.input[2]:
            y = mk("Add", [y, node.input[2]])
        nodes[-1].output[0] = node.output[0]
        nodes[-1].name = f"{p}/out"
        for n in nodes:
            for prop in node.metadata_props:
                n.metadata_props.add(key=prop.key, value=prop.value)
            created.append(n.name)
        new_nodes.extend(nodes)
        graph.initializer.extend(inits)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return created


# --------------------------------------------------------------------------- planning

class _Planner:
    def __init__(self, model, typer: _Typer, opts: dict, report: ConversionReport):
        self.model, self.typer, self.opts, self.report = model, typer, opts, report
        self.plan: dict[str, str] = {}
        self.reason: dict[str, str] = {}
        self.nodes: dict[str, object] = {}
        self.forced_low: set[str] = set()

    def set(self, key, decision, reason):
        if key in self.forced_low and decision == "fp32":
            return
        self.plan[key] = decision
        self.reason[key] = reason

    def policy(self, graph, scope: str = "") -> None:
        fp32_ops = set(self.opts["fp32_ops"])
        fp32_nodes = set(self.opts["fp32_nodes"])
        captured = outer_refs_of_children(graph)
        for node in graph.node:
            key = scope + node.name
            self.nodes[key] = node
            self.plan.setdefault(key, "low")
            if node.op_type in SUBGRAPH_OPS:
                self.set(key, "fp32", "control flow: its body is converted inside, its I/O stays fp32")
                for g in subgraphs(node):
                    self.policy(g, f"{key}/")
            elif node.name in fp32_nodes:
                self.set(key, "fp32", "listed in fp32_nodes")
            elif not self.typer.can_go_low(node):
                if any(self.typer.orig.get(o) == FLOAT for o in node.output):
                    self.set(key, "fp32", "no low-precision form (op, domain or opset)")
            elif node.op_type in fp32_ops:
                self.set(key, "fp32", f"policy: {node.op_type} is numerically sensitive")
            if any(o in captured for o in node.output) and self.plan[key] == "low":
                self.set(key, "fp32", "read by a subgraph (captures stay fp32)")
        for site in norms_mod.find_normalizations(graph, model=self.model):
            if site.form == "decomposed":
                for n in site.nodes:
                    if scope + n in self.forced_low:
                        continue
                    self.set(scope + n, "fp32", f"decomposed {site.kind} ({site.label}): statistics in fp32")
        # mean of squares outside a recognised norm (ReduceMean(Pow(x, 2))) stays fp32 too
        prod = {o: n for n in graph.node for o in n.output}
        for node in graph.node:
            if node.op_type in ("ReduceMean", "ReduceSum") and node.input and node.input[0] in prod:
                p = prod[node.input[0]]
                sq = (p.op_type == "Mul" and len(p.input) == 2 and p.input[0] == p.input[1]) or p.op_type == "Pow"
                if sq and scope + node.name not in self.forced_low:
                    self.set(scope + node.name, "fp32", "policy: reduction of squares")
                    self.set(scope + p.name, "fp32", "policy: square feeding a reduction")
        # weights beyond the low type's range
        if self.typer.low == FLOAT16:
            import numpy as np
            from onnx import numpy_helper

            big = {t.name for t in graph.initializer if t.data_type == FLOAT
                   and t.ByteSize() > 0 and np.abs(numpy_helper.to_array(t)).max(initial=0) > FP16_MAX}
            for node in graph.node:
                if big & set(node.input):
                    self.set(scope + node.name, "fp32", "a weight exceeds fp16's range")

    def emulation(self, graph, scope: str = "") -> None:
        """Make every low-precision compute node explicit: fp32 math between a Cast from and a Cast
        back to the low type. ONNX Runtime's CPU provider has few real fp16 and almost no bf16
        kernels; for the rest it computes in fp32 and drops the rounding between consecutive nodes
        (its InsertCastTransformer), which hides exactly the overflows this tool must show. With the
        explicit Casts every tensor is rounded to the low type as it is on a GPU engine. Data-movement
        ops keep their low-precision form when ORT has a kernel for it (probed). ln_deploy's plugin
        nodes are emulated too: ORT runs them through their reference expansion (ln_deploy.check),
        whose final ``* scale (+ bias)`` in the input type has no bf16 kernel on ORT's CPU provider."""
        from .ort_support import cpu_supports

        opset = tuple((o.domain, o.version) for o in self.model.opset_import)
        for node in graph.node:
            key = scope + node.name
            for g in subgraphs(node):
                self.emulation(g, f"{key}/")
            if self.plan.get(key) not in ("low", "emulate"):
                continue
            want_in, outs = self.typer.io(node, "low")
            if not any(t == self.typer.low for t in list(want_in) + list(outs)):
                self.plan[key] = "low"
                continue
            if node.op_type not in DATA_MOVEMENT_OPS:
                self.plan[key] = "emulate"
                continue
            ref_in, ref_out = self.typer.io(node, "fp32")
            cur_in = tuple((w if w is not None else self.typer.orig.get(n, 0)) if n else 0
                           for w, n in zip(want_in, node.input))
            ref_in_t = tuple((w if w is not None else self.typer.orig.get(n, 0)) if n else 0
                             for w, n in zip(ref_in, node.input))
            ok = cpu_supports(node, opset, cur_in, tuple(o or 0 for o in outs), ref_in_t,
                              tuple(o or 0 for o in ref_out))
            self.plan[key] = "low" if ok else "emulate"


def _load(model_or_path):
    import onnx

    from ..fileio import load_onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return copy.deepcopy(model_or_path)
    if isinstance(model_or_path, (str, Path)):
        return load_onnx(model_or_path)
    raise BadInputError(f"expected an ONNX ModelProto or a path, got {type(model_or_path).__name__}")


def check_precision(precision: str) -> int:
    if precision not in PRECISIONS:
        raise BadInputError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    return PRECISIONS[precision]


def convert_model(model_or_path, precision: str = "fp16", *, keep_io_types: bool = True,
                  fp32_ops=DEFAULT_FP32_OPS, fp32_nodes=(), calibration=None, spec: str | None = None,
                  force_norm_fp16: bool = False, target: str = "ort-cpu", measure: bool = True,
                  data_max: float = FP16_MAX / 4, tolerance: float | None = None, max_rounds: int = 4,
                  fuse: bool = True, fuser=None):
    """Convert an fp32 ONNX model to fp16/bf16 with fp32 normalization statistics.

    Args:
        model_or_path: an ``onnx.ModelProto`` (not modified) or a path (loaded as untrusted).
        precision: "fp16" or "bf16".
        keep_io_types: graph inputs and outputs keep their fp32 type (Casts at the edges).
        fp32_ops / fp32_nodes: op types / node names always kept in fp32.
        calibration: inputs for the measured check: a ``.npz`` path, a dict name → array, or None
            (the spec's example inputs when ``spec`` is given, else seeded random inputs).
        force_norm_fp16: compute every normalization's statistics in fp16 (fused norms are
            decomposed into primitive ops): the failure demonstration, never for deployment.
        target: "ort-cpu" (default; nodes ORT's CPU provider lacks a low-precision kernel for are
            emulated: fp32 math, low-precision tensors) or "tensorrt" (the pure typed graph).
        fuse, fuser: fuse decomposed normalizations first with ``fuser`` (to LayerNormalization with
            fp32 statistics); what cannot be fused stays decomposed and in fp32. ``fuser`` is called as
            ``fuse_model(model, target="onnx", verify=True)``; the convert stage does not
            import the fuse stage, so callers pass it (``ln_deploy.pipeline_steps.convert_model``
            passes ``ln_deploy.fuse.fuse_model``; None = no fusion).
        measure: run the fp32 model and the candidate in ORT on the calibration inputs; keep in
            fp32 the nodes whose values exceed ``data_max`` (fp16) or whose relative error exceeds
            ``tolerance`` (default 16 unit roundoffs) while their inputs' error is 8x smaller.

    Returns ``(onnx.ModelProto, ConversionReport)``. Raises ``CheckFailedError`` rather than return
    an ill-typed graph (see ``validate.py``).
    """
    from .validate import validate_converted

    low = check_precision(precision)
    if target not in TARGETS:
        raise BadInputError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    model = _load(model_or_path)
    source = str(model_or_path) if isinstance(model_or_path, (str, Path)) else "the input model"
    report = ConversionReport(precision, keep_io_types, target, force_norm_fp16)
    ensure_node_names(model.graph)
    if (measure or target == "ort-cpu") and not any(is_plugin(n) for n in all_nodes(model.graph)):
        from .calibration import require_ort_loads

        require_ort_loads(model, source)
    names = {n.name for n in all_nodes(model.graph)}
    unknown = [n for n in fp32_nodes or () if n not in names]
    if unknown:
        raise BadInputError(f"no node named {', '.join(map(repr, unknown))} in {source} (--fp32-node)")
    opsets = {(o.domain if o.domain != "ai.onnx" else ""): o.version for o in model.opset_import}
    main_opset = opsets.get("", 0)
    if any(n.op_type in SUBGRAPH_OPS for n in model.graph.node) and measure:
        report.notes.append("subgraph bodies (Scan/Loop/If) are converted by policy only; "
                            "the measured check sees the main graph")

    if fuse and not force_norm_fp16:
        model = _fuse_first(model, report, fuser)
    forced: list[str] = []
    if force_norm_fp16:
        forced = decompose_fused_norms(model.graph, main_opset)
        report.notes.append("force_norm_fp16: normalization statistics computed in fp16 "
                            "(fused norms decomposed); expect overflow past |x - mean| > 255.9")
    for node in all_nodes(model.graph):
        if node.op_type in ("LayerNormalization", "RMSNormalization"):
            _set_attr(node, "stash_type", 1)

    orig = infer_types(model)
    typer = _Typer(low, opsets, orig)
    opts = {"fp32_ops": tuple(fp32_ops or ()), "fp32_nodes": tuple(fp32_nodes or ())}
    planner = _Planner(model, typer, opts, report)
    sites = norms_mod.find_normalizations(model.graph, model=model)
    if force_norm_fp16:
        planner.forced_low = set(forced) | {n for s in sites if s.form == "decomposed" for n in s.nodes}
    planner.policy(model.graph)

    has_plugins = any(is_plugin(n) for n in all_nodes(model.graph))
    feeds = None
    if measure:
        if has_plugins:
            report.notes.append("the model holds TensorRT plugin ops ORT cannot run: measured check skipped "
                                "(convert before fusing with --target tensorrt, or rely on the policy)")
            measure = False
        else:
            from .calibration import load_calibration

            feeds = load_calibration(calibration, model, spec=spec)

    def build(plan_extra_emulation=True, emulate=None):
        """The converted model for the current plan. Candidates measured in ORT are always emulated
        (faithful rounding); the final model only for target ort-cpu."""
        m = copy.deepcopy(model)
        rep = ConversionReport(precision, keep_io_types, target, force_norm_fp16)
        emulate = (target == "ort-cpu") if emulate is None else emulate
        saved = dict(planner.plan)
        if emulate and plan_extra_emulation:
            planner.emulation(m.graph)
        elif not emulate:
            planner.plan.update({k: "low" for k, v in planner.plan.items() if v == "emulate"})
        _Rewriter(typer, planner.plan, rep, target).rewrite(m.graph, "", keep_io_types)
        if not emulate:
            planner.plan.clear()
            planner.plan.update(saved)
        return m, rep

    measured = {"rounds": 0, "range_fp32": [], "error_fp32": []}
    if measure:
        from .calibration import run_with_values

        float_values = [o for n in model.graph.node for o in n.output if o and orig.get(o) == FLOAT]
        ref = run_with_values(model, feeds, float_values, source=source)
        if low == FLOAT16:
            for node in model.graph.node:
                key = node.name
                vals = [v for v in list(node.input) + list(node.output) if v in ref]
                peak = max((_finite_absmax(ref[v]) for v in vals), default=0.0)
                if peak > data_max and planner.plan.get(key) == "low" and key not in planner.forced_low:
                    planner.set(key, "fp32", f"measured: |value| up to {peak:.4g} > data_max {data_max:.4g}")
                    measured["range_fp32"].append(key)
        u = UNIT_ROUNDOFF[low]
        tol = tolerance if tolerance is not None else 16 * u
        prod = {o: n for n in model.graph.node for o in n.output}
        for rnd in range(max_rounds):
            cand, _ = build(emulate=True)
            validate_converted(cand, source=model, ort="skip", what=f"the {precision} candidate (measured check)")
            try:
                got = run_with_values(cand, feeds, [v for v in float_values if v in ref], types_from=cand)
            except Exception as e:
                if not type(e).__module__.startswith("onnxruntime"):
                    raise
                raise CheckFailedError(f"the {precision} candidate (measured check) does not run in ONNX Runtime "
                                       f"and was not written: {str(e).strip().splitlines()[0][:300]}; "
                                       "please report this") from None
            err = {v: _rel_err(got[v], ref[v]) for v in got}
            culprits = []
            for node in model.graph.node:
                outs = [o for o in node.output if o in err]
                if not outs or node.name in planner.forced_low:
                    continue
                e_out = max(err[o] for o in outs)
                e_in = max([err.get(i, 0.0) for i in node.input if i] + [u])
                if e_out > tol and e_out > 8 * e_in:
                    culprits.append((node, e_out, e_in))
            new = []
            for node, e_out, e_in in culprits:
                if planner.plan.get(node.name) in ("low", "emulate"):
                    new.append(node.name)
                    planner.set(node.name, "fp32", f"measured: relative error {e_out:.3g} vs inputs' {e_in:.3g}")
                else:  # already fp32: the damage was done upstream, by a low-precision producer
                    for i in node.input:
                        p = prod.get(i)
                        if p is not None and planner.plan.get(p.name) in ("low", "emulate") \
                                and p.name not in planner.forced_low and orig.get(i) == FLOAT:
                            new.append(p.name)
                            planner.set(p.name, "fp32", f"measured: its rounding breaks {node.name} "
                                                        f"(relative error {e_out:.3g})")
            measured["rounds"] = rnd + 1
            measured["error_fp32"] += new
            if not new:
                break
        measured["tolerance"] = tol

    converted, rep = build()
    validate_converted(converted, source=model, ort="skip", what=f"the converted {precision} model")
    if target == "ort-cpu":
        converted, rep = _ensure_runs_on_cpu(converted, model, planner, typer, rep, build)
    rep.notes = report.notes + rep.notes
    rep.measured = measured
    _fill_report(rep, model, planner, sites, force_norm_fp16, low)
    if measure and feeds is not None:
        from .calibration import run_outputs

        # the tensorrt form need not run on ORT's CPU provider (bf16 has almost no kernels there):
        # its error is measured on the emulated form, like the candidates above
        measured_form = converted if target == "ort-cpu" else build(emulate=True)[0]
        if target != "ort-cpu":
            validate_converted(measured_form, source=model, what=f"the emulated {precision} model (measured check)")
        ref_out = run_outputs(model, feeds, source=source)
        got_out = run_outputs(measured_form, feeds)
        rep.measured["output_max_abs_error"] = {k: float(_absmax(got_out[k].astype("float64") - ref_out[k]))
                                                for k in ref_out}
        rep.measured["output_rel_error"] = {k: _rel_err(got_out[k], ref_out[k]) for k in ref_out}
    _finish(converted, precision, orig)
    # Never hand back an ill-typed graph (a bug here, or a typing rule this module does not know):
    # ORT CPU must load the ort-cpu form (_ensure_runs_on_cpu already made it); the tensorrt form may
    # lack CPU kernels, but nothing else.
    validate_converted(converted, source=model, ort="required" if target == "ort-cpu" else "typing",
                       what=f"the converted {precision} model")
    return converted, rep


def _fuse_first(model, report, fuser):
    """Fuse decomposed normalizations with ``fuser`` (ln_deploy.fuse.fuse_model) when there are any."""
    sites = norms_mod.find_normalizations(model.graph, model=model)
    if not any(s.form == "decomposed" for s in sites):
        return model
    if fuser is None:
        report.notes.append("no fuser given (convert_model(fuser=None)): decomposed normalizations stay in fp32")
        return model
    from ..errors import LnDeployError

    try:
        fused, frep = fuser(model, target="onnx", verify=True)
    except LnDeployError as e:
        report.notes.append(f"fusing decomposed normalizations failed ({e}); they stay decomposed, in fp32")
        return model
    n = frep.total_fused
    if n:
        report.notes.append(f"fused {n} decomposed normalization(s) first (ln_deploy.fuse, target onnx): "
                            "they run as one op with fp32 statistics")
        ensure_node_names(fused.graph)
        return fused
    return model


def _ensure_runs_on_cpu(converted, model, planner, typer, rep, build):
    """Backstop for the per-node probe: emulate any node the CPU session still refuses."""
    from ..ort import SessionConfig, open_session, parse_error

    if any(is_plugin(n) for n in all_nodes(converted.graph)):
        return converted, rep
    # In this process at ORT_ENABLE_EXTENDED (kernels, type errors, ORT's fusions); the layout
    # optimizers of ORT_ENABLE_ALL, where the known native crashes are, run in the deployment probe.
    for _ in range(50):
        try:
            open_session(converted, SessionConfig(level="extended", log_level=4), probe=False)
            return converted, rep
        except Exception as e:
            msg = str(e)
            name = parse_error(e).node
            if name and "LayerNormFusion" in name:
                # ORT's own LayerNormFusion fuses a decomposed fp32 norm together with the Cast that
                # feeds it and then rejects its own mixed-type node: feed the chain an fp32 tensor.
                if _break_norm_fusion(name.split("/")[0], model, planner):
                    converted, rep = build(plan_extra_emulation=False)
                    continue
            key = next((k for k, n in planner.nodes.items() if n.name == name), None) if name else None
            if key is None or planner.plan.get(key) != "low":
                raise CheckFailedError(f"the converted model does not load in ONNX Runtime and was not written: "
                                       f"{msg.strip().splitlines()[0][:300]}; please report this") from None
            planner.plan[key] = "emulate"
            converted, rep = build(plan_extra_emulation=False)
    return converted, rep


def _break_norm_fusion(node_name, model, planner) -> bool:
    prod = {o: n for n in model.graph.node for o in n.output}
    for site in norms_mod.find_normalizations(model.graph, model=model):
        if node_name in site.nodes:
            changed = False
            for x in site.inputs:
                p = prod.get(x)
                if p is not None and planner.plan.get(p.name) != "fp32":
                    planner.set(p.name, "fp32", f"feeds decomposed norm {site.label} in fp32 "
                                                "(avoids ONNX Runtime's LayerNormFusion type error)")
                    changed = True
            return changed
    return False


def _fill_report(rep, model, planner, sites, force, low):
    rep.nodes = sum(1 for _ in all_nodes(model.graph))
    for key, node in planner.nodes.items():
        d = planner.plan.get(key, "low")
        if d == "fp32":
            rep.fp32_nodes.append({"node": key, "op_type": node.op_type, "module": module_path(node),
                                   "reason": planner.reason.get(key, "")})
        elif d == "emulate" and rep.target == "ort-cpu":
            rep.emulated_nodes.append({"node": key, "op_type": node.op_type, "module": module_path(node)})
    rep.low_nodes = rep.nodes - len(rep.fp32_nodes)
    lowname = TYPE_NAMES[low]
    for s in sites:
        if s.form == "fused":
            handling = (f"decomposed and computed in {lowname} (forced): statistics NOT protected" if force
                        else f"{s.op_type} with stash_type=1: {lowname} tensors, fp32 statistics")
        elif s.form == "plugin":
            handling = f"ln_deploy plugin: {lowname} tensors, fp32 accumulation in the kernel"
        elif force:
            handling = f"decomposed, computed in {lowname} (forced): statistics NOT protected"
        else:
            handling = "decomposed: kept in fp32 (fuse it with `ln-deploy fuse` to run it as one op)"
        rep.normalizations.append({"name": s.name, "module": s.module, "kind": s.kind, "form": s.form,
                                   "handling": handling})
    if any(s.form == "decomposed" for s in sites) and not force:
        rep.notes.append(f"{sum(s.form == 'decomposed' for s in sites)} decomposed normalization(s) kept in fp32; "
                         "fusing first (ln_deploy.fuse) lets them run as one op with fp32 statistics")
    if rep.emulated_nodes:
        rep.notes.append(f"{len(rep.emulated_nodes)} {lowname} node(s) emulated for ORT's CPU provider: fp32 math "
                         f"between explicit Casts, every tensor rounded to {lowname} (convert with "
                         "target=tensorrt for the pure typed graph)")


def _finish(model, precision, orig) -> None:
    """Refresh value_info from inference and tag the model."""
    import onnx

    def clear(g):
        keep = [vi for vi in g.value_info if vi.type.tensor_type.elem_type not in (FLOAT, FLOAT16, BFLOAT16)]
        del g.value_info[:]
        g.value_info.extend(keep)
        for n in g.node:
            for sg in subgraphs(n):
                clear(sg)

    clear(model.graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False)
        model.graph.value_info.extend(inferred.graph.value_info)
    except Exception as e:
        log.debug("shape inference after conversion failed: %s", e)
    props = {p.key: p for p in model.metadata_props}
    if "ln_deploy.precision" in props:
        props["ln_deploy.precision"].value = precision
    else:
        model.metadata_props.add(key="ln_deploy.precision", value=precision)


def _set_attr(node, name, value) -> None:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            a.i = value
            return
    node.attribute.append(helper.make_attribute(name, value))


def _absmax(a) -> float:
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    return float(np.abs(a).max()) if a.size else 0.0


def _finite_absmax(a) -> float:
    """Largest finite magnitude: ±inf (attention masks) is as representable in fp16 as in fp32."""
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(np.abs(a).max()) if a.size else 0.0


def _rel_err(got, ref) -> float:
    import numpy as np

    g = np.asarray(got, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if g.shape != r.shape:
        return float("inf")
    if not r.size:
        return 0.0
    fin = np.isfinite(r)
    if not np.array_equal(np.isfinite(g), fin):
        return float("inf")
    scale = max(float(np.abs(r[fin]).max(initial=0.0)), 1e-6)
    return float(np.abs(g[fin] - r[fin]).max(initial=0.0) / scale)
