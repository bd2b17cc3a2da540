"""Triton's ``ModelConfig`` protobuf, from the official ``tritonclient`` package.

``tritonclient`` ships the generated ``model_config_pb2`` inside ``tritonclient.grpc``, whose
``__init__`` refuses to import without ``grpcio`` (not needed for HTTP). The generated module
itself depends on protobuf only, so it is loaded from its file directly.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

from ..errors import BadInputError, MissingDependencyError


@functools.lru_cache(maxsize=1)
def model_config_pb2():
    existing = sys.modules.get("tritonclient.grpc.model_config_pb2")
    if existing is not None:
        return existing
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("tritonclient", "pip install 'ln_deploy[serve]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        raise MissingDependencyError("tritonclient's model_config_pb2", "pip install 'tritonclient[http]>=2.40'")
    mod_spec = importlib.util.spec_from_file_location("_ln_deploy_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def new_config():
    return model_config_pb2().ModelConfig()


def parse_config_text(text: str, where: str = "config.pbtxt"):
    """Parse protobuf text format into a ``ModelConfig``; unknown fields or bad syntax -> BadInputError."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(text, new_config())
    except text_format.ParseError as e:
        raise BadInputError(f"{where}: not a valid Triton model config ({e})") from None


def config_to_text(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def config_to_json(config) -> dict:
    """The config as Triton's ``GET /v2/models/{name}/config`` returns it (protobuf JSON, field names)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def data_type_name(config_enum_value: int) -> str:
    """``ModelConfig`` data_type enum value -> ``TYPE_FP32``."""
    return model_config_pb2().DataType.Name(config_enum_value)


def data_type_value(name: str) -> int:
    return model_config_pb2().DataType.Value(name)
