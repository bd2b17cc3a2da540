"""Internal Norm nodes → the target's operators.

``onnx``:     LayerNormalization (opset ≥ 17) / RMSNormalization (opset ≥ 23), ``stash_type=1``.
``tensorrt``: LnDeployNorm / LnDeploySkipNorm plugin nodes written from ``plugin_spec``; a Norm
              whose input is a residual ``Add`` of two same-shape tensors becomes one
              LnDeploySkipNorm (second output = the sum, when the sum is used elsewhere).

Normalized axes that are not the trailing ones (channels-first: axis 1 of NCHW) are moved last
with a Transpose and moved back after, so both targets express them (see ``rules/channels_first``).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir

from .. import plugin_spec
from ._common import (INTERNAL_DOMAIN, KIND_LN, KIND_NAMES, const, ctx, is_internal, norm_attrs,
                      param_for_axes, replace_value, static_dims, type_name)
from .rules import channels_first


def lower(model: ir.Model, target: str) -> Counter:
    """Replace every internal node in ``model`` (and its subgraphs: Scan/Loop bodies) in place;
    return counts for the report."""
    counts: Counter = Counter()
    opset = model.graph.opset_imports.get("", 17)
    for graph in [model.graph, *model.graph.subgraphs()]:
        _lower_graph(graph, target, counts, opset)
    model.graph.opset_imports.pop(INTERNAL_DOMAIN, None)
    if target == "tensorrt" and counts:
        model.graph.opset_imports.setdefault(plugin_spec.DOMAIN, plugin_spec.DOMAIN_VERSION)
    return counts


def _lower_graph(graph: ir.Graph, target: str, counts: Counter, opset: int) -> None:
    names = _NameMaker(graph)
    for node in list(graph):
        if not is_internal(node):
            continue
        a = norm_attrs(node)
        x = node.inputs[0]
        dims = static_dims(x)
        scale = node.inputs[1] if len(node.inputs) > 1 else None
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        dtype = node.outputs[0].dtype or x.dtype
        new_nodes: list[ir.Node] = []
        x_in, axes = x, a["axes"]
        r = len(dims)
        k = len(axes)
        perm = channels_first.permutation(axes, r)
        if perm is not None:
            t = ir.node("Transpose", [x], attributes={"perm": perm}, name=names("to_last"))
            new_nodes.append(t)
            x_in = t.outputs[0]
            dims = [dims[p] for p in perm]
            x_in.dtype = x.dtype
            if x.shape is not None:
                x_in.shape = ir.Shape([x.shape[p] for p in perm])
            axes = tuple(range(r - k, r))
        norm_dims = [dims[i] for i in axes]
        if scale is None and None in norm_dims:  # symbolic normalized dims: ones of their run-time size
            scale_v = _runtime_ones(x_in, k, dtype, opset, names, new_nodes)
        elif scale is None:
            scale_v = _initializer(graph, names("scale"), np.ones(norm_dims, dtype=dtype.numpy()))
        else:
            scale_v = _param(graph, names, scale, node.inputs[0], a["axes"], "scale")
        bias_v = None if bias is None else _param(graph, names, bias, node.inputs[0], a["axes"], "bias")
        skip = _residual(x) if target == "tensorrt" and perm is None else None
        wide = target == "tensorrt" and dtype not in PLUGIN_TYPES  # e.g. float64: TensorRT has none
        if wide:
            x_in, scale_v, bias_v, skip = _to_float(x_in, scale_v, bias_v, names, new_nodes)
            ctx().note(f"{type_name(dtype)} normalization run by the plugin in float32 between Casts "
                       "(TensorRT has no float64 tensors)")
        if target == "onnx":
            if a["kind"] == KIND_LN:
                ins = [x_in, scale_v] + ([bias_v] if bias_v is not None else [])
                n = ir.node("LayerNormalization", ins, attributes={"axis": -k, "epsilon": a["epsilon"], "stash_type": 1},
                            name=names("LayerNorm"))
                new_nodes.append(n)
                y = n.outputs[0]
            else:
                n = ir.node("RMSNormalization", [x_in, scale_v], attributes={"axis": -k, "epsilon": a["epsilon"], "stash_type": 1},
                            name=names("RMSNorm"))
                new_nodes.append(n)
                y = n.outputs[0]
                if bias_v is not None:
                    add = ir.node("Add", [y, bias_v], name=names("RMSNorm_bias"))
                    new_nodes.append(add)
                    y = add.outputs[0]
        else:
            fields = {"kind": a["kind"], "epsilon": a["epsilon"], "num_normalized_dims": k}
            if skip is not None:
                add_node, used_elsewhere = skip
                fields["output_sum"] = int(used_elsewhere)
                spec = plugin_spec.SKIP_NORM
                ins = [add_node.inputs[0], add_node.inputs[1], scale_v] + ([bias_v] if bias_v is not None else [])
            else:
                spec = plugin_spec.NORM
                ins = [x_in, scale_v] + ([bias_v] if bias_v is not None else [])
            n = plugin_node(spec, ins, fields, name=names(spec.name),
                            num_outputs=2 if skip is not None and skip[1] else 1)
            new_nodes.append(n)
            y = n.outputs[0]
            if skip is not None:
                counts["SkipLayerNormalization"] += 1
                if skip[1]:
                    s = n.outputs[1]
                    s.dtype, s.shape = add_node.outputs[0].dtype, add_node.outputs[0].shape
                    replace_value(add_node.outputs[0], s)
        if wide:
            back = ir.node("Cast", [y], attributes={"to": dtype}, name=names("from_float"))
            new_nodes.append(back)
            y = back.outputs[0]
        if perm is not None:
            back = ir.node("Transpose", [y], attributes={"perm": channels_first.inverse(perm)}, name=names("from_last"))
            new_nodes.append(back)
            y = back.outputs[0]
        y.dtype, y.shape = node.outputs[0].dtype, node.outputs[0].shape
        for n in new_nodes:  # the module path (name_scopes) the rewriter copied from the pattern
            for k, v in node.metadata_props.items():
                n.metadata_props.setdefault(k, v)
        graph.insert_before(node, new_nodes)
        replace_value(node.outputs[0], y)
        graph.remove(node, safe=True)
        counts[KIND_NAMES[a["kind"]]] += 1
        if perm is not None:
            counts["channels_first"] += 1
    if target == "tensorrt":
        graph.sort()  # a SkipNorm's sum output may now feed nodes placed before it


def plugin_node(spec: plugin_spec.PluginDef, inputs, fields: dict, name: str, num_outputs: int = 1) -> ir.Node:
    """A node TensorRT's ONNX parser imports through its plugin fallback: op_type = plugin name,
    ``plugin_version``/``plugin_namespace``, one attribute per field of ``plugin_spec``."""
    attrs = {"plugin_version": plugin_spec.VERSION, "plugin_namespace": plugin_spec.NAMESPACE}
    for f in spec.fields:
        v = fields.get(f.name, f.default)
        attrs[f.name] = float(v) if f.type == "float32" else int(v)
    return ir.node(spec.name, list(inputs), attributes=attrs, num_outputs=num_outputs, name=name,
                   domain=plugin_spec.DOMAIN)


def _residual(x: ir.Value):
    """(Add node, sum used elsewhere) when ``x`` is a residual sum of two same-shape tensors."""
    add = x.producer()
    if add is None or add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2:
        return None
    a, b = add.inputs
    if const(a) is not None or const(b) is not None:
        return None  # adding a bias, not a residual
    da, db, dx = _dims(a), _dims(b), _dims(x)
    if da is None or not (da == db == dx):
        return None  # a broadcasting Add (or shapes unknown) is not a residual the plugin takes
    others = len(x.uses()) > 1 or x.is_graph_output()
    return add, others


def _dims(v: ir.Value):
    """Dims as ints or symbolic names; None when any dim is anonymous (then equality proves nothing)."""
    if v.shape is None:
        return None
    out = []
    for d in v.shape:
        if isinstance(d, int):
            out.append(d)
        elif getattr(d, "value", None):
            out.append(str(d.value))
        else:
            return None
    return out


PLUGIN_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _param(graph, names, value: ir.Value, x: ir.Value, axes, what: str) -> ir.Value:
    """A folded scale/bias as the fused op takes it: a constant reshaped to the normalized dims, or
    a run-time tensor as it is (affine only folds one whose shape is exactly those dims)."""
    arr = const(value)
    if arr is None:
        return value
    return _initializer(graph, names(what), param_for_axes(arr, static_dims(x), axes))


def _runtime_ones(x: ir.Value, k: int, dtype, opset: int, names, new_nodes) -> ir.Value:
    """ones(x.shape[-k:]) computed at run time (the normalized dims are symbolic): ConstantOfShape of
    the trailing dims of Shape(x). Shape's ``start`` exists from opset 15; before, a Slice."""
    if opset >= 15:
        shape = ir.node("Shape", [x], attributes={"start": -k}, name=names("norm_shape"))
        new_nodes.append(shape)
        dims = shape.outputs[0]
    else:
        shape = ir.node("Shape", [x], name=names("shape"))
        new_nodes.append(shape)
        consts = [ir.Value(name=names(n), const_value=ir.tensor(np.array(v, np.int64)))
                  for n, v in (("starts", [-k]), ("ends", [np.iinfo(np.int64).max]), ("axes", [0]))]
        cnodes = [ir.node("Constant", [], attributes={"value": c.const_value}, name=c.name) for c in consts]
        new_nodes.extend(cnodes)
        sl = ir.node("Slice", [shape.outputs[0]] + [c.outputs[0] for c in cnodes], name=names("norm_shape"))
        new_nodes.append(sl)
        dims = sl.outputs[0]
    dims.dtype, dims.shape = ir.DataType.INT64, ir.Shape([k])
    one = ir.tensor(np.ones([1], dtype=dtype.numpy()))
    ones = ir.node("ConstantOfShape", [dims], attributes={"value": one}, name=names("ones"))
    new_nodes.append(ones)
    v = ones.outputs[0]
    v.dtype = dtype
    return v


def _to_float(x_in, scale_v, bias_v, names, new_nodes):
    """Inputs of a plugin node for a type the plugin does not take (float64): cast to float32.
    The residual sum is not absorbed then (it would be formed in float32)."""
    def cast(v):
        if v is None:
            return None
        c = ir.node("Cast", [v], attributes={"to": ir.DataType.FLOAT}, name=names("to_float"))
        new_nodes.append(c)
        out = c.outputs[0]
        out.dtype, out.shape = ir.DataType.FLOAT, v.shape
        return out

    return cast(x_in), cast(scale_v), cast(bias_v), None


def _initializer(graph: ir.Graph, name: str, arr: np.ndarray) -> ir.Value:
    v = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(arr), name=name))
    v.dtype, v.shape = v.const_value.dtype, ir.Shape(list(arr.shape))
    graph.register_initializer(v)
    return v


class _NameMaker:
    def __init__(self, graph: ir.Graph):
        self.used = {n.name for n in graph} | set(graph.initializers)
        self.i = Counter()

    def __call__(self, base: str) -> str:
        while True:
            self.i[base] += 1
            name = f"ln_deploy/{base}_{self.i[base]}"
            if name not in self.used:
                self.used.add(name)
                return name
