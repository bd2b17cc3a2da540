"""Strict low-precision emulation: run an fp16/bf16 graph on ONNX Runtime's CPU provider the way a
strongly typed engine computes it.

ORT's CPU provider is not an fp16 reference: where it lacks an fp16 kernel it computes in fp32 and
its InsertCastTransformer drops the rounding between consecutive nodes, so a graph whose strongly
typed execution overflows (a square past 65504, a residual stream past fp16's range) reads as a
small error there. :func:`strict_emulation` rewrites every node that touches fp16/bf16 tensors into
fp32 math between an explicit Cast up and a Cast back down to the declared type: every tensor is
rounded to its declared type after every op, as on a GPU engine (fp32 accumulation inside MatMul,
Gemm, Conv and reductions, as cuBLAS/TensorRT do). LayerNormalization/RMSNormalization compute in
fp32 inside the node whatever ``stash_type`` says, and round their output (what TensorRT's
normalization layer does). Data-movement ops are exact in any type; they are emulated too, so the
graph needs no low-precision kernel but Cast.

The result is a verification device (``ln-deploy check`` and ``convert``'s measured check run it), not
a model to ship. Tensor names, graph inputs and outputs are unchanged, so every intermediate value
can still be compared by name. It is validated against ``onnx.reference.ReferenceEvaluator`` (numpy
in the declared types) on small graphs in tests/convert/test_emulation.py.
"""

from __future__ import annotations

import copy

from .onnx_graph import BFLOAT16, FLOAT, FLOAT16, TYPE_NAMES, ensure_node_names, infer_types

LOW_TYPES = (FLOAT16, BFLOAT16)
# Nodes left as they are: Cast already rounds where the graph says; CastLike takes its type from an input.
_UNTOUCHED = ("Cast", "CastLike")
METADATA_KEY = "ln_deploy.strict_emulation"


def needs_emulation(model) -> bool:
    """True when some node reads an fp16/bf16 tensor and computes with it (Cast and control flow aside)."""
    from .onnx_graph import all_nodes, subgraphs

    types = infer_types(model)
    for n in all_nodes(model.graph):
        if n.op_type in _UNTOUCHED or any(True for _ in subgraphs(n)):
            continue
        if any(types.get(x) in LOW_TYPES for x in n.input if x):
            return True
    return False


def strict_emulation(model):
    """A copy of ``model`` in which every node touching fp16/bf16 tensors computes in fp32 between
    Casts (see the module docstring), subgraph bodies (Scan/Loop/If) included; the control-flow node
    itself carries its tensors as they are. A model without low-precision tensors comes back as a
    plain copy."""
    m = copy.deepcopy(model)
    ensure_node_names(m.graph)
    types = infer_types(m)
    if _emulate_graph(m.graph, types, [0]):
        m.metadata_props.add(key=METADATA_KEY, value="1")
    return m


def _emulate_graph(g, types: dict, counter: list) -> bool:
    import onnx
    from onnx import helper

    up: dict[str, str] = {}  # low tensor -> its fp32 copy (one Cast per tensor and graph, shared)
    new_nodes = []

    def fp32_of(name: str) -> str:
        if name not in up:
            counter[0] += 1
            up[name] = f"{name}__strict_fp32_{counter[0]}"  # numbered: unique across nested scopes
            new_nodes.append(helper.make_node("Cast", [name], [up[name]], to=FLOAT,
                                              name=f"{name}/strict_up_{counter[0]}"))
        return up[name]

    changed = False
    for node in g.node:
        bodies = [a for a in node.attribute if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)]
        for a in bodies:
            for body in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                changed |= _emulate_graph(body, types, counter)
        low_in = [i for i, x in enumerate(node.input) if x and types.get(x) in LOW_TYPES]
        low_out = [j for j, y in enumerate(node.output) if y and types.get(y) in LOW_TYPES]
        if node.op_type in _UNTOUCHED or bodies or not low_in:
            # Cast rounds where the graph says; control flow moves its tensors as they are; a node
            # making low values from nothing low (Constant, RandomNormal dtype=fp16) is already rounded
            new_nodes.append(node)
            continue
        changed = True
        for i in low_in:
            node.input[i] = fp32_of(node.input[i])
        _retype_to_fp32(node)
        post = []
        for j in low_out:
            y = node.output[j]
            raw = f"{y}__strict_fp32_out"
            node.output[j] = raw
            post.append(helper.make_node("Cast", [raw], [y], to=types[y], name=f"{y}/strict_round"))
        new_nodes.append(node)
        new_nodes.extend(post)
    if changed:
        del g.node[:]
        g.node.extend(new_nodes)
    return changed


def _retype_to_fp32(node) -> None:
    """Attributes that fix a float output type to the low type (a node computing in fp32 now)."""
    for a in node.attribute:
        if a.name in ("to", "dtype", "output_dtype") and a.i in LOW_TYPES:
            a.i = FLOAT


def describe(model) -> str:
    """'fp16', 'bf16', 'fp16+bf16' or '' for the low types the graph holds."""
    types = set(infer_types(model).values())
    return "+".join(TYPE_NAMES[t] for t in LOW_TYPES if t in types)
