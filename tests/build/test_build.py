"""Engine build: everything decided before TensorRT (profiles, shape specs, plugin checks, sidecar,
precision plan) is tested here; the TensorRT builds are marked and skip without TensorRT and a GPU."""

import importlib.util
import json
from pathlib import Path
import subprocess
import sys

import onnx
import pytest

from ln_deploy.build.engine import check_plugin_library, graph_precision, plan_build
from ln_deploy.build.profiles import DEFAULT_RANGES, derive_profile, parse_shape_specs
from ln_deploy.errors import BadInputError
from models.catalog import BUNDLED


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ln_deploy", "-q", *args], capture_output=True, text=True, timeout=300)


def test_default_profile_from_dynamic_axes(exported_bundled):
    _, exported = exported_bundled["masked_encoder"]
    prof = derive_profile(onnx.load(exported.path)).shapes
    b, s = DEFAULT_RANGES["batch"], DEFAULT_RANGES["seq"]
    assert prof["x"] == ((b[0], s[0], 64), (b[1], s[1], 64), (b[2], s[2], 64))
    assert prof["mask"] == ((b[0], s[0]), (b[1], s[1]), (b[2], s[2]))


def test_override_propagates_to_inputs_sharing_a_dim(exported_bundled):
    _, exported = exported_bundled["masked_encoder"]
    over = parse_shape_specs(["x:1x4x64/2x16x64/4x64x64"])
    prof = derive_profile(onnx.load(exported.path), over).shapes
    assert prof["mask"] == ((1, 4), (2, 16), (4, 64))  # batch and seq follow x's


def test_static_dims_and_single_shape(exported_bundled):
    _, exported = exported_bundled["convnext_block"]  # x: [batch, 3, height, width]
    prof = derive_profile(onnx.load(exported.path), parse_shape_specs(["x:2x3x32x32"])).shapes
    assert prof["x"] == ((2, 3, 32, 32),) * 3


@pytest.mark.parametrize("spec, message", [
    (["y:1x8x64/2x8x64/4x8x64"], "not an input of the model"),
    (["x:1x8/2x8/4x8"], "rank 2"),
    (["x:1x8x32/2x8x32/4x8x32"], "axis 2 is static (64)"),
    (["x:4x8x64/2x8x64/1x8x64"], "min <= opt <= max"),
    (["x:1x8x64/2x8x64"], "three shapes"),
    (["x:1xAx64"], "not a shape"),
    (["x:0x8x64"], "must be positive"),
    (["1x8x64"], "NAME:MIN/OPT/MAX"),
])
def test_bad_shape_specs(exported_bundled, spec, message):
    _, exported = exported_bundled["pre_ln_encoder"]
    with pytest.raises(BadInputError, match=None) as e:
        derive_profile(onnx.load(exported.path), parse_shape_specs(spec))
    assert message in str(e.value)


def test_conflicting_shared_dim(exported_bundled):
    _, exported = exported_bundled["masked_encoder"]
    with pytest.raises(BadInputError, match="shared by several inputs"):
        derive_profile(onnx.load(exported.path), parse_shape_specs(["x:1x4x64/2x16x64/4x64x64", "mask:1x4/2x8/4x64"]))


def test_plugin_library_checks(shared_libs, tmp_path):
    lib = check_plugin_library(shared_libs["plugin"])
    assert lib.creators_symbol == "getCreators" and len(lib.sha256) == 64
    with pytest.raises(BadInputError, match="neither getCreators nor getPluginCreators"):
        check_plugin_library(shared_libs["other"])
    with pytest.raises(BadInputError, match="not found"):
        check_plugin_library(tmp_path / "absent.so")
    bad = tmp_path / "text.so"
    bad.write_text("not a library")
    with pytest.raises(BadInputError, match="does not load"):
        check_plugin_library(bad)


