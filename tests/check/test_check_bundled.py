"""Every bundled model passes the full fp32 check against ONNX Runtime on the CPU; the negative
controls fail exactly the invariance they break."""

import pytest

from models.catalog import BUNDLED, NEGATIVE_CONTROLS, spec_path


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_model_passes_fp32(name, exported_bundled):
    from ln_deploy.check import check_model

    loaded, exported = exported_bundled[name]
    report = check_model(loaded, exported.path, precision="fp32")
    assert report.passed, report.failures
    comp = {c["runner"]: c for c in report.comparisons}
    assert comp["onnxrt-cpu"]["passed"]
    checks = {(r["check"], r["runtime"]): r["status"] for r in report.invariance}
    for runtime in ("pytorch-fp32", "onnxrt-cpu"):
        assert checks[("batch_independence", runtime)] == "passed"
    assert checks[("train_eval", "pytorch-fp32")] == "passed"
    model = loaded.module
    if getattr(model, "causal", False) or loaded.is_recurrent:
        assert checks[("sequence_independence", "pytorch-fp32")] == "passed"
        assert checks[("sequence_independence", "onnxrt-cpu")] in ("passed", "skipped")
    if getattr(model, "padding_mask_input", None):
        assert checks[("padding_leak", "onnxrt-cpu")] == "passed"
    trt = next(r for r in report.runners if r["name"] == "tensorrt")
    assert trt["status"] == "skipped" and trt["reason"]
    norms = report.localisation["onnxrt-cpu"]["norms"]  # scan-mode RNNs: per iteration of the Scan body
    assert norms and all(n["passed"] for n in norms)


def test_batchnorm_control_fails_batch_independence(export_spec):
    from ln_deploy.check import check_model

    loaded, path = export_spec(NEGATIVE_CONTROLS["batchnorm_encoder"])
    report = check_model(loaded, path)
    assert not report.passed
    failed = [r for r in report.invariance if r["status"] == "failed"]
    assert {r["check"] for r in failed} == {"batch_independence"}
    assert {r["runtime"] for r in failed} == {"pytorch-fp32", "onnxrt-cpu"}
    msg = failed[0]["message"]
    assert "depends on the other samples in the batch" in msg and "BatchNorm1d" in msg
    # Parity itself holds: the deployed graph computes what PyTorch computes, batch dependence included.
    assert report.comparisons[0]["passed"]


@pytest.mark.parametrize("factory,check", [
    ("leaky_padding_encoder", "padding_leak"),
    ("falsely_causal", "sequence_independence"),
    ("training_branch_norm", "train_eval"),
])
def test_invariance_negative_controls(factory, check, export_spec):
    from ln_deploy.check import check_model

    loaded, path = export_spec(spec_path(f"tests/check/fixtures.py:{factory}"))
    report = check_model(loaded, path, localise=False)
    failed = {r["check"] for r in report.invariance if r["status"] == "failed"}
    assert check in failed, report.invariance
    assert not report.passed
