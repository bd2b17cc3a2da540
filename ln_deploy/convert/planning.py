"""The precision plan: per node low / fp32 / emulate, by policy (ops, names, control flow,
decomposed norms, weights beyond the range), by what ONNX Runtime's CPU provider can build
(ort-cpu target), and by measurement (convert_model's rounds call ``Planner.set``)."""

from __future__ import annotations

from . import norms as norms_mod
from .graph import FLOAT, FLOAT16, TYPE_NAMES, subgraphs
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
