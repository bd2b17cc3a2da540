"""Class 5 (and the ONNX half of class 4): a model is read, and written, only if it is well-formed:
every tensor's data matches its shape (ONNX Runtime cannot open one whose raw_data is longer; the
ONNX checker lets it through), string fields are UTF-8, external-data locations hold no NUL or
control characters, graph input and output names are unique. Exit 2, one stderr line, nothing written."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from conftest import assert_refused, ln_model, run_cli


def _raw_longer(m):
    m.graph.initializer[0].raw_data = np.ones(9, np.float32).tobytes()


def _raw_shorter(m):
    m.graph.initializer[0].raw_data = np.ones(7, np.float32).tobytes()


def _typed_short(m):
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.float_data.extend([1.0] * 5)


def _external_short(m):
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="w.bin")
    t.external_data.add(key="length", value="16")


def _nul_location(m):
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="w\0.bin")


MALFORMED = {
    "raw_data longer than its shape": (_raw_longer, "holds 36 bytes of raw data, its shape [8] needs 32"),
    "raw_data shorter than its shape": (_raw_shorter, "holds 28 bytes"),
    "float_data shorter than its shape": (_typed_short, "holds 5 values in float_data"),
    "external length shorter than its shape": (_external_short, "declares 16 bytes of external data"),
    "NUL byte in external-data location": (_nul_location, "NUL or control character"),
}


@pytest.mark.parametrize("command", ["fuse", "convert", "package"])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_tensor_data_is_refused(tmp_path, unchanged, case, command):
    mutate, needle = MALFORMED[case]
    m = ln_model()
    mutate(m)
    src = tmp_path / "bad.onnx"
    onnx.save_model(m, str(src))
    (tmp_path / "w.bin").write_bytes(b"\0" * 32)
    argv = {"fuse": ["fuse", src, "-o", tmp_path / "o.onnx"],
            "convert": ["convert", src, "-o", tmp_path / "o.onnx", "--precision", "fp16"],
            "package": ["package", src, "--repo", tmp_path / "repo", "--name", "m"]}[command]
    unchanged.start()
    rc, _, err = run_cli(*argv)
    assert_refused(rc, err, command, needle)


def _bad_utf8(field: str) -> bytes:
    m = ln_model()
    marker = "ZQZQZQ"
    if field == "metadata_props":
        m.metadata_props.add(key="k", value=marker)
    elif field == "node name":
        m.graph.node[0].name = marker
    else:
        setattr(m, field, marker)
    return m.SerializeToString().replace(marker.encode(), b"\xff\xfe\xfd\xfc\xfb\xfa")


@pytest.mark.parametrize("field, where", [("doc_string", "model.doc_string"),
                                          ("producer_name", "model.producer_name"),
                                          ("metadata_props", "model.metadata_props[0].value"),
                                          ("node name", "model.graph.node[0].name")])
def test_invalid_utf8_string_field_is_one_line(tmp_path, unchanged, field, where):
    (tmp_path / "bad.onnx").write_bytes(_bad_utf8(field))
    unchanged.start()
    rc, _, err = run_cli("fuse", tmp_path / "bad.onnx", "-o", tmp_path / "o.onnx")
    assert_refused(rc, err, "fuse", f"{where} is not valid UTF-8")


def test_duplicate_output_names_in_package_are_bad_input(tmp_path, unchanged):
    """Was exit 1 naming the temporary folder (gone by then): now refused on reading the model."""
    onnx.save_model(ln_model(outs=("y", "y")), str(tmp_path / "dup.onnx"))
    unchanged.start()
    rc, _, err = run_cli("package", tmp_path / "dup.onnx", "--repo", tmp_path / "repo", "--name", "m")
    assert_refused(rc, err, "package", "declares output name(s) 'y' more than once")
    assert ".tmp" not in err


def test_a_malformed_model_is_never_written(tmp_path):
    """save_onnx_atomic checks what it writes: a stage producing a malformed model fails (exit 1),
    and nothing is left at the output path."""
    from ln_deploy.errors import CheckFailedError
    from ln_deploy.fileio import save_onnx_atomic

    m = ln_model()
    _raw_longer(m)
    with pytest.raises(CheckFailedError, match="refusing to write a malformed model"):
        save_onnx_atomic(m, tmp_path / "o.onnx")
    assert list(tmp_path.iterdir()) == []


def test_well_formed_model_still_fuses_and_opens(models, tmp_path):
    import onnxruntime as ort

    rc, _, err = run_cli("fuse", models / "good.onnx", "-o", tmp_path / "o.onnx")
    assert rc == 0, err
    sess = ort.InferenceSession(str(tmp_path / "o.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 4, 8)).astype(np.float32)
    y = sess.run(None, {"x": x})[0]
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    assert np.abs(y - ref).max() < 1e-5
