"""RMSNorm written out in primitive ops → one internal Norm (kind RMSNorm).

    ms = mean of x²                            Pow(x, 2) | Mul(x, x); ReduceMean | ReduceSum / N | ReduceSum * 1/N
    y  = num / sqrt(ms + eps)                  the same division spellings as LayerNorm
    num = x or x * scale

covers T5 (``x * rsqrt(mean(x²) + eps)`` with the square taken in fp32) and LLaMA (upcast, rsqrt,
cast back, then the weight). Tried after the LayerNorm family: LayerNorm is RMSNorm of ``x - mean``,
and the more specific fusion must win.
"""

from __future__ import annotations

from .._common import INTERNAL_DOMAIN, KIND_RMS
from . import _fragments as F
from ._base import FusionRule


class RMSNormFusion(FusionRule):
    def __init__(self, form: str):
        super().__init__(f"RMSNorm[{form}]")
        self.form = form

    def pattern(self, op, x, eps):
        xc = F.maybe_cast(op, x)
        ms = F.mean_over_row(op, F.square(op, xc))
        return F.normalize(op, F.numerator(op, xc), op.Add(ms, eps), self.form)

    def analyse(self, x, eps, scale_pre=None, cast_in=None, **b):
        xc = cast_in if cast_in is not None else x
        why = F.input_reason(xc) or F.constants_reason(**b)
        if why:
            return None, why
        axes, why = F.statistic_reason(xc, None, **b)
        if why:
            return None, why
        why = (F.epsilon_reason(eps) or F.scale_pre_reason(scale_pre, xc, axes)
               or F.target_reason("RMSNormalization", xc, axes))
        return (xc, axes), why

    def reason(self, context, **b):
        return self.analyse(**b)[1]

    def rewrite(self, op, eps, scale_pre=None, **b):
        (xc, axes), _ = self.analyse(eps=eps, scale_pre=scale_pre, **b)
        inputs = [xc] if scale_pre is None else [xc, scale_pre]
        out = op.Norm(*inputs, _domain=INTERNAL_DOMAIN, kind=KIND_RMS, axes=list(axes),
                      epsilon=F.eps_value(eps))
        out.dtype, out.shape = xc.dtype, xc.shape
        return out


rules = [RMSNormFusion.rule("div"), RMSNormFusion.rule("mul")]
