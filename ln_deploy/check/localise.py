"""Per-normalization localisation: which normalization is the first to diverge.

PyTorch side: forward hooks on every normalization module record its output at each call, in the order
the calls finish (so an inner ``nn.LayerNorm`` inside a ``LayerNorm2d`` wrapper comes before its wrapper).

ONNX side: on a copy of the model, the output of each normalization's call becomes an extra graph
output. The module path comes from the metadata the dynamo exporter writes on every node:
``pkg.torch.onnx.name_scopes`` (a list of module paths from the root, then the op's own name), or the
``namespace`` string (``": cls/blocks.0: cls/blocks.0.norm1: cls/op: aten..."``). The nodes of one call of a
module form a run of consecutive nodes carrying that path; the call's output is the value produced in the
run and consumed outside it (or a graph output). Calls are matched by module path and call index.

Which modules are normalizations: instances of torch's normalization classes (LayerNorm, RMSNorm,
GroupNorm, LocalResponseNorm, the BatchNorm and InstanceNorm families), and any module whose class name
ends with ``Norm``, ``Norm1d/2d/3d`` or ``Normalization`` (``HandLayerNorm``, ``LlamaRMSNorm``,
``T5LayerNorm``, ``LayerNorm2d``...).
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


def norm_modules(model) -> "OrderedDict[str, object]":
    return OrderedDict((name, m) for name, m in model.named_modules() if name and is_norm_module(m))


def call_key(path: str, index: int) -> str:
    return path if index == 0 else f"{path}#{index}"


class NormRecorder:
    """Context manager: forward hooks that record every normalization call's output (as numpy, fp32)."""

    def __init__(self, model):
        self.model = model
        self.outputs: "OrderedDict[str, object]" = OrderedDict()  # call key -> array, in finishing order
        self.classes: dict[str, str] = {}
        self._handles = []
        self._counts: dict[str, int] = {}

    def __enter__(self):
        for path, m in norm_modules(self.model).items():
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


@dataclass
class OnnxNormCall:
    key: str  # call key: module path, "#i" for the i-th call after the first
    path: str
    value: str  # the ONNX value holding the call's output
    op_types: list[str]


def find_norm_calls(model, paths) -> tuple[list[OnnxNormCall], list[str]]:
    """Locate each normalization call's output value in the top-level graph.

    Returns the calls found and notes on what could not be found (e.g. norms inside Scan/Loop bodies)."""
    graph = model.graph
    consumers: dict[str, list[int]] = {}
    for idx, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(idx)
        for attr in node.attribute:  # values captured by subgraphs (Scan/Loop/If bodies)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                for n in sub.node:
                    for name in n.input:
                        consumers.setdefault(name, []).append(idx)
    graph_outputs = {o.name for o in graph.output}
    scopes = [node_module_path(n) for n in graph.node]
    notes = []
    subgraph_paths = _subgraph_paths(graph)
    in_subgraph = [p for p in paths if any(s == p or s.endswith("." + p) for s in subgraph_paths)]
    if in_subgraph:
        notes.append(f"{len(in_subgraph)} normalization(s) live inside a Scan/Loop body (e.g. {in_subgraph[0]}; a "
                     "recurrent model exported in scan mode): they are not localisable from the top-level graph; "
                     "export with --rnn-mode unroll to localise them")
    if all(s is None for s in scopes):
        if not in_subgraph:
            notes.append("the ONNX model carries no module-path metadata (not a dynamo export, or a pass "
                         "dropped it): normalizations cannot be aligned")
        return [], notes
    calls: list[OnnxNormCall] = []
    for path in paths:
        runs: list[list[int]] = []
        current: list[int] = []
        for idx, s in enumerate(scopes):
            inside = s is not None and path in s
            if inside:
                current.append(idx)
            elif s is not None and current:  # nodes without metadata (folded constants) do not break a run
                runs.append(current)
                current = []
        if current:
            runs.append(current)
        if not runs:
            continue
        for i, run in enumerate(runs):
            members = set(run)
            produced = []
            for idx in run:
                for out in graph.node[idx].output:
                    if not out:
                        continue
                    users = consumers.get(out, [])
                    if out in graph_outputs or any(u not in members for u in users):
                        produced.append((idx, out))
            if not produced:
                continue
            idx, value = produced[-1]
            calls.append(OnnxNormCall(call_key(path, i), path, value,
                                      sorted({graph.node[j].op_type for j in run})))
    return calls, notes


def _subgraph_paths(graph) -> set[str]:
    found = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                for n in sub.node:
                    s = node_module_path(n)
                    if s:
                        found.update(s)
                found |= _subgraph_paths(sub)
    return found


def with_extra_outputs(model, values: list[str]):
    """A copy of ``model`` whose graph also outputs ``values`` (types from shape inference when known),
    and a map from each value to the output name that carries it.

    A bfloat16 value is exposed through a ``Cast`` to fp32 (exact: every bf16 is an fp32) because
    ONNX Runtime's Python API cannot hand bfloat16 arrays back.
    """
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
        types = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    except Exception:
        types = {}
    taken = existing | {o for n in m.graph.node for o in n.output} | {i.name for i in m.graph.input}
    names = {}
    for v in values:
        vi = types.get(v)
        elem = vi.type.tensor_type.elem_type if vi is not None else 0
        if elem == onnx.TensorProto.BFLOAT16:
            name = v + "__ln_deploy_fp32"
            while name in taken:
                name += "_"
            taken.add(name)
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
    return m, names
