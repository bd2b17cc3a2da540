"""Serving fixtures: every bundled model packaged into one repository, and real server subprocesses."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_BODY = 256 * 1024  # the shared server's --max-body-bytes: small, so 413 is cheap to provoke


class ServerProcess:
    """``python -m ln_deploy serve ...`` on a free loopback port (``--port 0``); stderr kept."""

    def __init__(self, *args: str, timeout: float = 120):
        cmd = [sys.executable, "-m", "ln_deploy", "serve", *args, "--host", "127.0.0.1", "--port", "0"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.port = None
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(r"serving \d+ model\(s\) on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("server did not start:\n" + "".join(self.lines))
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self):
        import tritonclient.http as th

        return th.InferenceServerClient(self.url, connection_timeout=30, network_timeout=60)

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


@contextlib.contextmanager
def running_server(*args: str):
    server = ServerProcess(*args)
    try:
        yield server
    finally:
        server.terminate()


@pytest.fixture(scope="session")
def bundled_repo(exported_bundled, tmp_path_factory):
    """A Triton repository holding every bundled model, written by ``package_model``."""
    from ln_deploy.serve.repository import package_model

    repo = tmp_path_factory.mktemp("serve") / "repo"
    for name, (_, result) in exported_bundled.items():
        package_model(result.path, repo, name)
    return repo


@pytest.fixture(scope="session")
def shared_server(bundled_repo):
    with running_server(str(bundled_repo), "--max-body-bytes", str(MAX_BODY)) as server:
        server.max_body = MAX_BODY
        yield server


@pytest.fixture
def server_factory():
    """Start dedicated servers (``server_factory(*serve_args)``); all are stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        s = ServerProcess(*args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.terminate()


@pytest.fixture(scope="module")
def relu_onnx(tmp_path_factory) -> Path:
    """A one-node model (Relu, ``x``/``y`` of shape [batch, 4]): for the server's plumbing, not numerics."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    path = tmp_path_factory.mktemp("relu") / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path
