"""``check``: parity of PyTorch, ONNX Runtime and TensorRT through Polygraphy, per-normalization
localisation, and layer normalization's invariance checks.

Importing this package is cheap; ``check_model`` and the runners import torch, onnx, onnxruntime and
Polygraphy when first used.
"""

__all__ = ["check_model", "parity_summary", "CheckOptions", "CheckReport", "TorchRunner", "LoadTorchModel", "perturb_epsilon", "perturb_scale"]

_WHERE = {
    "check_model": "api",
    "parity_summary": "api",
    "CheckOptions": "options",
    "CheckReport": "report",
    "TorchRunner": "runners",
    "LoadTorchModel": "runners",
    "perturb_epsilon": "perturb",
    "perturb_scale": "perturb",
}


def __getattr__(name):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
