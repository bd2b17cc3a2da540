"""An upcast norm cast back to the input type → the norm on the original-precision input.

    Cast(Norm(Cast(x: T → float32)) → T)  →  Norm(x)          T in {float16, bfloat16}

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

    def __init__(self):
        super().__init__("FoldUpcast")

    def pattern(self, op, x):
        inner = op.Cast(x, _allow_other_attributes=True, _outputs=["up"])
        normed = op.Norm(inner, _domain=INTERNAL_DOMAIN, **ANY, _outputs=["normed"])
        return op.Cast(normed, _allow_other_attributes=True, _outputs=["down"])

    def reason(self, context, x, up, normed, down, **_):
        if x.dtype not in LOW_PRECISION:
            return "input is not float16/bfloat16"
        if up.producer().attributes["to"].value != ir.DataType.FLOAT:
            return "upcast is not to float32"
        if down.producer().attributes["to"].value != x.dtype:
            return "the cast back is not to the input's type"
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
