"""Localisation: a model with one normalization damaged in the ONNX file is localised to exactly that
normalization, for fused ops (LayerNormalization, RMSNormalization), decomposed (hand-written) norms,
a norm nested in a wrapper, and repeated calls of one module (an unrolled LN-LSTM). Norms inside
Scan/Loop bodies: test_localise_scan.py."""

import onnx
import pytest

from models.catalog import BUNDLED, HANDWRITTEN


def _check_perturbed(tmp_path, loaded, path, perturb, target, **kw):
    from ln_deploy.check import check_model

    damaged = perturb(onnx.load(str(path)), target, **kw)
    out = tmp_path / "damaged.onnx"
    onnx.save(damaged, str(out))
    return check_model(loaded, out, invariance=False)


CASES = [
    # (spec, module path) — first, middle and last norms; fused and decomposed spellings
    (BUNDLED["pre_ln_encoder"], "blocks.1.norm1"),
    (BUNDLED["post_ln_encoder"], "blocks.0.norm1"),
    (HANDWRITTEN["pre_ln_encoder"], "final_norm"),
    (BUNDLED["rms_decoder_block"], "post_attention_norm"),
    (BUNDLED["convnext_block"], "stem_norm.norm"),  # nn.LayerNorm inside a LayerNorm2d wrapper
]


@pytest.mark.parametrize("spec,target", CASES)
@pytest.mark.parametrize("kind", ["epsilon", "scale"])
def test_perturbed_norm_is_localised(spec, target, kind, export_spec, tmp_path):
    from ln_deploy.check import perturb_epsilon, perturb_scale

    loaded, path = export_spec(spec)
    if kind == "epsilon":
        report = _check_perturbed(tmp_path, loaded, path, perturb_epsilon, target, epsilon=0.1)
    else:
        report = _check_perturbed(tmp_path, loaded, path, perturb_scale, target, factor=1.01)
    assert not report.passed
    fd = report.first_divergence
    assert fd is not None and fd["module_path"] == target and fd["call"] == 0, fd
    assert fd["stats"]["max_abs"] > 1e-3
    norms = report.localisation["onnxrt-cpu"]["norms"]
    first_bad = next(i for i, n in enumerate(norms) if not n["passed"])
    assert all(n["passed"] for n in norms[:first_bad])  # everything before it still matches


def test_unmodified_model_has_no_divergence(export_spec):
    from ln_deploy.check import check_model

    loaded, path = export_spec(BUNDLED["pre_ln_encoder"])
    report = check_model(loaded, path, invariance=False)
    assert report.first_divergence is None
    keys = [n["key"] for n in report.localisation["onnxrt-cpu"]["norms"]]
    assert keys == ["blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2", "final_norm"]


def test_repeated_calls_localised_by_call_index(export_spec, tmp_path):
    """An unrolled LN-LSTM calls each norm once per step; damaging step 3's norm_c is reported as call 3."""
    from ln_deploy.check import perturb_epsilon

    loaded, path = export_spec(BUNDLED["ln_lstm"], rnn_mode="unroll")
    report = _check_perturbed(tmp_path, loaded, path, perturb_epsilon, "cells.0.norm_c", epsilon=1.0, call=3)
    fd = report.first_divergence
    assert fd is not None and (fd["module_path"], fd["call"]) == ("cells.0.norm_c", 3), fd


