"""What the plugin nodes compute, twice: a numpy reference, and an expansion into standard ONNX ops
so ONNX Runtime can run a ``tensorrt``-target model for the safety check.

Semantics (the same as ONNX's LayerNormalization/RMSNormalization function with stash_type=1):
the statistics in float32 — mean, then the mean of squared deviations (not E[x²]−E[x]²) — the
normalized row cast back to the input type, then ``* scale (+ bias)`` in the input type.
LnDeploySkipNorm first forms ``s = x + residual`` in the input type; its optional second output is s.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from . import plugin_spec
from .onnx_graph import replace_value

KIND_RMS = plugin_spec.KIND_RMS_NORM


def norm_reference(x, scale, bias=None, *, kind=0, epsilon=1e-5, num_normalized_dims=1):
    axes = tuple(range(x.ndim - num_normalized_dims, x.ndim))
    xf = x.astype(np.float32)
    d = xf if kind == KIND_RMS else xf - xf.mean(axis=axes, keepdims=True)
    var = (d * d).mean(axis=axes, keepdims=True)
    y = (d / np.sqrt(var + np.float32(epsilon))).astype(x.dtype) * scale
    return y + bias if bias is not None else y


def skip_norm_reference(x, residual, scale, bias=None, **fields):
    s = x + residual
    return norm_reference(s, scale, bias, **{k: v for k, v in fields.items() if k != "output_sum"}), s


def expand_plugin_nodes(proto):
    """``(a copy of the onnx.ModelProto with plugin nodes expanded, how many)``: what ONNX Runtime
    runs in place of a ``--target tensorrt`` model."""
    m = ir.from_proto(proto)
    count = expand_plugins(m)
    return ir.to_proto(m), count


def expand_plugins(model: ir.Model) -> int:
    """Replace LnDeployNorm/LnDeploySkipNorm nodes in place by standard ops (also in Scan/Loop
    bodies); return how many."""
    opset = model.graph.opset_imports.get("", 17)
    return sum(_expand_graph(g, opset) for g in [model.graph, *model.graph.subgraphs()])


def _expand_graph(graph: ir.Graph, opset: int) -> int:
    count = 0
    for node in list(graph):
        if not plugin_spec.is_plugin_node(node):
            continue
        f = {k: v.value for k, v in node.attributes.items()}
        skip = node.op_type == plugin_spec.SKIP_NORM.name
        ins = list(node.inputs)
        new = []

        def add(op, inputs, **attrs):
            n = ir.node(op, inputs, attributes=attrs)
            new.append(n)
            return n.outputs[0]

        if skip:
            x = add("Add", ins[:2])
            scale, bias = ins[2], ins[3] if len(ins) > 3 else None
        else:
            x = ins[0]
            scale, bias = ins[1], ins[2] if len(ins) > 2 else None
        k = int(f["num_normalized_dims"])
        axes = list(range(-k, 0))

        def mean(v):
            if opset >= 18:
                ax = ir.Value(name=None, const_value=ir.tensor(np.array(axes, np.int64)))
                c = ir.node("Constant", [], attributes={"value": ax.const_value})
                new.append(c)
                return add("ReduceMean", [v, c.outputs[0]], keepdims=1)
            return add("ReduceMean", [v], axes=axes, keepdims=1)

        def const(val):
            c = ir.node("Constant", [], attributes={"value": ir.tensor(np.array(val, np.float32))})
            new.append(c)
            return c.outputs[0]

        dtype = scale.dtype or ins[0].dtype  # the scale is an initializer: its type is always known
        xf = add("Cast", [x], to=ir.DataType.FLOAT) if dtype != ir.DataType.FLOAT else x
        d = xf if int(f["kind"]) == KIND_RMS else add("Sub", [xf, mean(xf)])
        var = mean(add("Mul", [d, d]))
        y = add("Div", [d, add("Sqrt", [add("Add", [var, const(f["epsilon"])])])])
        if dtype != ir.DataType.FLOAT:
            y = add("Cast", [y], to=dtype)
        y = add("Mul", [y, scale])
        if bias is not None:
            y = add("Add", [y, bias])
        for n in new:  # keep the module path: the check localises the expanded norm like the plugin node
            n.metadata_props.update(node.metadata_props)
        graph.insert_before(node, new)
        replace_value(node.outputs[0], y)
        if skip and len(node.outputs) > 1:
            replace_value(node.outputs[1], x)
        graph.remove(node, safe=True)
        count += 1
    return count
