"""The safety check refuses a wrong rewrite and names it; the model is not written."""

import pytest
from onnxscript.rewriter import pattern

from _helpers import ops
from graphs import LAYER_NORM_SPELLINGS, residual
from ln_deploy.errors import CheckFailedError
from ln_deploy.fuse import fuse_file, fuse_model
from ln_deploy.fuse.rules._base import FusionRule


class DropSqrt(FusionRule):
    """A deliberately wrong rule: Sqrt(v) → v."""

    def __init__(self):
        super().__init__("WrongDropSqrt")

    def pattern(self, op, v):
        return op.Sqrt(v)

    def rewrite(self, op, v):
        return op.Identity(v)


class AddToSub(FusionRule):
    """Wrong only where it fires on the residual Add: a + b → a - b."""

    def __init__(self):
        super().__init__("WrongAddToSub")

    def pattern(self, op, a, b):
        return op.Add(a, b)

    def reason(self, context, a, b, **_):
        return None if a.name == "a" else "~only the residual"

    def rewrite(self, op, a, b):
        return op.Sub(a, b)


def test_wrong_rewrite_is_refused_and_named(tmp_path):
    model = LAYER_NORM_SPELLINGS["pow_div_sqrt"](20)
    with pytest.raises(CheckFailedError, match="WrongDropSqrt"):
        fuse_model(model, extra_rules=[DropSqrt.rule()])
    out = tmp_path / "out.onnx"
    src = tmp_path / "in.onnx"
    import onnx

    onnx.save(model, src)
    with pytest.raises(CheckFailedError):
        fuse_file(src, out, extra_rules=[DropSqrt.rule()])
    assert not out.exists()


def test_bisection_finds_the_bad_rewrite_among_good_ones():
    # the correct LayerNorm rewrites come first; the bad one is found by bisection, not by order
    with pytest.raises(CheckFailedError, match=r"WrongAddToSub on nodes Add\d+"):
        fuse_model(residual(20), extra_rules=[AddToSub.rule()])


def test_correct_rules_pass_the_same_check():
    fused, report = fuse_model(residual(20))
    assert report.verified and ops(fused) == ["Add", "LayerNormalization"]
