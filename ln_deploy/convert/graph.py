"""Small ONNX graph helpers shared by the conversion, the advisor and the engine build."""

from __future__ import annotations

import ast

FLOAT = 1  # onnx.TensorProto.FLOAT
FLOAT16 = 10
BFLOAT16 = 16
DOUBLE = 11

TYPE_NAMES = {FLOAT: "fp32", FLOAT16: "fp16", BFLOAT16: "bf16", DOUBLE: "fp64"}


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
        if p.key == "pkg.torch.onnx.name_scopes":
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
