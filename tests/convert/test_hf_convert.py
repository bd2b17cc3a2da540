"""Public architectures (BERT, GPT-2, LLaMA, T5 encoder; tiny configs, random weights, no download)
through export → fuse → convert → check, in fp16 and bf16, for both conversion targets.

LLaMA's fused graph (RMSNormalization, opset 23) is where the conversion once wrote an ill-typed graph
(RMSNormalization's X in fp16, its scale in fp32; see test_typing.py). Every combination must convert
to a graph that passes validation, and every one must pass `ln-deploy check`'s fp16/bf16 profile
against the fp32 PyTorch model, measured the way a strongly typed engine computes it (check's strict
CPU reference rounds every op to its declared type): the ``tensorrt``-target bf16 graph too, which
ORT's CPU provider alone cannot run (no bf16 Add/Mul/MatMul kernel).
"""

import os
from pathlib import Path

import onnx
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
pytestmark = pytest.mark.hf

SPEC_FILE = Path(__file__).resolve().parents[1] / "hf_specs.py"  # shared with the other hf tests

# name -> what fuse(target=onnx, opset 23) fuses: BERT/GPT-2 export LayerNormalization already (nothing
# to fuse, the "fused" form is the exported one); LLaMA/T5 hand-write RMSNorm (5 each).
MODELS = {"bert": 0, "gpt2": 0, "llama": 5, "t5": 5}


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    pytest.importorskip("transformers")
    return SPEC_FILE


@pytest.mark.parametrize("name", sorted(MODELS))
def test_public_architecture_converts_and_checks(name, spec_file, tmp_path):
    from ln_deploy.check import check_model
    from ln_deploy.pipeline_steps import convert_model
    from ln_deploy.export import export_model
    from ln_deploy.fuse import fuse_model
    from ln_deploy.spec import load_spec

    loaded = load_spec(f"{spec_file}:{name}")
    exported = onnx.load(export_model(loaded, tmp_path / f"{name}.onnx").path)
    forms = {"unfused": exported}
    fused, frep = fuse_model(exported, target="onnx", opset=23)
    assert frep.total_fused == MODELS[name], frep.summary()
    if MODELS[name]:
        forms["fused"] = fused
    forms["fused-trt"], _ = fuse_model(exported, target="tensorrt")

    results = {}
    for form, model in forms.items():
        for precision in ("fp16", "bf16"):
            for target in ("ort-cpu", "tensorrt"):
                key = f"{form}/{precision}/{target}"
                converted, report = convert_model(model, precision, target=target, spec=f"{spec_file}:{name}")
                path = tmp_path / f"{form}.{precision}.{target}.onnx"
                onnx.save(converted, path)
                # every form, the pure bf16 tensorrt one included (no bf16 kernels on ORT CPU), is
                # checked through the strict emulation: every op rounded to its declared type
                result = check_model(loaded, path, plots=False, invariance=False)
                assert result.precision == precision, key
                stats = result.comparisons[0]["outputs"]["output"]["stats"]
                results[key] = (result.passed, stats["max_abs"])
                assert result.passed, (key, result.failures, report.summary())
    print(name, results)
