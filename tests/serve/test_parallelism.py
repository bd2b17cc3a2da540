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


def test_the_served_config_reports_the_instances(relu_onnx, server_factory):
    """The server's own /config answers with the instances it runs (a real server, a real client)."""
    import json
    import urllib.request

    server = server_factory(str(relu_onnx), "--device", "cpu")
    assert "2 instance(s) of" in server.stderr, server.stderr
    with urllib.request.urlopen(f"http://{server.url}/v2/models/relu/config", timeout=30) as r:
        config = json.load(r)
    assert sum(g["count"] for g in config["instance_group"]) == CPU_INSTANCES
