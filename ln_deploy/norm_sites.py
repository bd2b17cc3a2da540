"""Find every normalization in an ONNX graph: fused ops, ln_deploy plugin ops, and decomposed chains.

A decomposed normalization is what hand-written LayerNorm/RMSNorm exports to::

    LayerNorm: m = ReduceMean(x); d = Sub(x, m); v = ReduceMean(Pow(d, 2) | Mul(d, d));
               y = Div(d, Sqrt(Add(v, eps)))  |  Mul(d, Reciprocal(Sqrt(...)))
    RMSNorm:   v = ReduceMean(Pow(x, 2) | Mul(x, x)); y = Mul(x, Reciprocal(Sqrt(Add(v, eps)))) | Div(...)

The chain is found from its "square then reduce" core, the step that overflows fp16 first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .plugin_spec import KIND_RMS_NORM, NORM, SKIP_NORM, is_plugin_node
from .onnx_graph import constant_value, consumers, get_attr, module_path, opset_version, producers

FUSED_NORM_OPS = ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization",
                  "SkipLayerNormalization", "SkipSimplifiedLayerNormalization")
_REDUCE = ("ReduceMean", "ReduceSum")


@dataclass
class NormSite:
    """One normalization: where its input comes from, which axes it normalizes, which nodes it spans."""

    name: str  # the node name (fused/plugin) or the name of the chain's square node (decomposed)
    module: str  # PyTorch module path from the exporter's metadata ('' if unknown)
    kind: str  # "layernorm" | "rmsnorm"
    form: str  # "fused" | "plugin" | "decomposed"
    op_type: str
    inputs: tuple[str, ...]  # the tensors summed to form the normalized value (x, or x and residual)
    axes: tuple[int, ...] | None  # normalized axes (negative = from the end); None = unknown
    nodes: list[str] = field(default_factory=list)  # node names making up the site
    output: str = ""

    @property
    def label(self) -> str:
        return self.module or self.name


def _axes_of_reduce(graph, node, opset: int):
    axes = get_attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        v = constant_value(graph, node.input[1])
        axes = None if v is None else [int(a) for a in list(getattr(v, "flat", v))]
    return tuple(int(a) for a in axes) if axes is not None else None


def _is_two(graph, name) -> bool:
    v = constant_value(graph, name)
    try:
        import numpy as np

        return v is not None and np.asarray(v).size == 1 and float(np.asarray(v).reshape(-1)[0]) == 2.0
    except (TypeError, ValueError):
        return False


def find_normalizations(graph, opset: int | None = None, model=None) -> list[NormSite]:
    """Every normalization in ``graph`` (not its subgraphs), in graph order."""
    if opset is None:
        opset = opset_version(model) if model is not None else 18
    prod = producers(graph)
    cons = consumers(graph)
    sites: list[NormSite] = []
    for node in graph.node:
        if node.op_type in FUSED_NORM_OPS:
            kind = "rmsnorm" if "Simplified" in node.op_type or node.op_type.startswith("RMS") else "layernorm"
            axis = get_attr(node, "axis", -1)
            inputs = (node.input[0], node.input[1]) if node.op_type.startswith("Skip") else (node.input[0],)
            sites.append(NormSite(node.name, module_path(node), kind, "fused", node.op_type, inputs,
                                  _trailing_axes(axis), [node.name], node.output[0]))
        elif is_plugin_node(node):
            k = get_attr(node, "kind", 0)
            nd = get_attr(node, "num_normalized_dims", 1)
            inputs = (node.input[0], node.input[1]) if node.op_type == SKIP_NORM.name else (node.input[0],)
            sites.append(NormSite(node.name, module_path(node), "rmsnorm" if k == KIND_RMS_NORM else "layernorm",
                                  "plugin", node.op_type, inputs, tuple(range(-int(nd), 0)), [node.name],
                                  node.output[0]))
    sites += _decomposed(graph, prod, cons, opset)
    order = {n.name: i for i, n in enumerate(graph.node)}
    sites.sort(key=lambda s: min(order.get(x, 0) for x in s.nodes))
    return sites


def _other_is_constant(graph, node, name) -> bool:
    others = [i for i in node.input if i != name]
    return len(others) == 1 and constant_value(graph, others[0]) is not None


def _trailing_axes(axis):
    axis = int(axis)
    return tuple(range(axis, 0)) if axis < 0 else None  # positive axis: needs the rank (resolved by callers)


def _decomposed(graph, prod, cons, opset) -> list[NormSite]:
    sites = []
    for red in graph.node:
        if red.op_type not in _REDUCE:
            continue
        sq = prod.get(red.input[0])
        if sq is None:
            continue
        if sq.op_type == "Mul" and len(sq.input) == 2 and sq.input[0] == sq.input[1]:
            t = sq.input[0]
        elif sq.op_type == "Pow" and _is_two(graph, sq.input[1]):
            t = sq.input[0]
        else:
            continue
        axes = _axes_of_reduce(graph, red, opset)
        nodes = [sq.name, red.name]
        # LayerNorm: t = Sub(x, ReduceMean(x)) over the same axes.
        sub = prod.get(t)
        kind, x = "rmsnorm", t
        if sub is not None and sub.op_type == "Sub":
            mean = prod.get(sub.input[1])
            if mean is not None and mean.op_type == "ReduceMean" and mean.input[0] == sub.input[0]:
                kind, x = "layernorm", sub.input[0]
                nodes = [mean.name, sub.name] + nodes
        # Forward: eps add, sqrt/rsqrt, reciprocal, then the Div/Mul that applies it to t.
        cur, out = red.output[0], red.output[0]
        for _ in range(5):
            nxt = cons.get(cur, [])
            if len(nxt) != 1:
                break
            n = nxt[0]
            if n.op_type in ("Add", "Sqrt", "Reciprocal", "Cast"):
                nodes.append(n.name)
                cur = out = n.output[0]
                continue
            if n.op_type in ("Div", "Mul") and t in n.input:
                nodes.append(n.name)
                out = n.output[0]
                # the affine part (times weight, plus bias) belongs to the norm too: keeping it with
                # the statistics stops ONNX Runtime's LayerNormFusion from fusing across a Cast
                for op in ("Mul", "Add"):
                    nxt = cons.get(out, [])
                    if len(nxt) == 1 and nxt[0].op_type == op and _other_is_constant(graph, nxt[0], out):
                        nodes.append(nxt[0].name)
                        out = nxt[0].output[0]
            break
        module = module_path(red)
        sites.append(NormSite(sq.name, module, kind, "decomposed", "decomposed", (x,), axes, nodes, out))
    return sites
