"""Deprecated path: the ONNX graph helpers live in ``ln_deploy.onnx_graph`` (shared by every stage)."""

from ..onnx_graph import *  # noqa: F401,F403
from ..onnx_graph import (BFLOAT16, DOUBLE, FLOAT, FLOAT16, TYPE_NAMES, all_nodes, constant_value,  # noqa: F401
                          consumers, ensure_node_names, get_attr, infer_types, module_path, opset_version,
                          outer_references, producers, subgraphs)
