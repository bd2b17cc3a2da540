"""Convert stage: fp32 → fp16/bf16 with fp32 normalization statistics, and the fp16 overflow advisor.

Importing this package imports nothing heavy; onnx and onnxruntime load when a function runs.
"""

from __future__ import annotations

__all__ = ["convert_model", "ConvertOptions", "ConversionReport", "DEFAULT_FP32_OPS", "PRECISIONS", "advise", "AdvisorReport",
           "find_normalizations", "load_calibration"]


def __getattr__(name):
    if name in ("convert_model", "ConversionReport", "DEFAULT_FP32_OPS", "PRECISIONS"):
        from . import precision

        return getattr(precision, name)
    if name == "ConvertOptions":
        from .options import ConvertOptions

        return ConvertOptions
    if name in ("advise", "AdvisorReport"):
        from . import advisor

        return getattr(advisor, name)
    if name == "find_normalizations":
        from ..norm_sites import find_normalizations

        return find_normalizations
    if name == "load_calibration":
        from .calibration import load_calibration

        return load_calibration
    raise AttributeError(name)
