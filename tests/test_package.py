"""Package-wide contracts: lazy heavy imports, the CLI's commands, untrusted ONNX files."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ln_deploy.errors import BadInputError
from ln_deploy.fileio import atomic_output, load_onnx, save_onnx_atomic

HEAVY = ("torch", "onnxruntime", "tensorrt", "polygraphy", "onnxscript", "matplotlib", "fastapi")


def test_importing_the_package_and_building_the_cli_imports_nothing_heavy():
    code = ("import sys, ln_deploy, ln_deploy.cli as c; c.build_parser(); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]", p.stdout


def test_every_pipeline_command_is_registered():
    from ln_deploy.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)


def _tiny_model():
    w = numpy_helper.from_array(np.ones((4,), np.float32), "w")
    g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_load_onnx_round_trip(tmp_path):
    path = save_onnx_atomic(_tiny_model(), tmp_path / "m.onnx")
    assert load_onnx(path).graph.node[0].op_type == "Mul"


@pytest.mark.parametrize("content, message", [
    (b"definitely not protobuf \xff\xfe", "not"),
    (b"", "not an ONNX model"),
])
def test_load_onnx_refuses_garbage(tmp_path, content, message):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(BadInputError, match=message):
        load_onnx(p)


def test_load_onnx_refuses_truncated_files(tmp_path):
    data = _tiny_model().SerializeToString()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError):
        load_onnx(p)


def test_load_onnx_refuses_a_model_the_checker_rejects(tmp_path):
    m = _tiny_model()
    m.graph.node[0].input[1] = "undefined_tensor"
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p))
    with pytest.raises(BadInputError, match="checker"):
        load_onnx(p)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    m = _tiny_model()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(np.ones(4, np.float32).tobytes())
    onnx.save(m, str(folder / "m.onnx"))
    with pytest.raises(BadInputError, match="outside the model's folder|absolute"):
        load_onnx(folder / "m.onnx")


def test_external_data_inside_the_folder_loads(tmp_path):
    path = save_onnx_atomic(_tiny_model(), tmp_path / "m.onnx", external_data=True)
    assert (tmp_path / "m.onnx.data").exists() or load_onnx(path)  # small tensors may stay inline
    assert numpy_helper.to_array(load_onnx(path).graph.initializer[0]).tolist() == [1, 1, 1, 1]


def test_atomic_output_leaves_nothing_after_a_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_test_module_basenames_are_unique():
    """tests/ has no __init__.py files: pytest's default import mode imports each test file by its
    basename, so two files with one name break collection on a clean clone."""
    import collections
    from pathlib import Path

    names = collections.Counter(p.name for p in Path(__file__).parent.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1], names
