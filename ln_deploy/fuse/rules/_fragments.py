"""Pattern fragments shared by the LayerNorm and RMSNorm families, with the checks they imply.

Each fragment lists its algebraic spellings with ``OrValue`` (one pattern, several spellings);
which spelling matched is bound to a tag variable so ``check`` knows what to verify (the exponent
of a ``Pow``, the divisor of a ``ReduceSum``...). Mul/Add operand order is handled by building the
rule set with ``commute=True``.
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter import pattern

from .._common import (FLOAT_TYPES, axes_key, const, normalized_size, param_shape_reason, rank,
                       reduce_axes, scalar)

ANY = {"_allow_other_inputs": True, "_allow_other_attributes": True}


def maybe_cast(op, x):
    """``x`` or ``Cast(x)`` (the upcast of mixed-precision code). Longer lossless chains are
    collapsed to one Cast beforehand by ``cast_chains``."""
    # tag_var on every OrValue with a bare-variable alternative: onnxscript 0.7's
    # BacktrackingOr.clone (used by commute=True) fails without one.
    return pattern.OrValue([op.Cast(x, _allow_other_attributes=True, _outputs=["cast_in"]), x],
                           tag_var="cast_form")


def square(op, d):
    """d², as ``Pow(d, 2)`` or ``Mul(d, d)``."""
    return pattern.OrValue([op.Pow(d, pattern.Var("two")), op.Mul(d, d)])


def mean_over_row(op, sq):
    """The mean of ``sq`` over the normalized axes: ``ReduceMean``, ``ReduceSum / n`` or
    ``ReduceSum * (1/n)``; axes as attribute (opset ≤ 17) or input (opset ≥ 18)."""
    return pattern.OrValue(
        [
            op.ReduceMean(sq, **ANY, _outputs=["stat_mean"]),
            op.Div(op.ReduceSum(sq, **ANY, _outputs=["stat_sum_div"]), pattern.Var("n")),
            op.Mul(op.ReduceSum(sq, **ANY, _outputs=["stat_sum_mul"]), pattern.Var("inv_n")),
        ]
    )


def numerator(op, d):
    """``d`` or ``d * scale`` (scale applied before the division)."""
    return pattern.OrValue([d, op.Mul(d, pattern.Var("scale_pre"))], tag_var="num_form")


def normalize(op, num, var_eps, form: str):
    """``num / sqrt(var_eps)`` in the spelling ``form``:
    ``div``: ``num / Sqrt(v)`` or ``num / Pow(v, 0.5)``;
    ``mul``: ``num * Reciprocal(Sqrt(v))``, ``num * Pow(v, -0.5)`` (rsqrt) or ``num * (1 / Sqrt(v))``.
    (Two forms because onnxscript cannot take an ``OrValue`` as the pattern's output.)"""
    if form == "div":
        std = pattern.OrValue([op.Sqrt(var_eps), op.Pow(var_eps, pattern.Var("half"))])
        return op.Div(num, std)
    inv = pattern.OrValue(
        [
            op.Reciprocal(op.Sqrt(var_eps)),
            op.Pow(var_eps, pattern.Var("neg_half")),
            op.Div(pattern.Var("one"), op.Sqrt(var_eps)),
        ]
    )
    return op.Mul(num, inv)


def _is(v, expected) -> bool:
    s = scalar(v)
    return s is not None and abs(s - expected) <= 1e-7 * max(1.0, abs(expected))


def _value_text(v) -> str | None:
    """Why ``v`` is no single constant (None when it is one)."""
    if const(v) is None:
        return "a graph input" if v.is_graph_input() else "not a constant"
    if scalar(v) is None:
        return "a tensor of different values"
    return None


def constants_reason(two=None, half=None, neg_half=None, one=None, **_) -> str | None:
    """The first constant of the spelling that is not what the spelling needs (data-flow order)."""
    for v, want, what, wrong in (
        (two, 2.0, "the square's exponent", "the square is Pow(d, {}), not Pow(d, 2)"),
        (half, 0.5, "the root's exponent", "the root is Pow(v, {}), not a square root"),
        (neg_half, -0.5, "the inverse root's exponent", "the inverse root is Pow(v, {}), not Pow(v, -0.5)"),
        (one, 1.0, "the numerator of 1 / sqrt(v)", "the inverse is {} / sqrt(v), not 1 / sqrt(v)"),
    ):
        if v is None or _is(v, want):
            continue
        text = _value_text(v)
        return f"{what} is {text}" if text else wrong.format(f"{scalar(v):g}")
    return None


def stat_axes(stat_mean=None, stat_sum_div=None, stat_sum_mul=None, **_):
    """(reduce node, how it averages) for the mean-of-squares statistic."""
    if stat_mean is not None:
        return stat_mean.producer(), "mean"
    if stat_sum_div is not None:
        return stat_sum_div.producer(), "div"
    return stat_sum_mul.producer(), "mul"


def statistic_reason(xc, axes, n=None, inv_n=None, **b) -> tuple[tuple | None, str | None]:
    """Checks of the mean-of-squares statistic: the axes it reduces (compared with ``axes`` when
    given), and for a ReduceSum the divisor must be the number of normalized elements."""
    node, how = stat_axes(**b)
    r = rank(xc)
    sq_axes, why = reduce_axes(node, r)
    if why:
        return None, why
    if axes is not None and axes_key(axes, r) != axes_key(sq_axes, r):
        return None, (f"the mean is taken over axes {list(axes)} but the variance over axes "
                      f"{list(sq_axes)}")
    if how != "mean":
        count = normalized_size(xc, sq_axes)
        if count is None:
            return None, "the variance is a ReduceSum over axes whose sizes are unknown, so its divisor cannot be checked"
        if how == "div":
            div = scalar(n)
            if div is None:
                return None, "the variance divides a ReduceSum by a non-constant"
        else:
            inv = scalar(inv_n)
            if inv is None or inv == 0:
                return None, "the variance multiplies a ReduceSum by a non-constant"
            div = 1.0 / inv
        if abs(div - count) > 1e-4 * count:
            extra = " (unbiased variance)" if abs(div - (count - 1)) < 1e-4 * count else ""
            return None, (f"the variance divides the sum of squares by {div:g}, not by the {count} "
                          f"normalized elements{extra}")
    return sq_axes, None


def epsilon_reason(eps) -> str | None:
    if const(eps) is None:
        return ("epsilon is not a constant: it is a graph input (LayerNormalization/RMSNormalization "
                "take it as an attribute)" if eps.is_graph_input() else "epsilon is not a constant")
    if scalar(eps) is None:
        return "epsilon is not one value (a tensor of different values)"
    if const(eps).size != 1:
        return "~epsilon is a tensor of equal values; it may broadcast the statistic"
    return None


def input_reason(xc) -> str | None:
    if xc.dtype is not None and xc.dtype not in FLOAT_TYPES:
        return f"the input has type {xc.dtype}, not a floating-point type"
    return None


def scale_pre_reason(scale_pre, xc, axes) -> str | None:
    if scale_pre is None:
        return None
    return param_shape_reason(scale_pre, xc, axes, "scale")


def target_reason(kind_name: str, xc, axes) -> str | None:
    from .._common import ctx

    c = ctx()
    if rank(xc) is None:
        return "the rank of the normalized tensor is unknown"
    if normalized_size(xc, axes) is None and c.opset < 10:
        return ("the normalized dims are not static and opset < 10 has no way to build a ones scale "
                "of their run-time size")
    if c.target == "onnx":
        need = 23 if kind_name == "RMSNormalization" else 17
        if c.opset < need:
            hint = " (pass --opset 23 to upgrade)" if need == 23 else ""
            return f"{kind_name} needs opset {need}; the model has opset {c.opset}{hint}"
    return None


def eps_value(eps) -> float:
    return float(np.float32(scalar(eps)))


# ---------------------------------------------------------------- quick root tests (rules._Family)

def _prod(v):
    p = v.producer() if v is not None else None
    return p.op_type if p is not None else None


def _is_inv_std(v) -> bool:
    """``v`` may be 1/sqrt(.): Reciprocal(.), Pow(., -0.5) or Div(1, Sqrt(.))."""
    p = v.producer() if v is not None else None
    if p is None:
        return False
    if p.op_type in ("Reciprocal", "Pow"):
        return True
    return p.op_type == "Div" and len(p.inputs) == 2 and _prod(p.inputs[1]) == "Sqrt"


def quick_normalize(form: str):
    """The root test of ``normalize(op, num, var_eps, form)``."""
    if form == "div":
        return lambda node: len(node.inputs) == 2 and _prod(node.inputs[1]) in ("Sqrt", "Pow")
    return lambda node: len(node.inputs) == 2 and (_is_inv_std(node.inputs[0]) or _is_inv_std(node.inputs[1]))
