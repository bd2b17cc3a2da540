"""RMSNorm written out in primitive ops → one internal Norm (kind RMSNorm).

    ms = mean of x²                            Pow(x, 2) | Mul(x, x); ReduceMean | ReduceSum / N | ReduceSum * 1/N
    y  = num / sqrt(ms + eps)                  the same division spellings as LayerNorm
    num = x or x * scale

covers T5 (``x * rsqrt(mean(x²) + eps)`` with the square taken in fp32) and LLaMA (upcast, rsqrt,
cast back, then the weight). Tried after the LayerNorm family: LayerNorm is RMSNorm of ``x - mean``,
and the more specific fusion must win.
"""

from __future__ import annotations

from .._common import KIND_RMS
from . import _fragments as F
from ._base import StatisticFusion


class RMSNormFusion(StatisticFusion):
    kind = KIND_RMS

    def __init__(self, form: str):
        super().__init__("RMSNorm", form)
        self.quick = F.quick_normalize(form)

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


rules = [RMSNormFusion.rule("div"), RMSNormFusion.rule("mul")]
