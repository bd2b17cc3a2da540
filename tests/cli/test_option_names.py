"""One option vocabulary across every subcommand (issue 23), and the old spellings as deprecated aliases.

The walk over every subcommand's parser holds each shared idea to one name, action, metavar and help
(``ln_deploy/cli_args.py``). Each deprecated spelling is then run next to its new one: accepted, one
warning line on stderr, and the same result (real runs on a small bundled model where they are cheap,
the parsed arguments where a run needs TensorRT).
"""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from ln_deploy import cli_args
from ln_deploy.cli import build_parser, main

# dest -> the help text every subcommand taking it starts with.
SHARED = {
    "plugin": cli_args.PLUGIN_HELP,
    "checkpoint": cli_args.CHECKPOINT_HELP,
    "report": cli_args.REPORT_HELP.split("{")[0],
    "inputs": cli_args.INPUTS_HELP,
    "no_verify": cli_args.NO_VERIFY_HELP.split("{")[0],
    "target": cli_args.TARGET_HELP,
    "atol": "absolute tolerance",
    "rtol": "relative tolerance",
}
# Old spelling -> (command, new spelling). Value aliases are "--option old-value".
DEPRECATED = {
    "--plugins": ("check", "--plugin"),
    "--calibration": ("convert", "--inputs"),
    "--no-check": ("fuse", "--no-verify"),
    "--target ort-cpu": ("convert", "--target onnx"),
}
# demo's --no-check means "skip the check stage" (export only), not "skip the ONNX Runtime
# verification" that fuse's old --no-check meant: a different idea, so a different option.
NOT_AN_ALIAS = {("demo", "--no-check")}


def _subparsers():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices


def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["-q", *map(str, argv)])
    return rc, out.getvalue(), err.getvalue()


def _warnings(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if "is deprecated; use" in ln]


def test_every_subcommand_uses_the_shared_vocabulary():
    _, commands = _subparsers()
    seen: dict[str, list] = {}
    for name, p in commands.items():
        visible = [a for a in p._actions if a.help != argparse.SUPPRESS]
        for a in visible:
            for opt in a.option_strings:  # no old spelling is offered as an option
                assert opt not in DEPRECATED or (name, opt) in NOT_AN_ALIAS, f"{name} offers {opt}"
            if a.dest in SHARED or a.dest == "precision":
                seen.setdefault(a.dest, []).append((name, a))
    # Every idea is taken by the commands it belongs to, under one spelling.
    assert {n for n, _ in seen["plugin"]} == {"build", "check", "package", "deploy"}
    assert {n for n, _ in seen["checkpoint"]} == {"export", "check", "deploy", "verify"}
    assert {n for n, _ in seen["report"]} == {"fuse", "convert", "advise"}
    assert {n for n, _ in seen["inputs"]} == {"convert", "advise", "check", "deploy"}
    assert {n for n, _ in seen["no_verify"]} == {"export", "fuse"}
    assert {n for n, _ in seen["target"]} == {"fuse", "convert", "deploy"}
    assert {n for n, _ in seen["precision"]} == {"convert", "advise", "build", "check", "deploy"}
    for dest, uses in seen.items():
        first_name, first = uses[0]
        for name, a in uses:
            assert a.option_strings == first.option_strings, (dest, name)
            assert type(a) is type(first), (dest, name, type(a))
            if dest in SHARED:
                assert a.help.startswith(SHARED[dest]), (dest, name, a.help)
            if dest in ("atol", "rtol"):  # export holds every output to one number; the others per output
                assert a.metavar == ("VALUE" if name == "export" else "[OUTPUT=]VALUE"), (dest, name)
            elif dest == "precision":
                choices = a.metavar.strip("{}").split(",")
                assert a.metavar.startswith("{") and set(choices) <= {"auto", "fp32", "fp16", "bf16"}, a.metavar
            else:
                assert a.metavar == first.metavar, (dest, name, a.metavar, first.metavar)
    # check is the one command writing a report folder (report.json, report.md, plots).
    assert [n for n, p in commands.items() if any(a.dest == "report_dir" for a in p._actions)] == ["check"]


def test_output_options_list_every_written_option():
    """ln_deploy.cli.OUTPUT_OPTIONS names the options whose value is written: every --report and
    --report-dir is among them."""
    from ln_deploy.cli import OUTPUT_OPTIONS

    _, commands = _subparsers()
    dests = {a.dest for p in commands.values() for a in p._actions}
    assert {"report", "report_dir"} <= dests and {"report", "report_dir"} <= set(OUTPUT_OPTIONS)


