"""The built plugin loads the way IPluginRegistry::loadLibrary loads it, in a process without any
TensorRT library, and creates LnDeployNorm and LnDeploySkipNorm from the attributes `fuse --target
tensorrt` writes on real models (a pre-LN encoder, an RMSNorm decoder), with the fields TensorRT's
ONNX parser would pass (plugins/tests/pluginLoaderTest.cpp). Needs nvcc and TensorRT headers
(TENSORRT_INCLUDE_DIR or TensorRT_ROOT); skips with the reason otherwise."""

import os
import subprocess

import pytest

# the module fixture exports and fuses two models: ~30 s on 2 cores
pytestmark = pytest.mark.slow

# (spec, opset): opset 23 so the decoder's RMSNorm is fused (RMSNormalization exists from 23)
MODELS = {"encoder": ("models/transformer.py:pre_ln_encoder", None),
          "rms_decoder": ("models/llama.py:rms_decoder_block", 23)}


def _require_loader(native_build):
    if native_build.loader_test is None:
        hint = os.environ.get("TENSORRT_INCLUDE_DIR") or os.environ.get("TensorRT_ROOT")
        pytest.skip("TensorRT headers not found (set TENSORRT_INCLUDE_DIR or TensorRT_ROOT): plugin_loader_test "
                    "not built" + (f"; looked in {hint}" if hint else ""))
    if native_build.plugin is None:
        pytest.skip("nvcc not found: no plugin library to load")


@pytest.fixture(scope="module")
def fused_nodes(tmp_path_factory):
    """{model: plugin-node text} of each model exported and fused for the tensorrt target."""
    from ln_deploy import progress
    from ln_deploy.export import export_model
    from ln_deploy.spec import load_spec
    from models.catalog import spec_path

    progress.set_quiet(True)
    out = tmp_path_factory.mktemp("loader")
    for name, (spec, _) in MODELS.items():
        export_model(load_spec(spec_path(spec)), out / f"{name}.onnx")
    from ln_deploy.fuse import fuse_model
    from ln_deploy.plugin_spec import plugin_nodes_text

    texts = {}
    for name, (_, opset) in MODELS.items():
        fused, _ = fuse_model(out / f"{name}.onnx", "tensorrt", opset=opset)
        texts[name] = plugin_nodes_text(fused)
    return texts


def _run(native_build, nodes_file):
    proc = subprocess.run([str(native_build.loader_test), str(native_build.plugin), str(nodes_file)],
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    return proc, proc.stdout.strip().splitlines()


def test_plugin_loads_and_creates_every_fused_node(native_build, fused_nodes, tmp_path):
    _require_loader(native_build)
    kinds = {name: {line.split()[-1] for line in text.splitlines() if line.startswith("attr kind ")}
             for name, text in fused_nodes.items()}
    assert kinds == {"encoder": {"0"}, "rms_decoder": {"1"}}  # LayerNorm nodes, RMSNorm nodes
    for name, text in fused_nodes.items():
        ops = {line.split()[1] for line in text.splitlines() if line.startswith("node ")}
        assert ops == {"LnDeployNorm", "LnDeploySkipNorm"}, (name, ops)
    nodes = tmp_path / "nodes.txt"
    nodes.write_text("".join(fused_nodes.values()))
    proc, lines = _run(native_build, nodes)
    print(proc.stdout)
    assert proc.returncode == 0 and lines[-1].startswith("PASSED"), proc.stdout + proc.stderr
    n_nodes = sum(text.count("\nnode ") + text.startswith("node ") for text in fused_nodes.values())
    assert sum(line.startswith("ok ") for line in lines) == n_nodes


def test_loader_test_fails_on_fields_the_plugin_would_refuse(native_build, fused_nodes, tmp_path):
    # the same nodes with epsilon written as an INT attribute (kINT32 field): createPlugin must refuse
    _require_loader(native_build)
    text = fused_nodes["encoder"]
    bad = "\n".join("attr epsilon INT 0" if line.startswith("attr epsilon ") else line for line in text.splitlines())
    nodes = tmp_path / "bad.txt"
    nodes.write_text(bad + "\n")
    proc, lines = _run(native_build, nodes)
    assert proc.returncode == 1 and lines[-1].startswith("FAILED"), proc.stdout
    assert any("createPlugin(kBUILD)" in line and "epsilon" in line for line in lines), proc.stdout
