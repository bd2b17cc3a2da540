"""Spellings that look like a normalization but are not one: never rewritten, always reported.

    num / (Sqrt(var) + eps)                  epsilon outside the square root
    num * Reciprocal(Sqrt(var) + eps)
    num / Sqrt(var * c + eps)                a rescaled variance (e.g. the N/(N-1) correction)

(The other non-equivalent forms — unbiased ReduceSum/(N-1), mean and variance over different axes,
a non-constant epsilon, a scale over other axes — match the real rules structurally and are
rejected by their checks, with the reason.)
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from .._common import scalar
from ._base import FusionRule
from ._fragments import ANY


def _variance(op):
    return op.ReduceMean(pattern.Var("sq"), **ANY)


def _prod(v):
    p = v.producer() if v is not None else None
    return p.op_type if p is not None else None


class EpsOutsideSqrt(FusionRule):
    def __init__(self, form: str):
        super().__init__(f"EpsOutsideSqrt[{form}]")
        self.form = form
        if form == "div":
            self.quick = lambda node: len(node.inputs) == 2 and _prod(node.inputs[1]) == "Add"
        else:
            self.quick = lambda node: "Reciprocal" in (_prod(v) for v in node.inputs)

    def pattern(self, op, num, eps):
        std_eps = op.Add(op.Sqrt(_variance(op)), eps)
        if self.form == "div":
            return op.Div(num, std_eps)
        return op.Mul(num, op.Reciprocal(std_eps))

    def reason(self, context, eps, **_):
        if scalar(eps) is None:
            return "~not a constant offset"
        return "epsilon is added outside the square root (x / (sqrt(var) + eps)): not layer normalization"

    def rewrite(self, op, **_):  # pragma: no cover - reason() always refuses
        raise AssertionError("look-alike rules never rewrite")


class RescaledVariance(FusionRule):
    @staticmethod
    def quick(node):
        return len(node.inputs) == 2 and _prod(node.inputs[1]) == "Sqrt"

    def __init__(self):
        super().__init__("RescaledVariance")

    def pattern(self, op, num, c, eps):
        return op.Div(num, op.Sqrt(op.Add(op.Mul(_variance(op), c), eps)))

    def reason(self, context, c, **_):
        v = scalar(c)
        if v is None:
            return "~not a constant factor"
        return f"the variance is multiplied by {v:g} before adding epsilon (e.g. an unbiased N/(N-1) correction)"

    def rewrite(self, op, **_):  # pragma: no cover
        raise AssertionError("look-alike rules never rewrite")


rules = [EpsOutsideSqrt.rule("div"), EpsOutsideSqrt.rule("mul"), RescaledVariance.rule()]
