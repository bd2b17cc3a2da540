"""Forms that look like LayerNorm but are not: never fused as LayerNorm, always reported with the
reason, and the output never changes."""

import pytest

from _helpers import DTYPES, OPSETS, TARGETS, fuse_checked, ops
from graphs import LOOKALIKES, scale_over_other_axis


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("name", sorted(LOOKALIKES))
def test_lookalike_is_not_fused_as_layer_norm(name, opset, dtype, target):
    build, reason = LOOKALIKES[name]
    model = build(opset, dtype)
    fused, report = fuse_checked(model, target)
    assert report.fused["LayerNormalization"] == 0
    assert "LayerNormalization" not in ops(fused)
    assert any(reason in r["reason"] for r in report.rejected), report.rejected
    if name != "mean_over_other_axis":
        # mean over axis 1, variance over the last: what follows the Sub *is* an RMSNorm of
        # d = x - mean (exact), which the RMS family may fuse; nothing else may change
        assert ops(fused) == ops(model)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("opset", OPSETS)
def test_scale_over_other_axis_is_not_folded(opset, target):
    fused, report = fuse_checked(scale_over_other_axis(opset), target)
    # the normalization itself fuses; the [3, 1] scale stays a separate Mul
    assert ops(fused)[:2] == [{"onnx": "LayerNormalization", "tensorrt": "LnDeployNorm"}[target], "Mul"]
    assert any("varies along axis 1" in r["reason"] for r in report.rejected), report.rejected


def test_rejection_lists_the_nodes():
    _, report = fuse_checked(LOOKALIKES["unbiased_variance"][0](20))
    (r, *_) = report.rejected
    assert {"ReduceSum", "Div", "Sqrt"} <= {n.split("_")[0].rstrip("0123456789") for n in r["nodes"]}
