"""ln_deploy's normalization fusion rules, one family per module.

Order matters where two rules can match at the same node: LayerNorm before RMSNorm (LayerNorm
is RMSNorm of ``x - mean``), look-alikes last (they only report).
"""

from __future__ import annotations

from onnxscript.rewriter import pattern

from . import affine, cast_chains, layer_norm, lookalikes, native, precision, rms_norm

#: exact canonical forms applied first (not fusions)
CANONICAL_RULES = cast_chains.rules
#: recognise normalizations
CORE_RULES = layer_norm.rules + rms_norm.rules + native.rules + lookalikes.rules
#: build on recognised normalizations
FOLD_RULES = precision.rules + affine.rules


def rule_set(rules) -> pattern.RewriteRuleSet:
    """onnxscript's rule set over one ``_Family`` per rule: every Mul/Add in a pattern also matches
    with its operands swapped (the rule's commuted variants, as ``commute=True`` would make), and a
    family is only tried at nodes of its root op that pass its ``quick`` test.

    Why not ``RewriteRuleSet(rules, commute=True)``: it tries all ~100 commuted variants at every
    node, ~10 us each even when the root op differs; on a 48-layer encoder that was 90% of the
    fusion time (see docs/fuse.md, Performance)."""
    return pattern.RewriteRuleSet([_Family(r) for r in rules], commute=False)


class _Family:
    """The commuted variants of one rule behind a root-op and ``quick`` filter; quacks like the
    RewriteRule that ``RewriteRuleSet`` drives."""

    def __init__(self, rule):
        self._variants = list(rule.commute())
        self._quick = getattr(getattr(rule, "fusion", None), "quick", None)
        try:
            domain, op_type, _ = rule._target_pattern.output_node.op_identifier()
            self._root = (domain or "", op_type)
        except Exception:  # noqa: BLE001 - several outputs or an op pattern: try it everywhere
            self._root = None
        for attr in ("name", "remove_nodes", "as_function", "graph_pre_visitor", "graph_post_visitor"):
            setattr(self, attr, getattr(rule, attr))

    def __str__(self) -> str:
        return str(self.name)

    def try_rewrite(self, model, graph_or_function, node, *, verbose=None, tracer=None):
        if self._root is not None and (node.op_type != self._root[1]
                                       or (node.domain if node.domain != "ai.onnx" else "") != self._root[0]):
            return None
        if self._quick is not None and not self._quick(node):
            return None
        for v in self._variants:
            delta = v.try_rewrite(model, graph_or_function, node, verbose=verbose, tracer=tracer)
            if delta is not None:
                return delta
        return None
