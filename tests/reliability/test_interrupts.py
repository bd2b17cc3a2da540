"""Class 7: Ctrl-C and SIGTERM are never swallowed by a fallback. The SPEC's forward() signals its own
process while torch.onnx's dynamo capture runs and turns the KeyboardInterrupt into a RuntimeError (as
code under a C++ callback does); torch.onnx then tried its next strategy and the export wrote the
model and exited 0. Now: exit 128 + the signal, one stderr line, nothing written."""

from __future__ import annotations

import os
import signal

import pytest

from conftest import assert_refused, run_cli, run_process, snapshot


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_interrupt_during_dynamo_export_is_not_swallowed(models, tmp_path, sig, code):
    out = tmp_path / "o.onnx"
    before = snapshot(models, tmp_path)
    rc, stdout, err = run_process("export", f"{models}/tiny.py:interrupted", "-o", out, cwd=tmp_path,
                                  env={**os.environ, "LN_TEST_SIGNAL": sig})
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == code, err
    assert lines == ["ln-deploy export: interrupted"], err
    assert stdout == ""
    assert snapshot(models, tmp_path) == before  # no model, no temporary


def test_no_output_is_committed_after_an_interrupt(tmp_path):
    """fileio's commit point: an interrupt that something caught still stops the rename."""
    from ln_deploy import interrupts
    from ln_deploy.fileio import atomic_output

    with interrupts.handling():
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass  # swallowed, as a careless fallback would
        with pytest.raises(KeyboardInterrupt):
            with atomic_output(tmp_path / "o.txt") as tmp:
                tmp.write_text("half a result")
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_interrupted_in_process_run_restores_handlers_and_exits_130(models, tmp_path, monkeypatch):
    from ln_deploy import fileio

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio, "load_onnx", interrupted)
    before_int, before_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    rc, _, err = run_cli("fuse", models / "good.onnx", "-o", tmp_path / "o.onnx")
    assert (rc, err.strip()) == (130, "ln-deploy fuse: interrupted")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == (before_int, before_term)
    assert list(tmp_path.iterdir()) == []


def test_a_caught_interrupt_is_recognised_in_an_exception_chain():
    from ln_deploy import interrupts

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as wrapped:
        with pytest.raises(interrupts.Interrupted):
            interrupts.raise_if_interrupted(wrapped)
    interrupts.raise_if_interrupted(ValueError("not an interrupt"))  # no-op
