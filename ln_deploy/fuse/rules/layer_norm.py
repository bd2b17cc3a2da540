"""LayerNorm written out in primitive ops → one internal Norm (kind LayerNorm).

    mean = ReduceMean(x)                       x may be Cast(x) (upcast inside the norm)
    d    = x - mean
    var  = mean of d²                          Pow(d, 2) | Mul(d, d); ReduceMean | ReduceSum / N | ReduceSum * 1/N
    y    = num / sqrt(var + eps)               Div by Sqrt | Pow(.,0.5); Mul by Reciprocal(Sqrt) | Pow(.,-0.5) | 1/Sqrt
    num  = d  or  d * scale                    scale before the division

Scale and bias applied after the division are folded by ``affine``; the Cast back to the input
type by ``precision``. Axes may be any set (several trailing axes; channels-first axis 1): lowering
decides how the target expresses them.
"""

from __future__ import annotations

from .._common import KIND_LN, rank, reduce_axes
from . import _fragments as F
from ._base import StatisticFusion


class LayerNormFusion(StatisticFusion):
    kind = KIND_LN

    def __init__(self, form: str):
        super().__init__("LayerNorm", form)

    def pattern(self, op, x, eps):
        xc = F.maybe_cast(op, x)
        mean = op.ReduceMean(xc, **F.ANY, _outputs=["mean"])
        d = op.Sub(xc, mean)
        var = F.mean_over_row(op, F.square(op, d))
        return F.normalize(op, F.numerator(op, d), op.Add(var, eps), self.form)

    def analyse(self, x, eps, mean, scale_pre=None, cast_in=None, **b):
        xc = cast_in if cast_in is not None else x
        why = F.input_reason(xc) or F.constants_reason(**b)
        if why:
            return None, why
        axes, why = reduce_axes(mean.producer(), rank(xc))
        if why:
            return None, why
        _, why = F.statistic_reason(xc, axes, **b)
        if why:
            return None, why
        why = (F.epsilon_reason(eps) or F.scale_pre_reason(scale_pre, xc, axes)
               or F.target_reason("LayerNormalization", xc, axes))
        return (xc, axes), why


rules = [LayerNormFusion.rule("div"), LayerNormFusion.rule("mul")]
