"""Per-normalization localisation: which normalization is the first to diverge.

PyTorch side: forward hooks on every normalization module record its output at each call, in the order
the calls finish (so an inner ``nn.LayerNorm`` inside a ``LayerNorm2d`` wrapper comes before its wrapper).

ONNX side: on a copy of the model, the output of each normalization's call becomes an extra graph
output. The module path comes from the metadata the dynamo exporter writes on every node:
``pkg.torch.onnx.name_scopes`` (a list of module paths from the root, then the op's own name), or the
``namespace`` string (``": cls/blocks.0: cls/blocks.0.norm1: cls/op: aten..."``). The nodes of one call of a
module form a run of consecutive nodes carrying that path; the call's output is the value produced in the
run and consumed outside it (or a graph output). Calls are matched by module path and call index.

Inside a Scan/Loop body (a recurrent model exported in scan mode) the body's value is made an extra scan
output, so the copy returns it for every iteration (stacked along a new leading axis per enclosing
loop). With k calls of a module per iteration (found in the body as above), PyTorch's call i is the
body's call ``i % k`` in iteration ``i // k``; the body's module paths may carry a prefix (``model.``: the
scan export traces a wrapper holding the model as ``model``), found by ``scope_prefix``.

Which modules are normalizations is decided by what they compute, read from the graph
(``graph_norm_modules``): a module whose output the graph computes with a normalization (a fused
LayerNormalization/RMSNormalization/Skip* op, a plugin op, or a decomposed chain that ``fuse`` would
fuse; ``convert.norms.find_normalizations`` finds all three), located by the module path on its nodes.
Hand-written norms (``ManualLN``), ``F.layer_norm`` inside an arbitrary module (when it produces the
module's output, shape-only ops such as a permute allowed after it) and Hugging Face norm classes all
count, whatever they are called. Instances of torch's normalization classes (LayerNorm, RMSNorm,
GroupNorm, the BatchNorm and InstanceNorm families) and classes named ``*Norm`` also count, so a graph
without module-path metadata (the legacy exporter) still has its norms hooked and its notes say why
nothing could be aligned. ``convert.advisor`` names normalizations by the same module paths.
"""

from __future__ import annotations

import ast
import re
from collections import OrderedDict
from dataclasses import dataclass

_NORM_NAME = re.compile(r"(Norm|Norm[123]d|Normalization)$")
SCOPES_KEY = "pkg.torch.onnx.name_scopes"
NAMESPACE_KEY = "namespace"


def is_norm_module(module) -> bool:
    from torch import nn

    known = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)
    if hasattr(nn, "RMSNorm"):
        known = known + (nn.RMSNorm,)
    return isinstance(module, known) or bool(_NORM_NAME.search(type(module).__name__))


def norm_modules(model, extra=()) -> "OrderedDict[str, object]":
    """Normalization modules by type (see is_norm_module), plus the module paths in ``extra`` (found in
    the graph by ``graph_norm_modules``), in the model's module order."""
    extra = set(extra)
    return OrderedDict((name, m) for name, m in model.named_modules()
                       if name and (is_norm_module(m) or name in extra))


# What may stand between a norm's statistics and its module's output: the affine part, casts, and ops
# that only move values (ConvNeXt's permute -> LN -> permute). A MatMul/Conv/Gemm after the norm means the
# module computes more than a normalization.
_AFFINE_OPS = ("Transpose", "Reshape", "Cast", "Identity", "Squeeze", "Unsqueeze", "Flatten", "Expand",
               "Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal", "Pow", "Neg", "ReduceMean", "ReduceSum",
               "Constant")
_KINDS = {"layernorm": "layer_norm", "rmsnorm": "rms_norm"}


@dataclass
class GraphNorm:
    path: str  # the PyTorch module path (the model's own, any scan prefix removed)
    kind: str  # "layer_norm" | "rms_norm"
    outputs: tuple  # the values the normalization produces (top-level graph; empty inside a loop body)
    form: str  # "fused" | "plugin" | "decomposed"
    inputs: tuple = ()  # the values it normalizes


