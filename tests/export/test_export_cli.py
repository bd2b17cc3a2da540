"""The export command's contract: exit codes, one-line errors, nothing written on failure."""

import subprocess
import sys

import pytest
import torch

from ln_deploy.cli import main
from models.catalog import BUNDLED, spec_path

GOOD = spec_path(BUNDLED["pre_ln_encoder_block"])


def _run(capsys, *argv):
    rc = main(["-q", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _factories(tmp_path):
    src = tmp_path / "factories.py"
    src.write_text(
        "import torch\n"
        "NOT_CALLABLE = 3\n"
        "def raises():\n    raise RuntimeError('boom')\n"
        "def not_a_module():\n    return 42\n"
        "def no_examples():\n    return torch.nn.Linear(2, 2)\n"
        "def linear():\n    torch.manual_seed(0)\n    return torch.nn.Linear(4, 3), (torch.randn(2, 4),)\n")
    return src


@pytest.mark.parametrize("case, spec_of, message", [
    ("missing file", lambda d: f"{d}/nope.py:f", "not found"),
    ("missing name", lambda d: f"{d}/factories.py:absent", "has no attribute"),
    ("not callable", lambda d: f"{d}/factories.py:NOT_CALLABLE", "not callable"),
    ("factory raises", lambda d: f"{d}/factories.py:raises", "factory raised RuntimeError: boom"),
    ("not a module", lambda d: f"{d}/factories.py:not_a_module", "not an nn.Module"),
    ("no example inputs", lambda d: f"{d}/factories.py:no_examples", "without example inputs"),
    ("not a spec", lambda d: "just-a-word", "must be"),
])
def test_bad_spec_is_one_line_and_exit_2(tmp_path, capsys, case, spec_of, message):
    _factories(tmp_path)
    out = tmp_path / "out.onnx"
    rc, _, err = _run(capsys, "export", spec_of(tmp_path), "-o", str(out))
    assert rc == 2, case
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_missing_output_directory(tmp_path, capsys):
    rc, _, err = _run(capsys, "export", GOOD, "-o", str(tmp_path / "no" / "such" / "m.onnx"))
    assert rc == 2 and "output directory does not exist" in err


def test_unsafe_checkpoint_is_refused(tmp_path, capsys):
    _factories(tmp_path)
    ckpt = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(3, 4), "payload": subprocess.Popen}, ckpt)  # needs unpickling code
    out = tmp_path / "out.onnx"
    rc, _, err = _run(capsys, "export", f"{tmp_path}/factories.py:linear", "-o", str(out), "--checkpoint", str(ckpt))
    assert rc == 2 and "arbitrary unpickling" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_safe_checkpoints_load(tmp_path, capsys, fmt):
    import onnx
    from onnx import numpy_helper

    _factories(tmp_path)
    state = {"weight": torch.full((3, 4), 0.25), "bias": torch.arange(3.0)}
    ckpt = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(ckpt))
    else:
        torch.save(state, ckpt)
    out = tmp_path / "out.onnx"
    rc, stdout, _ = _run(capsys, "export", f"{tmp_path}/factories.py:linear", "-o", str(out), "--checkpoint", str(ckpt))
    assert rc == 0, stdout
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    assert any((w == 0.25).all() and w.size == 12 for w in weights.values())


def test_checkpoint_that_does_not_match_the_model(tmp_path, capsys):
    _factories(tmp_path)
    ckpt = tmp_path / "w.pt"
    torch.save({"weight": torch.zeros(5, 5)}, ckpt)
    rc, _, err = _run(capsys, "export", f"{tmp_path}/factories.py:linear", "-o", str(tmp_path / "o.onnx"),
                      "--checkpoint", str(ckpt))
    assert rc == 2 and "does not match the model" in err


def test_rnn_mode_on_a_feed_forward_model_is_bad_input(tmp_path, capsys):
    rc, _, err = _run(capsys, "export", GOOD, "-o", str(tmp_path / "o.onnx"), "--rnn-mode", "scan")
    assert rc == 2 and "recurrent" in err


def test_bad_dynamic_axes_spelling(tmp_path, capsys):
    rc, _, err = _run(capsys, "export", GOOD, "-o", str(tmp_path / "o.onnx"), "--dynamic-axes", "x:zero=batch")
    assert rc == 2 and "AXIS=LABEL" in err
    rc, _, err = _run(capsys, "export", GOOD, "-o", str(tmp_path / "o.onnx"), "--dynamic-axes", "y:0=batch")
    assert rc == 2 and "not an input" in err


def test_cli_end_to_end_in_a_subprocess(tmp_path):
    """The installed entry point: progress on stderr, a summary on stdout, exit 0."""
    out = tmp_path / "m.onnx"
    p = subprocess.run([sys.executable, "-m", "ln_deploy", "export", GOOD, "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "wrote" in p.stdout and "max abs error" in p.stdout
    assert "exporting" in p.stderr  # progress for a step over a second
    assert out.exists()


def test_help_and_version():
    p = subprocess.run([sys.executable, "-m", "ln_deploy", "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("ln-deploy ")
    p = subprocess.run([sys.executable, "-m", "ln_deploy", "export", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--rnn-mode" in p.stdout
    p = subprocess.run([sys.executable, "-m", "ln_deploy", "export"], capture_output=True, text=True)
    assert p.returncode == 2 and "usage" in p.stderr
