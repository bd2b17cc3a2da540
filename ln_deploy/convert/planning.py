"""The precision plan: per node low / fp32 / emulate, by policy (ops, names, control flow,
decomposed norms, weights beyond the range), by what ONNX Runtime's CPU provider can build
(ort-cpu target), and by measurement (convert_model's rounds call ``Planner.set``)."""

from __future__ import annotations

from . import norms as norms_mod
from .graph import BFLOAT16, DOUBLE, FLOAT, FLOAT16, TYPE_NAMES, subgraphs
from .node_typing import DATA_MOVEMENT_OPS, FP16_MAX, SUBGRAPH_OPS, Typer, is_plugin
from .report import ConversionReport
from .rewrite import outer_refs_of_children


class Planner:
    def __init__(self, model, typer: Typer, opts: dict, report: ConversionReport):
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
        for key in index_arithmetic(graph, self.typer.orig):
            if scope + key not in self.forced_low:
                self.set(scope + key, "fp32", "index arithmetic: float math on integers whose result becomes "
                                              "an integer again (a rounding would change the index)")
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
        """For the ort-cpu target: a low-precision node ONNX Runtime's CPU provider cannot build
        (almost every bf16 compute op; probed per signature, cached) runs in fp32, so the graph
        loads on the CPU as on CUDA. Where ORT has a kernel (or inserts its own fp16 Casts) the node
        stays in the low type. Rounding every tensor is not this graph's job: the measured check and
        ``ln-deploy check`` run the strict emulation (emulation.py), whatever the target. Data
        movement between fp32 nodes follows them into fp32 (a Cast pair around a Reshape buys
        nothing). ln_deploy's plugin nodes are emulated (fp32 math, low-precision tensors): ORT runs
        them through their reference expansion, which has no bf16 kernel on its CPU provider."""
        from .ort_support import cpu_supports

        opset = tuple((o.domain, o.version) for o in self.model.opset_import)
        low = TYPE_NAMES[self.typer.low]
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
            if is_plugin(node):
                self.plan[key] = "emulate"
                continue
            ref_in, ref_out = self.typer.io(node, "fp32")
            cur_in = tuple((w if w is not None else self.typer.orig.get(n, 0)) if n else 0
                           for w, n in zip(want_in, node.input))
            ref_in_t = tuple((w if w is not None else self.typer.orig.get(n, 0)) if n else 0
                             for w, n in zip(ref_in, node.input))
            ok = cpu_supports(node, opset, cur_in, tuple(o or 0 for o in outs), ref_in_t,
                              tuple(o or 0 for o in ref_out))
            if ok:
                self.plan[key] = "low"
            else:
                self.set(key, "fp32", f"ONNX Runtime's CPU provider has no {low} kernel for {node.op_type}")
        self._movement_follows_fp32(graph, scope)

    def _movement_follows_fp32(self, graph, scope: str) -> None:
        """A low data-movement node whose float inputs all come from fp32 (nodes, fp32 graph
        inputs, fp32 weights) goes fp32 too: otherwise it sits between a Cast down and a Cast up."""
        prod = {o: n for n in graph.node for o in n.output}
        changed = True
        while changed:
            changed = False
            for node in graph.node:
                key = scope + node.name
                if node.op_type not in DATA_MOVEMENT_OPS or self.plan.get(key) != "low" or node.op_type == "Cast":
                    continue
                floats = [x for x in node.input if x and self.typer.orig.get(x) == FLOAT]
                if not floats:
                    continue
                if all(x not in prod or self.plan.get(scope + prod[x].name) == "fp32" for x in floats) \
                        and any(x in prod for x in floats):
                    self.set(key, "fp32", "data movement between fp32 nodes")
                    changed = True


_FLOATS = (FLOAT, FLOAT16, BFLOAT16, DOUBLE)
# Ops whose float inputs become integers or booleans: where a value computed in float is discretised.
_DISCRETISING = ("Cast", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Equal", "Floor", "Ceil", "Round")
# Periodic functions: an absolute error of the angle is the error of the result, however large the angle.
_PERIODIC = ("Sin", "Cos")


def index_arithmetic(graph, types: dict) -> list[str]:
    """Names of the nodes doing float math on integers (positions, distances) whose result is
    discretised again or taken modulo 2π: there a rounding is not a small relative error.

    * T5's relative-position buckets: ``Cast(int → float) → Div → Log → Div → Mul → Cast(→ int64)``.
      In fp16 the bucket floor(max_exact + log(n / max_exact) / log(max_distance / max_exact) · span)
      moves by one wherever the fp32 value lies within a rounding of an integer, and the constant
      log(max_distance / max_exact) itself rounds: the attention bias reads the wrong row (an O(1)
      error). Hugging Face computes it in fp32 whatever the model's dtype.
    * Rotary / sinusoidal angles ``position · inv_freq`` fed to Cos/Sin (LLaMA's rotary embedding):
      fp16's spacing is 0.5 at 512..1024, so past a few hundred positions cos/sin of the rounded
      angle is unrelated to the true one. Hugging Face computes these in fp32 too.

    Such chains act on short vectors, so fp32 costs nothing, and the Casts inside them disappear.
    A node qualifies when every float input derives from integers and constants only (int → float
    Casts, Constant nodes, scalar or vector initializers such as ``inv_freq``, nodes of such inputs)
    and its value reaches, through such nodes, an op that turns it into an integer or a boolean
    (Cast to a non-float type, a comparison, Floor/Ceil/Round) or a Sin/Cos (marked too: its input
    must stay fp32). Activations never qualify: a float graph input, a matrix or table initializer
    (an embedding, a weight) or a tensor from an outer scope breaks the chain."""
    prod = {o: n for n in graph.node for o in n.output if o}
    vectors = {t.name for t in graph.initializer if sum(d > 1 for d in t.dims) <= 1}
    memo: dict[str, bool] = {}

    def from_ints(x: str) -> bool:
        """The float tensor ``x`` is computed from integers and constants only."""
        if x in memo:
            return memo[x]
        memo[x] = False  # guards against cycles (none in a valid graph)
        if types.get(x) not in _FLOATS or x in vectors:
            ok = True
        elif x not in prod:
            ok = False  # a float graph input, a matrix initializer, or a tensor captured from an outer scope
        else:
            n = prod[x]
            if n.op_type == "Constant":
                ok = True
            elif any(True for _ in subgraphs(n)):
                ok = False
            else:
                ok = all(from_ints(i) for i in n.input if i)
        memo[x] = ok
        return ok

    marked: list[str] = []
    seen: set[str] = set()
    stack: list[str] = []
    for n in graph.node:
        float_in = [i for i in n.input if i and types.get(i) in _FLOATS]
        if not float_in:
            continue
        if n.op_type in _PERIODIC and all(from_ints(i) for i in float_in) and n.name not in seen:
            seen.add(n.name)
            marked.append(n.name)
        elif n.op_type not in _DISCRETISING or (n.op_type == "Cast" and any(types.get(o) in _FLOATS
                                                                          for o in n.output)):
            continue  # not a sink (a float → float Cast only changes the type)
        stack += float_in
    while stack:
        x = stack.pop()
        p = prod.get(x)
        if p is None or p.name in seen or not from_ints(x):
            continue
        seen.add(p.name)
        marked.append(p.name)
        stack += [i for i in p.input if i and types.get(i) in _FLOATS]
    return marked


def break_norm_fusion(node_name, model, planner) -> bool:
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
