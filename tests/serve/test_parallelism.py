"""serve's default parallelism on the CPU: two runs at once (Triton's onnxruntime-backend default),
each with its share of the usable cores; explicit flags win."""

import os

import pytest

from ln_deploy.serve.server import CPU_INSTANCES, ServeOptions, parallelism


def _cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_cpu_default_is_two_instances_sharing_the_cores():
    assert parallelism(ServeOptions(device="cpu")) == (CPU_INSTANCES, max(1, _cores() // CPU_INSTANCES))


@pytest.mark.parametrize("kw,expected", [
    ({"instances": 1}, (1, 0)),  # one run: ONNX Runtime's own thread count
    ({"instances": 3, "intra_op_threads": 2}, (3, 2)),
    ({"intra_op_threads": 4}, (CPU_INSTANCES, 4)),
])
def test_explicit_flags_win(kw, expected):
    assert parallelism(ServeOptions(device="cpu", **kw)) == expected


def test_the_served_config_reports_the_instances(tmp_path):
    """The server's own /config answers with the instances it runs (a real server, a real client)."""
    import json
    import subprocess
    import sys
    import urllib.request

    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    proc = subprocess.Popen([sys.executable, "-m", "ln_deploy.cli", "serve", str(path), "--port", "0", "--device", "cpu"],
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "serving 1 model(s) on http://" in line:
                break
        url = lines[-1].strip().rsplit(" ", 1)[-1]
        assert any("2 instance(s) of" in ln for ln in lines), lines
        with urllib.request.urlopen(f"{url}/v2/models/relu/config", timeout=30) as r:
            config = json.load(r)
        assert sum(g["count"] for g in config["instance_group"]) == CPU_INSTANCES
    finally:
        proc.terminate()
        proc.wait(60)