def test_tensorrt_fused_model_is_valid_onnx_and_needs_the_plugin(exported_bundled, shared_libs, tmp_path,
                                                                  monkeypatch):
    """`fuse --target tensorrt` output passes the ONNX checker (plugin ops in the trt.plugins domain)
    and the build refuses it without the plugin library, naming the plugin ops; with none passed it
    uses the one ln_deploy.kernels.plugin_library() finds."""
    monkeypatch.setenv("LN_DEPLOY_PLUGIN_LIB", str(tmp_path / "no-plugin.so"))  # none built or installed
    from ln_deploy import plugin_spec
    from ln_deploy.fuse import fuse_model

    _, exported = exported_bundled["pre_ln_encoder"]
    fused, _ = fuse_model(exported.path, target="tensorrt")
    path = tmp_path / "trt.onnx"
    onnx.save(fused, path)
    onnx.checker.check_model(onnx.load(path))
    ops = {(n.domain, n.op_type) for n in fused.graph.node if n.op_type.startswith("LnDeploy")}
    assert ops == {(plugin_spec.DOMAIN, "LnDeployNorm"), (plugin_spec.DOMAIN, "LnDeploySkipNorm")}
    with pytest.raises(BadInputError, match="LnDeployNorm, LnDeploySkipNorm.*--plugin"):
        plan_build(path, tmp_path / "e.plan")
    plan = plan_build(path, tmp_path / "e.plan", plugins=[shared_libs["plugin"]])
    assert plan.inputs[0]["name"] == "x"
    r = _cli("build", str(path), "-o", str(tmp_path / "e.plan"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--plugin" in r.stderr
    monkeypatch.setenv("LN_DEPLOY_PLUGIN_LIB", str(shared_libs["plugin"]))
    assert plan_build(path, tmp_path / "e.plan").plugins[0].path == str(shared_libs["plugin"].resolve())


def test_plan_and_sidecar(exported_bundled, shared_libs, tmp_path):
    _, exported = exported_bundled["pre_ln_encoder"]
    plan = plan_build(exported.path, tmp_path / "e.plan", plugins=[shared_libs["plugin"]], precision="fp16",
                      timing_cache=tmp_path / "cache.bin")
    assert plan.graph_precision == "fp32" and plan.convert_first and plan.typing == "strong"
    side = plan.sidecar("10.9.0", "NVIDIA H200", str(exported.path))
    assert side["precision"] == "fp16" and side["tensorrt_version"] == "10.9.0" and side["gpu"] == "NVIDIA H200"
    assert side["plugins"][0]["sha256"] == check_plugin_library(shared_libs["plugin"]).sha256
    assert side["profiles"][0]["x"]["opt"] == [DEFAULT_RANGES["batch"][1], DEFAULT_RANGES["seq"][1], 64]
    assert len(side["onnx"]["sha256"]) == 64
    json.dumps(side)


def test_sidecar_is_what_package_reads(exported_bundled, shared_libs, tmp_path):
    """The engine sidecar `build` writes is enough for `package` to write a Triton repository
    (TensorRT is absent, so the engine bytes are a placeholder; only the sidecar is read)."""
    from ln_deploy.serve.repository import package_model
    from ln_deploy.signature import engine_signature

    _, exported = exported_bundled["pre_ln_encoder"]
    engine = tmp_path / "e.plan"
    plan = plan_build(exported.path, engine, plugins=[shared_libs["plugin"]], precision="fp16")
    engine.write_bytes(b"placeholder")
    (tmp_path / "e.plan.json").write_text(json.dumps(plan.sidecar("11.0.0", "NVIDIA H200", str(exported.path))))
    info = engine_signature(engine)
    assert [t.name for t in info.signature.inputs] == ["x"]
    assert info.signature.inputs[0].datatype == "FP32" and info.signature.inputs[0].shape == (-1, -1, 64)
    assert info.max_batch_from_profiles == DEFAULT_RANGES["batch"][2]
    assert info.plugins == (Path(shared_libs["plugin"]).name,)
    result = package_model(engine, tmp_path / "repo", "enc", plugin=shared_libs["plugin"])
    config = (tmp_path / "repo" / "enc" / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in config and "TYPE_FP32" in config
    assert result is not None


def test_precision_of_converted_graph(exported_bundled, tmp_path):
    from ln_deploy.pipeline_steps import convert_model

    _, exported = exported_bundled["pre_ln_encoder_block"]
    assert graph_precision(onnx.load(exported.path)) == "fp32"
    m, _ = convert_model(exported.path, "bf16", target="tensorrt", measure=False)
    onnx.save(m, tmp_path / "b.onnx")
    assert graph_precision(m) == "bf16"
    plan = plan_build(tmp_path / "b.onnx", tmp_path / "e.plan")
    assert plan.precision == "bf16" and not plan.convert_first
    with pytest.raises(BadInputError, match="already a bf16 graph"):
        plan_build(tmp_path / "b.onnx", tmp_path / "e.plan", precision="fp16")


HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.parametrize("args, message", [
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--shapes", "x:1x8/2x8/4x8"], "rank 2"),
    (["--shapes", "y:1x8x64/2x8x64/4x8x64"], "not an input of the model"),
    (["--plugin", "/nonexistent/libln_deploy_plugins.so"], "plugin library not found"),
])
def test_cli_bad_input_exit_2(exported_bundled, tmp_path, args, message):
    _, exported = exported_bundled["pre_ln_encoder"]
    r = _cli("build", str(exported.path), "-o", str(tmp_path / "e.plan"), *args)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "e.plan").exists()


def test_cli_plugin_that_does_not_load(exported_bundled, shared_libs, tmp_path):
    _, exported = exported_bundled["pre_ln_encoder"]
    bad = tmp_path / "broken.so"
    bad.write_bytes(b"\x7fELF garbage")
    for lib, message in ((bad, "does not load"), (shared_libs["other"], "not a TensorRT plugin library")):
        r = _cli("build", str(exported.path), "-o", str(tmp_path / "e.plan"), "--plugin", str(lib))
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed: the missing-TensorRT path cannot be seen")
def test_cli_without_tensorrt_one_line_exit_2(exported_bundled, tmp_path):
    _, exported = exported_bundled["pre_ln_encoder"]
    r = _cli("build", str(exported.path), "-o", str(tmp_path / "e.plan"))
    assert r.returncode == 2 and "TensorRT is not available" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "e.plan").exists() and not (tmp_path / "e.plan.json").exists()


def test_cli_dry_run(exported_bundled, tmp_path):
    _, exported = exported_bundled["masked_encoder"]
    r = _cli("build", str(exported.path), "-o", str(tmp_path / "e.plan"), "--dry-run", "--precision", "fp16")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["convert_first"] and set(plan["profiles"][0]) == {"x", "mask"}


# ----------------------------------------------------------------------------- with TensorRT and a GPU

def _gpu_and_trt():
    if not HAVE_TRT:
        return "TensorRT is not installed (PyPI's tensorrt wheels are download stubs here)"
    try:
        import tensorrt as trt

        if trt.Builder(trt.Logger(trt.Logger.ERROR)) is None:
            return "TensorRT cannot create a builder (no GPU)"
    except Exception as e:  # noqa: BLE001 - any failure means no usable builder
        return f"TensorRT cannot create a builder: {e}"
    return None


_REASON = _gpu_and_trt()


def _plugin_library():
    """$LN_DEPLOY_PLUGIN, else plugins/ CMake's output (target ln_deploy_trt_plugin)."""
    import os
    from pathlib import Path

    for p in (os.environ.get("LN_DEPLOY_PLUGIN"), "plugins/build/libln_deploy_trt_plugin.so"):
        if p and Path(p).exists():
            return Path(p)
    return None


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(_REASON is not None, reason=_REASON or "")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("with_plugin", [False, True], ids=["onnx-ops", "plugin"])
@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_tensorrt_build_and_parity(name, precision, with_plugin, exported_bundled, tmp_path):
    """Build each bundled model with and without ln_deploy's plugin, fp32 and fp16, and check parity."""
    from ln_deploy.pipeline_steps import build_engine
    from ln_deploy.check import check_model

    loaded, exported = exported_bundled[name]
    src = exported.path
    plugins = []
    if with_plugin:
        lib = _plugin_library()
        if lib is None:
            pytest.skip("plugin library not built (cmake -S plugins -B plugins/build)")
        from ln_deploy.fuse import fuse_model

        fused, _ = fuse_model(src, target="tensorrt")
        src = tmp_path / "fused.onnx"
        onnx.save(fused, src)
        plugins = [lib]
    engine = tmp_path / "e.plan"
    side = build_engine(src, engine, plugins=plugins, precision=precision, timing_cache=tmp_path / "tc.bin")
    assert engine.exists() and json.loads((tmp_path / "e.plan.json").read_text())["precision"] == side["precision"]
    report = check_model(loaded, src, engine=engine, plugins=plugins, precision=precision, plots=False)
    assert report.passed, report.failures
