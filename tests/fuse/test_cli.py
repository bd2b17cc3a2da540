"""``ln-deploy fuse`` through the real CLI: success writes the model and the report; bad input is
one line on stderr, exit 2, and no output file."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from graphs import LAYER_NORM_SPELLINGS, RMS_NORM_SPELLINGS


def cli(*args):
    return subprocess.run([sys.executable, "-m", "ln_deploy", "fuse", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_fuse_writes_model_and_report(tmp_path):
    src, out, rep = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(LAYER_NORM_SPELLINGS["pow_div_sqrt"](17), src)
    r = cli(src, "-o", out, "--report", rep)
    assert r.returncode == 0, r.stderr
    assert "1 LayerNorm" in r.stdout
    assert [n.op_type for n in onnx.load(out).graph.node] == ["LayerNormalization"]
    report = json.loads(rep.read_text())
    assert report["fused"] == {"LayerNormalization": 1, "RMSNormalization": 0, "SkipLayerNormalization": 0}
    assert report["rejected"] == [] and report["nodes_before"] == 9 and report["nodes_after"] == 1


def test_tensorrt_target_and_rms_rejection_in_report(tmp_path):
    src, out, rep = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(RMS_NORM_SPELLINGS["div_sqrt"](20), src)
    assert cli(src, "-o", out, "--report", rep).returncode == 0
    assert json.loads(rep.read_text())["rejected"][0]["reason"].startswith("RMSNormalization needs opset 23")
    r = cli(src, "-o", out, "--target", "tensorrt")
    assert r.returncode == 0, r.stderr
    assert [n.op_type for n in onnx.load(out).graph.node] == ["LnDeployNorm"]


def test_opset_13_model_is_raised_to_17(tmp_path):
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(LAYER_NORM_SPELLINGS["pow_div_sqrt"](13), src)
    r = cli(src, "-o", out)
    assert r.returncode == 0, r.stderr
    m = onnx.load(out)
    assert [n.op_type for n in m.graph.node] == ["LayerNormalization"] and m.opset_import[0].version == 17


def _bad_checker(path):
    m = LAYER_NORM_SPELLINGS["pow_div_sqrt"](20)
    m.graph.node[1].input[0] = "does_not_exist"
    onnx.save(m, path)


def _outside_data(path):
    m = LAYER_NORM_SPELLINGS["pow_div_sqrt"](20)
    big = onnx.numpy_helper.from_array(np.ones(4096, np.float32), "big")
    m.graph.initializer.append(big)
    onnx.save(m, path, save_as_external_data=True, location="big.bin", size_threshold=1024)
    m = onnx.load(path, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../outside.bin"
    onnx.save(m, path)


BAD = {
    "not_onnx": lambda p: p.write_text("this is not a model\n"),
    "truncated": lambda p: p.write_bytes(LAYER_NORM_SPELLINGS["pow_div_sqrt"](20).SerializeToString()[:150]),
    "fails_checker": _bad_checker,
    "external_data_outside": _outside_data,
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_input_is_one_line_exit_2_no_output(kind, tmp_path):
    (tmp_path / "sub").mkdir()
    src, out = tmp_path / "sub" / "in.onnx", tmp_path / "out.onnx"
    BAD[kind](src)
    r = cli(src, "-o", out)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [l for l in r.stderr.splitlines() if not l.startswith("[ln-deploy]")]
    assert len(lines) == 1 and lines[0].startswith("ln-deploy fuse: error:"), r.stderr
    assert not out.exists()


def test_missing_input_and_bad_output_dir(tmp_path):
    r = cli(tmp_path / "nope.onnx", "-o", tmp_path / "o.onnx")
    assert r.returncode == 2 and "no such file" in r.stderr
    src = tmp_path / "in.onnx"
    onnx.save(LAYER_NORM_SPELLINGS["pow_div_sqrt"](20), src)
    r = cli(src, "-o", tmp_path / "missing" / "o.onnx")
    assert r.returncode == 2 and "output directory does not exist" in r.stderr
