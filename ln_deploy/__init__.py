"""ln_deploy: take PyTorch models built around layer normalization to production.

Stages, one subpackage each: ``export`` → ``fuse`` → ``convert`` → ``build`` → ``check`` →
``serve``. Importing ``ln_deploy`` imports nothing heavy; each stage imports torch, onnx,
onnxruntime, polygraphy or tensorrt only when it runs.
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    BadInputError,
    CheckFailedError,
    LnDeployError,
    MissingDependencyError,
)

__all__ = ["__version__", "LnDeployError", "BadInputError", "CheckFailedError", "MissingDependencyError"]
