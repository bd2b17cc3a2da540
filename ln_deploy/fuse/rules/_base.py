"""The base of every ln_deploy fusion rule: onnxscript's ``RewriteRuleClassBase`` plus reasons.

A rule states its ``pattern`` in ONNX ops, explains in ``reason`` (None = fine) why a structural
match is not the operation it looks like, and emits the replacement in ``rewrite``. ``check`` is
shared: it files every reason with the fusion context (it ends up in the report), and honours the
context's rewrite limit (used to bisect a failed safety check down to one rewrite).
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from .._common import INTERNAL_DOMAIN, Applied, ctx, node_label
from . import _fragments as F


class FusionRule(pattern.RewriteRuleClassBase):
    #: report rejections of this rule (off for rules whose near-misses are common and harmless,
    #: e.g. "an Add after a norm whose other operand is not a constant")
    report = True
    #: a rewrite that fuses something (counted, and subject to the bisection limit); canonical
    #: forms that change no arithmetic (cast chains) are not
    counted = True

    #: a cheap test of the root node (its producers' op types) before any of the rule's commuted
    #: variants is matched there: the matcher costs ~10 us per try, and most nodes are no candidate
    quick = None

    def __init__(self, name: str):
        # remove_nodes=False: an intermediate (mean, variance...) also used elsewhere keeps its
        # producer; whatever nothing uses any more is removed after the pass.
        super().__init__(name, remove_nodes=False)

    @classmethod
    def rule(cls, *args, **kwargs):
        """The onnxscript RewriteRule, carrying its FusionRule instance (for ``quick``)."""
        instance = cls(*args, **kwargs)
        r = pattern.RewriteRule(instance.pattern, instance.rewrite, instance.check, name=instance.name,
                                remove_nodes=instance.remove_nodes, graph_pre_visitor=instance.setup,
                                graph_post_visitor=instance.cleanup, as_function=instance.as_function)
        r.fusion = instance
        return r

    def reason(self, context, **bindings) -> str | None:  # pragma: no cover - overridden
        return None

    def check(self, context, **bindings) -> pattern.MatchResult:
        result = pattern.MatchResult()
        why = self.reason(context, **bindings)
        if why:
            quiet = why.startswith("~")  # a "~" reason is a near-miss not worth reporting
            why = why.lstrip("~")
            if self.report and not quiet:
                ctx().reject(self.name, _graph_order(context), why, root=context.root)
            return result.fail(why)
        c = ctx()
        if not self.counted:
            return result
        if not c.may_apply():
            return result.fail("rewrite limit reached (bisection)")
        c.applied.append(Applied(self.name, [node_label(n) for n in _graph_order(context)]))
        return result


def producer_op(value) -> str | None:
    """The op type producing ``value`` (None for inputs and initializers)."""
    p = value.producer() if value is not None else None
    return p.op_type if p is not None else None


def _graph_order(context):
    nodes = list(dict.fromkeys(context.nodes))
    if len(nodes) < 2:
        return nodes
    c = ctx()
    return sorted(nodes, key=lambda n: c.position(n, context.graph_or_function))


class StatisticFusion(FusionRule):
    """A LayerNorm or RMSNorm spelled out in primitive ops → one internal ``Norm`` of ``kind``.

    Subclasses give the ``pattern`` and an ``analyse`` returning ``((input, axes), reason)``.
    """

    kind: str

    def __init__(self, family: str, form: str):
        super().__init__(f"{family}[{form}]")
        self.form = form

    def analyse(self, **bindings):  # pragma: no cover - overridden
        raise NotImplementedError

    def reason(self, context, **bindings):
        return self.analyse(**bindings)[1]

    def rewrite(self, op, eps, scale_pre=None, **bindings):
        (xc, axes), _ = self.analyse(eps=eps, scale_pre=scale_pre, **bindings)
        inputs = [xc] if scale_pre is None else [xc, scale_pre]
        out = op.Norm(*inputs, _domain=INTERNAL_DOMAIN, kind=self.kind, axes=list(axes),
                      epsilon=F.eps_value(eps))
        out.dtype, out.shape = xc.dtype, xc.shape
        return out
