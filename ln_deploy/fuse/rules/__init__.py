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
    # commute=True: every Mul/Add in a pattern also matches with its operands swapped.
    return pattern.RewriteRuleSet(list(rules), commute=True)
