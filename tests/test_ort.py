"""ln_deploy.ort: the one session factory, the child-process crash probe, the ORT error parser.

The 3-node graph is ONNX Runtime's known native crash (NchwcTransformer at ORT_ENABLE_ALL on an fp16
Transpose(perm=[1,0,2]) -> MatMul with an fp16 weight; ORT 1.24-1.32). Whatever ORT version is
installed, ln_deploy must either report the crash in one line or work around it, never die.
"""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ln_deploy import ort as ln_ort


@pytest.fixture(autouse=True)
def _private_probe_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LN_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    ln_ort._MEMO.clear()


def transpose_matmul_fp16():
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 16)).astype(np.float16), "w")
    g = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2], name="transpose"),
         helper.make_node("MatMul", ["t", "w"], ["y"], name="matmul")],
        "transpose_matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4, 2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 4, 16])], initializer=[w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def _expected(m, x):
    w = numpy_helper.to_array(m.graph.initializer[0]).astype(np.float32)
    return np.transpose(x.astype(np.float32), (1, 0, 2)) @ w


def test_probe_reports_a_crash_in_one_line_or_loads():
    m = transpose_matmul_fp16()
    r = ln_ort.probe_session(m, ln_ort.DEFAULT)
    line = r.line("the 3-node graph")
    assert "\n" not in line and "ORT_ENABLE_ALL" in line and r.ort_version in line
    if r.crashed:  # ORT 1.24..1.32: SIGSEGV in the NchwcTransformer
        assert "crashed" in line and "SIGSEGV" in line or "died" in line
    else:
        assert r.ok, line
    again = ln_ort.probe_session(m, ln_ort.DEFAULT)
    assert again.cached and again.crashed == r.crashed


def test_open_deployable_works_around_and_computes_the_right_values():
    m = transpose_matmul_fp16()
    sess, dep = ln_ort.open_deployable(m)
    x = np.random.default_rng(1).standard_normal((4, 2, 16)).astype(np.float16)
    y = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(y.astype(np.float32), _expected(m, x), rtol=2e-2, atol=5e-2)
    if dep.worked_around:
        assert dep.config.disabled_optimizers == ("NchwcTransformer",) or dep.config.level == "extended"
        assert "instead" in dep.note()
        assert ln_ort.triton_graph_level(dep.config) == 1  # ORT_ENABLE_EXTENDED in Triton's config
    with pytest.raises(ln_ort.OrtCrash) if dep.worked_around else _nothing():
        ln_ort.open_session(m, probe=True)  # the crashing configuration: refused, not a segfault


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_probe_cache_on_disk_is_reused_by_a_new_process(tmp_path):
    m = transpose_matmul_fp16()
    r = ln_ort.probe_session(m)
    files = list((tmp_path / "cache" / "ort_probe").glob("*.json"))
    assert len(files) == 1
    ln_ort._MEMO.clear()
    assert ln_ort.probe_session(m).cached and ln_ort.probe_session(m).crashed == r.crashed


def test_refused_graph_is_not_a_crash():
    m = transpose_matmul_fp16()
    m.graph.node[1].input[1] = "missing"
    r = ln_ort.probe_session(m)
    assert not r.ok and not r.crashed and r.error


def test_a_cached_refusal_names_the_file_being_probed(tmp_path):
    """The cache is keyed by content: a refusal first seen under another path names this one."""
    m = transpose_matmul_fp16()
    m.graph.node[1].input[1] = "missing"
    paths = [tmp_path / "a" / "first.onnx", tmp_path / "b" / "second.onnx"]
    for p in paths:
        p.parent.mkdir()
        onnx.save(m, p)
    first = ln_ort.probe_session(str(paths[0]))
    assert not first.ok and str(paths[0]) in first.error
    for again in (ln_ort.probe_session(str(paths[1])), ln_ort.probe_session(paths[1])):
        assert again.cached and str(paths[1]) in again.error and str(paths[0]) not in again.error
    ln_ort._MEMO.clear()  # from the disk cache, as a new process reads it
    again = ln_ort.probe_session(str(paths[1]))
    assert again.cached and str(paths[1]) in again.error and str(paths[0]) not in again.error


def test_parse_error_reads_the_node_name():
    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"], name="the_add")], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    with pytest.raises(Exception) as e:  # ORT's shape inference refuses it at session creation
        ln_ort.open_session(m, ln_ort.UNOPTIMIZED)
    assert ln_ort.is_ort_exception(e.value)
    err = ln_ort.parse_error(e.value)
    assert err.node == "the_add" and "\n" not in err.message
    assert ln_ort.node_name_in("[ShapeInferenceError] (op_type:Mul, node name: mul_3): bad") == "mul_3"
    assert ln_ort.parse_error("Could not find an implementation for Add(14) node with name 'x'").missing_kernel


def test_config_validates_itself():
    with pytest.raises(ValueError):
        ln_ort.SessionConfig(level="max")
    with pytest.raises(ValueError):
        ln_ort.SessionConfig(threads=-1)
    c = ln_ort.SessionConfig(disabled_optimizers=("B", "A", "A"))
    assert c.disabled_optimizers == ("A", "B") and c.describe() == "ORT_ENABLE_ALL without A, B"


def test_one_module_builds_session_options():
    out = subprocess.run(["grep", "-rln", "SessionOptions()", "ln_deploy"], capture_output=True, text=True)
    assert out.stdout.split() == ["ln_deploy/ort.py"], out.stdout


def test_serve_and_package_never_die_on_the_crashing_graph(tmp_path):
    """`serve` opens it (optimizer disabled where needed) and answers; `package` writes the level Triton
    must use into config.pbtxt, and the folder validates at that level."""
    from ln_deploy.serve.repository import package_model, read_model_config
    from ln_deploy.serve.runtime import load_served_model

    path = tmp_path / "tm.onnx"
    onnx.save(transpose_matmul_fp16(), path)
    code = ("import sys, numpy as np; from ln_deploy.serve.runtime import load_served_model;"
            "m = load_served_model(sys.argv[1], 'tm', max_batch_size=0);"
            "print(m.run({'x': np.ones((4, 2, 16), np.float16)})['y'].shape)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]  # no signal
    assert "(2, 4, 16)" in out.stdout
    res = package_model(path, tmp_path / "repo", "tm", max_batch_size=0)
    crashed = ln_ort.probe_session(str(path)).crashed
    cfg = read_model_config(res.config_path)
    if crashed:
        assert cfg.optimization.graph.level == 1 and any("graph.level 1" in n for n in res.notes)
    else:
        assert not cfg.HasField("optimization")
    assert load_served_model(res.model_dir / "1" / "model.onnx", "tm", max_batch_size=0) is not None
