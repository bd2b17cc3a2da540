"""Deliberate damage to one normalization of an ONNX model, for testing localisation (and for users
who want to see what ``ln-deploy check`` reports when a deployment goes wrong).

Select the normalization by PyTorch module path (from the exporter's node metadata), e.g.
``perturb_epsilon(model, "blocks.1.norm2", 0.1)``. Both helpers return a modified copy.

A normalization that is not in the top-level graph is looked for in Scan/Loop bodies (nested ones too),
where module paths may carry a prefix (``model.`` in ln_deploy's scan export, see
``localise.scope_prefix``). A body is shared by every iteration, so the damage applies to every step of
the loop, and ``call`` counts the module's calls within one iteration.
"""

from __future__ import annotations

from ..errors import BadInputError
from .localise import node_module_path, scope_prefix

_NORM_OPS = ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization",
             "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "LnDeployNorm", "LnDeploySkipNorm")


def _copy(model):
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _locate(model, module_path: str):
    """(graph, nodes): the graph holding ``module_path``'s nodes (the top level, else the first Scan/Loop
    body, depth first, that holds them) and those nodes in graph order."""
    from .localise import LOOP_OPS, subgraphs

    nodes = [n for n in model.graph.node if module_path in (node_module_path(n) or [])]
    if nodes:
        return model.graph, nodes

    def search(graph, prefix):
        for node in graph.node:
            if node.op_type not in LOOP_OPS:
                continue
            for _, body in subgraphs(node):
                pre = prefix if prefix is not None else scope_prefix(body, [module_path])
                found = [n for n in body.node if pre + module_path in (node_module_path(n) or [])]
                if found:
                    return body, found
                hit = search(body, pre)
                if hit:
                    return hit
        return None

    hit = search(model.graph, None)
    if hit is None:
        raise BadInputError(f"no normalization op for module {module_path!r}: no node of the model (top-level graph "
                            "or Scan/Loop bodies) carries that module path")
    return hit


def _nodes_of(model, module_path: str):
    return _locate(model, module_path)[1]


def norm_node(model, module_path: str, call: int = 0):
    """The fused normalization node (LayerNormalization, RMSNormalization, ln_deploy plugin op...) of
    ``module_path``'s ``call``-th call."""
    nodes = [n for n in _nodes_of(model, module_path) if n.op_type in _NORM_OPS]
    if len(nodes) <= call:
        ops = sorted({n.op_type for n in _nodes_of(model, module_path)})
        raise BadInputError(f"no normalization op for module {module_path!r} (call {call}) in the model; "
                            f"its nodes are {ops or 'none'}")
    return nodes[call]


def perturb_epsilon(model, module_path: str, epsilon: float, call: int = 0):
    """A copy of ``model`` where the normalization op of ``module_path`` uses ``epsilon``."""
    m = _copy(model)
    if not any(n.op_type in _NORM_OPS for n in _nodes_of(m, module_path)):
        return _perturb_decomposed_epsilon(m, module_path, epsilon, call)
    node = norm_node(m, module_path, call)
    for a in node.attribute:
        if a.name == "epsilon":
            a.f = float(epsilon)
            break
    else:
        import onnx

        node.attribute.append(onnx.helper.make_attribute("epsilon", float(epsilon)))
    return m


def _perturb_decomposed_epsilon(m, module_path, epsilon, call):
    """Decomposed norm: the ``Add(ReduceMean(...), eps)`` inside the module gets its own new epsilon
    initializer (the exporter shares one scalar constant among all norms with the same epsilon)."""
    import numpy as np
    from onnx import numpy_helper

    graph, nodes = _locate(m, module_path)
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    adds = []
    for n in nodes:
        if n.op_type != "Add" or len(n.input) != 2:
            continue
        for j, name in enumerate(n.input):
            other = n.input[1 - j]
            t = inits.get(name)
            if t is not None and int(np.prod(t.dims)) == 1 and getattr(producers.get(other), "op_type", "") == "ReduceMean":
                adds.append((n, j, t))
    if len(adds) <= call:
        raise BadInputError(f"{module_path!r}: no Add(ReduceMean, epsilon) found among its nodes")
    node, j, t = adds[call]
    arr = numpy_helper.to_array(t)
    new_name = f"{module_path}.epsilon_perturbed_{call}"
    graph.initializer.append(numpy_helper.from_array(np.full(arr.shape, epsilon, dtype=arr.dtype), new_name))
    node.input[j] = new_name
    return m


def perturb_scale(model, module_path: str, factor: float, call: int = 0):
    """A copy of ``model`` where the scale (gamma) initializer of ``module_path``'s normalization is
    multiplied by ``factor``. Works on a fused op (its second input) or on a decomposed norm (the
    initializer multiplied in by a ``Mul`` inside the module's nodes)."""
    import numpy as np
    from onnx import numpy_helper

    m = _copy(model)
    graph, nodes = _locate(m, module_path)
    inits = {i.name: i for i in graph.initializer}
    fused = [n for n in nodes if n.op_type in _NORM_OPS]
    if fused:
        if len(fused) <= call or len(fused[call].input) < 2:
            raise BadInputError(f"{module_path!r}: normalization op has no scale input")
        name = fused[call].input[1]
    else:
        muls = [n for n in nodes if n.op_type == "Mul" and any(i in inits for i in n.input)]
        if not muls:
            raise BadInputError(f"{module_path!r}: no scale initializer found among its nodes")
        name = next(i for i in muls[-1].input if i in inits)
    if name not in inits:
        raise BadInputError(f"{module_path!r}: the scale {name!r} is not an initializer (computed at run time)")
    users = _users(graph, name)
    if len(users) > 1:
        raise BadInputError(f"{module_path!r}: scale initializer {name!r} is shared by {len(users)} nodes")
    t = inits[name]
    arr = numpy_helper.to_array(t)
    new = numpy_helper.from_array((arr.astype(np.float64) * factor).astype(arr.dtype), name)
    t.CopyFrom(new)
    return m


def _users(graph, name):
    """Nodes reading ``name`` in ``graph`` and the subgraphs nested in it."""
    from .localise import subgraphs

    found = []
    for n in graph.node:
        if name in n.input:
            found.append(n)
        for _, sub in subgraphs(n):
            found += _users(sub, name)
    return found