def test_if_branch_norms_are_noted_not_localised():
    """Norms inside an If branch (not a loop) are noted; the top-level ones are still localised."""
    from onnx import TensorProto, helper

    from ln_deploy.check.localise import find_norm_calls

    def scoped(node, *scopes):
        node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=repr(["", *scopes, node.output[0]]))
        return node

    branch = helper.make_graph([scoped(helper.make_node("Neg", ["x"], ["y_then"]), "inner_norm")], "then", [],
                               [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [2])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["y_else"])], "else", [],
                              [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [scoped(helper.make_node("Relu", ["x0"], ["x"]), "top_norm"),
         helper.make_node("If", ["c"], ["y"], name="branch", then_branch=branch, else_branch=other)], "g",
        [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [2]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    calls, notes = find_norm_calls(helper.make_model(graph), ["top_norm", "inner_norm"], {"top_norm": 1, "inner_norm": 1})
    assert [(c.key, c.value) for c in calls] == [("top_norm", "x")]
    assert "If branch" in notes[0] and "not localised" in notes[0]


def test_perturb_helpers_refuse_unknown_module(export_spec):
    from ln_deploy.check import perturb_epsilon, perturb_scale
    from ln_deploy.errors import BadInputError

    _, path = export_spec(BUNDLED["pre_ln_encoder"])
    m = onnx.load(str(path))
    with pytest.raises(BadInputError, match="no normalization op"):
        perturb_epsilon(m, "blocks.9.norm1", 0.1)
    with pytest.raises(BadInputError):
        perturb_scale(m, "blocks.9.norm1", 2.0)


@pytest.mark.parametrize("name", ["pre_ln_encoder", "rms_decoder_block", "ln_gru"])
def test_fused_model_keeps_module_paths_and_is_localised(name, export_spec, tmp_path):
    """`ln-deploy fuse` carries each pattern's module path onto the fused op, so a fused hand-written
    model (decomposed norms → LayerNormalization / RMSNormalization, in a Scan body for ln_gru) is
    localised like the original, and damage to a fused op is pinned to its module."""
    from ln_deploy.check import check_model, perturb_epsilon
    from ln_deploy.fuse import fuse_model

    loaded, path = export_spec(HANDWRITTEN[name])
    fused, report = fuse_model(str(path), opset=23)
    assert sum(report.fused.values()) > 0
    fused_path = tmp_path / "fused.onnx"
    onnx.save(fused, str(fused_path))
    before = check_model(loaded, path, invariance=False).localisation["onnxrt-cpu"]["norms"]
    after = check_model(loaded, fused_path, invariance=False).localisation["onnxrt-cpu"]["norms"]
    assert [n["key"] for n in after] == [n["key"] for n in before] and after
    assert all(n["passed"] for n in after)
    assert all(len(n["onnx_ops"]) == 1 for n in after), [n["onnx_ops"] for n in after]  # one fused op each
    target = before[-1]["module_path"]
    damaged = check_model(loaded, _save(perturb_epsilon(fused, target, epsilon=0.1), tmp_path), invariance=False)
    assert damaged.first_divergence["module_path"] == target


def _save(model, tmp_path):
    out = tmp_path / "damaged.onnx"
    onnx.save(model, str(out))
    return out


def test_tensorrt_target_model_is_checked_through_its_reference(export_spec, tmp_path):
    """A `fuse --target tensorrt` model holds plugin nodes ORT cannot run: the check runs their
    standard-op reference, says so, localises every norm, and pins a plugin node's bad epsilon."""
    from ln_deploy.check import check_model, perturb_epsilon
    from ln_deploy.fuse import fuse_model

    loaded, path = export_spec(BUNDLED["pre_ln_encoder"])
    fused, _ = fuse_model(str(path), target="tensorrt")
    assert any(n.op_type == "LnDeploySkipNorm" for n in fused.graph.node)
    out = tmp_path / "trt.onnx"
    onnx.save(fused, str(out))
    report = check_model(loaded, out, invariance=False)
    assert report.passed and any("plugin node" in n for n in report.notes), report.notes
    assert [n["key"] for n in report.localisation["onnxrt-cpu"]["norms"]] == [
        "blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2", "final_norm"]
    damaged = check_model(loaded, _save(perturb_epsilon(fused, "blocks.1.norm1", epsilon=0.1), tmp_path),
                          invariance=False)
    assert not damaged.passed and damaged.first_divergence["module_path"] == "blocks.1.norm1"
