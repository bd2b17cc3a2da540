"""Exact canonicalisation before matching: the same values, in fewer spellings.

Patterns have a fixed shape, so everything that only *spells* a value differently is made canonical
first; none of it changes a value:

* **topological order** (``sort_proto``, on the ModelProto before anything reads it): ONNX requires
  it, ONNX Runtime does not, and some generators (ORT's ``transformers.float16``, its fusion-test
  scripts) write nodes out of order. Stable: nodes already in order keep it.
* **constant folding** of constant-only subgraphs (``Cast`` of a constant exponent, ``Identity`` /
  ``Constant`` nodes, static shape arithmetic), by onnxscript's constant folder restricted to ops
  whose result is exactly the same in numpy and ONNX Runtime (casts, data movement, and the
  correctly rounded IEEE operations: + - * / sqrt); never Pow/Exp/Erf..., never a graph input
  (the user may override an initializer that is also an input).
* **shape no-ops**: ``Identity``, an ``Expand`` whose output shape equals its input's, and a chain
  of ``Reshape``/``Squeeze``/``Unsqueeze``/``Flatten`` (which keep the row-major order) that ends in
  the shape it started from (static dims or the same named symbols) pass their input on unchanged,
  so their consumers read it directly (``Unsqueeze`` then ``Squeeze`` between a variance and its Add).
* **common subexpressions**: equal scalars and small integer constants are merged, then onnx_ir's
  CSE merges nodes with the same op, inputs and attributes (a mean computed twice, two
  ``Sub(x, mean)``). Weights are not merged: two norms with equal weights stay two norms.

Lossless Cast chains are made canonical afterwards by the ``cast_chains`` rules.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter

import numpy as np
import onnx_ir as ir

# ops whose folded value is bit-identical in numpy (onnx's reference evaluator) and ONNX Runtime
EXACT_OPS = frozenset({
    "Cast", "CastLike", "Identity", "Constant", "Shape", "Size", "Gather", "GatherElements", "Concat",
    "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Slice", "Expand", "Transpose", "Tile", "Range",
    "Split", "Where", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or",
    "Neg", "Abs", "Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal", "Min", "Max", "Sign", "Floor", "Ceil",
})
RESHAPES = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten"})  # keep the row-major order
_SMALL = 64  # constants up to this many elements are merged when equal


# ---------------------------------------------------------------- topological order (ModelProto)

def _names_used_inside(node) -> set[str]:
    """Every value name the subgraphs of ``node`` read (outer-scope references among them)."""
    import onnx

    used: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else (
            list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else [])
        for g in graphs:
            for n in g.node:
                used.update(n.input)
                used |= _names_used_inside(n)
    return used


def sort_graph_proto(graph) -> int:
    """Sort ``graph``'s nodes (and its subgraphs') topologically in place, keeping the file's order
    where it is already valid. Returns how many nodes moved (0 when already sorted, or when the graph
    has a cycle: then it is left as is for the ONNX checker to refuse)."""
    import onnx

    moved = 0
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                moved += sort_graph_proto(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                moved += sum(sort_graph_proto(g) for g in attr.graphs)
    nodes = list(graph.node)
    producer = {}
    for i, n in enumerate(nodes):
        for out in n.output:
            if out:
                producer.setdefault(out, i)
    deps = []
    unsorted = False
    for i, n in enumerate(nodes):
        names = set(n.input) | _names_used_inside(n) if n.attribute else set(n.input)
        d = {producer[x] for x in names if x in producer and producer[x] != i}
        unsorted = unsorted or any(j > i for j in d)
        deps.append(d)
    if not unsorted:
        return moved
    users: list[list[int]] = [[] for _ in nodes]
    waiting = [len(d) for d in deps]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:  # smallest original index first: a stable sort
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        return moved  # a cycle: not ours to repair
    moved += sum(1 for k, i in enumerate(order) if k != i)
    new = [nodes[i] for i in order]
    del graph.node[:]
    graph.node.extend(new)
    return moved


def sort_proto(model):
    """``(model, nodes moved)``: ``model`` itself when it is in topological order, else a sorted copy
    (the caller's ModelProto is never modified)."""
    import onnx

    probe = onnx.GraphProto()
    probe.CopyFrom(model.graph)
    moved = sort_graph_proto(probe)
    if not moved:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.CopyFrom(probe)
    return out, moved


# ---------------------------------------------------------------- onnx_ir passes

def canonicalise(model: ir.Model) -> Counter:
    """Apply the exact canonical forms to ``model`` in place; counts of what changed."""
    counts: Counter = Counter()
    counts["constants folded"] = fold_constants(model)
    for graph in model.graphs():
        counts["shape no-ops removed"] += remove_shape_noops(graph)
        counts["equal constants merged"] += merge_equal_constants(graph)
    before = sum(1 for g in model.graphs() for _ in g)
    import onnx_ir.passes.common as passes

    passes.CommonSubexpressionEliminationPass(size_limit=1)(model)  # Constant nodes: merge_equal_constants
    counts["duplicate nodes merged"] = before - sum(1 for g in model.graphs() for _ in g)
    return +counts


def _exact_only(node: ir.Node):
    return None if node.domain in ("", "ai.onnx") and node.op_type in EXACT_OPS else False


def fold_constants(model: ir.Model) -> int:
    """onnxscript's constant folder, evaluating only exact ops; returns how many nodes it removed."""
    from onnxscript.optimizer import _constant_folding as cf

    before = sum(1 for g in model.graphs() for _ in g)
    quiet = [logging.getLogger(n) for n in ("onnxscript.optimizer._constant_folding", "onnx_ir")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:  # it logs a warning per skipped external tensor; the report says what matters
        lg.setLevel(logging.ERROR)
    try:
        cf.FoldConstantsPass(shape_inference=False, input_size_limit=cf.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                             output_size_limit=cf.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
                             should_fold=_exact_only)(model)
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)
    _drop_dead_constants(model)
    return before - sum(1 for g in model.graphs() for _ in g)


def _drop_dead_constants(model: ir.Model) -> None:
    for graph in model.graphs():
        for node in reversed(list(graph)):
            if node.op_type == "Constant" and not any(o.uses() or o.is_graph_output() for o in node.outputs):
                graph.remove(node, safe=True)


def _same_shape(a: ir.Value, b: ir.Value) -> bool:
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return False
    for x, y in zip(a.shape, b.shape):
        if isinstance(x, int) or isinstance(y, int):
            if x != y:
                return False
        elif x.value is None or x.value != y.value:  # anonymous dims prove nothing
            return False
    return True


def remove_shape_noops(graph: ir.Graph) -> int:
    """Bypass Identity nodes, Expand to the same shape, and chains of Reshape/Squeeze/Unsqueeze/
    Flatten (which keep the elements' row-major order) that end in the shape they started from."""
    n = 0
    for node in list(graph):
        if node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
            continue
        y = node.outputs[0]
        if y.is_graph_output():
            continue  # the output keeps its producer (and its name)
        source = None
        if node.op_type == "Identity":
            source = node.inputs[0]
        elif node.op_type == "Expand":
            source = node.inputs[0] if _same_shape(node.inputs[0], y) else None
        elif node.op_type in RESHAPES:
            v = node.inputs[0]
            while v is not None:  # the earliest value of the reshape chain with y's shape
                if _same_shape(v, y) and v.dtype == y.dtype:
                    source = v
                p = v.producer()
                if p is None or p.op_type not in RESHAPES or p.domain not in ("", "ai.onnx"):
                    break
                v = p.inputs[0]
        if source is None:
            continue
        y.replace_all_uses_with(source)
        if not any(o.uses() for o in node.outputs):
            graph.remove(node, safe=True)
        n += 1
    return n


def merge_equal_constants(graph: ir.Graph) -> int:
    """Point every use of a scalar or small integer constant (axes, shapes, exponents, epsilons) at
    the first equal one (same dtype, shape and bytes): initializers that are not graph inputs, and
    Constant-node values."""
    seen: dict = {}
    n = 0
    values = [v for v in graph.initializers.values() if not v.is_graph_input()]
    values += [node.outputs[0] for node in graph if node.op_type == "Constant" and node.domain in ("", "ai.onnx")]
    for v in values:
        t = v.const_value
        if t is None or v.is_graph_output():
            continue
        try:
            if t.size > _SMALL:
                continue
            a = np.asarray(t.numpy())
        except Exception:  # noqa: BLE001 - external data not loaded: leave it
            continue
        if a.size > 1 and not np.issubdtype(a.dtype, np.integer):
            continue  # a weight: two equal ones are still two parameters (LN1 and LN2 stay two norms)
        key = (t.dtype, tuple(a.shape), a.tobytes())
        first = seen.setdefault(key, v)
        if first is not v and v.uses():
            v.replace_all_uses_with(first)
            n += 1
    return n
