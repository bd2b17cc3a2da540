"""Bad input gets one line on stderr and exit code 2, through the real CLI entry point (in-process to
keep the suite fast; one test runs it as a subprocess); nothing is left on disk."""

import contextlib
import io
import subprocess
import sys

import numpy as np
import pytest

from models.catalog import BUNDLED, spec_path


def _cli(*args):
    from ln_deploy.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["-q", "check", *map(str, args)])
    return rc, out.getvalue(), err.getvalue()


def _cli_subprocess(*args):
    p = subprocess.run([sys.executable, "-m", "ln_deploy", "-q", "check", *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def encoder(export_spec):
    return export_spec(BUNDLED["pre_ln_encoder"])


@pytest.fixture(scope="module")
def masked(export_spec):
    return export_spec(BUNDLED["masked_encoder"])


@pytest.fixture(scope="module")
def convnext(export_spec):
    return export_spec(BUNDLED["convnext_block"])


def _one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ln-deploy check: error:"), err
    for n in needles:
        assert n in lines[0], lines[0]


def test_spec_with_other_inputs(masked):
    # masked_encoder's forward() takes (x, mask); the pre-LN encoder's ONNX model takes x only
    _, onnx_path = masked
    rc, _, err = _cli(spec_path(BUNDLED["pre_ln_encoder"]), "--onnx", onnx_path)
    _one_line_error(rc, err, "['x', 'mask']", "['x']")


def test_onnx_with_other_rank(convnext):
    _, onnx_path = convnext
    rc, _, err = _cli(spec_path(BUNDLED["pre_ln_encoder"]), "--onnx", onnx_path)
    _one_line_error(rc, err, "rank 4", "rank 3")


def test_onnx_with_other_input_names(encoder, tmp_path):
    import onnx

    _, onnx_path = encoder
    m = onnx.load(str(onnx_path))
    old = m.graph.input[0].name
    m.graph.input[0].name = "tokens"
    for n in m.graph.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = "tokens"
    renamed = tmp_path / "renamed.onnx"
    onnx.save(m, str(renamed))
    rc, _, err = _cli(spec_path(BUNDLED["pre_ln_encoder"]), "--onnx", renamed)
    _one_line_error(rc, err, "['tokens']", "['x']")


def test_report_dir_cannot_be_written(encoder, tmp_path):
    _, onnx_path = encoder
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    rc, _, err = _cli(spec_path(BUNDLED["pre_ln_encoder"]), "--onnx", onnx_path, "--report-dir", blocker / "report")
    _one_line_error(rc, err, "not a directory")
    rc, _, err = _cli(spec_path(BUNDLED["pre_ln_encoder"]), "--onnx", onnx_path, "--report-dir", blocker)
    _one_line_error(rc, err, "not a directory")
    # /proc accepts no new entries even for root, where permission bits would not stop the write
    rc, _, err = _cli(spec_path(BUNDLED["pre_ln_encoder"]), "--onnx", onnx_path, "--report-dir", "/proc/ln_deploy_report")
    _one_line_error(rc, err, "cannot be written")


def test_not_onnx_and_missing_files(encoder, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    rc, _, err = _cli(spec_path(BUNDLED["pre_ln_encoder"]), "--onnx", junk)
    _one_line_error(rc, err, "junk.onnx")
    rc, _, err = _cli(spec_path(BUNDLED["pre_ln_encoder"]), "--onnx", tmp_path / "missing.onnx")
    _one_line_error(rc, err, "no such file")


def test_bad_inputs_file(encoder, tmp_path):
    _, onnx_path = encoder
    spec = spec_path(BUNDLED["pre_ln_encoder"])
    wrong_name = tmp_path / "wrong_name.npz"
    np.savez(wrong_name, tokens=np.zeros((2, 8, 64), np.float32))
    _one_line_error(*_cli(spec, "--onnx", onnx_path, "--inputs", wrong_name)[::2], "'tokens'")
    wrong_shape = tmp_path / "wrong_shape.npz"
    np.savez(wrong_shape, x=np.zeros((2, 8, 32), np.float32))
    _one_line_error(*_cli(spec, "--onnx", onnx_path, "--inputs", wrong_shape)[::2], "[2, 8, 32]")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object))
    _one_line_error(*_cli(spec, "--onnx", onnx_path, "--inputs", pickled)[::2], "pickled.npz")


def test_bad_tolerance_option(encoder):
    _, onnx_path = encoder
    _one_line_error(*_cli(spec_path(BUNDLED["pre_ln_encoder"]), "--onnx", onnx_path, "--atol", "output=abc")[::2],
                    "--atol")


@pytest.mark.parametrize("args, needle", [
    (["--atol", "outptu=0.1"], "outptu"),  # a typo in an output name is not silently ignored
    (["--engine", "/no/such/engine.plan"], "engine not found"),  # even where TensorRT is skipped
    (["--engine", "__ONNX__", "--plugin", "/no/such/lib.so"], "plugin library not found"),
])
def test_named_files_and_outputs_must_exist(encoder, args, needle):
    _, onnx_path = encoder
    args = [str(onnx_path) if a == "__ONNX__" else a for a in args]
    _one_line_error(*_cli(spec_path(BUNDLED["pre_ln_encoder"]), "--onnx", onnx_path, *args)[::2], needle)


def test_step_mode_export_is_refused_clearly(export_spec):
    _, onnx_path = export_spec(BUNDLED["ln_gru"], rnn_mode="step")
    rc, _, err = _cli(spec_path(BUNDLED["ln_gru"]), "--onnx", onnx_path)
    _one_line_error(rc, err, "step mode", "--rnn-mode scan")


def test_cli_exit_codes_and_report(encoder, export_spec, tmp_path):
    import json

    _, onnx_path = encoder
    report_dir = tmp_path / "report"
    rc, out, err = _cli_subprocess(spec_path(BUNDLED["pre_ln_encoder"]), "--onnx", onnx_path,
                                   "--report-dir", report_dir)
    assert rc == 0, err
    assert "PASSED" in out and "onnxrt-cpu" in out
    data = json.loads((report_dir / "report.json").read_text())
    assert data["passed"] is True and data["first_divergence"] is None
    assert {"report.md", "run_results.json", "error_output.png"} <= {p.name for p in report_dir.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.")]  # no temporary left

    _, bn_path = export_spec(spec_path("models/controls.py:batchnorm_encoder"))
    rc, out, _ = _cli_subprocess(spec_path("models/controls.py:batchnorm_encoder"), "--onnx", bn_path)
    assert rc == 1
    assert "batch_independence FAILED on pytorch-fp32" in out
