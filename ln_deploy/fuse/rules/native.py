"""Normalization ops already in the graph (from ``nn.LayerNorm``/``nn.RMSNorm``) → internal Norm,
for the ``tensorrt`` target only: there every normalization becomes the plugin, and a residual Add
before a native LayerNormalization fuses into LnDeploySkipNorm like a hand-written one. The
``onnx`` target leaves them as they are (they are already the standard op) and counts nothing.
"""

from __future__ import annotations

from .._common import INTERNAL_DOMAIN, KIND_LN, KIND_RMS, ctx, rank
from ._base import FusionRule


class NativeNorm(FusionRule):
    report = False

    def __init__(self, op_type: str, kind: int, with_bias: bool):
        super().__init__(f"Native{op_type}{'+bias' if with_bias else ''}")
        self.op_type, self.kind, self.with_bias = op_type, kind, with_bias

    def pattern(self, op, x, scale, bias):
        inputs = [x, scale, bias] if self.with_bias else [x, scale]
        return getattr(op, self.op_type)(*inputs, _allow_other_attributes=True, _outputs=["y"])

    def reason(self, context, x, y, **_):
        if ctx().target != "tensorrt":
            return "the onnx target keeps standard normalization ops"
        node = y.producer()
        if len(node.outputs) > 1 and any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
            return "~its mean/inverse-std outputs are used"
        stash = node.attributes.get("stash_type")
        if stash is not None and stash.value != 1:
            return "~stash_type is not float32"
        if rank(x) is None:
            return "~rank of the input is unknown"
        return None

    def rewrite(self, op, x, scale, y, bias=None, **_):
        node = y.producer()
        r = rank(x)
        axis = node.attributes["axis"].value if "axis" in node.attributes else -1
        axis %= r
        eps = node.attributes["epsilon"].value if "epsilon" in node.attributes else 1e-5
        inputs = [x, scale, bias] if bias is not None else [x, scale]
        out = op.Norm(*inputs, _domain=INTERNAL_DOMAIN, kind=self.kind,
                      axes=list(range(axis, r)), epsilon=float(eps))
        out.dtype, out.shape = y.dtype, y.shape
        return out


rules = [
    NativeNorm.rule("LayerNormalization", KIND_LN, True),
    NativeNorm.rule("LayerNormalization", KIND_LN, False),
    NativeNorm.rule("RMSNormalization", KIND_RMS, False),
]
