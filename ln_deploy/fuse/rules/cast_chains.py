"""Lossless Cast chains → one Cast, identity Casts → nothing (exact; run before the norm rules).

    Cast(Cast(x: T → W) → U)  →  Cast(x → U)     when W holds every value of T exactly
    Cast(x: T → T)            →  x

onnxscript patterns have a fixed length, so instead of patterns with 0..k Casts the chains are
made canonical first: after this, "x or Cast(x)" in a pattern covers every upcast chain.
"""

from __future__ import annotations

import onnx_ir as ir

from ._base import FusionRule

D = ir.DataType
# source type -> wider types that represent each of its values exactly
_LOSSLESS = {
    D.FLOAT16: {D.FLOAT, D.DOUBLE},
    D.BFLOAT16: {D.FLOAT, D.DOUBLE},
    D.FLOAT: {D.DOUBLE},
}


class CastChain(FusionRule):
    report = False
    counted = False

    @staticmethod
    def quick(node):
        p = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
        return p is not None and p.op_type == "Cast"

    def __init__(self):
        super().__init__("CastChain")

    def pattern(self, op, x):
        mid = op.Cast(x, _allow_other_attributes=True, _outputs=["mid"])
        return op.Cast(mid, _allow_other_attributes=True, _outputs=["out"])

    def reason(self, context, x, mid, **_):
        wide = mid.producer().attributes["to"].value
        if x.dtype is None or wide not in _LOSSLESS.get(x.dtype, ()):
            return "intermediate cast may round"
        return None

    def rewrite(self, op, x, out, **_):
        to = out.producer().attributes["to"].value
        if to == x.dtype:
            return op.Identity(x)
        v = op.Cast(x, to=to)
        v.dtype, v.shape = out.dtype, out.shape
        return v


class IdentityCast(FusionRule):
    report = False
    counted = False

    def __init__(self):
        super().__init__("IdentityCast")

    def pattern(self, op, x):
        return op.Cast(x, _allow_other_attributes=True, _outputs=["out"])

    def reason(self, context, x, out, **_):
        if x.dtype is None or out.producer().attributes["to"].value != x.dtype:
            return "not an identity cast"
        if out.is_graph_output():
            return "cast output is a graph output"
        return None

    def rewrite(self, op, x, **_):
        return op.Identity(x)


rules = [CastChain.rule(), IdentityCast.rule()]
