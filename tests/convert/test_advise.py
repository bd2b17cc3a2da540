"""The overflow advisor, and done-when 2: normalization forced to fp16 on large-magnitude inputs fails
`ln-deploy check` at the first overflowing normalization, which the advisor flagged beforehand."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from ln_deploy.convert import advise
from ln_deploy.pipeline_steps import convert_model

DEMO = "post_ln_encoder_block"  # post-LN: norm1 sees x + attn(x) directly, its output is the block's


@pytest.fixture(scope="module")
def large_inputs(exported_bundled, tmp_path_factory):
    loaded, _ = exported_bundled[DEMO]
    path = tmp_path_factory.mktemp("advise") / "large.npz"
    np.savez(path, x=loaded.example_inputs[0].numpy() * 1000)  # |x| up to ~4000: squares pass 65504
    return path


def test_advisor_flags_the_first_norm_then_check_fails_there(exported_bundled, large_inputs, tmp_path):
    from ln_deploy.check import check_model

    loaded, exported = exported_bundled[DEMO]
    # beforehand: the advisor, judging the forced conversion, flags norm1 (and only it)
    adv = advise(exported.path, calibration=large_inputs, force_norm_fp16=True)
    assert [n.label for n in adv.flagged] == ["blocks.0.norm1"]
    first = adv.first_overflow
    assert first.square_overflows_fp16 and first.max_abs_centered > 255.9
    # the default conversion protects it (stash_type=1) ...
    safe = advise(exported.path, calibration=large_inputs)
    assert safe.flagged == [] and [n.label for n in safe.would_overflow_fp16()] == ["blocks.0.norm1"]
    good, _ = convert_model(exported.path, "fp16", calibration=large_inputs)
    onnx.save(good, tmp_path / "good.onnx")
    ok = check_model(loaded, tmp_path / "good.onnx", precision="fp16", inputs=str(large_inputs), plots=False,
                     invariance=False)
    assert ok.passed, ok.failures
    # ... forcing it to fp16 fails the check, localised at the flagged normalization
    bad, rep = convert_model(exported.path, "fp16", calibration=large_inputs, force_norm_fp16=True)
    assert all("NOT protected" in n["handling"] for n in rep.normalizations)
    onnx.save(bad, tmp_path / "bad.onnx")
    res = check_model(loaded, tmp_path / "bad.onnx", precision="fp16", inputs=str(large_inputs), plots=False,
                      invariance=False)
    assert not res.passed
    assert res.first_divergence["module_path"] == first.label


def test_forced_fp16_on_ordinary_inputs_is_harmless(exported_bundled):
    _, exported = exported_bundled[DEMO]
    adv = advise(exported.path, force_norm_fp16=True)  # random N(0, 1) inputs
    assert adv.flagged == [] and len(adv.norms) == 2
    assert all(n.max_abs_centered < 255.9 for n in adv.norms)


def test_advisor_numbers_match_numpy(exported_bundled):
    """Row statistics of the first norm's input (the graph input itself) computed independently."""
    loaded, exported = exported_bundled["pre_ln_encoder_block"]
    x = loaded.example_inputs[0].numpy().astype(np.float64) * 300
    adv = advise(exported.path, calibration={"x": x.astype(np.float32)})
    n1 = adv.norms[0]
    d = x - x.mean(-1, keepdims=True)
    assert n1.label == "blocks.0.norm1" and n1.row_size == 64
    assert n1.max_abs_centered == pytest.approx(np.abs(d).max(), rel=1e-5)
    assert n1.max_row_sum_sq == pytest.approx((d ** 2).sum(-1).max(), rel=1e-4)
    assert n1.square_overflows_fp16 == (np.abs(d).max() > 255.9)


def test_bf16_never_overflows(exported_bundled, large_inputs):
    _, exported = exported_bundled[DEMO]
    adv = advise(exported.path, calibration=large_inputs, precision="bf16", force_norm_fp16=True)
    assert adv.flagged == []


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ln_deploy", "-q", *args], capture_output=True, text=True, timeout=300)


def test_advise_cli(exported_bundled, large_inputs, tmp_path):
    _, exported = exported_bundled[DEMO]
    r = _cli("advise", str(exported.path), "--inputs", str(large_inputs), "--force-norm-fp16",
             "--report", str(tmp_path / "a.json"), "--fail-on-overflow")
    assert r.returncode == 1 and "OVERFLOW under this conversion: blocks.0.norm1" in r.stdout, r.stdout + r.stderr
    assert json.loads((tmp_path / "a.json").read_text())["flagged"] == ["blocks.0.norm1"]
    r = _cli("advise", str(exported.path), "--inputs", str(large_inputs))
    assert r.returncode == 0 and "no normalization overflows under this conversion" in r.stdout


def test_advise_cli_bad_inputs(exported_bundled, tmp_path):
    _, exported = exported_bundled[DEMO]
    (tmp_path / "bad.npz").write_text("not an npz")
    for args, msg in ((["--inputs", str(tmp_path / "bad.npz")], ".npz"),
                      (["--precision", "int4"], "unknown precision")):
        r = _cli("advise", str(exported.path), *args)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
