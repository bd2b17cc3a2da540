"""Issue 13: models written the way users write them export with the axes they really allow (no
--dynamic-axes given), and pass `check` at every shape the graph claims.

Each case: the dynamic axes torch.export keeps, and for the fixed candidates a word of the reason."""

from pathlib import Path

import pytest

from ln_deploy.check import check_model
from ln_deploy.export import export_model
from ln_deploy.spec import load_spec

MODELS = Path(__file__).with_name("user_models.py")

HF_DYNAMIC = {"args.0[0]", "args.0[1]", "args.1[0]", "args.1[1]"}

# name -> (dynamic axes "input[axis]", {fixed axis: a word of its reason}, ONNX input names)
CASES = {
    "mlp": ({"x[0]"}, {"x[1]": "requires size 12"}, ["x"]),
    "manual_ln_mlp": ({"x[0]"}, {"x[1]": "requires size 12"}, ["x"]),
    "gru_loop": ({"x[0]"}, {"x[1]": "requires size 10"}, ["x"]),
    "lstm_loop": ({"x[0]"}, {"x[1]": "requires size 10"}, ["x"]),
    "vit": ({"images[0]"}, {"images[2]": "height=32", "images[3]": "width=32"}, ["images"]),
    # refused at every size tried, so fixed before torch.export (whose reasoning about such axes took
    # minutes on torchvision's MaxViT)
    "fixed_grid": ({"images[0]"}, {"images[2]": "requires size 8 (PyTorch's forward() refuses 16, 11, 4",
                                   "images[3]": "requires size 8 (PyTorch's forward() refuses 16, 11, 4"}, ["images"]),
    "hf_llama": (HF_DYNAMIC, {}, ["args.0", "args.1"]),
    "hf_qwen2": (HF_DYNAMIC, {}, ["args.0", "args.1"]),
    "hf_mistral": (HF_DYNAMIC, {}, ["args.0", "args.1"]),
    "keyword_only": ({"x[0]", "x[1]"}, {"bias[0]": "requires size 16"}, ["x", "bias"]),
    "kwargs_only": ({"input_ids[0]", "input_ids[1]", "attention_mask[0]", "attention_mask[1]"}, {},
                    ["input_ids", "attention_mask"]),
    "returns_model_output": ({"x[0]", "x[1]"}, {}, ["x"]),
    "nested_tuple": ({f"{n}[{k}]" for n in ("pair.0", "pair.1.0", "pair.1.1") for k in (0, 1)}, {},
                     ["pair.0", "pair.1.0", "pair.1.1"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_exports_with_the_axes_the_model_allows_and_passes_check(tmp_path, name):
    dynamic, fixed, inputs = CASES[name]
    loaded = load_spec(f"{MODELS}:{name}")
    res = export_model(loaded, tmp_path / "m.onnx")
    assert res.exporter == "dynamo" and res.input_names == inputs
    got_dynamic = {f"{a['input']}[{a['axis']}]" for a in res.axes if a["dynamic"]}
    assert got_dynamic == dynamic, res.axes
    for axis, word in fixed.items():
        why = next(a["why"] for a in res.axes if f"{a['input']}[{a['axis']}]" == axis)
        assert word in why, (axis, why)
    # verified along every dynamic axis: 1, the example, 2x the example, a prime above it
    labels = {v["label"] for v in res.verified}
    assert labels == {res.dynamic_axes[n][k] for n in res.input_names for k in res.dynamic_axes[n]}
    assert all(not v["problem"] for v in res.verified) and 1 in {v["size"] for v in res.verified}

    report = check_model(loaded, res.path)
    assert report.passed, report.failures
    swept = [s for s in report.shapes if s["size"] is not None]
    assert {(s["label"], s["size"]) for s in swept} == {(v["label"], v["size"]) for v in res.verified}
    assert all(s["passed"] is not False for s in swept) and report.to_json()["verified_shapes"]
    assert report.localisation["onnxrt-cpu"]["norms"], "every one of these models has a normalization module"


def test_a_model_that_rewrites_its_attributes_in_forward_is_left_as_it_was(tmp_path):
    """ShrinkingWindow (as Hugging Face's Swin) shrinks its window for good on a small image: the
    probes of export and check run it at small sizes, and the model must compute afterwards what it
    computed before (it used to fail against its own corrupted reference)."""
    import torch

    loaded = load_spec(f"{MODELS}:shrinking_window")
    x = loaded.example_inputs[0]
    before = loaded.call(x)[0]
    loaded.call(torch.randn(2, 3, 2, 2))  # window -> 2 inside this call only
    assert loaded.module.window == 4 and torch.equal(loaded.call(x)[0], before)
    res = export_model(loaded, tmp_path / "m.onnx")
    assert loaded.module.window == 4 and torch.equal(loaded.call(x)[0], before)
    report = check_model(loaded, res.path)
    assert report.passed, report.failures
    assert loaded.module.window == 4


def test_model_output_fields_name_the_outputs(tmp_path):
    res = export_model(f"{MODELS}:returns_model_output", tmp_path / "m.onnx")
    assert res.output_names == ["last_hidden_state", "pooled"]  # the None field is not an output


def test_summary_says_which_axes_are_dynamic_and_why_the_others_are_fixed(tmp_path, capsys):
    from ln_deploy.cli import main

    rc = main(["-q", "export", f"{MODELS}:gru_loop", "-o", str(tmp_path / "m.onnx")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "axis x[0] (batch): dynamic" in out
    assert "axis x[1] (seq): fixed: the model requires size 10" in out and "user_models.py" in out
    assert "batch=1" in out and "batch=4" in out  # the shapes it verified


def test_a_requested_axis_the_model_contradicts_is_an_error_naming_it(tmp_path, capsys):
    """dynamo refuses it: one line naming the axis, dynamo's reason and the fix; nothing written."""
    from ln_deploy.cli import main

    out = tmp_path / "m.onnx"
    rc = main(["-q", "export", f"{MODELS}:mlp", "-o", str(out), "--dynamic-axes", "x:0=batch,1=features"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "x:1=features" in err and "axis 1 of 'x'" in err and "constant (12)" in err and "x:static" in err
    assert not out.exists()


def test_a_requested_axis_torch_export_accepts_but_the_graph_does_not_honour(tmp_path, capsys):
    """A ViT's H passes torch.export (only H*W is tied to the position table); the sweep refuses it."""
    from ln_deploy.cli import main

    out = tmp_path / "m.onnx"
    rc = main(["-q", "export", f"{MODELS}:vit", "-o", str(out), "--dynamic-axes", "images:0=batch,2=height"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert "images:2=height" in err and "height=32" in err and "nothing written" in err
    assert not out.exists()
