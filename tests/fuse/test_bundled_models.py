"""The bundled reference models: each hand-written twin, exported, fuses to as many normalization
ops as its nn.LayerNorm / nn.RMSNorm version, and the fused model matches PyTorch (fp32, 1e-5)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from _helpers import fuse_checked
from models.catalog import BUNDLED, HANDWRITTEN, spec_path

NORM_OPS = ("LayerNormalization", "RMSNormalization")


def _count(graph, op_types) -> int:
    n = 0
    for node in graph.node:
        n += node.op_type in op_types
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                n += _count(a.g, op_types)
    return n


@pytest.mark.slow  # exports every bundled model twice (~2 min alone; the module exports are shared with tests/export)
@pytest.mark.parametrize("name", sorted(HANDWRITTEN))
def test_handwritten_twin_fuses_like_module_version(name, tmp_path, exported_bundled):
    from ln_deploy.export import export_model
    from ln_deploy.spec import load_spec

    opset = 23 if "rms" in name else None  # nn.RMSNorm exports as one op only at opset 23
    # the module versions are exported once per session (tests/conftest.py), at the default opset
    twin_path = exported_bundled[name][1].path
    if opset:
        twin_path = export_model(spec_path(BUNDLED[name]), tmp_path / "twin.onnx", opset=opset, verify=False).path
    loaded = load_spec(spec_path(HANDWRITTEN[name]))
    hand = export_model(loaded, tmp_path / "hand.onnx", verify=False)  # default opset (20)
    hand_model = onnx.load(hand.path)
    want = _count(onnx.load(twin_path).graph, NORM_OPS)
    assert want > 0

    fused, report = fuse_checked(hand_model, opset=opset)
    assert _count(fused.graph, NORM_OPS) == want
    assert report.total_fused == want - _count(hand_model.graph, NORM_OPS)

    plug, _ = fuse_checked(hand_model, "tensorrt")
    assert _count(plug.graph, ("LnDeployNorm", "LnDeploySkipNorm")) == want

    sess = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), loaded.example_inputs)}
    got = sess.run(None, feeds)
    with torch.no_grad():
        ref = loaded.module(*loaded.example_inputs)
    ref = [ref] if isinstance(ref, torch.Tensor) else [t for t in torch.utils._pytree.tree_leaves(ref)]
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r.numpy(), atol=1e-5, rtol=0)
