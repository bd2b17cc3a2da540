"""Export stage: PyTorch (a SPEC) → ONNX, verified in ONNX Runtime before it is written."""

from .exporter import (
    RNN_MODES,
    ExportResult,
    count_nodes,
    default_dynamic_axes,
    export_model,
    parse_dynamic_axes,
    read_metadata,
    set_metadata,
)

__all__ = ["RNN_MODES", "ExportResult", "count_nodes", "default_dynamic_axes", "export_model",
           "parse_dynamic_axes", "read_metadata", "set_metadata"]