def test_help_names_each_deprecated_spelling():
    _, commands = _subparsers()
    for old, (command, new) in DEPRECATED.items():
        text = commands[command].format_help()
        assert "deprecated spellings" in text and old in text and f"use {new}" in text, (old, text)


# Minimal command lines per subcommand: a bad shared value is refused before any file is read.
MINIMAL = {
    "export": ["export", "x.py:f", "-o", "o.onnx"],
    "fuse": ["fuse", "m.onnx", "-o", "o.onnx"],
    "convert": ["convert", "m.onnx", "-o", "o.onnx"],
    "advise": ["advise", "m.onnx"],
    "build": ["build", "m.onnx", "-o", "e.plan"],
    "check": ["check", "x.py:f", "--onnx", "m.onnx"],
    "deploy": ["deploy", "x.py:f", "-o", "work"],
}


@pytest.mark.parametrize("command", ["convert", "advise", "build", "check", "deploy"])
def test_one_precision_validator(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _cli(*MINIMAL[command], "--precision", "fp8")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"ln-deploy {command}: error: unknown precision 'fp8'"), err


@pytest.mark.parametrize("command", ["fuse", "convert", "deploy"])
def test_one_target_validator(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _cli(*MINIMAL[command], "--target", "tpu", *(["--precision", "fp16"] if command == "convert" else []))
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "unknown --target 'tpu' (choose from onnx, tensorrt)" in lines[0], err


@pytest.mark.parametrize("command", ["check", "deploy"])
def test_one_tolerance_syntax(command):
    parser, _ = _subparsers()
    args = parser.parse_args([*MINIMAL[command], "--atol", "1e-3", "--atol", "logits=5e-3", "--rtol", "0.01"])
    cli_args.apply(args)
    assert args.atol == {"": 1e-3, "logits": 5e-3} and args.rtol == {"": 0.01}
    assert cli_args.tolerance_value(args.rtol) == 0.01  # what DeployOptions stored before: one float
    for bad, needle in (("abc", "expected VALUE or OUTPUT=VALUE"), ("-1", "atol must be a finite number"),
                        ("y=nan", "atol must be a finite number")):
        rc, _, err = _cli(*MINIMAL[command], "--atol", bad)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_export_takes_one_atol_for_every_output():
    parser, _ = _subparsers()
    args = parser.parse_args(MINIMAL["export"])
    cli_args.apply(args)
    assert args.atol == 1e-4  # the default, a float as export_model takes it
    args = parser.parse_args([*MINIMAL["export"], "--atol", "0"])
    cli_args.apply(args)
    assert args.atol == 0.0
    rc, _, err = _cli(*MINIMAL["export"], "--atol", "out=1e-3")
    assert rc == 2 and "holds every output to one atol" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("command", ["package", "deploy"])
def test_one_plugin_where_one_is_packaged(tmp_path, command):
    argv = ["package", tmp_path / "e.plan", "--repo", tmp_path / "r", "--name", "m"] if command == "package" \
        else MINIMAL["deploy"]
    rc, _, err = _cli(*argv, "--plugin", "a.so", "--plugin", "b.so")
    assert rc == 2 and "--plugin given 2 times; this command takes one" in err, err


# -- each deprecated alias: accepted, warned once, identical ------------------------------------------

def test_plugins_parses_as_plugin():
    parser, _ = _subparsers()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        old = parser.parse_args([*MINIMAL["check"], "--plugins", "a.so", "b.so", "--plugins", "c.so"])
    new = parser.parse_args([*MINIMAL["check"], "--plugin", "a.so", "--plugin", "b.so", "--plugin", "c.so"])
    assert old.plugin == new.plugin == ["a.so", "b.so", "c.so"]
    assert err.getvalue() == "ln-deploy: --plugins is deprecated; use --plugin\n"  # once, though given twice


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small bundled model with hand-written norms (so fuse and convert both have work), exported
    once, and calibration inputs for it."""
    from ln_deploy.export import export_model
    from ln_deploy.spec import load_spec
    from models.catalog import HANDWRITTEN, spec_path

    d = tmp_path_factory.mktemp("vocab")
    spec = spec_path(HANDWRITTEN["pre_ln_encoder_block"])
    loaded = load_spec(spec)
    res = export_model(loaded, d / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(d / "c.npz", **{n: rng.standard_normal(t.shape).astype(np.float32)
                             for n, t in zip(res.input_names, loaded.example_inputs)})
    return d, spec


def _same_run(tmp_path, old: list, new: list, old_spelling: str):
    """Run both command lines; same exit code and stdout (paths aside), one warning for the old one."""
    r_old = _cli(*old)
    r_new = _cli(*new)
    assert r_old[0] == r_new[0], (r_old, r_new)
    assert _warnings(r_old[2]) == [f"ln-deploy: {old_spelling} is deprecated; use {DEPRECATED[old_spelling][1]}"]
    assert _warnings(r_new[2]) == []
    rest = [ln for ln in r_old[2].splitlines() if "is deprecated" not in ln]
    assert rest == r_new[2].splitlines()
    return r_old, r_new


def _strip(text: str, *paths) -> str:
    for p in paths:
        text = text.replace(str(p), "PATH")
    return text


def test_no_check_is_no_verify(small, tmp_path):
    d, _ = small
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    r_old, r_new = _same_run(tmp_path, ["fuse", d / "m.onnx", "-o", a, "--no-check"],
                             ["fuse", d / "m.onnx", "-o", b, "--no-verify"], "--no-check")
    assert r_old[0] == 0 and _strip(r_old[1], a) == _strip(r_new[1], b)
    assert a.read_bytes() == b.read_bytes()


def test_calibration_is_inputs(small, tmp_path):
    d, _ = small
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    ra, rb = tmp_path / "a.json", tmp_path / "b.json"
    r_old, r_new = _same_run(
        tmp_path, ["convert", d / "m.onnx", "-o", a, "--precision", "fp16", "--calibration", d / "c.npz", "--report", ra],
        ["convert", d / "m.onnx", "-o", b, "--precision", "fp16", "--inputs", d / "c.npz", "--report", rb],
        "--calibration")
    assert r_old[0] == 0 and _strip(r_old[1], a) == _strip(r_new[1], b)
    assert a.read_bytes() == b.read_bytes() and ra.read_text() == rb.read_text()
    # the file given is the one read (not random inputs): a missing one is refused the same way
    base = ["convert", d / "m.onnx", "-o", a, "--precision", "fp16"]
    r_old, r_new = _same_run(tmp_path, [*base, "--calibration", tmp_path / "none.npz"],
                             [*base, "--inputs", tmp_path / "none.npz"], "--calibration")
    assert r_old[0] == 2 and "no such calibration file" in r_new[2]
    # and it still excludes --spec, as --inputs does
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        main([*map(str, base), "--calibration", str(d / "c.npz"), "--spec", "x.py:f"])
    assert e.value.code == 2 and "--spec: not allowed with argument --calibration" in err.getvalue()


def test_target_ort_cpu_is_onnx(small, tmp_path):
    d, _ = small
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    r_old, r_new = _same_run(
        tmp_path, ["convert", d / "m.onnx", "-o", a, "--precision", "fp16", "--target", "ort-cpu", "--no-measure"],
        ["convert", d / "m.onnx", "-o", b, "--precision", "fp16", "--target", "onnx", "--no-measure"],
        "--target ort-cpu")
    assert r_old[0] == 0 and _strip(r_old[1], a) == _strip(r_new[1], b)
    assert a.read_bytes() == b.read_bytes()


def test_plugins_is_plugin_in_a_real_check(small, tmp_path):
    """A check with an engine and a plugin that does not exist: the same refusal either way (running an
    engine needs TensorRT and a GPU, so the plugin's loading is the part a CPU run reaches)."""
    d, spec = small
    missing = tmp_path / "no_such_lib.so"
    base = ["check", spec, "--onnx", d / "m.onnx", "--engine", d / "m.onnx"]
    r_old, r_new = _same_run(tmp_path, [*base, "--plugins", missing], [*base, "--plugin", missing], "--plugins")
    assert r_old[0] == 2 and "plugin library not found" in r_new[2]


def test_deploy_options_take_per_output_tolerances():
    """deploy's --atol/--rtol now take check's [OUTPUT=]VALUE: DeployOptions holds one float (as
    before) or the per-output dict, and hands either to check_model's tolerances."""
    from ln_deploy.deploy.options import DeployOptions
    from ln_deploy.errors import BadInputError

    DeployOptions(atol=1e-3).validate()
    DeployOptions(atol={"": 1e-3, "logits": 1e-2}, rtol={"logits": 0.1}).validate()
    for bad in (-1.0, {"logits": float("nan")}, {"": -2}):
        with pytest.raises(BadInputError, match="--atol must be a finite number"):
            DeployOptions(atol=bad).validate()
