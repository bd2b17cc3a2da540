"""An upcast norm cast back to the input type → the norm on the original-precision input.

    Cast(Norm(Cast(x: T → float32)) → T)  →  Norm(x)          T in {float16, bfloat16}

and, for a norm the mixed-precision LayerNorm rule made (the original already rounds its mean and
deviation to T), also ``Cast(Norm(Cast(x: T → float64)) → T)`` with T in {float16, bfloat16,
float32}: float32 statistics instead of float64, within T's rounding (reported by that rule).

Exact: the internal Norm means ONNX's normalization function with ``stash_type=1`` (cast X to
float32, normalize, cast back to T, then scale and bias in T), which is what the pattern computes.
Only a Norm without scale or bias folds; a scale applied in float32 before the cast back keeps the
Casts around the fused op (also exact), so either way the statistics stay in float32.
"""

from __future__ import annotations

import onnx_ir as ir

from .._common import INTERNAL_DOMAIN, LOW_PRECISION, norm_attrs
from ._base import FusionRule
from ._fragments import ANY


class UpcastFold(FusionRule):
    report = False  # a Cast after a norm that is not the mirror of its input Cast is just a Cast

    @staticmethod
    def quick(node):
        p = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
        return p is not None and p.op_type == "Norm" and p.domain == INTERNAL_DOMAIN

    def __init__(self):
        super().__init__("FoldUpcast")

    def pattern(self, op, x):
        inner = op.Cast(x, _allow_other_attributes=True, _outputs=["up"])
        normed = op.Norm(inner, _domain=INTERNAL_DOMAIN, **ANY, _outputs=["normed"])
        return op.Cast(normed, _allow_other_attributes=True, _outputs=["down"])

    def reason(self, context, x, up, normed, down, **_):
        to = up.producer().attributes["to"].value
        if down.producer().attributes["to"].value != x.dtype:
            return "the cast back is not to the input's type"
        if x.dtype in LOW_PRECISION and to == ir.DataType.FLOAT:
            pass  # exact: stash_type=1 is this upcast
        elif "within_rounding" in normed.producer().attributes and to == ir.DataType.DOUBLE and (
                x.dtype in LOW_PRECISION or x.dtype == ir.DataType.FLOAT):
            pass  # a mixed-precision LayerNorm (already within the input's rounding): float32 statistics
        else:
            return "input is not float16/bfloat16 upcast to float32"
        if len([v for v in normed.producer().inputs[1:] if v is not None]):
            return "the norm has a float32 scale or bias"
        return None

    def rewrite(self, op, x, normed, **_):
        a = norm_attrs(normed.producer())
        out = op.Norm(x, _domain=INTERNAL_DOMAIN, kind=a["kind"], axes=list(a["axes"]),
                      epsilon=a["epsilon"])
        out.dtype, out.shape = x.dtype, x.shape
        return out


rules = [UpcastFold.rule()]
