"""Shared by the fuse tests: fuse, list the ops, and compare with the original in ONNX Runtime."""

from __future__ import annotations

from ln_deploy import progress
from ln_deploy.fuse import fuse_model
from ln_deploy.fuse.api import _checkable
from ln_deploy.fuse.verify import compare

progress.set_quiet(True)

OPSETS = (17, 18, 20, 23)
DTYPES = ("float32", "float16")
TARGETS = ("onnx", "tensorrt")
NORM_OP = {("onnx", "ln"): "LayerNormalization", ("onnx", "rms"): "RMSNormalization",
           ("tensorrt", "ln"): "LnDeployNorm", ("tensorrt", "rms"): "LnDeployNorm"}


def ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def fuse_checked(model, target="onnx", **kw):
    """Fuse (with the built-in safety check) and compare again on other random inputs."""
    fused, report = fuse_model(model, target, **kw)
    bad, _ = compare(model, _checkable(fused, target), seed=7)
    assert not bad, [str(b) for b in bad]
    return fused, report
