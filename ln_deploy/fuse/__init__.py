"""Normalization fusion for any ONNX graph: LayerNorm, RMSNorm and residual+norm patterns, to
standard operators (``target="onnx"``) or to ln_deploy's TensorRT plugin operators
(``target="tensorrt"``). See docs/fuse.md.

    from ln_deploy.fuse import fuse_model, fuse_file
    fused, report = fuse_model("model.onnx", target="onnx")
"""

from __future__ import annotations

__all__ = ["fuse_model", "fuse_file", "FuseReport"]


def __getattr__(name):  # heavy imports (onnx, onnxscript) only when used
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
