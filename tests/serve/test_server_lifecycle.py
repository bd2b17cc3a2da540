"""Dynamic batching, the bounded queue, SIGTERM shutdown and the serve command's own errors."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import numpy as np
import pytest
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from ln_deploy.cli import main


def _request(client, model, rows=1, seq=4, seed=0):
    x = np.random.default_rng(seed).standard_normal((rows, seq, 64)).astype(np.float32)
    i = th.InferInput("x", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return x, client.infer(model, [i]).as_numpy("output")


@pytest.fixture(scope="module")
def block_onnx(exported_bundled):
    return exported_bundled["pre_ln_encoder_block"][1].path


def test_concurrent_requests_are_batched(server_factory, block_onnx):
    import onnxruntime as ort

    server = server_factory(str(block_onnx), "--name", "block", "--batch-window-ms", "400")
    clients = [server.client() for _ in range(8)]
    barrier = threading.Barrier(8)
    results = [None] * 8

    def go(k):
        barrier.wait()
        results[k] = _request(clients[k], "block", seed=k)

    threads = [threading.Thread(target=go, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stats = server.client().get_inference_statistics("block")["model_stats"][0]
    assert stats["inference_count"] == 8
    assert stats["execution_count"] < 8  # requests shared session runs
    assert max(b["batch_size"] for b in stats["batch_stats"]) > 1
    session = ort.InferenceSession(str(block_onnx), providers=["CPUExecutionProvider"])
    for x, y in results:  # each client got the rows of its own request back
        np.testing.assert_allclose(y, session.run(None, {"x": x})[0], atol=1e-5, rtol=1e-5)


def test_full_queue_answers_503_then_recovers(server_factory, block_onnx):
    server = server_factory(str(block_onnx), "--name", "block", "--max-queue", "1", "--batch-window-ms", "2500")
    first = {}
    t = threading.Thread(target=lambda: first.setdefault("r", _request(server.client(), "block")))
    t.start()
    time.sleep(0.8)  # the first request now waits in the queue for its batching window
    with pytest.raises(InferenceServerException, match="queue .* is full") as e:
        _request(server.client(), "block", seed=1)
    assert e.value.status() == "503"
    t.join(30)
    assert first["r"][1].shape == (1, 4, 64)
    x, y = _request(server.client(), "block", seed=2)  # served again once the queue drained
    assert y.shape == x.shape


def test_sigterm_finishes_in_flight_requests_and_exits_0(server_factory, block_onnx):
    import onnxruntime as ort

    server = server_factory(str(block_onnx), "--name", "block", "--batch-window-ms", "2000")
    in_flight = {}

    def slow():
        try:
            in_flight["r"] = _request(server.client(), "block", seed=3)
        except Exception as e:  # noqa: BLE001 - the assertion below reports it
            in_flight["error"] = e

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.7)  # the request is inside its 2 s batching window
    t0 = time.time()
    server.proc.send_signal(__import__("signal").SIGTERM)
    time.sleep(0.5)
    with pytest.raises(OSError):  # no longer accepting connections while it drains
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    t.join(30)
    assert "error" not in in_flight, in_flight.get("error")
    x, y = in_flight["r"]
    session = ort.InferenceSession(str(block_onnx), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(y, session.run(None, {"x": x})[0], atol=1e-5, rtol=1e-5)
    assert server.proc.wait(30) == 0
    assert time.time() - t0 < 30
    assert "stopped on SIGTERM" in server.stderr


def test_repository_with_an_engine_serves_the_onnx_models(server_factory, tmp_path, block_onnx):
    from ln_deploy.serve.repository import package_model

    repo = tmp_path / "repo"
    package_model(block_onnx, repo, "block")
    engine = tmp_path / "enc.plan"
    engine.write_bytes(b"engine bytes")
    engine.with_name("enc.plan.json").write_text(json.dumps({
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, -1, 64]}],
        "outputs": [{"name": "output", "dtype": "float32", "shape": [-1, -1, 64]}]}))
    package_model(engine, repo, "enc")
    server = server_factory(str(repo))
    assert "skipping enc" in server.stderr
    c = server.client()
    assert {m["name"] for m in c.get_model_repository_index()} == {"block"}
    x, y = _request(c, "block")
    assert y.shape == x.shape


def test_serve_refuses_bad_sources_with_one_line(tmp_path, capsys, bundled_repo, block_onnx):
    def fails(*argv):
        assert main(["-q", "serve", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ln-deploy serve: error:"), err
        return err[0]

    assert "no such file" in fails(str(tmp_path / "missing.onnx"))
    (tmp_path / "notes.txt").write_text("hi")
    assert "ONNX models" in fails(str(tmp_path / "notes.txt"))
    (tmp_path / "empty").mkdir()
    assert "no ONNX model to serve" in fails(str(tmp_path / "empty"))
    assert "is a model folder" in fails(str(bundled_repo / "ln_gru"))
    assert "--max-queue" in fails(str(block_onnx), "--max-queue", "0")
    broken = tmp_path / "broken"
    shutil.copytree(bundled_repo / "ln_gru", broken / "ln_gru")
    cfg = broken / "ln_gru" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("dims: 16", "dims: 17"))
    assert "invalid model folder" in fails(str(broken))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        assert "cannot listen" in fails(str(block_onnx), "--port", str(busy.getsockname()[1]))
