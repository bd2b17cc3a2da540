"""ONNX graph helpers every stage shares: subgraph walks, producers/consumers, constants, element
types, the module path the exporter records on each node, and the ``ln_deploy.*`` metadata keys.

Part of the shared layer under the stages: it imports no stage (tests/test_architecture.py)."""

from __future__ import annotations

import ast

FLOAT = 1  # onnx.TensorProto.FLOAT
FLOAT16 = 10
BFLOAT16 = 16
DOUBLE = 11

TYPE_NAMES = {FLOAT: "fp32", FLOAT16: "fp16", BFLOAT16: "bf16", DOUBLE: "fp64"}

# Node metadata written by torch.onnx's dynamo exporter: the module scopes of the op, root first.
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"

# Model metadata written by ln_deploy (metadata_props keys). One definition, read by every stage.
META_SPEC = "ln_deploy.spec"                      # the SPEC the model was exported from
META_TORCH_VERSION = "ln_deploy.torch_version"
META_OPSET = "ln_deploy.opset"
META_EXPORTER = "ln_deploy.exporter"              # "dynamo" or "legacy"
META_NORM_COUNT = "ln_deploy.norm_count"
META_DYNAMIC_AXES = "ln_deploy.dynamic_axes"      # JSON {input: {axis: label}}
META_DYNAMIC_RANGES = "ln_deploy.dynamic_ranges"
META_AXES = "ln_deploy.axes"                      # JSON list of export's axis decisions
META_VERIFIED_SHAPES = "ln_deploy.verified_shapes"
META_EXAMPLE_SHAPES = "ln_deploy.example_shapes"
META_RNN_MODE = "ln_deploy.rnn_mode"
META_RNN_STATE = "ln_deploy.rnn_state"
META_PRECISION = "ln_deploy.precision"            # set by convert: "fp16" or "bf16"
META_STRICT_EMULATION = "ln_deploy.strict_emulation"


def model_metadata(model) -> dict[str, str]:
    """The model's metadata_props as a dict (key -> value)."""
    return {p.key: p.value for p in model.metadata_props}


def opset_version(model, domain: str = "") -> int:
    for o in model.opset_import:
        if o.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(o.version)
    return 0


def ensure_node_names(graph, prefix: str = "") -> None:
    """Give every node a unique name (reports and plans refer to nodes by name), recursing into subgraphs."""
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        name = node.name or f"{prefix}{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)
        for g in subgraphs(node):
            ensure_node_names(g, prefix=f"{name}/")


def subgraphs(node):
    import onnx

    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def all_nodes(graph):
    """Every node of ``graph`` and of its subgraphs (Scan/Loop/If bodies), depth first."""
    for n in graph.node:
        yield n
        for g in subgraphs(n):
            yield from all_nodes(g)


def outer_references(graph) -> set[str]:
    """Names a (sub)graph reads that it does not define: values captured from enclosing scopes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(i for i in node.input if i)
        for g in subgraphs(node):
            used |= outer_references(g)
        defined.update(node.output)
    used.update(o.name for o in graph.output)
    return used - defined


def infer_types(model) -> dict[str, int]:
    """Element type of every value ONNX shape inference can type, subgraphs included (name → elem_type)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=False)
    except Exception:  # inference is best effort; the rewrite falls back to what the model declares
        inferred = model
    types: dict[str, int] = {}

    def visit(graph):
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
        for t in graph.initializer:
            types[t.name] = t.data_type
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for a in node.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        types[node.output[0]] = a.t.data_type
                    elif a.name in ("value_float", "value_floats"):
                        types[node.output[0]] = FLOAT
            for g in subgraphs(node):
                visit(g)

    visit(inferred.graph)
    return types


def module_path(node) -> str:
    """The PyTorch module a node came from, from the dynamo exporter's metadata ('' when unknown)."""
    for p in node.metadata_props:
        if p.key == NAME_SCOPES_KEY:
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return ""
            scopes = [s for s in scopes if s]
            return scopes[-2] if len(scopes) >= 2 else (scopes[0] if scopes else "")
    return ""


def producers(graph) -> dict[str, object]:
    return {o: n for n in graph.node for o in n.output if o}


def consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            if i:
                out.setdefault(i, []).append(n)
    return out


def constant_value(graph, name: str):
    """The numpy value of an initializer or a Constant node's output, or None."""
    import onnx
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in graph.node:
        if n.op_type == "Constant" and name in n.output:
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    return numpy_helper.to_array(a.t)
                if a.name == "value_float":
                    return a.f
                if a.name == "value_int":
                    return a.i
                if a.name == "value_ints":
                    return list(a.ints)
    return None


def get_attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def replace_value(old, new) -> None:
    """(onnx_ir) Point every use of ``old`` at ``new``; a graph output keeps its name (callers rely on it)."""
    was_output = old.is_graph_output()
    name = old.name
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    if was_output and name:
        old.name = None
        new.name = name
