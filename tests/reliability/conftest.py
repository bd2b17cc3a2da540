"""Shared pieces of the reliability tests: tiny hand-built models, the CLI run in-process, and the
contract every refusal keeps (exit code, one stderr line, no traceback, nothing written or removed)."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]

SPEC_SRC = '''
import os
import signal

import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(8)

    def forward(self, x):
        return self.ln(x)


def good():
    torch.manual_seed(0)
    return Tiny(), (torch.randn(2, 4, 8),)


def raises():
    raise RuntimeError("factory boom")


class Flat(nn.Module):
    """Batch-flexible in PyTorch; its export is made with a fixed batch (see the fixture)."""

    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(8)

    def forward(self, x):
        return self.ln(x).reshape(x.shape[0], 32)


def flat():
    torch.manual_seed(0)
    return Flat(), (torch.randn(2, 4, 8),)


class InterruptedWhileTraced(nn.Module):
    """Sends the signal named by $LN_TEST_SIGNAL to its own process the second time forward() runs
    (inside torch.onnx's dynamo capture), and turns the KeyboardInterrupt into a RuntimeError, as
    code under a C++ callback does: torch.onnx's capture strategies then catch it and go on."""

    calls = 0

    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(8)

    def forward(self, x):
        InterruptedWhileTraced.calls += 1
        if InterruptedWhileTraced.calls == 2:
            try:
                os.kill(os.getpid(), getattr(signal, os.environ.get("LN_TEST_SIGNAL", "SIGINT")))
            except KeyboardInterrupt:
                raise RuntimeError("interrupted inside the exporter") from None
        return self.ln(x)


def interrupted():
    return InterruptedWhileTraced(), (torch.randn(2, 4, 8),)
'''


def ln_model(dims=("N", 4, 8), outs=("y",), opset=17):
    """x -> LayerNormalization -> y (outs may repeat a name: a graph declaring one output twice)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))
    ys = [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(dims)) for o in outs]
    scale = numpy_helper.from_array(np.ones(8, np.float32), "scale")
    bias = numpy_helper.from_array(np.zeros(8, np.float32), "bias")
    node = helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], axis=-1, epsilon=1e-5)
    graph = helper.make_graph([node], "g", [x], ys, [scale, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Path:
    """A read-only-by-convention folder of small inputs shared by the tests (never written by them)."""
    d = tmp_path_factory.mktemp("reliability_inputs")
    onnx.save_model(ln_model(), str(d / "good.onnx"))
    (d / "tiny.py").write_text(SPEC_SRC)
    arr = np.ones((2, 4, 8), np.float32)
    np.savez(d / "good.npz", x=arr)
    return d


def run_cli(*argv, quiet=True):
    """``ln-deploy ARGV`` in this process: (exit code, stdout, stderr)."""
    from ln_deploy.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main((["-q"] if quiet else []) + [str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def run_process(*argv, cwd=None, env=None, timeout=300):
    """``python -m ln_deploy -q ARGV`` as a real process: (exit code, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "ln_deploy", "-q", *map(str, argv)], capture_output=True, text=True,
                       timeout=timeout, cwd=cwd or ROOT, env=env)
    return p.returncode, p.stdout, p.stderr


def assert_refused(rc, err, command, *needles, code=2):
    """Exit ``code`` and exactly one stderr line, ``ln-deploy COMMAND: error: ...``, naming each needle."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ln-deploy {command}: error: "), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]


def snapshot(*dirs) -> dict:
    """path -> (size, mtime_ns, mode) of everything under ``dirs``: equal before and after = nothing
    written, replaced or removed there."""
    out = {}
    for d in dirs:
        for p in [Path(d), *Path(d).rglob("*")]:
            st = p.lstat()  # a folder's own mtime moves with any probe file: its listing is what counts
            out[p] = (None, None, st.st_mode) if p.is_dir() and not p.is_symlink() else \
                (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


@pytest.fixture
def unchanged(models, tmp_path):
    """Asserts that the test changed nothing in the shared inputs or its tmp_path (it adds its own
    inputs to tmp_path before calling ``unchanged.start()``)."""

    class Guard:
        before = None

        def start(self):
            self.before = snapshot(models, tmp_path)

    g = Guard()
    yield g
    if g.before is not None:
        assert snapshot(models, tmp_path) == g.before
