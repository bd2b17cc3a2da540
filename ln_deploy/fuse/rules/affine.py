"""Scale and bias after the division → inputs of the internal Norm.

    Norm(x) * scale           → Norm(x, scale)
    Norm(x, scale?) + bias    → Norm(x, scale, bias)

A constant folds when it varies along the normalized axes alone: a scale of shape [C, 1, 1] on a
norm over the last axis multiplies along other axes and stays a separate Mul (reported). A tensor
known only at run time (a graph input) folds when its shape is exactly the normalized dims.
"""

from __future__ import annotations

from .._common import INTERNAL_DOMAIN, const, is_internal, norm_attrs, param_shape_reason
from ._base import FusionRule
from ._fragments import ANY


def _norm_inputs(node):
    ins = list(node.inputs) + [None] * (3 - len(node.inputs))
    return ins[0], ins[1], ins[2]


def _fold_reason(normed, param, slot: int, what: str) -> str | None:
    node = normed.producer()
    x, scale, bias = _norm_inputs(node)
    if (scale, bias)[slot - 1] is not None or (slot == 1 and bias is not None):
        return f"~the norm already has a {what}"
    if param.dtype is not None and normed.dtype is not None and param.dtype != normed.dtype:
        return f"~{what} type differs from the norm's output type"
    if const(param) is None:
        return _runtime_param_reason(param, x, norm_attrs(node)["axes"], what)
    return param_shape_reason(param, x, norm_attrs(node)["axes"], what)


def _runtime_param_reason(param, x, axes, what: str) -> str | None:
    """A scale/bias known only at run time (a graph input, a computed tensor) folds when its shape
    *is* the normalized dims (static, or the same named symbols) over trailing axes: then the fused
    op multiplies exactly what the Mul did, without broadcasting anything. Otherwise it stays a
    separate op (quietly: a Mul by a tensor is no defect of the norm)."""
    xs, ps = x.shape, param.shape
    if xs is None or ps is None:
        return f"~{what} is not a constant and its shape is unknown"
    r, k = len(xs), len(axes)
    if tuple(axes) != tuple(range(r - k, r)) or len(ps) != k:
        return f"~{what} is not a constant and its shape is not the normalized dims"
    for a, d in zip(axes, ps):
        xd = xs[a]
        same = (xd == d) if isinstance(xd, int) or isinstance(d, int) else (xd.value is not None and xd.value == d.value)
        if not same:
            return f"~{what} is not a constant and its shape is not the normalized dims"
    return None


def _norm_input(node) -> bool:
    return any(is_internal(v.producer() if v is not None else None) for v in node.inputs)


def _emit(op, normed, scale, bias):
    node = normed.producer()
    x = node.inputs[0]
    a = norm_attrs(node)
    inputs = [x, scale] if bias is None else [x, scale, bias]
    extra = {"within_rounding": 1} if "within_rounding" in node.attributes else {}
    out = op.Norm(*inputs, _domain=INTERNAL_DOMAIN, kind=a["kind"], axes=list(a["axes"]),
                  epsilon=a["epsilon"], **extra)
    out.dtype, out.shape = normed.dtype, normed.shape
    return out


class ScaleFold(FusionRule):
    quick = staticmethod(_norm_input)

    def __init__(self):
        super().__init__("FoldScale")

    def pattern(self, op, x, scale):
        return op.Mul(op.Norm(x, _domain=INTERNAL_DOMAIN, **ANY, _outputs=["normed"]), scale)

    def reason(self, context, normed, scale, **_):
        return _fold_reason(normed, scale, 1, "scale")

    def rewrite(self, op, normed, scale, **_):
        return _emit(op, normed, scale, None)


class BiasFold(FusionRule):
    quick = staticmethod(_norm_input)

    def __init__(self):
        super().__init__("FoldBias")

    def pattern(self, op, x, bias):
        return op.Add(op.Norm(x, _domain=INTERNAL_DOMAIN, **ANY, _outputs=["normed"]), bias)

    def reason(self, context, normed, bias, **_):
        return _fold_reason(normed, bias, 2, "bias")

    def rewrite(self, op, normed, bias, **_):
        _, scale, _ = _norm_inputs(normed.producer())
        return _emit(op, normed, scale, bias)


rules = [ScaleFold.rule(), BiasFold.rule()]
