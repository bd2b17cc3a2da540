"""Hostile and malformed inputs, every subcommand: exit code 2 (bad input), exactly one line on stderr
saying what is wrong, no traceback, nothing left on disk, and nothing from an untrusted file executed.

The CLI runs in-process through ``ln_deploy.cli.main`` (fast); a few cases run it as a real subprocess
(no traceback reaches the terminal, nothing printed by torch's C++ side). Models are tiny graphs made
with onnx.helper; no torch export is needed except where the case is about export itself.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ln_deploy.cli import main

# -- fixtures ------------------------------------------------------------------------------------------


def _ln_model(dims=("N", 4, 8), opset=17, in_name="x", out_name="y", out_type=TensorProto.FLOAT):
    x = helper.make_tensor_value_info(in_name, TensorProto.FLOAT, list(dims))
    y = helper.make_tensor_value_info(out_name, out_type, list(dims))
    scale = numpy_helper.from_array(np.ones(8, np.float32), "scale")
    bias = numpy_helper.from_array(np.zeros(8, np.float32), "bias")
    node = helper.make_node("LayerNormalization", [in_name, "scale", "bias"], [out_name], axis=-1, epsilon=1e-5)
    graph = helper.make_graph([node], "g", [x], [y], [scale, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def _external(model, location: str):
    """``model`` with its 'scale' initializer moved to external data at ``location`` (not written)."""
    t = next(i for i in model.graph.initializer if i.name == "scale")
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    t.external_data.add(key="length", value="32")
    return model


MARKER_NAME = "PWNED"


class _Evil:
    """Unpickling this runs ``touch MARKER``: a checkpoint or .npz holding it must be refused unread."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


