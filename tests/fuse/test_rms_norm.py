"""RMSNorm spellings (T5, LLaMA, division form...): RMSNormalization at opset 23, left with a reason
below 23 on the onnx target (or fused after an explicit opset upgrade), LnDeployNorm kind=1 for TensorRT."""

import pytest

from _helpers import DTYPES, OPSETS, fuse_checked, ops
from graphs import RMS_NORM_SPELLINGS


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("spelling", sorted(RMS_NORM_SPELLINGS))
def test_rms_spelling_onnx_target(spelling, opset, dtype):
    model = RMS_NORM_SPELLINGS[spelling](opset, dtype)
    fused, report = fuse_checked(model)
    if opset >= 23:
        assert ops(fused) == ["RMSNormalization"]
        assert report.fused["RMSNormalization"] == 1
    else:
        assert ops(fused) == ops(model)  # unchanged, and said why
        assert report.fused["RMSNormalization"] == 0
        assert any("needs opset 23" in r["reason"] for r in report.rejected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("spelling", sorted(RMS_NORM_SPELLINGS))
def test_rms_spelling_tensorrt_target(spelling, opset, dtype):
    fused, report = fuse_checked(RMS_NORM_SPELLINGS[spelling](opset, dtype), "tensorrt")
    assert ops(fused) == ["LnDeployNorm"]
    kind = {a.name: a.i for a in fused.graph.node[0].attribute if a.type == a.INT}["kind"]
    assert kind == 1 and report.fused["RMSNormalization"] == 1


@pytest.mark.parametrize("opset", (17, 20))
def test_rms_fuses_after_requested_opset_upgrade(opset):
    fused, report = fuse_checked(RMS_NORM_SPELLINGS["llama_rsqrt_as_pow"](opset, "float16"), opset=23)
    assert ops(fused) == ["RMSNormalization"]
    assert report.opset_after == 23
