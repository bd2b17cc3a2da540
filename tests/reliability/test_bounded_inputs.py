"""Class 4, bounded loaders: .npz/.npy inputs are read through their headers first (shape x dtype
against a limit, declared sizes against the file, object arrays refused) and never inflated past
that; an ONNX file is refused by its size and top-level structure before it is read whole (peak
memory measured in a child process); options that size allocations are bounded; ONNX Runtime
failing at run time is one line. Every case: exit 2, one stderr line, no traceback, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest
from numpy.lib import format as npformat

from conftest import assert_refused, run_cli

GIB = 2**30


def _npy_member(z: zipfile.ZipFile, name: str, shape, dtype="<f4", data: bytes = b"", compress=False):
    """A .npy member whose header declares ``shape`` and whose data is ``data`` (any length)."""
    with z.open(name, "w", force_zip64=True) as f:
        npformat.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
        f.write(data)


@pytest.fixture(scope="module")
def bad_arrays(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_arrays")
    good = np.ones((2, 4, 8), np.float32)
    np.savez(d / "good.npz", x=good)
    raw = (d / "good.npz").read_bytes()
    (d / "truncated.npz").write_bytes(raw[: len(raw) - 40])
    crc = bytearray(raw)
    crc[raw.index(b"\x93NUMPY") + 140] ^= 0xFF  # one data byte of x.npy: the CRC no longer matches
    (d / "bad_crc.npz").write_bytes(bytes(crc))
    with zipfile.ZipFile(d / "huge_header.npz", "w") as z:  # declares 298 GiB, holds 16 bytes
        _npy_member(z, "x.npy", (2, 4, 10_000_000_000), data=b"\0" * 16)
    with zipfile.ZipFile(d / "short_member.npz", "w") as z:  # declares 256 bytes, holds 16
        _npy_member(z, "x.npy", (2, 4, 8), data=b"\0" * 16)
    with zipfile.ZipFile(d / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z:  # ~1 MiB inflating to 1 GiB
        with z.open("x.npy", "w", force_zip64=True) as f:
            npformat.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2**28,)})
            chunk = b"\0" * 2**24
            for _ in range(64):
                f.write(chunk)
    np.save(d / "plain.npy", good)
    (d / "plain_npy.npz").write_bytes((d / "plain.npy").read_bytes())  # a .npy named .npz
    (d / "zeros.npz").write_bytes(b"\0" * 4096)
    return d


BAD_NPZ = {
    "truncated": ("truncated.npz", "not a readable .npz"),
    "bad CRC": ("bad_crc.npz", "Bad CRC-32"),
    "header declares 298 GiB": ("huge_header.npz", "over the limit"),
    "member shorter than its header": ("short_member.npz", "truncated or corrupt"),
    "1 MiB inflating to 1 GiB": ("bomb.npz", "over the limit"),
    "plain .npy where .npz expected": ("plain_npy.npz", "single .npy array, not a .npz"),
    "zeros": ("zeros.npz", "not a .npz archive"),
}


@pytest.mark.parametrize("command", ["convert", "advise", "check"])
@pytest.mark.parametrize("case", list(BAD_NPZ))
def test_malformed_npz_is_one_line(models, bad_arrays, tmp_path, unchanged, command, case):
    name, needle = BAD_NPZ[case]
    npz = bad_arrays / name
    argv = {"convert": ["convert", models / "good.onnx", "-o", tmp_path / "o.onnx", "--precision", "fp16",
                        "--inputs", npz],
            "advise": ["advise", models / "good.onnx", "--inputs", npz],
            "check": ["check", f"{models}/tiny.py:good", "--onnx", models / "good.onnx", "--inputs", npz,
                      "--report-dir", tmp_path / "rep", "--no-plots"]}[command]
    unchanged.start()
    rc, _, err = run_cli(*argv)
    assert_refused(rc, err, command, needle)


def test_good_npz_still_loads(bad_arrays):
    from ln_deploy.loaders import load_npz

    x = load_npz(bad_arrays / "good.npz")["x"]
    assert x.shape == (2, 4, 8) and x.dtype == np.float32 and x.flags.writeable and float(x.sum()) == 64.0


PEAK_CODE = """
import resource
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
try:  # Linux carries ru_maxrss over exec (the forking parent's high-water mark): VmHWM is this process's own
    with open("/proc/self/status") as f:
        peak = next(int(ln.split()[1]) // 1024 for ln in f if ln.startswith("VmHWM:"))
except (OSError, StopIteration):
    pass
print("PEAK", peak)
"""


def _peak_rss_mib(code: str) -> tuple[int, str]:
    """Run ``code`` in a child Python; return (its peak RSS in MiB, its stdout)."""
    wrapped = code + PEAK_CODE
    p = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    peak = int(next(ln for ln in p.stdout.splitlines() if ln.startswith("PEAK")).split()[1])
    return peak, p.stdout


def test_npz_bomb_is_refused_before_inflating(bad_arrays):
    """The 1 MiB archive that inflates to 1 GiB: refused from its header; the child's peak RSS stays
    far below the gigabyte it would have taken (baseline: the interpreter and numpy, ~50 MiB)."""
    assert (bad_arrays / "bomb.npz").stat().st_size < 2 * 2**20
    peak, out = _peak_rss_mib(
        "from ln_deploy.loaders import load_npz\nfrom ln_deploy.errors import BadInputError\n"
        f"try:\n    load_npz({str(bad_arrays / 'bomb.npz')!r})\nexcept BadInputError as e:\n    print('REFUSED', e)\n")
    assert "REFUSED" in out and "over the limit" in out
    assert peak < 300, f"peak RSS {peak} MiB"


@pytest.mark.parametrize("size, needle", [(2 * GIB, "under protobuf's 2 GiB"),
                                          (3 * GIB, "under protobuf's 2 GiB"),
                                          (GIB + GIB // 2, "not a readable ONNX model")],
                         ids=["2GiB", "3GiB", "1.5GiB"])
def test_sparse_zero_onnx_file_is_not_read_whole(tmp_path, size, needle):
    """A sparse file of zeros given as a model (2 GiB used to peak at 2.1 GB, 3 GiB at 3.2 GB): refused by
    its size, or by its first field (field 0 is not ModelProto's), in a child whose peak RSS is measured."""
    big = tmp_path / "zeros.onnx"
    with open(big, "wb") as f:
        f.truncate(size)
    peak, out = _peak_rss_mib(
        "import contextlib, io\nfrom ln_deploy.cli import main\nerr = io.StringIO()\n"
        f"with contextlib.redirect_stderr(err):\n    rc = main(['-q', 'fuse', {str(big)!r}, '-o', "
        f"{str(tmp_path / 'o.onnx')!r}])\nprint('RC', rc, err.getvalue().strip())\n")
    assert f"RC 2 ln-deploy fuse: error: " in out and needle in out, out
    assert peak < 600, f"peak RSS {peak} MiB for a {size / GIB:.1f} GiB file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zeros.onnx"]


def test_truncated_onnx_is_refused_by_structure(models, tmp_path, unchanged):
    data = (models / "good.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) - 7])
    unchanged.start()
    rc, _, err = run_cli("fuse", tmp_path / "cut.onnx", "-o", tmp_path / "o.onnx")
    assert_refused(rc, err, "fuse", "not a readable ONNX model")


def test_check_batch_size_is_bounded(models, tmp_path, unchanged):
    unchanged.start()
    rc, _, err = run_cli("check", f"{models}/tiny.py:good", "--onnx", models / "good.onnx",
                         "--batch-size", "1000000000", "--no-plots")
    assert_refused(rc, err, "check", "batch 1000000000", "over the limit")


@pytest.fixture(scope="module")
def fixed_reshape_model(tmp_path_factory):
    """Flat as an ONNX graph whose Reshape keeps a fixed [2, 32] target while the batch is declared
    dynamic: ONNX Runtime fails once check's batch-independence run feeds batch 4."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 32])
    inits = [numpy_helper.from_array(np.ones(8, np.float32), "scale"),
             numpy_helper.from_array(np.zeros(8, np.float32), "bias"),
             numpy_helper.from_array(np.array([2, 32], np.int64), "target")]
    nodes = [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["n"], axis=-1, epsilon=1e-5),
             helper.make_node("Reshape", ["n", "target"], ["output"])]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                          opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    path = tmp_path_factory.mktemp("fixed_reshape") / "flat_dyn.onnx"
    onnx.save(m, str(path))
    return path


def test_fixed_shape_reshape_failing_in_onnx_runtime_is_one_line(models, fixed_reshape_model, tmp_path, unchanged):
    unchanged.start()
    rc, _, err = run_cli("check", f"{models}/tiny.py:flat", "--onnx", fixed_reshape_model, "--no-plots",
                         "--report-dir", tmp_path / "rep")
    assert_refused(rc, err, "check", "ONNX Runtime failed on the model", "Reshape")
    assert "onnxruntime_src" not in err  # the C++ source location is not the user's business
    assert not (tmp_path / "rep").exists()


def test_loader_limit_is_configurable(bad_arrays, monkeypatch):
    from ln_deploy.errors import BadInputError
    from ln_deploy.loaders import load_npz

    monkeypatch.setenv("LN_DEPLOY_MAX_ARRAY_BYTES", "100")
    with pytest.raises(BadInputError, match="LN_DEPLOY_MAX_ARRAY_BYTES"):
        load_npz(bad_arrays / "good.npz")  # 256 bytes of data
    monkeypatch.setenv("LN_DEPLOY_MAX_ARRAY_BYTES", "256")
    assert load_npz(bad_arrays / "good.npz")["x"].shape == (2, 4, 8)


def test_npy_loader_checks_header_against_file(tmp_path):
    from ln_deploy.errors import BadInputError
    from ln_deploy.loaders import load_npy

    np.save(tmp_path / "a.npy", np.arange(10, dtype=np.int64))
    assert load_npy(tmp_path / "a.npy").tolist() == list(range(10))
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:-8])
    with pytest.raises(BadInputError, match="truncated or corrupt"):
        load_npy(tmp_path / "cut.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadInputError, match="allow_pickle=False"):
        load_npy(tmp_path / "obj.npy")


def test_json_reader_bounds_nesting(tmp_path):
    from ln_deploy.errors import BadInputError
    from ln_deploy.loaders import load_json

    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BadInputError, match="nested 100000 levels"):
        load_json(tmp_path / "deep.json")
    (tmp_path / "ok.json").write_text(json.dumps({"a": "[[[{{{", "b": [[1]]}))
    assert load_json(tmp_path / "ok.json") == {"a": "[[[{{{", "b": [[1]]}
