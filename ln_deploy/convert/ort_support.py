"""Which node signatures ONNX Runtime's CPU provider has a kernel for.

ORT's CPU provider covers fp16 for most math ops but bfloat16 for little beyond data movement
(measured with onnxruntime 1.31: Add, MatMul, Gemm, Softmax, Gelu... have no bf16 CPU kernel;
LayerNormalization runs through its function body, which computes in the stash type). Rather than a
hard-coded table that goes stale with each ORT release, each (op, opset, attributes, input types)
signature is probed once with a one-node session.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)


def _probe_model(node_bytes: bytes, opset: tuple, in_types: tuple, out_types: tuple):
    import onnx
    from onnx import helper

    node = onnx.NodeProto()
    node.ParseFromString(node_bytes)
    ins = []
    for i, name in enumerate(list(node.input)):
        if not name:
            continue
        new = f"in{i}"
        node.input[i] = new
        ins.append(helper.make_tensor_value_info(new, in_types[i], None))
    outs = []
    for j, name in enumerate(list(node.output)):
        if not name:
            continue
        new = f"out{j}"
        node.output[j] = new
        if out_types[j]:
            outs.append(helper.make_tensor_value_info(new, out_types[j], None))
    if not outs:
        return None
    g = helper.make_graph([node], "probe", ins, outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opset])
    m.ir_version = 10
    return m


@functools.lru_cache(maxsize=4096)
def _session_ok(model_bytes: bytes) -> bool:
    from ..ort import UNOPTIMIZED, first_line, open_session

    try:
        open_session(model_bytes, UNOPTIMIZED.replace(log_level=4))
        return True
    except Exception as e:  # NOT_IMPLEMENTED, or a type error in ORT's own schema
        log.debug("probe failed: %s", first_line(e))
        return False


def cpu_supports(node, opset: tuple, in_types: tuple, out_types: tuple, ref_in_types: tuple,
                 ref_out_types: tuple) -> bool:
    """True if ORT's CPU provider can run ``node`` with these input/output element types.

    ``ref_*`` are the fp32 signature: when that one fails to build too, the probe cannot tell
    (the node needs constant inputs, say) and the answer is True: the final session decides.
    """
    if any(t == 0 for t in in_types):
        return True
    m = _probe_model(node.SerializeToString(), opset, in_types, out_types)
    if m is None or _session_ok(m.SerializeToString()):
        return True
    ref = _probe_model(node.SerializeToString(), opset, ref_in_types, ref_out_types)
    return ref is None or not _session_ok(ref.SerializeToString())