def graph_norm_modules(model, module) -> "OrderedDict[str, GraphNorm]":
    """Modules of ``module`` that the ONNX graph computes a normalization for (top-level graph and
    Scan/Loop bodies), keyed by module path, in graph order."""
    from ..norm_sites import find_normalizations

    names = {n for n, _ in module.named_modules() if n}
    found: "OrderedDict[str, GraphNorm]" = OrderedDict()

    def own_path(p):
        if p in names:
            return p
        tails = [n for n in names if p.endswith("." + n)]  # a scan body's "model." prefix
        return max(tails, key=len) if tails else None

    def walk(graph, top):
        try:
            sites = find_normalizations(graph, model=model)
        except Exception:  # noqa: BLE001 - an odd graph must not stop the check: class-based norms remain
            sites = []
        for site in sites:
            path = own_path(site.module) if site.module else None
            if path is None:
                continue
            g = found.setdefault(path, GraphNorm(path, _KINDS.get(site.kind, site.kind), (), site.form))
            if top and site.output:
                g.outputs = g.outputs + (site.output,)
                g.inputs = g.inputs + tuple(site.inputs)
        for node in graph.node:
            for _, sub in subgraphs(node):
                walk(sub, False)

    walk(model.graph, True)
    return found


def computes_norm(graph, value, norm: GraphNorm) -> bool:
    """Whether ``value`` is computed from the norm's output by affine/moving ops only (its other operands
    constants, the norm's own input, or values computed the same way), so comparing it compares the norm."""
    prod = {o: n for n in graph.node for o in n.output if o}
    consts = {i.name for i in graph.initializer}
    outs, ins = set(norm.outputs), set(norm.inputs)
    reached, seen, stack = False, set(), [value]
    while stack:
        v = stack.pop()
        if v in seen or not v:
            continue
        seen.add(v)
        if v in outs:
            reached = True
            continue
        if v in ins or v in consts:
            continue
        node = prod.get(v)
        if node is None or node.op_type not in _AFFINE_OPS or len(seen) > 256:
            return False
        stack.extend(node.input)
    return reached


def call_key(path: str, index: int) -> str:
    return path if index == 0 else f"{path}#{index}"