SPEC_SRC = '''
import sys
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(8)

    def forward(self, x):
        return self.ln(x)


def good():
    return Tiny(), (torch.randn(2, 4, 8),)


def raises():
    raise RuntimeError("factory boom")


def exits():
    sys.exit(3)


def returns_int():
    return 42


def returns_none():
    return None


def empty_example():
    return Tiny(), (torch.randn(0, 4, 8),)


def forward_raises():
    class B(nn.Module):
        def forward(self, x):
            raise ValueError("forward boom")
    return B(), (torch.randn(2, 4, 8),)


def returns_dict():  # a dict of tensors exports (named after its keys); one without tensors cannot
    class B(nn.Module):
        def forward(self, x):
            return {"y": None, "n": 3}
    return B(), (torch.randn(2, 4, 8),)


def returns_nothing():
    class B(nn.Module):
        def forward(self, x):
            return ()
    return B(), (torch.randn(2, 4, 8),)


def unexportable():  # neither torch.onnx exporter has eigvals
    class B(nn.Module):
        def forward(self, x):
            return torch.linalg.eigvals(x).real
    return B(), (torch.randn(2, 4, 4),)


NOT_CALLABLE = 3
'''


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    save = lambda m, name: onnx.save_model(m, str(d / name))  # noqa: E731

    save(_ln_model(), "good.onnx")
    data = (d / "good.onnx").read_bytes()
    (d / "empty.onnx").write_bytes(b"")
    (d / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (d / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "text.onnx").write_text("not a model\n")
    (d / "folder.onnx").mkdir()
    no_out = _ln_model()
    del no_out.graph.output[:]
    save(no_out, "no_outputs.onnx")
    save(_ln_model(opset=99), "opset99.onnx")
    neg = _ln_model(dims=(2, 4, 8))
    for vi in (neg.graph.input[0], neg.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = -3
    save(neg, "negative_dim.onnx")
    bad_ref = _ln_model()
    bad_ref.graph.node[0].input[0] = "undefined"
    save(bad_ref, "bad_reference.onnx")
    # external data: outside the folder, absolute, through a symlink, missing, empty, a folder
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "secret.bin").write_bytes(b"\0" * 32)
    os.symlink(elsewhere / "secret.bin", d / "link.bin")
    (d / "data_dir").mkdir()
    for name, loc in [("ext_dotdot", "../../../../../etc/passwd"), ("ext_abs", "/etc/passwd"),
                      ("ext_symlink", "link.bin"), ("ext_missing", "missing.bin"), ("ext_empty", ""),
                      ("ext_folder", "data_dir")]:
        save(_external(_ln_model(), loc), f"{name}.onnx")
    # models ONNX Runtime cannot run
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8])
    custom = helper.make_model(helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.evil")],
                                                 "g", [x], [y]),
                               opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)],
                               ir_version=9)
    save(custom, "custom_op.onnx")
    save(_ln_model(out_type=TensorProto.INT64), "wrong_output_type.onnx")
    save(_ln_model(dims=(0, 4, 8)), "zero_dim.onnx")
    save(_ln_model(dims=(2**40, 4, 8)), "huge_dim.onnx")

    (d / "tiny.py").write_text(SPEC_SRC)
    (d / "syntax.py").write_text("def good(:\n    pass\n")
    (d / "import_raises.py").write_text("raise RuntimeError('import boom')\n")
    (d / "import_exits.py").write_text("import sys\nsys.exit(5)\n")

    import torch
    from safetensors.torch import save_file

    marker = d / MARKER_NAME
    _Evil.marker = str(marker)
    with open(d / "evil.pt", "wb") as f:  # a plain pickle
        pickle.dump({"ln.weight": _Evil()}, f)
    torch.save({"ln.weight": torch.ones(8), "ln.bias": torch.zeros(8)}, d / "state.pt")
    with zipfile.ZipFile(d / "state.pt") as z:
        root = z.namelist()[0].split("/")[0]
    with zipfile.ZipFile(d / "evil_zip.pt", "w") as z:  # torch's zip format, data.pkl replaced
        z.writestr(f"{root}/data.pkl", pickle.dumps(_Evil(), protocol=2))
        z.writestr(f"{root}/version", "3\n")
        z.writestr(f"{root}/byteorder", "little")
    save_file({"ln.weight": torch.ones(9), "ln.bias": torch.zeros(9)}, str(d / "wrong_shapes.safetensors"))
    (d / "garbage.safetensors").write_bytes(np.random.default_rng(1).bytes(200))
    (d / "empty.pt").write_bytes(b"")
    (d / "text.pt").write_text("junk\n")
    torch.save([1, 2, 3], d / "list.pt")

    arr = np.ones((2, 4, 8), np.float32)
    np.savez(d / "object.npz", x=np.array([_Evil(), None], dtype=object))
    with zipfile.ZipFile(d / "not_npy_member.npz", "w") as z:
        z.writestr("x.npy", b"junk")
    np.savez(d / "complex.npz", x=arr.astype(np.complex64))
    np.savez(d / "wrong_shape.npz", x=np.ones((2, 4, 9), np.float32))
    np.savez(d / "wrong_name.npz", z=arr)
    np.savez(d / "empty_array.npz", x=np.ones((0, 4, 8), np.float32))
    (d / "garbage.npz").write_bytes(np.random.default_rng(2).bytes(1000))
    os.mkfifo(d / "fifo")
    return d


