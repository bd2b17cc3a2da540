"""Rewriting a graph to a precision plan: Casts per tensor and type (never per consumer), weights
converted once, lossless round trips removed; forced-fp16 norm decomposition; value_info refresh."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import BadInputError
from .graph import (BFLOAT16, DOUBLE, FLOAT, FLOAT16, TYPE_NAMES, get_attr, outer_references, subgraphs)

if TYPE_CHECKING:
    from .node_typing import Typer
    from .report import ConversionReport

log = logging.getLogger(__name__)


class Rewriter:
    def __init__(self, typer: Typer, plan: dict, report: ConversionReport, target: str):
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
                new_inits.append(make_tensor(arr, want, new_name))
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
        self.report.casts_removed += cancel_casts(graph, cur, out_names)
        drop_unused_initializers(graph)
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
                    a.t.CopyFrom(make_tensor(numpy_helper.to_array(a.t), low, a.t.name))
                elif a.name in ("value_float", "value_floats"):
                    import numpy as np

                    arr = np.array(onnx.helper.get_attribute_value(a), dtype=np.float32)
                    node.ClearField("attribute")
                    node.attribute.append(onnx.helper.make_attribute("value", make_tensor(arr, low, "")))
                    break


def make_tensor(arr, elem_type: int, name: str):
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


def cancel_casts(graph, types: dict, keep: set) -> int:
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


def drop_unused_initializers(graph) -> None:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output} | outer_refs_of_children(graph)
    graph_inputs = {i.name for i in graph.input}
    keep = [t for t in graph.initializer if t.name in used or t.name in graph_inputs]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)


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


def finish_model(model, precision, orig) -> None:
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


def set_int_attr(node, name, value) -> None:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            a.i = value
            return
    node.attribute.append(helper.make_attribute(name, value))