class NormRecorder:
    """Context manager: forward hooks that record every normalization call's output (as numpy, fp32)."""

    def __init__(self, model, paths=None):
        self.model = model
        self.paths = paths  # module paths to record (default: norm_modules(model))
        self.outputs: "OrderedDict[str, object]" = OrderedDict()  # call key -> array, in finishing order
        self.classes: dict[str, str] = {}
        self._handles = []
        self._counts: dict[str, int] = {}

    def __enter__(self):
        mods = dict(self.model.named_modules())
        chosen = norm_modules(self.model) if self.paths is None else {p: mods[p] for p in self.paths if p in mods}
        for path, m in chosen.items():
            self.classes[path] = type(m).__name__
            self._handles.append(m.register_forward_hook(self._hook(path)))
        return self

    def _hook(self, path):
        import torch

        def hook(module, args, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(out, torch.Tensor):
                return
            i = self._counts.get(path, 0)
            self._counts[path] = i + 1
            self.outputs[call_key(path, i)] = out.detach().float().cpu().numpy()

        return hook

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()


def node_module_path(node) -> list[str] | None:
    """The module paths (outermost first) a node was exported from, or None without metadata."""
    props = {p.key: p.value for p in node.metadata_props}
    scopes = props.get(SCOPES_KEY)
    if scopes:
        try:
            lst = ast.literal_eval(scopes)
            if isinstance(lst, list):
                return [s for s in lst[:-1] if s]  # the last entry is the op's own FX name
        except (ValueError, SyntaxError):
            pass
    ns = props.get(NAMESPACE_KEY)
    if ns:
        parts = [part.split(":")[0].strip() for part in ns.split("/")]
        return [p for p in parts[:-1] if p]
    return None


LOOP_OPS = ("Scan", "Loop")


def subgraphs(node):
    """The graphs held by ``node``'s attributes (a Scan/Loop body, an If's branches), with attribute names."""
    import onnx

    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.name, a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            for g in a.graphs:
                yield a.name, g


@dataclass(frozen=True)
class BodyValue:
    """A value computed inside a loop body. ``loops`` leads from the top-level graph to the body:
    ``((node index, attribute name), ...)``, outermost loop first (a nested Scan adds a second pair)."""

    loops: tuple
    value: str


@dataclass
class OnnxNormCall:
    key: str  # call key: module path, "#i" for the i-th call after the first
    path: str
    value: str  # the ONNX value holding the call's output (in the loop body for a call inside a loop)
    op_types: list[str]
    loops: tuple = ()  # for a call inside a Scan/Loop body: BodyValue.loops
    loop_names: tuple = ()  # the names of those Scan/Loop nodes, outermost first
    iteration: int | None = None  # inside a loop: the iteration (nested loops flattened, row-major)
    iterations: int | None = None  # inside a loop: how many iterations PyTorch's call count implies

    @property
    def exposed(self):
        """What ``with_extra_outputs`` takes to expose this call's value."""
        return BodyValue(self.loops, self.value) if self.loops else self.value


def _consumers(graph) -> dict[str, list[int]]:
    """value -> indices of the nodes reading it (a node whose subgraphs capture the value counts)."""
    out: dict[str, list[int]] = {}

    def captured(g):
        names = set()
        for n in g.node:
            names.update(n.input)
            for _, sub in subgraphs(n):
                names |= captured(sub)
        return names

    for idx, node in enumerate(graph.node):
        names = set(node.input)
        for _, sub in subgraphs(node):
            names |= captured(sub)
        for name in names:
            out.setdefault(name, []).append(idx)
    return out


def _graph_runs(graph, paths, prefix="") -> "OrderedDict[str, list[tuple[str, list[str]]]]":
    """For each module path: its calls in ``graph`` (not its subgraphs), in node order, as
    (output value, op types). A call is a run of consecutive nodes whose scopes include ``prefix + path``
    (nodes without metadata neither join nor break a run); its output is the last value produced in the
    run and read outside it (or a graph output)."""
    consumers = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    scopes = [node_module_path(n) for n in graph.node]
    found: "OrderedDict[str, list]" = OrderedDict()
    for path in paths:
        full = prefix + path
        runs: list[list[int]] = []
        current: list[int] = []
        for idx, s in enumerate(scopes):
            if s is not None and full in s:
                current.append(idx)
            elif s is not None and current:
                runs.append(current)
                current = []
        if current:
            runs.append(current)
        calls = []
        for run in runs:
            members = set(run)
            produced = [out for idx in run for out in graph.node[idx].output
                        if out and (out in graph_outputs or any(u not in members for u in consumers.get(out, [])))]
            if produced:
                calls.append((produced[-1], sorted({graph.node[j].op_type for j in run})))
        if calls:
            found[path] = calls
    return found


def _bodies(graph, loops=(), names=()):
    """(loops, loop node names, body graph) for every Scan/Loop body, nested ones included; and
    (label, graph) for the other subgraphs (If branches) met on the way."""
    bodies, others = [], []
    for i, node in enumerate(graph.node):
        label = node.name or f"{node.op_type}_{i}"
        for attr, sub in subgraphs(node):
            if node.op_type in LOOP_OPS:
                here = (loops + ((i, attr),), names + (label,))
                bodies.append((*here, sub))
                b, o = _bodies(sub, *here)
                bodies += b
                others += o
            else:
                others.append((f"{node.op_type} {label}", sub))
    return bodies, others


def _all_scope_paths(graph) -> set[str]:
    found = set()
    for n in graph.node:
        found.update(node_module_path(n) or [])
        for _, sub in subgraphs(n):
            found |= _all_scope_paths(sub)
    return found


def scope_prefix(graph, paths) -> str:
    """The prefix the module paths in ``graph`` (a loop body, nested graphs included) carry relative to
    the PyTorch model's own paths: ``"model."`` for ln_deploy's scan export (the step is exported from a
    wrapper module holding the model as ``model``), ``""`` when the body was exported from the model
    itself. Chosen as the prefix under which the most of ``paths`` appear (ties: the shortest)."""
    scopes = _all_scope_paths(graph)
    votes: dict[str, set[str]] = {}
    for p in paths:
        for s in scopes:
            if s == p or s.endswith("." + p):
                votes.setdefault(s[: len(s) - len(p)], set()).add(p)
    if not votes:
        return ""
    return max(votes, key=lambda pre: (len(votes[pre]), -len(pre)))


def find_norm_calls(model, paths, counts=None) -> tuple[list[OnnxNormCall], list[str]]:
    """Locate each normalization call's output value: in the top-level graph, and in Scan/Loop bodies.

    ``counts`` (module path -> number of calls PyTorch made, e.g. from ``NormRecorder``) is needed for
    normalizations inside a loop body: a body run by T iterations with k calls of a module per iteration
    stands for PyTorch calls 0..T·k-1, call i being the body's call ``i % k`` in iteration ``i // k``.

    Returns the calls found and notes on what could not be aligned."""
    graph = model.graph
    notes: list[str] = []
    top = _graph_runs(graph, paths) if any(node_module_path(n) is not None for n in graph.node) else {}
    calls = [OnnxNormCall(call_key(p, i), p, value, ops) for p, runs in top.items()
             for i, (value, ops) in enumerate(runs)]

    bodies, others = _bodies(graph)
    branches = sorted({label for label, sub in others
                       if any(s == p or s.endswith("." + p) for s in _all_scope_paths(sub) for p in paths)})
    if branches:
        notes.append(f"normalizations inside an If branch ({', '.join(branches[:3])}; not a loop) are not localised")
    prefixes: dict[int, str] = {}
    in_body: dict[str, list] = {}  # path -> [(loops, names, runs)] for every body holding it
    for loops, names, body in bodies:
        top_idx = loops[0][0]
        if top_idx not in prefixes:
            prefixes[top_idx] = scope_prefix(next(sub for _, sub in subgraphs(graph.node[top_idx])), paths)
        for path, runs in _graph_runs(body, paths, prefixes[top_idx]).items():
            in_body.setdefault(path, []).append((loops, names, runs))
    skipped = []
    for path, places in in_body.items():
        if path in top or len(places) > 1:
            skipped.append(path)
            continue
        loops, names, runs = places[0]
        if counts is None:
            skipped.append(path)
            continue
        n, k = counts.get(path, 0), len(runs)
        if n == 0:
            continue
        if n % k:
            notes.append(f"{path}: PyTorch called it {n} times, not a multiple of its {k} call(s) per iteration of "
                         f"{' > '.join(names)}: not aligned")
            continue
        for i in range(n):
            t, j = divmod(i, k)
            value, ops = runs[j]
            calls.append(OnnxNormCall(call_key(path, i), path, value, ops, loops, names, t, n // k))
    mixed = {p for p in skipped if p in top}
    if mixed:  # PyTorch's call indices interleave both places: neither can be aligned by index alone
        calls = [c for c in calls if c.path not in mixed]
    if skipped:
        why = ("PyTorch call counts were not given" if counts is None else
               "the module is called both inside and outside the loop body, or in several bodies")
        notes.append(f"{len(skipped)} normalization(s) inside a Scan/Loop body not aligned ({why}), e.g. {skipped[0]}")
    if not calls and not any(_all_scope_paths(graph)):
        notes.append("the ONNX model carries no module-path metadata (not a dynamo export, or a pass "
                     "dropped it): normalizations cannot be aligned")
    return calls, notes


def _all_names(graph) -> set[str]:
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {t.name for t in graph.initializer}
    for n in graph.node:
        names.update(n.output)
        names.update(n.input)
        for _, sub in subgraphs(n):
            names |= _all_names(sub)
    return names


def _types(graph) -> dict:
    if graph is None:
        return {}
    out = {vi.name: vi for vi in list(graph.input) + list(graph.value_info) + list(graph.output)}
    return out


def _fresh(base: str, taken: set) -> str:
    name = base
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _attr_graph(node, attr_name):
    return next(a.g for a in node.attribute if a.name == attr_name)


def with_extra_outputs(model, values: list):
    """A copy of ``model`` whose graph also outputs ``values`` (types from shape inference when known),
    and a map from each value to the output name that carries it.

    A value is a top-level value name, or a ``BodyValue`` inside a Scan/Loop body: the body gets it as an
    extra scan output (a Scan's new output is stacked along axis 0, forward), each enclosing loop node an
    extra output, and the outermost one's becomes a graph output holding the value of every iteration,
    ``[iterations of the outer loop, of the inner loop..., *value shape]``.

    A bfloat16 value is exposed through a ``Cast`` to fp32 (exact: every bf16 is an fp32) because
    ONNX Runtime's Python API cannot hand bfloat16 arrays back.
    """
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
    except Exception:
        inferred = None
    types = _types(inferred.graph if inferred is not None else None)
    taken = _all_names(m.graph)
    names = {}
    for v in values:
        if v in names:
            continue
        if isinstance(v, BodyValue):
            names[v] = _expose_body_value(m, inferred, v, taken)
            continue
        vi = types.get(v)
        elem = vi.type.tensor_type.elem_type if vi is not None else 0
        if elem == onnx.TensorProto.BFLOAT16:
            name = _fresh(v + "__ln_deploy_fp32", taken)
            m.graph.node.append(onnx.helper.make_node("Cast", [v], [name], to=onnx.TensorProto.FLOAT,
                                                      name=name + "_cast"))
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            names[v] = name
            continue
        names[v] = v
        if v in existing:
            continue
        if elem:
            out = onnx.ValueInfoProto()
            out.CopyFrom(vi)
            # Shapes from inference can carry symbolic dims that disagree with runtime; keep only the type.
            out.type.tensor_type.ClearField("shape")
        else:
            out = onnx.helper.make_empty_tensor_value_info(v)
        m.graph.output.append(out)
        existing.add(v)
    return m, names


def _expose_body_value(m, inferred, bv: BodyValue, taken: set) -> str:
    import onnx

    graphs, nodes = [m.graph], []
    inf = inferred.graph if inferred is not None else None
    for idx, attr in bv.loops:
        node = graphs[-1].node[idx]
        if node.op_type not in LOOP_OPS:
            raise ValueError(f"{bv}: node {idx} is a {node.op_type}, not a Scan/Loop")
        nodes.append(node)
        graphs.append(_attr_graph(node, attr))
        inf = _attr_graph(inf.node[idx], attr) if inf is not None else None
    body = graphs[-1]
    vi = _types(inf).get(bv.value)
    elem = vi.type.tensor_type.elem_type if vi is not None else 0
    # A fresh name (the value may already be a body output, e.g. a recurrent state): Identity, or a Cast
    # to fp32 for bfloat16.
    cur = _fresh(bv.value + "__ln_deploy_iter", taken)
    if elem == onnx.TensorProto.BFLOAT16:
        body.node.append(onnx.helper.make_node("Cast", [bv.value], [cur], to=onnx.TensorProto.FLOAT,
                                               name=cur + "_cast"))
        elem = onnx.TensorProto.FLOAT
    else:
        body.node.append(onnx.helper.make_node("Identity", [bv.value], [cur], name=cur + "_identity"))

    def info(name):
        return (onnx.helper.make_tensor_value_info(name, elem, None) if elem
                else onnx.helper.make_empty_tensor_value_info(name))

    body.output.append(info(cur))
    for level in reversed(range(len(nodes))):
        node = nodes[level]
        out = _fresh(f"{bv.value}__ln_deploy_{node.op_type.lower()}{level}", taken)
        node.output.append(out)
        if node.op_type == "Scan":  # a new scan output: stacked along axis 0, in iteration order
            for a in node.attribute:
                if a.name in ("scan_output_axes", "scan_output_directions"):
                    a.ints.append(0)
        graphs[level].output.append(info(out))  # the enclosing body's scan output, or a graph output
        cur = out
    return cur