def _cli(*argv, quiet=True):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main((["-q"] if quiet else []) + [str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def _subprocess(*argv, cwd=None):
    p = subprocess.run([sys.executable, "-m", "ln_deploy", "-q", *map(str, argv)], capture_output=True,
                       text=True, timeout=300, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def _refused(rc, err, command, *needles, code=2, progress_ok=False):
    """Exit ``code`` and exactly one non-empty stderr line, the error, naming every needle."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if progress_ok:
        lines = [ln for ln in lines if not ln.startswith("[ln-deploy] ")]
    assert rc == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ln-deploy {command}: error: "), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]


def _listing(*dirs) -> set:
    return {p for d in dirs for p in Path(d).rglob("*")}


@pytest.fixture
def untouched(fx, tmp_path):
    """Asserts after the test that neither the fixture folder nor tmp_path gained a file (temp or not),
    and that no untrusted pickle ran."""
    before = _listing(fx, tmp_path)
    yield
    assert _listing(fx, tmp_path) == before
    assert not (fx / MARKER_NAME).exists(), "an untrusted pickle was executed"


@pytest.fixture(scope="module")
def busy_port():
    """A port something listens on: `serve` given it fails fast at bind time, so a regression that lets
    a hostile model load fails the test instead of serving forever."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


def _stage_argv(stage, model, out_dir, port=None):
    return {
        "fuse": ["fuse", model, "-o", out_dir / "o.onnx"],
        "convert": ["convert", model, "-o", out_dir / "o.onnx", "--precision", "fp16"],
        "advise": ["advise", model, "--report", out_dir / "r.json"],
        "build": ["build", model, "-o", out_dir / "e.plan", "--dry-run"],
        "package": ["package", model, "--repo", out_dir / "repo", "--name", "m"],
        "serve": ["serve", model, "--port", str(port)],
    }[stage]


STAGES = ["fuse", "convert", "advise", "build", "package", "serve"]

# -- hostile ONNX files: every stage that reads one ------------------------------------------------------

BAD_ONNX = {
    "empty": ("empty.onnx", "not an ONNX model"),
    "truncated": ("truncated.onnx", "not a readable ONNX model"),
    "random bytes": ("random.onnx", "not a readable ONNX model"),
    "text": ("text.onnx", "not a readable ONNX model"),
    "missing": ("nope.onnx", "no such file"),
    "no outputs": ("no_outputs.onnx", "no outputs"),
    "opset 99": ("opset99.onnx", "opset 99 is newer"),
    "negative dim": ("negative_dim.onnx", "declares size -3"),
    "undefined input": ("bad_reference.onnx", "fails the ONNX checker"),
    "external ../": ("ext_dotdot.onnx", "outside the model's folder"),
    "external absolute": ("ext_abs.onnx", "is absolute"),
    "external symlink out": ("ext_symlink.onnx", "outside the model's folder"),
    "external missing": ("ext_missing.onnx", "missing or not a file"),
    "external empty location": ("ext_empty.onnx", "missing or not a file"),
    "external folder": ("ext_folder.onnx", "missing or not a file"),
}


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("case", list(BAD_ONNX))
def test_hostile_onnx_file(fx, tmp_path, untouched, busy_port, stage, case):
    name, needle = BAD_ONNX[case]
    rc, _, err = _cli(*_stage_argv(stage, fx / name, tmp_path, busy_port))
    _refused(rc, err, stage, needle)


@pytest.mark.parametrize("stage", ["fuse", "convert", "advise", "build", "package"])
def test_folder_named_onnx(fx, tmp_path, untouched, stage):
    rc, _, err = _cli(*_stage_argv(stage, fx / "folder.onnx", tmp_path))
    _refused(rc, err, stage)


@pytest.mark.parametrize("argv_of, command", [
    (lambda fx, t: ["convert", fx / "custom_op.onnx", "-o", t / "o.onnx", "--precision", "fp16"], "convert"),
    (lambda fx, t: ["convert", fx / "custom_op.onnx", "-o", t / "o.onnx", "--precision", "fp16", "--no-measure"],
     "convert"),
    (lambda fx, t: ["convert", fx / "wrong_output_type.onnx", "-o", t / "o.onnx", "--precision", "bf16"], "convert"),
    (lambda fx, t: ["advise", fx / "wrong_output_type.onnx"], "advise"),
    (lambda fx, t: ["package", fx / "custom_op.onnx", "--repo", t / "repo", "--name", "m"], "package"),
    (lambda fx, t: ["package", fx / "wrong_output_type.onnx", "--repo", t / "repo", "--name", "m"], "package"),
], ids=["convert-custom-op", "convert-custom-op-no-measure", "convert-type-error", "advise-type-error",
        "package-custom-op", "package-type-error"])
def test_model_onnx_runtime_cannot_open(fx, tmp_path, untouched, argv_of, command):
    rc, _, err = _cli(*argv_of(fx, tmp_path))
    _refused(rc, err, command, "ONNX Runtime cannot")


@pytest.mark.parametrize("command", ["convert", "advise"])
@pytest.mark.parametrize("model, needle", [("zero_dim.onnx", "static size 0"), ("huge_dim.onnx", "too large")])
def test_random_calibration_refuses_degenerate_dims(fx, tmp_path, untouched, command, model, needle):
    argv = ["convert", fx / model, "-o", tmp_path / "o.onnx", "--precision", "fp16"] if command == "convert" \
        else ["advise", fx / model]
    rc, _, err = _cli(*argv)
    _refused(rc, err, command, needle)


# -- .npz inputs ---------------------------------------------------------------------------------------

BAD_NPZ = {
    "object array (pickle)": ("object.npz", "allow_pickle"),
    "member not .npy": ("not_npy_member.npz", "not a NumPy array"),
    "complex": ("complex.npz", "complex64"),
    "wrong shape": ("wrong_shape.npz", "[2, 4, 9]"),
    "wrong name": ("wrong_name.npz", ("unknown: z", "array 'z' names no input")),
    "empty array": ("empty_array.npz", "empty"),
    "garbage": ("garbage.npz", "garbage.npz"),
    "missing": ("nope.npz", "nope.npz"),
}


@pytest.mark.parametrize("command", ["convert", "advise", "check"])
@pytest.mark.parametrize("case", list(BAD_NPZ))
def test_hostile_npz_inputs(fx, tmp_path, untouched, command, case):
    name, needle = BAD_NPZ[case]
    npz = fx / name
    argv = {"convert": ["convert", fx / "good.onnx", "-o", tmp_path / "o.onnx", "--precision", "fp16",
                        "--inputs", npz],
            "advise": ["advise", fx / "good.onnx", "--inputs", npz],
            "check": ["check", f"{fx}/tiny.py:good", "--onnx", fx / "good.onnx", "--inputs", npz,
                      "--report-dir", tmp_path / "rep"]}[command]
    rc, _, err = _cli(*argv)
    _refused(rc, err, command)
    assert any(n in err for n in ((needle,) if isinstance(needle, str) else needle)), err


# -- output paths --------------------------------------------------------------------------------------

OUTPUTS = {
    "missing folder": (lambda fx, t: t / "no" / "o.onnx", "does not exist"),
    "a folder": (lambda fx, t: t, "is a directory"),
    "a FIFO": (lambda fx, t: fx / "fifo", "not a regular file"),
    "parent is a file": (lambda fx, t: fx / "good.onnx" / "o.onnx", "not a directory"),
    "unwritable (/proc)": (lambda fx, t: Path("/proc/ln_deploy_o.onnx"), "not writable"),
}


@pytest.mark.parametrize("stage", ["export", "fuse", "convert", "advise", "build"])
@pytest.mark.parametrize("case", list(OUTPUTS))
def test_bad_output_path(fx, tmp_path, untouched, stage, case):
    out, needle = OUTPUTS[case][0](fx, tmp_path), OUTPUTS[case][1]
    argv = {"export": ["export", f"{fx}/tiny.py:good", "-o", out],
            "fuse": ["fuse", fx / "good.onnx", "-o", out],
            "convert": ["convert", fx / "good.onnx", "-o", out, "--precision", "fp16"],
            "advise": ["advise", fx / "good.onnx", "--report", out],
            "build": ["build", fx / "good.onnx", "-o", out, "--dry-run"]}[stage]
    rc, _, err = _cli(*argv)
    _refused(rc, err, stage, needle)
    assert (fx / "fifo").is_fifo()  # never replaced by a regular file


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(fx, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, _, err = _cli("fuse", fx / "good.onnx", "-o", ro / "o.onnx")
        _refused(rc, err, "fuse", "not writable")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("argv_of, command, needle", [
    (lambda fx, t: ["check", f"{fx}/tiny.py:good", "--onnx", fx / "good.onnx", "--report-dir", ""], "check",
     "--report-dir must not be empty"),
    (lambda fx, t: ["package", fx / "good.onnx", "--repo", "", "--name", "m"], "package", "--repo must not be empty"),
    (lambda fx, t: ["export", f"{fx}/tiny.py:good", "-o", ""], "export", "-o/--output must not be empty"),
    (lambda fx, t: ["package", fx / "good.onnx", "--repo", "/proc/ln_deploy_repo", "--name", "m"], "package",
     "cannot write the repository"),
], ids=["check-empty-report-dir", "package-empty-repo", "export-empty-output", "package-unwritable-repo"])
def test_empty_or_unwritable_folders(fx, tmp_path, untouched, argv_of, command, needle):
    before = set(Path.cwd().iterdir())
    rc, _, err = _cli(*argv_of(fx, tmp_path))
    _refused(rc, err, command, needle)
    assert set(Path.cwd().iterdir()) == before  # "" used to mean the current directory


# -- SPECs and checkpoints -----------------------------------------------------------------------------

BAD_SPECS = {
    "missing file": ("nope.py:good", "not found"),
    "syntax error": ("syntax.py:good", "SyntaxError"),
    "import raises": ("import_raises.py:good", "import boom"),
    "import calls sys.exit": ("import_exits.py:good", "SystemExit: 5"),
    "factory raises": ("tiny.py:raises", "factory boom"),
    "factory calls sys.exit": ("tiny.py:exits", "SystemExit: 3"),
    "factory returns int": ("tiny.py:returns_int", "returned int"),
    "factory returns None": ("tiny.py:returns_none", "returned NoneType"),
    "NAME missing": ("tiny.py:absent", "has no attribute 'absent'"),
    "NAME not callable": ("tiny.py:NOT_CALLABLE", "not callable"),
    "empty example input": ("tiny.py:empty_example", "is empty"),
    "forward raises": ("tiny.py:forward_raises", "forward boom"),
    "not a spec": ("tiny.py", "must be"),
}


@pytest.mark.parametrize("command", ["export", "check"])
@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_hostile_spec(fx, tmp_path, untouched, command, case):
    spec, needle = BAD_SPECS[case]
    spec = spec if case == "not a spec" else f"{fx}/{spec}"
    argv = ["export", spec, "-o", tmp_path / "o.onnx"] if command == "export" else \
        ["check", spec, "--onnx", fx / "good.onnx", "--report-dir", tmp_path / "rep", "--no-plots"]
    rc, _, err = _cli(*argv)
    _refused(rc, err, command, needle)


@pytest.mark.parametrize("factory, needle", [("returns_dict", "returned dict"),
                                             ("returns_nothing", "returned tuple of nothing")])
def test_export_of_forward_without_tensors(fx, tmp_path, untouched, factory, needle):
    rc, _, err = _cli("export", f"{fx}/tiny.py:{factory}", "-o", tmp_path / "o.onnx")
    _refused(rc, err, "export", needle)


BAD_CHECKPOINTS = {
    "malicious pickle": ("evil.pt", "refused: it could run code"),
    "malicious pickle in torch zip": ("evil_zip.pt", "posix.system"),
    "wrong shapes (safetensors)": ("wrong_shapes.safetensors", "does not match the model"),
    "garbage safetensors": ("garbage.safetensors", "not a valid safetensors file"),
    "empty .pt": ("empty.pt", "cannot be read"),
    "text file as .pt": ("text.pt", "not a torch.save file"),
    "not a state_dict": ("list.pt", "does not hold a state_dict"),
    "missing": ("nope.pt", "checkpoint not found"),
}


@pytest.mark.parametrize("command", ["export", "check"])
@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_hostile_checkpoint(fx, tmp_path, untouched, command, case):
    name, needle = BAD_CHECKPOINTS[case]
    argv = ["export", f"{fx}/tiny.py:good", "--checkpoint", fx / name, "-o", tmp_path / "o.onnx"] \
        if command == "export" else \
        ["check", f"{fx}/tiny.py:good", "--checkpoint", fx / name, "--onnx", fx / "good.onnx"]
    rc, _, err = _cli(*argv)
    _refused(rc, err, command, needle)


# -- options -------------------------------------------------------------------------------------------

BAD_OPTIONS = {
    "export --opset 99": (lambda fx, t: ["export", f"{fx}/tiny.py:good", "-o", t / "o.onnx", "--opset", "99"],
                          "opset 99 is above"),
    "export --atol nan": (lambda fx, t: ["export", f"{fx}/tiny.py:good", "-o", t / "o.onnx", "--atol", "nan"],
                          "atol must be"),
    "export --atol -1": (lambda fx, t: ["export", f"{fx}/tiny.py:good", "-o", t / "o.onnx", "--atol", "-1"],
                         "atol must be"),
    "export --dynamic-axes garbage": (lambda fx, t: ["export", f"{fx}/tiny.py:good", "-o", t / "o.onnx",
                                                     "--dynamic-axes", "x:a=b"], "bad entry"),
    "fuse --opset 99": (lambda fx, t: ["fuse", fx / "good.onnx", "-o", t / "o.onnx", "--opset", "99"], "opset 99"),
    "convert --precision fp8": (lambda fx, t: ["convert", fx / "good.onnx", "-o", t / "o.onnx", "--precision", "fp8"],
                                "unknown precision"),
    "convert --fp32-node nope": (lambda fx, t: ["convert", fx / "good.onnx", "-o", t / "o.onnx", "--precision",
                                                "fp16", "--fp32-node", "nope"], "no node named 'nope'"),
    "advise --scale nan": (lambda fx, t: ["advise", fx / "good.onnx", "--scale", "nan"], "scale must be"),
    "advise --scale 0": (lambda fx, t: ["advise", fx / "good.onnx", "--scale", "0"], "scale must be"),
    "check --seed -1": (lambda fx, t: ["check", f"{fx}/tiny.py:good", "--onnx", fx / "good.onnx", "--seed", "-1"],
                        "--seed must be"),
    "check --threads -2": (lambda fx, t: ["check", f"{fx}/tiny.py:good", "--onnx", fx / "good.onnx",
                                          "--threads", "-2"], "--threads must be"),
    "build --shapes garbage": (lambda fx, t: ["build", fx / "good.onnx", "-o", t / "e.plan", "--dry-run",
                                              "--shapes", "garbage"], "expected NAME:MIN/OPT/MAX"),
    "build --shapes zero": (lambda fx, t: ["build", fx / "good.onnx", "-o", t / "e.plan", "--dry-run",
                                           "--shapes", "x:0x4x8/1x4x8/2x4x8"], "must be positive"),
    "build --shapes 20 digits": (lambda fx, t: ["build", fx / "good.onnx", "-o", t / "e.plan", "--dry-run", "--shapes",
                                                "x:1x4x8/2x4x8/99999999999999999999x4x8"], "a dimension above"),
    "build --shapes unknown input": (lambda fx, t: ["build", fx / "good.onnx", "-o", t / "e.plan", "--dry-run",
                                                    "--shapes", "nope:1x4x8/2x4x8/4x4x8"], "not an input"),
    "build --shapes min > max": (lambda fx, t: ["build", fx / "good.onnx", "-o", t / "e.plan", "--dry-run",
                                                "--shapes", "x:4x4x8/2x4x8/1x4x8"], "min <= opt <= max"),
    "serve --port 70000": (lambda fx, t: ["serve", fx / "good.onnx", "--port", "70000"], "--port must be"),
    "serve --port -1": (lambda fx, t: ["serve", fx / "good.onnx", "--port", "-1"], "--port must be"),
    "serve --threads -1": (lambda fx, t: ["serve", fx / "good.onnx", "--threads", "-1", "--port", "BUSY"],
                           "--threads must be"),
    "demo unknown model": (lambda fx, t: ["demo", "--models", "nope", "--out", t / "d"], "unknown bundled model"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_option(fx, tmp_path, untouched, busy_port, case):
    argv_of, needle = BAD_OPTIONS[case]
    argv = [busy_port if a == "BUSY" else a for a in argv_of(fx, tmp_path)]
    rc, _, err = _cli(*argv)
    _refused(rc, err, argv[0], needle)


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "name\nnewline", "x" * 200])
def test_package_hostile_model_name(fx, tmp_path, untouched, name):
    rc, _, err = _cli("package", fx / "good.onnx", "--repo", tmp_path / "repo", "--name", name)
    _refused(rc, err, "package", "model name")
    assert not (tmp_path / "repo").exists() and not (tmp_path / "evil").exists()


def test_serve_port_in_use(fx, untouched, busy_port):
    rc, _, err = _cli("serve", fx / "good.onnx", "--port", busy_port)
    _refused(rc, err, "serve", "cannot listen on 127.0.0.1")


def _repo_with(fx, tmp_path, filename="model.onnx", link=False):
    """A repository whose one model folder is hostile: its config names ``filename``, or its model file
    is a symlink to a model outside the repository."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "outside.onnx").write_bytes((fx / "good.onnx").read_bytes())
    vdir = tmp_path / "repo" / "m" / "1"
    vdir.mkdir(parents=True)
    if link:
        os.symlink(elsewhere / "outside.onnx", vdir / "model.onnx")
    else:
        (vdir / "model.onnx").write_bytes((fx / "good.onnx").read_bytes())
    (vdir.parent / "config.pbtxt").write_text(
        'name: "m"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input { name: "x" data_type: TYPE_FP32 dims: [4, 8] }\n'
        'output { name: "y" data_type: TYPE_FP32 dims: [4, 8] }\n'
        'instance_group { count: 1 kind: KIND_CPU }\n'
        f'default_model_filename: "{filename}"\n')
    return tmp_path / "repo"


@pytest.mark.parametrize("filename, link, needle", [
    ("../../../elsewhere/outside.onnx", False, "is not a file name"),
    ("..", False, "is not a file name"),
    ("model.onnx", True, "outside the model folder"),
], ids=["default_model_filename-escapes", "default_model_filename-dotdot", "model-file-symlink-out"])
def test_serve_repository_that_points_outside_itself(fx, tmp_path, busy_port, filename, link, needle):
    repo = _repo_with(fx, tmp_path, filename, link)
    rc, _, err = _cli("serve", repo, "--port", busy_port)
    _refused(rc, err, "serve", needle)


LONG = "a" * 300  # longer than a file name may be (ENAMETOOLONG, not ENOENT)


@pytest.mark.parametrize("argv_of, command", [
    (lambda fx, t: ["fuse", fx / "good.onnx", "-o", t / f"{LONG}.onnx"], "fuse"),
    (lambda fx, t: ["fuse", fx / f"{LONG}.onnx", "-o", t / "o.onnx"], "fuse"),
    (lambda fx, t: ["export", f"{fx}/{LONG}.py:good", "-o", t / "o.onnx"], "export"),
    (lambda fx, t: ["check", f"{fx}/tiny.py:good", "--onnx", fx / "good.onnx", "--checkpoint", fx / f"{LONG}.pt"],
     "check"),
], ids=["output", "onnx-input", "spec-file", "checkpoint"])
def test_file_name_too_long(fx, tmp_path, untouched, argv_of, command):
    rc, _, err = _cli(*argv_of(fx, tmp_path))
    _refused(rc, err, command, "too long")


# -- progress lines and real processes -----------------------------------------------------------------


def test_without_quiet_only_progress_lines_join_the_error(fx, tmp_path, untouched):
    rc, _, err = _cli("convert", fx / "custom_op.onnx", "-o", tmp_path / "o.onnx", "--precision", "fp16",
                      quiet=False)
    _refused(rc, err, "convert", "ONNX Runtime cannot", progress_ok=True)
    assert err.splitlines()[0].startswith("[ln-deploy] converting")


@pytest.mark.parametrize("argv_of, command, needle", [
    (lambda fx, t: ["export", f"{fx}/tiny.py:good", "--checkpoint", fx / "evil.pt", "-o", t / "o.onnx"], "export",
     "refused: it could run code"),
    (lambda fx, t: ["check", f"{fx}/import_exits.py:good", "--onnx", fx / "good.onnx"], "check", "SystemExit: 5"),
    (lambda fx, t: ["fuse", fx / "ext_missing.onnx", "-o", t / "o.onnx"], "fuse", "missing or not a file"),
    # both exporters fail: one line naming both (no separate fallback warning), and nothing on stdout
    # (the legacy exporter's C++ side dumped its whole IR graph there)
    (lambda fx, t: ["export", f"{fx}/tiny.py:unexportable", "-o", t / "o.onnx"], "export",
     "legacy: UnsupportedOperatorError"),
], ids=["export-malicious-pickle", "check-spec-calls-sys-exit", "fuse-external-data-missing",
        "export-unexportable-model"])
def test_in_a_real_process(fx, tmp_path, untouched, argv_of, command, needle):
    rc, out, err = _subprocess(*argv_of(fx, tmp_path), cwd=tmp_path)
    _refused(rc, err, command, needle)
    assert out == "", out


# -- export verification: NaN on one side only is a disagreement ---------------------------------------


def test_export_verification_counts_one_sided_nan():
    import torch

    from ln_deploy.export.exporter import _verify

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Log", ["x"], ["y"])], "g", [x], [y])  # log(-1) = NaN
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    from types import SimpleNamespace

    args = (-torch.ones(2, 3),)

    def loaded(ref):  # _verify runs ONNX Runtime on example_inputs against loaded.call(*example_inputs)
        return SimpleNamespace(example_inputs=args, call=lambda *a: (ref,))

    assert _verify(model, loaded(torch.zeros(2, 3)), ["x"]) == float("inf")
    assert _verify(model, loaded(torch.full((2, 3), float("nan"))), ["x"]) == 0.0


def test_failed_write_leaves_an_existing_file_as_it_was(tmp_path):
    """A write that fails never touches the file already at the output path: it may be the
    command's own input (`fuse m.onnx -o m.onnx`)."""
    from ln_deploy.fileio import atomic_output

    target = tmp_path / "m.onnx"
    target.write_bytes(b"the user's model")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("failed mid-write")
    assert target.read_bytes() == b"the user's model"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary left
