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

import onnx_ir as ir

from .._common import INTERNAL_DOMAIN, KIND_LN, ctx, node_label, rank, reduce_axes, type_name
from . import _fragments as F
from ._base import StatisticFusion

D = ir.DataType
# how many significand bits each float type keeps: a Cast to a type with at least as many adds no rounding
_BITS = {D.FLOAT16: 11, D.BFLOAT16: 8, D.FLOAT: 24, D.DOUBLE: 53}


class LayerNormFusion(StatisticFusion):
    kind = KIND_LN

    def __init__(self, form: str):
        super().__init__("LayerNorm", form)
        self.quick = F.quick_normalize(form)

    def pattern(self, op, x, eps):
        xc = F.maybe_cast(op, x)
        mean = op.ReduceMean(xc, **F.ANY, _outputs=["mean"])
        d = op.Sub(xc, mean)
        var = F.mean_over_row(op, F.square(op, d))
        return F.normalize(op, F.numerator(op, d), op.Add(var, eps), self.form)

    def analyse(self, x, eps, mean, scale_pre=None, cast_in=None, **b):
        xc = cast_in if cast_in is not None else x
        return _analyse(xc, xc, eps, mean, scale_pre, **b)


def _analyse(xc, dc, eps, mean, scale_pre, **b):
    """Checks shared by both LayerNorm forms; ``dc`` is the tensor whose statistics are taken
    (``d`` itself, or the deviation upcast)."""
    why = F.input_reason(xc) or F.constants_reason(**b)
    if why:
        return None, why
    axes, why = reduce_axes(mean.producer(), rank(xc))
    if why:
        return None, why
    _, why = F.statistic_reason(dc, axes, **b)
    if why:
        return None, why
    why = (F.epsilon_reason(eps) or F.scale_pre_reason(scale_pre, dc, axes)
           or F.target_reason("LayerNormalization", xc, axes))
    return (xc, axes), why


class MixedPrecisionLayerNorm(StatisticFusion):
    """LayerNorm whose mean and ``x - mean`` run in the input type T and whose variance and
    division run after an upcast of the deviation to W (ORT's fusion tests, CLIP/Phi-vision):

        d = x - ReduceMean(x)        in T (float16)
        dc = Cast(d → W)             W = float32 or float64
        y  = dc / sqrt(mean(dc²) + eps)

    Fused to one norm with float32 statistics (LayerNormalization ``stash_type=1`` on x). Not exact:
    the original rounds the mean and the deviation to T; the fused op does not. So it differs from
    the original by T's rounding of those two intermediates (and by float32 vs float64 statistics
    where W is float64): within the input type's rounding, and said in the report. A Cast of the
    deviation to a type with fewer significand bits than T adds rounding beyond T's: left, with the
    reason."""

    kind = KIND_LN

    def __init__(self, form: str):
        super().__init__("LayerNorm", f"mixed-{form}")
        self.quick = F.quick_normalize(form)
        self.norm_form = form

    def pattern(self, op, x, eps):
        xc = F.maybe_cast(op, x)
        mean = op.ReduceMean(xc, **F.ANY, _outputs=["mean"])
        dc = op.Cast(op.Sub(xc, mean), _allow_other_attributes=True, _outputs=["cast_dev"])
        var = F.mean_over_row(op, F.square(op, dc))
        return F.normalize(op, F.numerator(op, dc), op.Add(var, eps), self.norm_form)

    def analyse(self, x, eps, mean, cast_dev, scale_pre=None, cast_in=None, **b):
        xc = cast_in if cast_in is not None else x
        t, w = xc.dtype, D(cast_dev.producer().attributes["to"].value)
        if t in _BITS and w in _BITS and _BITS[w] < _BITS[t]:
            return None, (f"the deviation x - mean is cast from {type_name(t)} to {type_name(w)} before the "
                          f"variance: that rounds beyond the input type's precision")
        if w not in _BITS:
            return None, f"the deviation x - mean is cast to {w}, not a floating-point type"
        return _analyse(xc, cast_dev, eps, mean, scale_pre, **b)

    def rewrite(self, op, eps, mean, cast_dev, scale_pre=None, **bindings):
        (xc, axes), _ = self.analyse(eps=eps, mean=mean, cast_dev=cast_dev, scale_pre=scale_pre, **bindings)
        w = D(cast_dev.producer().attributes["to"].value)
        xw = op.Cast(xc, to=w)
        xw.dtype, xw.shape = w, xc.shape
        inputs = [xw] if scale_pre is None else [xw, scale_pre]
        # within_rounding: the precision rule may also drop a float64 upcast around this norm
        out = op.Norm(*inputs, _domain=INTERNAL_DOMAIN, kind=self.kind, axes=list(axes),
                      epsilon=F.eps_value(eps), within_rounding=1)
        out.dtype, out.shape = w, xc.shape
        t = type_name(xc.dtype)
        ctx().note(f"mixed-precision LayerNorm ({node_label(mean.producer())}: mean and x - mean in {t}, "
                   f"variance in {type_name(w)}) fused with float32 statistics (stash_type=1): "
                   f"it differs from the original by {t} rounding of the mean and deviation")
        return out


rules = [LayerNormFusion.rule("div"), LayerNormFusion.rule("mul"),
         MixedPrecisionLayerNorm.rule("div"), MixedPrecisionLayerNorm.rule("mul")]
