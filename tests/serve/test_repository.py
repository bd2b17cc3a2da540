"""`ln-deploy package`: Triton repositories for every bundled model, read back and checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from ln_deploy.cli import main
from ln_deploy.errors import BadInputError, CheckFailedError
from ln_deploy.serve.model_config import model_config_pb2, parse_config_text
from ln_deploy.serve.repository import ARGS_FILE, package_model, read_model_config, validate_model_dir


def _onnx_dims(value_info):
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def test_every_bundled_model_packages_and_reads_back(exported_bundled, bundled_repo):
    pb = model_config_pb2()
    for name, (_, result) in exported_bundled.items():
        cfg_path = bundled_repo / name / "config.pbtxt"
        config = parse_config_text(cfg_path.read_text())  # plain protobuf text format, Triton's schema
        assert config.name == name
        assert config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 8  # every bundled export has a dynamic batch axis
        assert config.HasField("dynamic_batching")
        assert config.instance_group[0].count == 1
        copy = onnx.load(str(bundled_repo / name / "1" / "model.onnx"))
        source = onnx.load(str(result.path))
        # Independent of the writer: compare with the exported file, read here with onnx.
        assert [i.name for i in config.input] == result.input_names
        assert [o.name for o in config.output] == result.output_names
        for declared, vi in zip(config.input, source.graph.input):
            assert pb.DataType.Name(declared.data_type) == "TYPE_FP32"
            assert _onnx_dims(vi)[0] == -1
            assert list(declared.dims) == _onnx_dims(vi)[1:], name
        for declared, vi in zip(config.output, source.graph.output):
            assert list(declared.dims) == _onnx_dims(vi)[1:], name
        assert copy.graph == source.graph  # the same model, not a re-export
        validate_model_dir(bundled_repo / name)
    assert not any(p.name.startswith(".") for p in bundled_repo.iterdir())  # no temp folders left
    assert not (bundled_repo / ARGS_FILE).exists()  # ONNX models need no server flags


def test_dims_follow_the_model_not_a_template(bundled_repo):
    convnext = read_model_config(bundled_repo / "convnext_block" / "config.pbtxt")
    assert list(convnext.input[0].dims) == [3, -1, -1]  # channels fixed, height/width dynamic
    assert list(convnext.output[0].dims) == [32, -1, -1]
    masked = read_model_config(bundled_repo / "masked_encoder" / "config.pbtxt")
    assert [(i.name, list(i.dims)) for i in masked.input] == [("x", [-1, 64]), ("mask", [-1])]
    lstm = read_model_config(bundled_repo / "ln_lstm" / "config.pbtxt")
    assert list(lstm.input[0].dims) == [-1, 16] and list(lstm.output[0].dims) == [-1, 32]


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("dims: 64", "dims: 63", 1), "config dims [-1, 63], model dims [-1, 64]"),
    (lambda t: t.replace("TYPE_FP32", "TYPE_FP16", 1), "config type TYPE_FP16, model type TYPE_FP32"),
    (lambda t: t.replace('name: "x"', 'name: "input"', 1), "is not a input of"),
    (lambda t: t.replace('name: "pre_ln_encoder"', 'name: "other"'), "differs from the model folder"),
    (lambda t: t + "\nbogus_field: 1\n", "not a valid Triton model config"),
])
def test_validation_rejects_a_config_that_disagrees_with_the_model(bundled_repo, tmp_path, edit, message):
    model_dir = tmp_path / "pre_ln_encoder"
    shutil.copytree(bundled_repo / "pre_ln_encoder", model_dir)
    cfg = model_dir / "config.pbtxt"
    cfg.write_text(edit(cfg.read_text()))
    with pytest.raises(CheckFailedError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_model_dir(model_dir)


def test_batch_axis_rules(tmp_path):
    import torch

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(4)

        def forward(self, x):
            return self.norm(x)

    path = tmp_path / "fixed.onnx"
    torch.onnx.export(Fixed().eval(), (torch.randn(2, 4),), str(path), input_names=["x"], output_names=["y"],
                      dynamo=False)
    repo = tmp_path / "repo"
    result = package_model(path, repo, "fixed")  # first axis fixed at 2: no batching by default
    assert result.config.max_batch_size == 0
    assert not result.config.HasField("dynamic_batching")
    assert list(result.config.input[0].dims) == [2, 4]  # nothing dropped
    with pytest.raises(BadInputError, match="first axis is fixed at 2"):
        package_model(path, repo, "fixed4", max_batch_size=4)
    assert not (repo / "fixed4").exists()


def test_existing_model_needs_force_and_failures_leave_nothing(exported_bundled, tmp_path, capsys):
    src = exported_bundled["ln_gru"][1].path
    repo = tmp_path / "repo"
    assert main(["-q", "package", str(src), "--repo", str(repo), "--name", "gru"]) == 0
    assert "wrote" in capsys.readouterr().out
    before = (repo / "gru" / "config.pbtxt").read_text()
    assert main(["-q", "package", str(src), "--repo", str(repo), "--name", "gru"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["-q", "package", str(src), "--repo", str(repo), "--name", "gru", "--max-batch-size", "4",
                 "--force"]) == 0
    after = read_model_config(repo / "gru" / "config.pbtxt")
    assert after.max_batch_size == 4 and before != (repo / "gru" / "config.pbtxt").read_text()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    assert main(["-q", "package", str(bad), "--repo", str(repo), "--name", "bad"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.onnx" in err[0]
    assert sorted(p.name for p in repo.iterdir()) == ["gru"]  # no partial folder, no temp folder
    for bad_name in ("../x", ".hidden", "123", "a b"):
        assert main(["-q", "package", str(src), "--repo", str(repo), "--name", bad_name]) == 2
    assert sorted(p.name for p in repo.iterdir()) == ["gru"]


def test_external_data_is_copied_safely(exported_bundled, tmp_path):
    model = onnx.load(str(exported_bundled["pre_ln_encoder_block"][1].path))
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    onnx.save_model(model, str(src_dir / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    repo = tmp_path / "repo"
    package_model(src_dir / "m.onnx", repo, "ext")
    copy = repo / "ext" / "1" / "model.onnx"
    assert onnx.load(str(copy)).graph.initializer  # loads, with its weights
    validate_model_dir(repo / "ext")
    # External data pointing outside the model's folder is refused, and nothing is written.
    evil = onnx.load(str(src_dir / "m.onnx"), load_external_data=False)
    for t in evil.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../outside.bin"
    onnx.save_model(evil, str(src_dir / "evil.onnx"))
    with pytest.raises(BadInputError, match="outside the model's folder"):
        package_model(src_dir / "evil.onnx", repo, "evil")
    assert not (repo / "evil").exists()


def _engine_with_sidecar(tmp_path: Path, profiles_max: int = 16) -> Path:
    engine = tmp_path / "enc.plan"
    engine.write_bytes(b"not a real engine: TensorRT is absent here, only the sidecar is read")
    engine.with_name("enc.plan.json").write_text(json.dumps({
        "inputs": [{"name": "x", "dtype": "float16", "shape": [-1, -1, 64]}],
        "outputs": [{"name": "output", "dtype": "DataType.HALF", "shape": [-1, -1, 64]}],
        "profiles": [{"x": {"min": [1, 1, 64], "opt": [8, 64, 64], "max": [profiles_max, 512, 64]}}],
    }))
    return engine


def _a_shared_library() -> Path:
    import onnxruntime

    libs = sorted(Path(onnxruntime.__file__).parent.glob("capi/*.so"))
    assert libs, "onnxruntime ships shared libraries"
    return libs[0]


def test_engine_with_plugin(tmp_path, capsys):
    engine = _engine_with_sidecar(tmp_path)
    plugin = tmp_path / "libln_deploy_plugins.so"
    shutil.copyfile(_a_shared_library(), plugin)  # any ELF library stands in for the plugin here
    repo = tmp_path / "repo"
    assert main(["-q", "package", str(engine), "--repo", str(repo), "--name", "enc", "--plugin", str(plugin),
                 "--instances", "2"]) == 0
    out = capsys.readouterr().out
    flag = "--backend-config=tensorrt,plugins=/models/enc/1/libln_deploy_plugins.so"
    assert flag in out and "LD_PRELOAD=/models/enc/1/libln_deploy_plugins.so" in out
    assert (repo / ARGS_FILE).read_text() == flag + "\n"
    config = read_model_config(repo / "enc" / "config.pbtxt")
    pb = model_config_pb2()
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert config.max_batch_size == 8  # min(8, the profile's max batch 16)
    assert pb.DataType.Name(config.input[0].data_type) == "TYPE_FP16"
    assert list(config.input[0].dims) == [-1, 64]
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert (repo / "enc" / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert (repo / "enc" / "1" / "libln_deploy_plugins.so").read_bytes() == plugin.read_bytes()
    manifest = json.loads((repo / "enc" / "1" / "ln_deploy_plugins.json").read_text())
    assert manifest == {"plugins": ["libln_deploy_plugins.so"], "dependencies": []}
    # A second engine with the same plugin: the library is listed once (registering twice fails).
    assert main(["-q", "package", str(engine), "--repo", str(repo), "--name", "enc2", "--plugin", str(plugin)]) == 0
    assert (repo / ARGS_FILE).read_text() == flag + "\n"


def test_engine_errors(tmp_path, capsys, exported_bundled):
    repo = tmp_path / "repo"
    engine = _engine_with_sidecar(tmp_path, profiles_max=4)
    assert package_model(engine, repo, "small").config.max_batch_size == 4  # capped by the profile
    with pytest.raises(BadInputError, match="exceeds the engine's optimization profiles"):
        package_model(engine, repo, "big", max_batch_size=8)
    with pytest.raises(BadInputError, match="runs on a GPU"):
        package_model(engine, repo, "cpu", kind="cpu")
    not_elf = tmp_path / "plugin.so"
    not_elf.write_text("text")
    with pytest.raises(BadInputError, match="not a shared library"):
        package_model(engine, repo, "p", plugin=not_elf)
    with pytest.raises(BadInputError, match="ONNX Runtime does not load TensorRT plugins"):
        package_model(exported_bundled["ln_gru"][1].path, repo, "g", plugin=_a_shared_library())
    lonely = tmp_path / "lonely.plan"
    lonely.write_bytes(b"x")
    assert main(["-q", "package", str(lonely), "--repo", str(repo), "--name", "lonely"]) == 2
    assert "sidecar" in capsys.readouterr().err
    assert sorted(p.name for p in repo.iterdir()) == ["small"]


def test_model_config_types_round_trip():
    from ln_deploy.signature import DATATYPES, normalize_datatype, numpy_dtype

    pb = model_config_pb2()
    for kserve, (triton, _, np_name) in DATATYPES.items():
        pb.DataType.Value(triton)  # every spelling exists in Triton's own enum
        assert normalize_datatype(triton) == kserve
        if np_name:
            assert numpy_dtype(kserve) == np.dtype(np_name)


def test_plugin_dependencies_beside_it_are_copied(tmp_path):
    """ln_deploy's plugin is one self-contained library (kernels linked in, issue 17): it travels alone."""
    from ln_deploy.serve.repository import elf_needed

    lib = _a_shared_library()
    needed = elf_needed(lib)
    assert "libc.so.6" in needed  # the ELF reader sees the dynamic section
    src = tmp_path / "build"
    src.mkdir()
    shutil.copyfile(lib, src / "libplugin.so")
    shutil.copyfile(lib, src / needed[0])  # a stand-in for a dependency built beside the plugin
    repo = tmp_path / "repo"
    result = package_model(_engine_with_sidecar(tmp_path), repo, "enc", plugin=src / "libplugin.so")
    vdir = repo / "enc" / "1"
    assert (vdir / needed[0]).is_file()
    assert json.loads((vdir / "ln_deploy_plugins.json").read_text()) == {"plugins": ["libplugin.so"],
                                                                      "dependencies": [needed[0]]}
    assert result.server_args == ["--backend-config=tensorrt,plugins=/models/enc/1/libplugin.so"]
    (vdir / needed[0]).unlink()
    with pytest.raises(CheckFailedError, match="missing or not a shared library"):
        validate_model_dir(repo / "enc")


def test_real_plugin_build_when_present(tmp_path):
    root = Path(__file__).resolve().parents[2]
    plugin = root / "plugins" / "build" / "libln_deploy_trt_plugin.so"
    if not plugin.is_file():
        pytest.skip("plugins/build/libln_deploy_trt_plugin.so not built (scripts/build_plugins.sh needs nvcc)")
    repo = tmp_path / "repo"
    package_model(_engine_with_sidecar(tmp_path), repo, "enc", plugin=plugin)
    manifest = json.loads((repo / "enc" / "1" / "ln_deploy_plugins.json").read_text())
    assert manifest["plugins"] == ["libln_deploy_trt_plugin.so"]
    assert "libln_kernels.so" not in manifest["dependencies"]
