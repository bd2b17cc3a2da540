"""`serve --spin`: off, on, or a bound in microseconds, reaching ONNX Runtime's session options."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as th

from ln_deploy.cli import main
from ln_deploy.serve.runtime import (DEFAULT_SPIN_US, load_served_model, parse_spin, server_session_config,
                                     session_options)


@pytest.fixture(scope="module")
def block_onnx(exported_bundled):
    return exported_bundled["pre_ln_encoder_block"][1].path


@pytest.mark.parametrize("text, value", [("off", False), ("on", True), ("OFF", False), ("200", 200), ("1", 1)])
def test_parse_spin(text, value):
    got = parse_spin(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", ["0", "-5", "fast", "2.5", "", "200us"])
def test_parse_spin_refuses(text):
    with pytest.raises(ValueError, match="--spin must be on, off or a number of microseconds"):
        parse_spin(text)


def _entry(so, key: str) -> str:
    try:
        return so.get_session_config_entry(key)
    except RuntimeError:  # ORT raises for a key that was never set
        return ""


@pytest.mark.parametrize("spin, allow, duration", [(False, "0", ""), (True, "", ""), (350, "", "350")])
def test_spin_reaches_ort_session_options(spin, allow, duration):
    so = session_options(0, spin=spin)
    assert _entry(so, "session.intra_op.allow_spinning") == allow
    assert _entry(so, "session.intra_op.spin_duration_us") == duration
    cfg = server_session_config(0, spin=spin)
    assert cfg.spinning is (spin is not False) and cfg.spin_us == (spin if spin not in (True, False) else 0)


def test_default_is_bounded_spinning():
    assert _entry(session_options(), "session.intra_op.spin_duration_us") == str(DEFAULT_SPIN_US)


@pytest.mark.parametrize("spin", [True, 200])
def test_served_model_runs_with_spinning(block_onnx, spin):
    m = load_served_model(block_onnx, "b", max_batch_size=0, spin=spin)
    x = np.random.default_rng(0).standard_normal((2, 4, 64)).astype(np.float32)
    (y,) = m.session.run(None, {"x": x})
    assert y.shape == (2, 4, 64) and np.isfinite(y).all()


@pytest.mark.parametrize("bad", ["0", "sometimes", "-1"])
def test_serve_refuses_a_bad_spin_with_one_line(block_onnx, capsys, bad):
    assert main(["-q", "serve", str(block_onnx), "--spin", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--spin must be on, off or a number of microseconds > 0" in err[0], err


def test_server_with_bounded_spinning_answers(server_factory, block_onnx):
    s = server_factory(str(block_onnx), "--spin", "100", "--name", "b")
    assert any("spinning bounded to 100 µs" in line for line in s.lines), s.lines
    x = np.random.default_rng(1).standard_normal((1, 4, 64)).astype(np.float32)
    i = th.InferInput("x", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    y = th.InferenceServerClient(f"127.0.0.1:{s.port}").infer("b", [i]).as_numpy("output")
    assert y.shape == x.shape and np.isfinite(y).all()
