"""Deprecated path: the model signature lives in ``ln_deploy.signature`` (shared by build and serve)."""

from ..signature import *  # noqa: F401,F403
from ..signature import (DATATYPES, EngineInfo, Signature, TensorSpec, engine_signature,  # noqa: F401
                         normalize_datatype, numpy_dtype, onnx_signature, triton_type)
